"""Twi voice commands to transcript and intent: the Space's predictor (no Gradio, no HTTP).

preprocess (decode any container to 16 kHz mono with ``shared.audio``, hash it, find the speech
with faster-whisper's Silero VAD) -> forward (a batch: one encoder pass per clip, then the
decoder and, for a multi-task model, the intent head on the same encoder output) ->
postprocess (text intent classifier where the model has no head, top-k, the confidence rule).

Three kinds of model, told apart by their files (:func:`detect_model_type`):

- ``multi``: a Whisper with an intent head (``multitask.py``); Whisper runs in CTranslate2 int8
  (converted once at load and cached, as faster-whisper's engine), the head in numpy on the
  CTranslate2 encoder's output;
- ``single``: a plain Whisper, in CTranslate2 int8; the intent comes from the transcript by the
  Space's text classifier (``intent_text.py``);
- ``ctc``: a ``Wav2Vec2ForCTC``-style model (MMS with ``target_lang``), in transformers; intent
  from the transcript.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from intent_catalog import load_intents
from intent_text import TextIntentClassifier
from multitask import HEAD_PREFIX, IntentHead, is_multitask, log_mel
from shared.audio import AudioLimits, decode_audio
from shared.config import load_config
from shared.errors import InputError, ModelLoadError
from shared.models import ModelSource, demo_info, resolve_model, select_device
from shared.serving import ModelInfo

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
CONFIG_PATH = HERE / "config.yaml"
TEXT_INTENT_DIR = HERE / "models" / "text-intent"
SAMPLE_RATE = 16_000
ModelType = Literal["multi", "single", "ctc"]


class TwiSettings(BaseModel):
    """config.yaml: the model, how it runs, the limits and the confidence rule."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    # Hub repo id or local folder of the speech model.
    model_id: str = "openai/whisper-small"
    # Hub revision; None means the default branch.
    revision: str | None = None
    # auto (from the model's files), multi, single or ctc.
    model_type: Literal["auto", "multi", "single", "ctc"] = "auto"
    # Whisper language code the model was fine-tuned with (Whisper has no Twi token); None
    # sends no language token.
    language: str | None = None
    # CTC models with language adapters (MMS): the adapter to load.
    target_lang: str | None = "aka"
    # CTranslate2 compute type for Whisper on CPU (int8 is faster-whisper's CPU choice).
    compute_type: str = "int8"
    # "auto" (a GPU when visible), "cpu" or "cuda".
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Beam size of the Whisper decoder (1: greedy).
    beam_size: int = Field(1, ge=1, le=8)
    # Most tokens the Whisper decoder writes per clip: a command is a short sentence, and a
    # budget stops a model that loops on noise.
    max_new_tokens: int = Field(64, ge=1, le=440)
    # A clip whose no-speech probability is above this, with no confident text, is silence.
    no_speech_threshold: float = Field(0.6, ge=0, le=1)
    # Longest accepted audio, in seconds.
    max_seconds: float = Field(30.0, gt=0, le=600)
    # Largest accepted upload, in bytes.
    max_bytes: int = Field(25 * 2**20, ge=1024)
    # Most bytes in a REST request body (all the files of a /batch-intent together); a bigger
    # one is answered 413 before it is read.
    max_request_bytes: int = Field(30 * 2**20, ge=1024)
    # Most files in one /batch-intent call.
    max_batch: int = Field(16, ge=1)
    # Results kept in the cache of repeated audio (content hash).
    cache_size: int = Field(512, ge=0)
    # The app acts on an intent at least this confident; below, it answers fallback_reply.
    # None: the value in intents.yaml.
    min_confidence: float | None = Field(None, ge=0, le=1)
    # Top predictions returned.
    top_k: int = Field(5, ge=1, le=50)


def load_settings(path: Path = CONFIG_PATH, overrides: Sequence[Any] = ()) -> TwiSettings:
    """The Space's settings: ``config.yaml`` with ``overrides`` (``shared.config``) on top."""
    return load_config(TwiSettings, path, overrides)


def detect_model_type(folder: Path) -> ModelType:
    """``multi``, ``single`` or ``ctc`` from a model folder's ``config.json``."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"{folder} has no config.json: is it a transformers model?")
    config = json.loads(config_path.read_text())
    if is_multitask(config):
        return "multi"
    architectures = " ".join(config.get("architectures") or [])
    if "ForCTC" in architectures or config.get("model_type") in ("wav2vec2", "hubert", "wavlm"):
        return "ctc"
    if config.get("model_type") == "whisper":
        return "single"
    raise ModelLoadError(
        f"{folder}: cannot tell the model kind from config.json (model_type "
        f"{config.get('model_type')!r}, architectures {architectures or 'none'}); set "
        "MODEL_TYPE to multi, single or ctc"
    )


@dataclass(frozen=True)
class AudioInput:
    """One upload."""

    # The encoded file.
    data: bytes
    # Its name, echoed in the result.
    filename: str = "audio"


@dataclass(frozen=True)
class Prepared:
    """A decoded clip, ready for a batch."""

    # The upload's name.
    filename: str
    # 16 kHz mono samples of the speech the VAD found (the whole clip if it found any).
    audio: np.ndarray = field(repr=False)
    # sha256 of the upload (the cache key, with the model's revision).
    digest: str
    # Whether the VAD found speech at all.
    has_speech: bool
    # Seconds of audio uploaded.
    seconds: float


@dataclass(frozen=True)
class Recognition:
    """What the Space answers for one clip (``/test-intent``'s JSON)."""

    filename: str
    # The top intent ("" when no speech).
    intent: str
    confidence: float
    transcription: str
    # (intent, confidence, index), most probable first.
    top_predictions: tuple[tuple[str, float, int], ...]
    model_type: str
    # model_size, language, transcription_confidence.
    whisper_info: dict[str, Any]
    # Silence or noise only: empty transcript, no intent.
    no_speech: bool
    # Whether confidence >= min_confidence (the app should act).
    confident: bool
    # What the app says when it should not act ("Mentumi ntie wo yiye. San ka bio."), else "".
    reply: str
    # Time this clip took in the Space, in milliseconds (0 for a cache hit's own lookup).
    processing_time_ms: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The endpoint's JSON object."""
        return {
            "filename": self.filename,
            "intent": self.intent,
            "confidence": round(self.confidence, 4),
            "transcription": self.transcription,
            "processing_time_ms": round(self.processing_time_ms, 1),
            "top_predictions": [
                {"intent": name, "confidence": round(p, 4), "index": i}
                for name, p, i in self.top_predictions
            ],
            "model_type": self.model_type,
            "whisper_info": self.whisper_info,
            "no_speech": self.no_speech,
            "confident": self.confident,
            "reply": self.reply,
        }


@dataclass(frozen=True)
class _Heard:
    """The speech model's reading of one clip."""

    text: str
    # exp(mean token logprob) of the transcript, in [0, 1].
    confidence: float
    no_speech_prob: float
    # (n_labels,) intent logits of a multi-task model, else None.
    intent_logits: np.ndarray | None


class SpeechPredictor:
    """The loaded models and the preprocess -> forward -> postprocess pipeline.

    Build with :meth:`load`; serve through ``shared.serving.BatchedPredictor``.
    """

    def __init__(
        self,
        settings: TwiSettings,
        *,
        model_type: ModelType,
        recognizer: _Recognizer,
        text_intents: TextIntentClassifier,
        head: IntentHead | None,
        head_labels: Sequence[str] | None,
        info: ModelInfo,
        warnings: list[str],
    ) -> None:
        self.settings = settings
        self.model_type = model_type
        self.recognizer = recognizer
        self.text_intents = text_intents
        self.head = head
        self.info = info
        self.warnings = warnings
        catalog = load_intents()
        self.fallback_reply = catalog.fallback_reply
        self.min_confidence = (
            settings.min_confidence
            if settings.min_confidence is not None
            else catalog.min_confidence
        )
        # The intents of the head (a multi-task model) or of the text classifier.
        self.labels: tuple[str, ...] = tuple(head_labels or text_intents.labels)
        self.limits = AudioLimits(max_seconds=settings.max_seconds, max_bytes=settings.max_bytes)

    @classmethod
    def load(
        cls,
        settings: TwiSettings,
        *,
        token: str | None = None,
        threads: int = 2,
        cache_dir: Path | None = None,
    ) -> SpeechPredictor:
        """Resolve and load the speech model, its intent head or the text classifier.

        Args:
            settings: The Space's settings.
            token: Hub token for private models.
            threads: CPU threads for the models.
            cache_dir: Where CTranslate2 conversions are kept (a temp dir when None).

        Raises:
            ModelLoadError: naming what is missing or wrong.
        """
        start = time.monotonic()
        folder = resolve_model(ModelSource.parse(settings.model_id, settings.revision), token=token)
        model_type = (
            detect_model_type(folder) if settings.model_type == "auto" else settings.model_type
        )
        warnings: list[str] = []
        text_intents = TextIntentClassifier.load(TEXT_INTENT_DIR)
        head, labels = None, None
        if model_type == "multi":
            head, labels, warning = _load_head(folder)
            if warning:
                logger.warning(warning)
                warnings.append(warning)
        choice = select_device(settings.device)
        if model_type == "ctc":
            recognizer: _Recognizer = _CTCRecognizer(folder, settings)
            precision = "fp32"
        else:
            recognizer = _WhisperRecognizer(
                folder,
                settings,
                threads,
                choice.device,
                cache_dir,
                strip_head=model_type == "multi",
            )
            precision = settings.compute_type
        marker = demo_info(folder)
        extra = {
            "model_type": model_type,
            "intent_source": "head" if head is not None else "text classifier",
            "intents": len(labels or text_intents.labels),
            "warnings": warnings,
        }
        if marker is not None:
            extra["demo_note"] = str(marker.get("note", ""))
        info = ModelInfo(
            id=settings.model_id,
            revision=settings.revision,
            device=choice.device,
            precision=precision,
            demo=marker is not None,
            load_s=time.monotonic() - start,
            extra=extra,
        )
        return cls(settings, model_type=model_type, recognizer=recognizer,
                   text_intents=text_intents, head=head, head_labels=labels, info=info,
                   warnings=warnings)  # fmt: skip

    # -- the pipeline ---------------------------------------------------------------------------

    def preprocess(self, item: AudioInput) -> Prepared:
        """Decode, hash and find the speech of one upload.

        Raises:
            AudioInputError: empty, too big, too long, not audio, corrupt.
        """
        if not isinstance(item, AudioInput):
            raise InputError(f"expected an audio file, got {type(item).__name__}")
        audio = decode_audio(item.data, sample_rate=SAMPLE_RATE, limits=self.limits)
        digest = hashlib.sha256(item.data).hexdigest()
        speech = find_speech(audio)
        return Prepared(
            filename=item.filename,
            audio=speech if speech is not None else audio,
            digest=digest,
            has_speech=speech is not None,
            seconds=len(audio) / SAMPLE_RATE,
        )

    def forward(self, batch: Sequence[Prepared]) -> list[_Heard | None]:
        """Read every clip with speech (one batch through the model); None for the others."""
        with_speech = [i for i, p in enumerate(batch) if p.has_speech]
        heard: list[_Heard | None] = [None] * len(batch)
        if with_speech:
            outputs = self.recognizer.read([batch[i].audio for i in with_speech], self.head)
            for i, out in zip(with_speech, outputs, strict=True):
                heard[i] = out
        return heard

    def postprocess(
        self, outputs: list[_Heard | None], batch: Sequence[Prepared]
    ) -> list[Recognition]:
        """Intent, top-k and the confidence rule for each clip."""
        results = []
        texts = [o.text if o is not None else "" for o in outputs]
        text_predictions = self.text_intents.predict(texts, top_k=self.settings.top_k)
        for prepared, out, by_text in zip(batch, outputs, text_predictions, strict=True):
            if out is None or _is_silence(out, self.settings.no_speech_threshold):
                results.append(self._silence(prepared))
                continue
            assert out is not None
            if out.intent_logits is not None:
                top = _top_k(out.intent_logits, self.labels, self.settings.top_k)
            else:
                top = tuple(by_text.top)
            intent, confidence, _ = top[0]
            confident = confidence >= self.min_confidence
            results.append(Recognition(
                filename=prepared.filename,
                intent=intent,
                confidence=confidence,
                transcription=out.text.strip(),
                top_predictions=top,
                model_type=self.model_type,
                whisper_info=self._whisper_info(out.confidence),
                no_speech=False,
                confident=confident,
                reply="" if confident else self.fallback_reply,
            ))  # fmt: skip
        return results

    def _silence(self, prepared: Prepared) -> Recognition:
        return Recognition(
            filename=prepared.filename, intent="", confidence=0.0, transcription="",
            top_predictions=(), model_type=self.model_type,
            whisper_info=self._whisper_info(0.0), no_speech=True, confident=False,
            reply=self.fallback_reply,
        )  # fmt: skip

    def _whisper_info(self, confidence: float) -> dict[str, Any]:
        return {
            "model_size": self.recognizer.size,
            "language": self.settings.language if self.model_type != "ctc" else None,
            "transcription_confidence": round(confidence, 4),
        }


def find_speech(audio: np.ndarray) -> np.ndarray | None:
    """A 16 kHz clip's speech, as Silero VAD finds it (its chunks joined, silences between them
    cut to 300 ms, 200 ms kept around each), or None when it holds none. The Space runs it on
    every upload, and the demo model's training on every clip, so both see the same audio."""
    from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps

    options = VadOptions(min_silence_duration_ms=300, speech_pad_ms=200)
    chunks = get_speech_timestamps(audio, options, sampling_rate=SAMPLE_RATE)
    if not chunks:
        return None
    joined, _ = collect_chunks(audio, chunks, sampling_rate=SAMPLE_RATE)
    speech = np.concatenate(joined) if isinstance(joined, list) else joined
    return speech.astype(np.float32) if len(speech) else None


def _is_silence(heard: _Heard, threshold: float) -> bool:
    """No text, or Whisper's no-speech probability over the threshold with an unsure text
    (faster-whisper's rule: a confident transcript is kept even then)."""
    if not heard.text.strip():
        return True
    return heard.no_speech_prob > threshold and heard.confidence < 0.37  # avg logprob < -1


def _top_k(logits: np.ndarray, labels: Sequence[str], k: int) -> tuple[tuple[str, float, int], ...]:
    shifted = np.exp(logits - logits.max())
    probs = shifted / shifted.sum()
    order = np.argsort(-probs)[:k]
    return tuple((labels[i], float(probs[i]), int(i)) for i in order)


def _load_head(folder: Path) -> tuple[IntentHead | None, list[str] | None, str | None]:
    """The multi-task model's intent head and labels, or a warning and the text fallback."""
    labels_file = folder / "intent_labels.json"
    label_map = folder / "label_map.json"
    labels: list[str] | None = None
    if labels_file.is_file():
        data = json.loads(labels_file.read_text(encoding="utf-8"))
        id_to_label = data.get("id_to_label") or {v: k for k, v in data["label_to_id"].items()}
        labels = [id_to_label[str(i)] if str(i) in id_to_label else id_to_label[i]
                  for i in range(len(id_to_label))]  # fmt: skip
    elif label_map.is_file():
        data = json.loads(label_map.read_text(encoding="utf-8"))
        labels = [data[str(i)] for i in range(len(data))]
    if labels is None:
        return (
            None,
            None,
            (
                f"{folder.name} is a multi-task model without intent_labels.json or "
                "label_map.json: intents come from the transcript (text classifier) instead"
            ),
        )
    try:
        head = IntentHead.load(folder / "model.safetensors")
    except (KeyError, OSError) as e:
        return None, None, f"the intent head could not be read ({e}): intents come from the text"
    if head.num_labels != len(labels):
        return (
            None,
            None,
            (
                f"the intent head has {head.num_labels} outputs but the label file names "
                f"{len(labels)}: intents come from the transcript instead"
            ),
        )
    return head, labels, None


class _Recognizer:
    """A speech model that reads a batch of clips."""

    size: str = "unknown"

    def read(self, clips: list[np.ndarray], head: IntentHead | None) -> list[_Heard]:
        raise NotImplementedError


class _WhisperRecognizer(_Recognizer):
    """Whisper in CTranslate2 (faster-whisper's engine): one encoder pass per clip, shared by
    the decoder and the intent head."""

    def __init__(self, folder: Path, settings: TwiSettings, threads: int, device: str,
                 cache_dir: Path | None, *, strip_head: bool) -> None:  # fmt: skip
        from faster_whisper import WhisperModel

        converted = _convert(folder, settings, cache_dir, strip_head=strip_head)
        self.model = WhisperModel(str(converted), device=device, compute_type=settings.compute_type,
                                  cpu_threads=threads)  # fmt: skip
        self.settings = settings
        config = json.loads((folder / "config.json").read_text())
        self.size = f"{config.get('d_model')}d-{config.get('encoder_layers')}L"
        self._lock = threading.Lock()
        from faster_whisper.tokenizer import Tokenizer

        multilingual = self.model.model.is_multilingual
        vocab = self.model.hf_tokenizer
        # faster-whisper's Tokenizer wants a language for a multilingual model; it is used here
        # to decode only, and the prompt is built below, without a language token when none is
        # configured (Whisper has no Twi token: a fine-tune reuses one, or none).
        decode_language = "en" if multilingual else None  # any: it does not change decoding
        self.tokenizer = Tokenizer(vocab, multilingual, task="transcribe", language=decode_language)
        self.prompt = [vocab.token_to_id("<|startoftranscript|>")]
        if multilingual:
            if settings.language:
                language_id = vocab.token_to_id(f"<|{settings.language}|>")
                if language_id is None:
                    raise ModelLoadError(
                        f"language {settings.language!r} has no <|{settings.language}|> token in "
                        f"{folder.name}'s vocabulary: set LANGUAGE to one it has, or leave it empty"
                    )
                self.prompt.append(language_id)
            self.prompt.append(vocab.token_to_id("<|transcribe|>"))
        self.prompt.append(self.tokenizer.no_timestamps)

    def read(self, clips: list[np.ndarray], head: IntentHead | None) -> list[_Heard]:
        import ctranslate2

        features = log_mel(self.model.feature_extractor, clips)  # (batch, n_mels, frames)
        prompt = self.prompt
        with self._lock:  # one CTranslate2 call at a time: it uses every thread it was given
            encoded = self.model.model.encode(ctranslate2.StorageView.from_array(features),
                                              to_cpu=True)  # fmt: skip
            results = self.model.model.generate(
                encoded, [prompt] * len(clips), beam_size=self.settings.beam_size,
                max_length=len(prompt) + self.settings.max_new_tokens, return_scores=True,
                return_no_speech_prob=True, suppress_blank=True, suppress_tokens=[-1],
            )  # fmt: skip
        logits = head.logits(np.asarray(encoded)) if head is not None else None
        heard = []
        for i, result in enumerate(results):
            ids = [t for t in result.sequences_ids[0] if t < self.tokenizer.eot]
            text = self.tokenizer.decode(ids)
            length = max(1, len(ids))
            avg_logprob = result.scores[0] / length if result.scores else -10.0
            heard.append(_Heard(text=text, confidence=float(np.exp(min(0.0, avg_logprob))),
                                no_speech_prob=float(result.no_speech_prob),
                                intent_logits=None if logits is None else logits[i]))  # fmt: skip
        return heard


class _CTCRecognizer(_Recognizer):
    """A CTC model (wav2vec2, MMS) in transformers, greedy decoding. It runs on torch's
    process-wide thread pool (its size is the edge's to set, not a library's)."""

    def __init__(self, folder: Path, settings: TwiSettings) -> None:
        from transformers import AutoModelForCTC, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(folder)
        self.model = AutoModelForCTC.from_pretrained(folder).eval()
        adapters = getattr(self.model.config, "adapter_attn_dim", None)
        if adapters and settings.target_lang:
            try:
                self.processor.tokenizer.set_target_lang(settings.target_lang)
                self.model.load_adapter(settings.target_lang)
            except Exception as e:
                raise ModelLoadError(
                    f"{folder.name} has no adapter for target_lang {settings.target_lang!r}: {e}"
                ) from e
        self.size = f"{sum(p.numel() for p in self.model.parameters()) / 1e6:.0f}M"

    def read(self, clips: list[np.ndarray], head: IntentHead | None) -> list[_Heard]:
        import torch

        inputs = self.processor(clips, sampling_rate=SAMPLE_RATE, return_tensors="pt",
                                padding=True)  # fmt: skip
        with torch.inference_mode():
            logits = self.model(**inputs).logits  # (batch, frames, vocab)
        logprobs = torch.log_softmax(logits, dim=-1)
        best = logprobs.max(dim=-1)
        texts = self.processor.batch_decode(best.indices)
        heard = []
        for text, scores in zip(texts, best.values, strict=True):
            heard.append(_Heard(text=text, confidence=float(scores.mean().exp()),
                                no_speech_prob=0.0, intent_logits=None))  # fmt: skip
        return heard


def _convert(folder: Path, settings: TwiSettings, cache_dir: Path | None, *,
             strip_head: bool) -> Path:  # fmt: skip
    """The CTranslate2 conversion of a transformers Whisper, made once and cached.

    The cache key covers the weights' bytes, so a new checkpoint is converted again. A
    multi-task model is converted without its head (CTranslate2 knows plain Whisper only).
    """
    from ctranslate2.converters import TransformersConverter

    digest = hashlib.sha256()
    for name in sorted(p.name for p in folder.iterdir() if p.is_file()):
        if name.endswith((".safetensors", ".bin", ".json")):
            digest.update(name.encode())
            digest.update((folder / name).read_bytes())
    key = f"{digest.hexdigest()[:16]}-{settings.compute_type}"
    root = cache_dir or Path(tempfile.gettempdir()) / "twi-speech-ct2"
    target = root / key
    if (target / "model.bin").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    copy_files = [n for n in ("tokenizer.json", "preprocessor_config.json")
                  if (folder / n).is_file()]  # fmt: skip
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        source = folder
        if strip_head:
            source = Path(tmp) / "plain"
            _plain_whisper(folder, source)
        staging = Path(tmp) / "ct2"
        logger.info("converting %s to CTranslate2 %s (once)", folder, settings.compute_type)
        TransformersConverter(str(source), copy_files=copy_files).convert(
            str(staging), quantization=settings.compute_type, force=True
        )
        staging.rename(target)
    return target


def _plain_whisper(folder: Path, out: Path) -> None:
    """A copy of a multi-task model as a plain ``WhisperForConditionalGeneration``."""
    from safetensors.numpy import load_file, save_file

    out.mkdir(parents=True)
    for path in folder.iterdir():
        if path.is_file() and path.suffix in (".json", ".txt", ".model"):
            shutil.copy(path, out / path.name)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["WhisperForConditionalGeneration"]
    (out / "config.json").write_text(json.dumps(config))
    state = load_file(str(folder / "model.safetensors"))
    save_file({k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX)},
              str(out / "model.safetensors"), metadata={"format": "pt"})  # fmt: skip
