"""Benchmark of twi-speech (transcript + intent) against faster-whisper and a naive baseline.

In one run, on the same model and the same audio:

- **model**: a random-weights multilingual Whisper of a real size (openai/whisper-tiny's shape by
  default, ``--size base`` for whisper-base's), built in a temporary folder like a Hub checkpoint
  (``benchmarks.models.build_random_whisper``); the multi-task variant adds the Space's intent
  head (``multitask.WhisperForMultiTask``, the 34 intents of ``intents.yaml``);
- **audio**: ``--clips`` different commands of ``intents.yaml``, 2-4 s each, spoken by
  ``training/synth.py`` and handed over as WAV bytes, as an upload is.

Configurations (after a warm-up, ``--repeats`` rounds; in each, every clip goes through every
one-at-a-time configuration in turn, so that all share the load of a machine that runs other
work too, and each clip's fastest round counts; the concurrency-8 runs go after each round):

1. **baseline**: transformers ``WhisperForConditionalGeneration`` in fp32, one clip at a time:
   ``ffmpeg_read`` (the ASR pipeline's decoding), feature extraction, ``generate``, then the
   Space's text classifier for the intent;
2. **faster-whisper**: ``WhisperModel(compute_type="int8", cpu_threads=2).transcribe``,
   transcription only, one clip at a time: on the WAV file without VAD (``vad_filter=False``),
   on samples decoded beforehand (transcription alone), and on the file with the Space's VAD
   settings;
3. **this Space, sequential**: ``SpeechPredictor`` preprocess (decode: the benchmark's 16 kHz
   mono WAV is read in process, any other file goes through ffmpeg; Silero VAD) ->
   forward (one CTranslate2 int8 encoder pass shared by the decoder and, for the multi-task
   model, the numpy intent head) -> postprocess, per clip; the plain model (intent from the text
   classifier) too;
4. **this Space, concurrency 8**: the same predictor behind ``BatchedPredictor(what="file",
   max_batch_size=8)`` as ``app.py`` builds it (without its result cache), 8 threads each
   sending clips one after another.

Equal work: the model's ``<|endoftext|>`` embedding is zeroed, so greedy decoding never stops
early, and every configuration is given the budget that makes it generate exactly ``--tokens``
tokens per clip (transformers ``max_new_tokens=min_new_tokens=tokens``; CTranslate2 caps a
Whisper decode at half of ``max_length`` = prompt + ``max_new_tokens``, so faster-whisper and the
Space get ``max_new_tokens = 2 * tokens - 4``). The tokens each generated are counted and shown.
All use the same 4-token prompt (``<|startoftranscript|><|en|><|transcribe|><|notimestamps|>``).

Prints a markdown table, the targets of the issue as met or not, and a per-stage breakdown of
the time per clip; ``--write`` also writes ``benchmarks/results/twi-speech.md``.

Run: ``.venv/bin/python -m benchmarks.twi_speech.bench [--write] [--size base] [--quick]``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.models import ROOT, WHISPER_SIZES, build_random_whisper, machine

SPACE = ROOT / "spaces" / "twi-speech"
RESULTS = ROOT / "benchmarks" / "results" / "twi-speech.md"
sys.path.insert(0, str(SPACE))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from intent_catalog import load_intents  # noqa: E402
from multitask import CUSTOM_MODEL, TASK_TYPES, WhisperForMultiTask, log_mel  # noqa: E402
from predictor import (  # noqa: E402
    TEXT_INTENT_DIR,
    AudioInput,
    SpeechPredictor,
    TwiSettings,
    find_speech,
)
from shared.serving import BatchedPredictor  # noqa: E402
from training import synth  # noqa: E402

#: <|startoftranscript|> <|language|> <|transcribe|> <|notimestamps|>
PROMPT_LEN = 4
THREADS = 2
SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class Run:
    """One pass of a configuration over its requests."""

    # Seconds from the first request to the last answer.
    wall: float
    # Seconds per request, in request order.
    latencies: list[float]
    # Tokens generated per request (None where the path does not say; counted separately).
    tokens: list[int | None]
    # CPU seconds the process (all threads, and its ffmpeg children) spent on the pass.
    cpu: float = 0.0


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    key: str
    name: str
    concurrency: int
    requests: int
    tokens: str
    p50_ms: float
    per_s: float
    # CPU ms per request (all threads and children): the work, whatever else runs on the CPU.
    cpu_ms: float


@dataclass(frozen=True)
class Config:
    """A configuration: its table name, concurrency and what one request does."""

    key: str
    name: str
    concurrency: int
    # One request: a clip's WAV bytes in, the tokens generated (None: counted separately).
    one: Callable[[bytes], int | None]


def interleaved(configs: Sequence[Config], clips: Sequence[bytes], repeats: int,
                between: Callable[[], None]) -> dict[str, Run]:  # fmt: skip
    """Each clip through every one-at-a-time configuration in turn, ``repeats`` times.

    The configurations take turns clip by clip (in a rotating order), so that a change in the
    machine's load (other work shares the CPU) reaches all of them alike; each clip's fastest
    repeat counts. ``between`` runs after every round (the concurrent configurations, the
    stages).

    Returns:
        Per configuration, a run whose latencies are each clip's best, its wall their sum.
    """
    samples: dict[str, list[list[tuple[float, float, int | None]]]] = {
        c.key: [[] for _ in clips] for c in configs
    }
    for repeat in range(repeats):
        for i, data in enumerate(clips):
            shift = (i + repeat) % len(configs)
            for config in [*configs[shift:], *configs[:shift]]:
                wall, cpu = time.perf_counter(), cpu_seconds()
                tokens = config.one(data)
                samples[config.key][i].append(
                    (time.perf_counter() - wall, cpu_seconds() - cpu, tokens)
                )
        print(f"round {repeat + 1} of {repeats} done", file=sys.stderr, flush=True)
        between()
    runs = {}
    for key, per_clip in samples.items():
        best = [min(s, key=lambda x: x[0]) for s in per_clip]
        runs[key] = Run(sum(b[0] for b in best), [b[0] for b in best], [b[2] for b in best],
                        sum(b[1] for b in best))  # fmt: skip
    return runs


def concurrent(one: Callable[[bytes], int | None], clips: Sequence[bytes], workers: int) -> Run:
    """``clips`` sent by ``workers`` threads, each sending its next clip when answered."""
    latencies = [0.0] * len(clips)

    def timed(i: int) -> int | None:
        t0 = time.perf_counter()
        out = one(clips[i])
        latencies[i] = time.perf_counter() - t0
        return out

    start, cpu = time.perf_counter(), cpu_seconds()
    with ThreadPoolExecutor(workers) as pool:
        tokens = list(pool.map(timed, range(len(clips))))
    return Run(time.perf_counter() - start, latencies, tokens, cpu_seconds() - cpu)


class CountingWhisper:
    """A CTranslate2 Whisper that records the tokens each ``generate`` result holds.

    Used only in an untimed pass, to show the Space generated the same tokens as the others.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.counts: list[int] = []

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        results = self.inner.generate(*args, **kwargs)
        self.counts += [len(r.sequences_ids[0]) for r in results]
        return results

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def space_tokens(predictor: SpeechPredictor, clips: Sequence[bytes]) -> list[int]:
    """Tokens the Space's decoder generates for each clip (an untimed pass)."""
    model = predictor.recognizer.model  # type: ignore[attr-defined]
    counter = CountingWhisper(model.model)
    model.model = counter
    try:
        for i, data in enumerate(clips):
            prepared = [predictor.preprocess(AudioInput(data, f"clip{i}.wav"))]
            predictor.postprocess(predictor.forward(prepared), prepared)
    finally:
        model.model = counter.inner
    return counter.counts


# -- building the models and the audio ----------------------------------------------------------


def build_models(root: Path, size: str) -> tuple[Path, Path, int]:
    """The plain Whisper and its multi-task copy (the same weights plus the intent head)."""
    plain, multi = root / "whisper", root / "whisper-multitask"
    params = build_random_whisper(plain, size=size, never_ends=True)
    labels = json.loads((TEXT_INTENT_DIR / "config.json").read_text(encoding="utf-8"))["labels"]
    torch.manual_seed(1)
    model = WhisperForMultiTask.from_pretrained(
        plain,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    model.config.custom_model = CUSTOM_MODEL
    model.config.task_types = TASK_TYPES
    model.save_pretrained(multi, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json",
                 "generation_config.json", "demo_weights.json"):  # fmt: skip
        shutil.copy(plain / name, multi / name)
    (multi / "intent_labels.json").write_text(json.dumps({
        "label_to_id": {label: i for i, label in enumerate(labels)},
        "id_to_label": {str(i): label for i, label in enumerate(labels)},
    }))  # fmt: skip
    return plain, multi, params


def build_clips(folder: Path, count: int) -> tuple[list[bytes], list[tuple[str, str, float]]]:
    """``count`` different commands of ``intents.yaml``, 2-4 s each, as WAV bytes."""
    pairs = load_intents().training_pairs()
    step = max(1, len(pairs) // (4 * count))
    clips: list[bytes] = []
    described: list[tuple[str, str, float]] = []
    intents_used: set[str] = set()
    for n, (text, intent) in enumerate(pairs[::step]):
        if intent in intents_used:
            continue
        clip = next(synth.render([(text, intent)], languages=synth.TRAIN_VOICES,
                                 per_utterance=1, seed=n))  # fmt: skip
        seconds = len(clip.audio) / synth.SAMPLE_RATE
        if not 2.0 <= seconds <= 4.0:
            continue
        path = folder / f"clip{len(clips)}.wav"
        synth.write_wav(path, clip.audio)
        clips.append(path.read_bytes())
        described.append((text, intent, seconds))
        intents_used.add(intent)
        if len(clips) == count:
            return clips, described
    raise RuntimeError(f"found only {len(clips)} commands of 2-4 s; ask for fewer --clips")


# -- the configurations -------------------------------------------------------------------------


class Baseline:
    """transformers fp32, one clip at a time, then the text classifier for the intent."""

    def __init__(self, folder: Path, tokens: int, language: str, text_intents: Any) -> None:
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self.model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
        # transformers 5 drops these custom entries when it reads generation_config.json.
        saved = json.loads((folder / "generation_config.json").read_text())
        for key in ("lang_to_id", "task_to_id", "is_multilingual"):
            setattr(self.model.generation_config, key, saved[key])
        self.processor = WhisperProcessor.from_pretrained(folder)
        self.tokens = tokens
        self.language = language
        self.text_intents = text_intents

    def decode(self, data: bytes) -> np.ndarray:
        from transformers.pipelines.audio_utils import ffmpeg_read

        return ffmpeg_read(data, SAMPLE_RATE)

    def features(self, audio: np.ndarray) -> torch.Tensor:
        return self.processor.feature_extractor(  # (1, n_mels, frames)
            audio, sampling_rate=SAMPLE_RATE, return_tensors="pt"
        ).input_features

    def generate(self, features: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.generate(
                features, language=self.language, task="transcribe", do_sample=False,
                num_beams=1, max_new_tokens=self.tokens, min_new_tokens=self.tokens,
            )  # fmt: skip

    def __call__(self, data: bytes) -> int:
        out = self.generate(self.features(self.decode(data)))  # (1, generated)
        text = self.processor.batch_decode(out, skip_special_tokens=True)
        self.text_intents.predict(text, top_k=5)
        return int(out.shape[-1])


class FasterWhisper:
    """faster-whisper's own ``transcribe`` (int8), transcription only."""

    def __init__(self, folder: Path, budget: int, language: str, *, vad: bool,
                 source: Callable[[bytes], Any] = io.BytesIO) -> None:  # fmt: skip
        from faster_whisper import WhisperModel

        self.model = WhisperModel(str(folder), device="cpu", compute_type="int8",
                                  cpu_threads=THREADS)  # fmt: skip
        self.budget = budget
        self.language = language
        self.vad = vad
        # What transcribe is given: the file (io.BytesIO: it decodes with PyAV) or samples.
        self.source = source

    def __call__(self, data: bytes) -> int:
        # The Space's VAD settings (predictor.SpeechPredictor) when vad is on.
        vad = {"min_silence_duration_ms": 300, "speech_pad_ms": 200} if self.vad else None
        segments, _ = self.model.transcribe(
            self.source(data), language=self.language, task="transcribe", beam_size=1,
            temperature=0, without_timestamps=True, condition_on_previous_text=False,
            vad_filter=self.vad, vad_parameters=vad, max_new_tokens=self.budget,
        )  # fmt: skip
        return sum(len(segment.tokens) for segment in segments)


def space_one(predictor: SpeechPredictor) -> Callable[[bytes], None]:
    """One clip through the predictor's preprocess -> forward -> postprocess."""

    def one(data: bytes) -> None:
        prepared = [predictor.preprocess(AudioInput(data, "clip.wav"))]
        result = predictor.postprocess(predictor.forward(prepared), prepared)
        assert result[0].intent, "a clip with speech must get an intent"

    return one


def served_one(served: BatchedPredictor) -> Callable[[bytes], None]:
    """One clip through the app's ``BatchedPredictor`` (what ``/test-intent`` calls)."""

    def one(data: bytes) -> None:
        result = served.predict([AudioInput(data, "clip.wav")])
        assert result[0].intent, "a clip with speech must get an intent"

    return one


# -- what bounds it -----------------------------------------------------------------------------


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished children (ffmpeg)."""
    t = os.times()
    return time.process_time() + t.children_user + t.children_system


def timed_stage(
    fn: Callable[[Any], Any], items: Sequence[Any], per: int = 1
) -> tuple[float, float]:
    """Wall and CPU ms per item (``per`` items per call) of ``fn`` over ``items``."""
    wall0, cpu0 = time.perf_counter(), cpu_seconds()
    for item in items:
        fn(item)
    wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
    n = len(items) * per
    return 1000 * wall / n, 1000 * cpu / n


class Stages:
    """The time per clip of each stage, on the Space's own objects.

    :meth:`measure` is one pass over every stage, run between the repeats of the table so that
    both see the same load; :attr:`best` keeps each stage's fastest pass. The per-clip stages
    run on the first 4 clips (a clip's cost hardly depends on which command it is: the features
    are a 30 s window and the decode a fixed number of tokens), the batched ones on all of them.
    """

    def __init__(self, multi: SpeechPredictor, baseline: Baseline, clips: Sequence[bytes],
                 budget: int) -> None:  # fmt: skip
        import ctranslate2

        from shared.audio import decode_audio

        self.multi, self.baseline, self.budget = multi, baseline, budget
        self.model = multi.recognizer.model  # type: ignore[attr-defined]
        tokenizer = multi.recognizer.tokenizer  # type: ignore[attr-defined]
        self.prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        self.batch_size = len(clips)
        self.decode_audio = decode_audio
        audios = [self.decode(d) for d in clips]
        speech = [find_speech(a) for a in audios]  # the VAD the Space runs in preprocess
        mels = log_mel(self.model.feature_extractor, speech)  # (n, n_mels, frames)
        self.batch = ctranslate2.StorageView.from_array(np.stack(mels).astype(np.float32))
        self.encoded_batch = self.encode(self.batch)  # (n, frames, d_model)
        self.clips, self.audios, self.speech = clips[:4], audios[:4], speech[:4]
        self.one = [ctranslate2.StorageView.from_array(m[None].astype(np.float32))
                    for m in mels[:4]]  # fmt: skip
        self.encoded_one = [self.encode(f) for f in self.one]
        self.hidden = [np.asarray(e) for e in self.encoded_one]  # (1, frames, d_model) each
        self.features_pt = [baseline.features(s) for s in self.speech]  # (1, n_mels, frames)
        prepared = [multi.preprocess(AudioInput(d)) for d in self.clips]
        self.texts = [r.transcription for r in multi.postprocess(multi.forward(prepared),
                                                                 prepared)]  # fmt: skip
        self.best: dict[str, tuple[str, float, float]] = {}

    def decode(self, data: bytes) -> np.ndarray:
        return self.decode_audio(data, sample_rate=SAMPLE_RATE, limits=self.multi.limits)

    def decode_ffmpeg(self, data: bytes) -> np.ndarray:
        """The same decode through the ffmpeg subprocess, the way every file but a 16 kHz mono
        16-bit WAV takes."""
        from unittest import mock

        with mock.patch("shared.audio._plain_wav", return_value=None):
            return self.decode(data)

    def encode(self, features: Any) -> Any:
        return self.model.model.encode(features, to_cpu=True)

    def generate(self, encoded: Any, size: int) -> Any:
        """The Space's decoder call."""
        return self.model.model.generate(
            encoded, [self.prompt] * size, beam_size=1, max_length=len(self.prompt) + self.budget,
            return_scores=True, return_no_speech_prob=True, suppress_blank=True,
            suppress_tokens=[-1],
        )  # fmt: skip

    def measure(self) -> None:
        """One pass over every stage; keeps each stage's fastest pass in :attr:`best`."""
        import gc

        from faster_whisper.audio import decode_audio as pyav_decode

        multi, baseline, n, few = self.multi, self.baseline, self.batch_size, self.clips
        extractor = self.model.feature_extractor
        with torch.inference_mode():
            encoder_pt = timed_stage(baseline.model.model.encoder, self.features_pt)
        stages = {
            "pyav_lean": ("WAV decode: PyAV, in a process that imports only faster-whisper",
                          *lean_pyav(few)),
            "decode": ("WAV decode: shared.audio (the Space: a 16 kHz mono 16-bit WAV is read "
                       "in process)", *timed_stage(self.decode, few)),
            "ffmpeg": ("WAV decode: ffmpeg subprocess (shared.audio, for every other file)",
                       *timed_stage(self.decode_ffmpeg, few)),
            "pyav": ("WAV decode: PyAV in process (faster-whisper's `decode_audio`)",
                     *timed_stage(lambda d: pyav_decode(io.BytesIO(d)), few)),
            "gc": ("`gc.collect()` alone (faster-whisper's `decode_audio` runs it every time)",
                   *timed_stage(lambda _: gc.collect(), few)),
            "ffmpeg_read": ("WAV decode: ffmpeg pipe (transformers `ffmpeg_read`; baseline)",
                            *timed_stage(baseline.decode, few)),
            "vad": ("Silero VAD (the Space's preprocess)",
                    *timed_stage(find_speech, self.audios)),
            "mel": ("log-mel, 30 s window (faster-whisper's FeatureExtractor; the Space)",
                    *timed_stage(extractor, self.speech)),
            "mel_pt": ("log-mel, 30 s window (transformers WhisperFeatureExtractor; baseline)",
                       *timed_stage(baseline.features, self.speech)),
            "encoder": ("encoder, CTranslate2 int8, batch 1", *timed_stage(self.encode, self.one)),
            "decoder": ("decoder, CTranslate2 int8, batch 1",
                        *timed_stage(lambda e: self.generate(e, 1), self.encoded_one)),
            "encoder_batch": (f"encoder, CTranslate2 int8, batch {n} (per clip)",
                              *timed_stage(self.encode, [self.batch], per=n)),
            "decoder_batch": (f"decoder, CTranslate2 int8, batch {n} (per clip)",
                              *timed_stage(lambda e: self.generate(e, n), [self.encoded_batch],
                                           per=n)),
            "head": ("intent head (numpy, on the encoder output; multi-task model)",
                     *timed_stage(multi.head.logits, self.hidden)),  # type: ignore[union-attr]
            "text": ("text intent classifier (plain model's intent)",
                     *timed_stage(lambda t: multi.text_intents.predict([t], top_k=5), self.texts)),
            "encoder_pt": ("encoder, transformers fp32 (baseline)", *encoder_pt),
            "generate_pt": ("encoder + decoder, transformers fp32 `generate` (baseline)",
                            *timed_stage(baseline.generate, self.features_pt)),
        }  # fmt: skip
        for key, (name, wall, cpu) in stages.items():
            if key not in self.best or wall < self.best[key][1]:
                self.best[key] = (name, wall, cpu)


def lean_pyav(clips: Sequence[bytes]) -> tuple[float, float]:
    """faster-whisper's ``decode_audio`` timed in a fresh process without torch: its
    ``gc.collect()`` has far fewer objects to walk there."""
    import subprocess

    code = (
        "import io, sys, time\n"
        "from faster_whisper.audio import decode_audio\n"
        "clips = [open(p, 'rb').read() for p in sys.argv[1:]]\n"
        "best = (1e9, 0.0)\n"
        "for _ in range(3):\n"
        "    w, c = time.perf_counter(), time.process_time()\n"
        "    for d in clips: decode_audio(io.BytesIO(d))\n"
        "    best = min(best, (time.perf_counter() - w, time.process_time() - c))\n"
        "print(1000 * best[0] / len(clips), 1000 * best[1] / len(clips))\n"
    )
    with tempfile.TemporaryDirectory(prefix="twi-bench-clips-") as tmp:
        paths = []
        for i, data in enumerate(clips):
            path = Path(tmp) / f"clip{i}.wav"
            path.write_bytes(data)
            paths.append(str(path))
        out = subprocess.run([sys.executable, "-c", code, *paths],
                             capture_output=True, text=True, check=True, timeout=300)  # fmt: skip
    wall, cpu = out.stdout.split()
    return float(wall), float(cpu)


def gain(alone: float, batched: float) -> str:
    """``saves 12 ms`` or ``costs 12 ms``: what batching did to a stage's time per clip."""
    return f"{'saves' if batched <= alone else 'costs'} {abs(alone - batched):.0f} ms"


def bounds(rows: dict[str, Row], stages: dict[str, tuple[str, float, float]],
           batch: int) -> list[str]:  # fmt: skip
    """What the measured stages say bounds each target."""
    ms = {key: wall for key, (_, wall, _) in stages.items()}
    cpu = {key: c for key, (_, _, c) in stages.items()}
    space = 1000 / rows["space-multi"].per_s
    fw, served = 1000 / rows["fw"].per_s, 1000 / rows["served-multi"].per_s
    alone = 1000 / rows["fw-samples"].per_s
    parts = {"int8 encoder": ms["encoder"], "decoder": ms["decoder"],
             "decode": ms["decode"], "VAD": ms["vad"], "log-mel": ms["mel"],
             "intent head": ms["head"]}  # fmt: skip
    total = sum(parts.values())
    model = ms["encoder"] + ms["decoder"]
    model_pt = ms["generate_pt"]
    extra = ms["decode"] + ms["vad"] + ms["head"]
    per_clip_batched = ms["encoder_batch"] + ms["decoder_batch"]
    return [
        f"- The Space's clip, stage by stage ({total:.0f} ms in all; {space:.0f} ms measured "
        "end to end): "
        + ", ".join(f"{name} {t:.0f} ms ({t / total:.0%})" for name, t in parts.items())
        + ".",
        f"- 4x the baseline: the model alone (encoder + {rows['fw'].tokens} tokens, measured "
        f"back to back) takes {model_pt:.0f} ms in transformers fp32 and {model:.0f} ms in "
        f"CTranslate2 int8: **{model_pt / model:.1f}x**, and the WAV decode, VAD and features "
        "cost both about the same, so that ratio is the ceiling on the speedup one clip at a time. "
        f"The encoder is {ms['encoder'] / model:.0%} of the int8 model time, and int8 makes it "
        f"only {ms['encoder_pt'] / ms['encoder']:.1f}x faster than fp32 on this CPU (see "
        f"CTranslate2's ISA and GEMM backend in the notes); the decoder gains "
        f"{(model_pt - ms['encoder_pt']) / ms['decoder']:.1f}x but is the smaller part at this "
        "length. The encoder always runs a 30 s window, so a 3 s command pays for 30 s.",
        f"- Against faster-whisper on decoded samples ({alone:.0f} ms per clip), the Space adds "
        f"its decode ({ms['decode']:.1f} ms wall, {cpu['decode']:.1f} ms CPU: the WAV is read in "
        f"process), the VAD ({ms['vad']:.0f} ms) and the intent head ({ms['head']:.1f} ms): "
        f"{extra:.0f} ms, where 1.05x leaves {0.05 * alone:.0f} ms. Any other file goes through "
        f"the ffmpeg subprocess ({ms['ffmpeg']:.0f} ms wall, {cpu['ffmpeg']:.0f} ms CPU here), "
        f"which would make it {(alone + extra - ms['decode'] + ms['ffmpeg']) / alone:.2f}x (an "
        f"estimate from the stage times). Against faster-whisper on the file ({fw:.0f} ms), "
        f"faster-whisper pays for its own decode: PyAV takes {ms['pyav']:.0f} ms per clip here "
        f"and `gc.collect()`, which its `decode_audio` runs after every file, takes "
        f"{ms['gc']:.0f} ms alone in this process (torch and transformers loaded); in a process "
        f"that imports only faster-whisper the same decode takes {ms['pyav_lean']:.0f} ms.",
        f"- Concurrency: at batch {batch} the encoder costs {ms['encoder_batch']:.0f} ms per clip "
        f"(batch 1: {ms['encoder']:.0f}) and the decoder {ms['decoder_batch']:.0f} ms (batch 1: "
        f"{ms['decoder']:.0f}): batching {gain(ms['decoder'], ms['decoder_batch'])} of decoder "
        f"and {gain(ms['encoder'], ms['encoder_batch'])} of encoder per clip, so the model "
        f"alone could serve at most {1000 / per_clip_batched:.2f} clips/s at batch {batch}; the "
        "8 callers' decodes and VAD run on the same 2 cores meanwhile. Measured: "
        f"{1000 / served:.2f} clips/s, {space / served:.2f}x the sequential Space. Encoding the "
        "clips of a batch one at a time and batching only the decoder would allow at most "
        f"{1000 / (ms['encoder'] + ms['decoder_batch']):.2f} clips/s (an estimate from the "
        "stage times; see the notes for when it was tried).",
    ]


# -- the report ---------------------------------------------------------------------------------


def ct2_backend(folder: Path) -> str:
    """What CTranslate2 runs on here (its ``CT2_VERBOSE`` log: ISA, MKL, GEMM backends)."""
    import subprocess

    code = (
        "import ctranslate2, sys; "
        f"ctranslate2.models.Whisper(sys.argv[1], device='cpu', compute_type='int8', "
        f"intra_threads={THREADS})"
    )
    env = {**os.environ, "CT2_VERBOSE": "1"}
    out = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True,
                         text=True, env=env, timeout=120)  # fmt: skip
    wanted = ("Selected ISA", "Use Intel MKL", "GEMM_S8 backend", "Selected compute type")
    found = [line.split("] ")[-1].strip(" -") for line in out.stderr.splitlines()
             if any(w in line for w in wanted)]  # fmt: skip
    return "; ".join(found) or "unknown"


def row(config: Config, run: Run) -> Row:
    counts = {t for t in run.tokens if t is not None}
    return Row(config.key, config.name, config.concurrency, len(run.latencies),
               "/".join(str(c) for c in sorted(counts)) if counts else "?",
               1000 * statistics.median(run.latencies), len(run.latencies) / run.wall,
               1000 * run.cpu / len(run.latencies))  # fmt: skip


def verdicts(rows: dict[str, Row]) -> list[str]:
    """The issue's three targets, each met or not, with the measured figures."""
    base, fw, fw_vad = rows["baseline"], rows["fw"], rows["fw-vad"]
    fw_alone, space, served = rows["fw-samples"], rows["space-multi"], rows["served-multi"]
    ratio = fw.per_s / space.per_s
    strict = fw_alone.per_s / space.per_s
    speedup = space.per_s / base.per_s

    def mark(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    return [
        "- transcript + intent within 1.05x faster-whisper's transcription time: "
        f"{mark(ratio <= 1.05)} against `transcribe` on the WAV file, {mark(strict <= 1.05)} "
        f"against `transcribe` on decoded samples — the Space (multi-task, sequential, from "
        f"the WAV bytes) takes {1000 / space.per_s:.0f} ms per clip; faster-whisper "
        f"{1000 / fw.per_s:.0f} ms on the file without VAD (**{ratio:.2f}x**), "
        f"{1000 / fw_vad.per_s:.0f} ms with the Space's VAD ({fw_vad.per_s / space.per_s:.2f}x) "
        f"and {1000 / fw_alone.per_s:.0f} ms on samples decoded beforehand (**{strict:.2f}x**). "
        f"In CPU time per clip: {space.cpu_ms:.0f} ms against {fw.cpu_ms:.0f} "
        f"({space.cpu_ms / fw.cpu_ms:.2f}x) and {fw_alone.cpu_ms:.0f} "
        f"({space.cpu_ms / fw_alone.cpu_ms:.2f}x).",
        f"- at least 4x the naive baseline: {mark(speedup >= 4)} — sequential, "
        f"{space.per_s:.2f} clips/s against {base.per_s:.2f}: **{speedup:.1f}x** "
        f"(at concurrency 8: {served.per_s / base.per_s:.1f}x; in CPU time per clip "
        f"{base.cpu_ms / space.cpu_ms:.1f}x).",
        f"- aggregate throughput at concurrency 8 above faster-whisper's sequential: "
        f"{mark(served.per_s > fw.per_s)} against `transcribe` on the WAV file, "
        f"{mark(served.per_s > fw_alone.per_s)} against `transcribe` on decoded samples — "
        f"**{served.per_s:.2f}** clips/s against {fw.per_s:.2f} "
        f"(**{served.per_s / fw.per_s:.2f}x**) and {fw_alone.per_s:.2f} "
        f"(**{served.per_s / fw_alone.per_s:.2f}x**).",
    ]


def report(rows: list[Row], stages: dict[str, tuple[str, float, float]],
           meta: dict[str, str]) -> str:  # fmt: skip
    by_key = {r.key: r for r in rows}
    base, fw = by_key["baseline"], by_key["fw"]
    lines = [
        "# twi-speech benchmark",
        "",
        f"- machine: {meta['cpu']}, {meta['cores']} cores (shared with other work: 1-minute load "
        f"average {meta['load']} at the start / after the rounds / at the end), torch "
        f"{meta['torch']}, transformers "
        f"{meta['transformers']}, CTranslate2 {meta['ctranslate2']}, faster-whisper "
        f"{meta['faster_whisper']}",
        f"- date: {meta['date']}",
        f"- command: `{meta['command']}`",
        f"- model: random weights in openai/whisper-{meta['size']}'s shape ({meta['shape']}; "
        f"{meta['params']} parameters), saved like a Hub checkpoint; the multi-task copy adds "
        "the Space's intent head (34 intents); int8 in CTranslate2, fp32 in the baseline",
        f"- audio: {meta['audio']}",
        f"- work per clip: {meta['tokens']} generated tokens for every configuration (column "
        "*tokens*: what each actually generated), the same 4-token prompt, greedy",
        f"- timing: after a warm-up, {meta['repeats']} rounds; in each, every clip goes through "
        "every one-at-a-time configuration in turn (rotating order, so all share the machine's "
        "load alike) and each clip's fastest round counts (clips/s = clips over the sum of "
        "those); the concurrency-8 runs go after each round, best run counts. *CPU ms/clip* is "
        "the process's CPU time (all threads and its ffmpeg children) per clip: the work done, "
        "whatever else the machine runs",
        "",
        "| configuration | concurrency | requests | tokens/clip | p50 ms | clips/s "
        "| vs baseline | vs faster-whisper | CPU ms/clip |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.concurrency} | {r.requests} | {r.tokens} | {r.p50_ms:.0f} "
            f"| {r.per_s:.2f} | {r.per_s / base.per_s:.1f}x | {r.per_s / fw.per_s:.2f}x "
            f"| {r.cpu_ms:.0f} |"
        )
    lines += ["", "## Targets", "", *verdicts(by_key), "", "## Time per clip by stage", ""]
    lines += [
        "One clip at a time unless batched, each stage's best pass (one pass after each repeat "
        "of the table); CPU is all threads of the process plus its finished children (ffmpeg), "
        "up to twice the wall time on 2 threads.",
        "",
        "| stage | wall ms | CPU ms |",
        "|---|---:|---:|",
    ]
    shown = dict(stages)
    _, gen_wall, gen_cpu = stages["generate_pt"]
    _, enc_wall, enc_cpu = stages["encoder_pt"]
    shown["decoder_pt"] = ("decoder, transformers fp32 (baseline; `generate` minus encoder)",
                           gen_wall - enc_wall, gen_cpu - enc_cpu)  # fmt: skip
    lines += [f"| {name} | {wall:.1f} | {cpu:.1f} |" for name, wall, cpu in shown.values()]
    lines += ["", "## What bounds it", "", *bounds(by_key, stages, int(meta["clips"]))]
    lines += ["", "## Notes", "", f"- CTranslate2 on this CPU: {meta['backend']}."]
    lines += meta["notes"].splitlines()
    return "\n".join(lines) + "\n"


NOTES = """\
- Tried on 2026-12-06 and not adopted: encoding the clips of a batch one at a time and batching
  only the decoder (the 2026-12-02 stage times had the batch-8 encoder at 515 ms per clip
  against 423 alone). In one run of this benchmark it served 0.96 clips/s at concurrency 8
  against 0.99 with the batch encoded together.
- The Space runs its VAD (Silero, faster-whisper's) and a decode in every preprocess (the
  clips here are 16 kHz mono 16-bit WAV, which `shared.audio` reads in process; any other file
  or rate goes through an ffmpeg subprocess, timed in the stage table);
  faster-whisper's `transcribe(vad_filter=False)` runs no VAD (it decodes with PyAV in
  process). Three faster-whisper rows are shown: on the WAV file without VAD (the target's
  reference), on samples decoded beforehand (transcription alone, no decode), and on the file
  with the Space's VAD settings. The features are a 30 s window either way (the encoder always sees
  1,500 positions), so the VAD saves no encoder time on a 2-4 s command.
- Equal decode budget: CTranslate2 stops a Whisper decode at half of `max_length` (prompt +
  `max_new_tokens`), so `max_new_tokens=N` generates (4 + N) / 2 tokens, in faster-whisper and
  in the Space alike: the Space's `max_new_tokens: 64` (config.yaml) writes at most 34 tokens.
  This run gives both `2 * tokens - 4` to generate `tokens`; transformers gets
  `max_new_tokens=min_new_tokens=tokens`. The `<|endoftext|>` embedding is zeroed so that no
  engine stops early on the random weights.
- Language: the prompt names a language (`--language`, default `en`; Whisper has no Twi token)
  for every configuration. With a multilingual Whisper the Space cannot start with
  `language: null` (its config.yaml default): faster-whisper's `Tokenizer` raises
  `'None' is not a valid language code`. faster-whisper's own `transcribe(language=None)`
  would detect the language instead (one more decoder pass per clip).
- transformers 5 drops `lang_to_id` / `task_to_id` when it reads `generation_config.json`; the
  baseline sets them back from the file so that `generate(language=...)` works.
- Concurrency 8 sends each clip 3 times over (closed loop: each thread sends its next clip when
  answered); the app's result cache (recognize.py) is not in the path, so every request runs
  the model.
"""


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["tiny", "base"], default="tiny", help="model shape")
    parser.add_argument("--tokens", type=int, default=24, help="tokens generated per clip")
    parser.add_argument("--clips", type=int, default=8, help="different commands")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (best of)")
    parser.add_argument("--rounds", type=int, default=3, help="times each clip is sent at c=8")
    parser.add_argument("--language", default="en", help="Whisper language token of the prompt")
    parser.add_argument("--quick", action="store_true", help="2 clips, 1 repeat, 8 tokens")
    parser.add_argument("--write", action="store_true", help=f"write {RESULTS.name}")
    args = parser.parse_args(argv)
    if args.quick:
        args.clips, args.repeats, args.rounds, args.tokens = 2, 1, 1, 8
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)
    import transformers

    transformers.logging.set_verbosity_error()  # generate's notes on max_length
    torch.set_num_threads(THREADS)
    budget = 2 * args.tokens - PROMPT_LEN  # CTranslate2 generates max_length / 2 tokens
    load = [os.getloadavg()[0]]

    with tempfile.TemporaryDirectory(prefix="twi-bench-") as tmp:
        root = Path(tmp)
        plain, multi_dir, params = build_models(root, args.size)
        clips, described = build_clips(root, args.clips)

        def space(folder: Path) -> SpeechPredictor:
            settings = TwiSettings(model_id=str(folder), device="cpu", language=args.language,
                                   max_new_tokens=budget)  # fmt: skip
            return SpeechPredictor.load(settings, threads=THREADS, cache_dir=root / "ct2")

        multi, single = space(multi_dir), space(plain)
        assert multi.head is not None and single.head is None, multi.info.extra
        from ctranslate2.converters import TransformersConverter

        fw_dir = root / "faster-whisper"
        TransformersConverter(
            str(plain), copy_files=["tokenizer.json", "preprocessor_config.json"]
        ).convert(str(fw_dir), quantization="int8")
        backend = ct2_backend(fw_dir)
        baseline = Baseline(plain, args.tokens, args.language, multi.text_intents)
        fw = FasterWhisper(fw_dir, budget, args.language, vad=False)
        fw_vad = FasterWhisper(fw_dir, budget, args.language, vad=True)
        from shared.audio import decode_audio

        samples = {d: decode_audio(d, sample_rate=SAMPLE_RATE) for d in clips}
        fw_samples = FasterWhisper(fw_dir, budget, args.language, vad=False,
                                   source=samples.__getitem__)  # fmt: skip
        served = {name: BatchedPredictor(p, what="file", max_batch_size=8, name=f"bench-{name}")
                  for name, p in (("multi", multi), ("single", single))}  # fmt: skip
        many = [clips[i % len(clips)] for i in range(len(clips) * args.rounds)]
        configs = [
            Config("baseline", "baseline: transformers fp32 generate + text intent, one at a time",
                   1, baseline),
            Config("fw", "faster-whisper `transcribe` int8, no VAD (transcript only)", 1, fw),
            Config("fw-samples", "faster-whisper `transcribe` int8 on decoded samples, no VAD "
                   "(transcription alone)", 1, fw_samples),
            Config("fw-vad", "faster-whisper `transcribe` int8, Space's VAD (transcript only)", 1,
                   fw_vad),
            Config("space-multi", "twi-speech multi-task: transcript + head intent", 1,
                   space_one(multi)),
            Config("space-single", "twi-speech plain: transcript + text-classifier intent", 1,
                   space_one(single)),
            Config("served-multi", "twi-speech multi-task via BatchedPredictor", 8,
                   served_one(served["multi"])),
            Config("served-single", "twi-speech plain via BatchedPredictor", 8,
                   served_one(served["single"])),
        ]  # fmt: skip
        for config in configs:  # warm-up
            concurrent(config.one, clips[:2], config.concurrency)
        stages = Stages(multi, baseline, clips, budget)
        best: dict[str, Run] = {}

        def between() -> None:
            """The concurrent configurations (best pass of each), then the stages."""
            for config in configs:
                if config.concurrency > 1:
                    run = concurrent(config.one, many, config.concurrency)
                    if config.key not in best or run.wall < best[config.key].wall:
                        best[config.key] = run
            stages.measure()

        one_at_a_time = [c for c in configs if c.concurrency == 1]
        best |= interleaved(one_at_a_time, clips, args.repeats, between)
        load.append(os.getloadavg()[0])
        counted = {"multi": space_tokens(multi, clips), "single": space_tokens(single, clips)}
        for key in list(best):
            if key.startswith(("space-", "served-")):
                tokens = counted[key.split("-")[1]]
                each = [tokens[i % len(tokens)] for i in range(len(best[key].tokens))]
                best[key] = Run(best[key].wall, best[key].latencies, each, best[key].cpu)
        rows = [row(config, best[config.key]) for config in configs]
        load.append(os.getloadavg()[0])

    import ctranslate2
    import faster_whisper

    d_model, layers, heads = WHISPER_SIZES[args.size]
    seconds = [s for _, _, s in described]
    meta = machine() | {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python -m benchmarks.twi_speech.bench " + " ".join(argv or sys.argv[1:]),
        "load": " / ".join(f"{x:.1f}" for x in load),
        "transformers": transformers.__version__,
        "ctranslate2": ctranslate2.__version__,
        "faster_whisper": faster_whisper.__version__,
        "size": args.size,
        "shape": f"d_model {d_model}, {layers}+{layers} layers, {heads} heads, ffn "
        f"{4 * d_model}, 80 mels, 1,500 source positions, 51,865-token vocabulary",
        "params": f"{params / 1e6:.1f}M",
        "audio": f"{len(clips)} different commands of intents.yaml, one per intent, "
        f"{min(seconds):.1f}-{max(seconds):.1f} s (mean {statistics.mean(seconds):.1f} s), "
        "espeak-ng voices via training/synth.py, sent as 16 kHz 16-bit WAV bytes: "
        + "; ".join(f"“{t}” ({i})" for t, i, _ in described),
        "tokens": str(args.tokens),
        "repeats": str(args.repeats),
        "backend": backend,
        "clips": str(len(clips)),
        "notes": NOTES,
    }
    text = report(rows, stages.best, meta)
    print(text)
    if args.write and not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text, encoding="utf-8")
        print(f"written to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
