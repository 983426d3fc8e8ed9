"""Train the demo multi-task Whisper on synthetic Twi commands (``make train-twi``).

Reads ``intents.yaml``, has espeak-ng read every training utterance in the training voices
(``synth.py``), trains a small ``WhisperForMultiTask`` (transcript + intent from one encoder
pass) with fixed seeds, and evaluates on voices it never heard: the training utterances and the
held-out paraphrases, read by :data:`synth.HELD_OUT_VOICES`. Writes the model, its tokenizer,
``intent_labels.json`` and a model card to ``models/multitask-whisper/``.

It is a model of synthetic speech, small enough to commit (a few MB), so that ``make demo`` and
the tests serve a model that really answers; real Twi speakers need a real checkpoint
(``MODEL_ID``).

Run from the repo root: ``.venv/bin/python spaces/twi-speech/training/train_multitask.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
SPACE = HERE.parent
sys.path[:0] = [str(HERE), str(SPACE), str(SPACE.parents[1])]

import synth  # noqa: E402

from intent_catalog import load_intents  # noqa: E402
from multitask import CUSTOM_MODEL, TASK_TYPES, WhisperForMultiTask, log_mel  # noqa: E402
from predictor import find_speech  # noqa: E402

logger = logging.getLogger("train_multitask")

OUT = SPACE / "models" / "multitask-whisper"
CACHE = SPACE.parents[1] / "build" / "twi-speech"
#: Whisper's special tokens, in Whisper's order; ``<|notimestamps|>`` must be the last id, since
#: faster-whisper takes every id after it for a timestamp.
SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|translate|>", "<|transcribe|>",
            "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]  # fmt: skip
#: Audio window: commands are short, so the demo model reads 8 s windows, not Whisper's 30.
CHUNK_SECONDS = 8
N_MELS = 80
#: How the cached features were computed (part of the cache's name): the Space's VAD, then
#: faster-whisper's log-mel padded with zeros (``multitask.log_mel``).
FEATURES = "vad-fw"


def load_utterances(path: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(text, intent)`` pairs for training and for evaluation (the held-out paraphrases)."""
    catalog = load_intents(path)
    return catalog.training_pairs(), catalog.held_out_pairs()


def build_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE over the utterances with Whisper's special tokens (see SPECIALS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import WhisperTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([" " + t for t in texts], trainer)
    tok.add_special_tokens(SPECIALS)
    eot = "<|endoftext|>"
    return WhisperTokenizerFast(tokenizer_object=tok, bos_token=eot, eos_token=eot,
                                unk_token=eot, pad_token=eot)  # fmt: skip


def _clip_features(job: tuple[str, str, dict[str, Any], int]) -> tuple[np.ndarray | None, float]:
    """One clip's features as the Space computes them (VAD, then faster-whisper's log-mel), or
    None when the VAD finds no speech in it (the Space would answer ``no_speech``)."""
    text, _, voice, seed = job
    from faster_whisper.feature_extractor import FeatureExtractor

    extractor = FeatureExtractor(feature_size=N_MELS, chunk_length=CHUNK_SECONDS)
    audio = synth.speak(text, synth.Voice(**voice), seed)
    speech = find_speech(audio)
    if speech is None:
        return None, len(audio) / synth.SAMPLE_RATE
    return log_mel(extractor, [speech])[0].astype(np.float16), len(speech) / synth.SAMPLE_RATE


def _voice_name(voice: dict[str, Any]) -> str:
    return f"{voice['language']}+{voice['variant']}/{voice['channel']}"


def synthesize(
    utterances: list[tuple[str, str]], languages: tuple[str, ...], per_utterance: int, seed: int,
    name: str, workers: int,
) -> dict[str, Any]:  # fmt: skip
    """Log-mel features of every clip (cached in build/twi-speech by name and seed)."""
    cache = CACHE / f"{name}-{seed}-{per_utterance}-{FEATURES}.npz"
    if cache.exists():
        data = np.load(cache, allow_pickle=False)
        meta = json.loads(str(data["meta"]))
        same = [tuple(u) for u in meta["utterances"]] == [tuple(u) for u in utterances]
        if same and meta.get("languages") == list(languages):
            return {"mel": data["mel"], **meta}
    rng = random.Random(seed)
    jobs = []
    for text, intent in utterances:
        for _ in range(per_utterance):
            voice = synth.random_voice(rng, languages)
            jobs.append((text, intent, voice.__dict__, rng.randrange(2**31)))
    synth.require_tools()
    with ProcessPoolExecutor(workers) as pool:
        out = list(tqdm(pool.map(_clip_features, jobs, chunksize=8), total=len(jobs),
                        desc=f"speaking {name}", unit="clip"))  # fmt: skip
    kept = [i for i, (m, _) in enumerate(out) if m is not None]
    if len(kept) < len(jobs):
        logger.info("%s: the VAD found no speech in %d of %d clips; they are left out",
                    name, len(jobs) - len(kept), len(jobs))  # fmt: skip
    mel = np.stack([out[i][0] for i in kept])
    meta = {
        "utterances": utterances,
        "languages": list(languages),
        "texts": [jobs[i][0] for i in kept],
        "intents": [jobs[i][1] for i in kept],
        "voices": [_voice_name(jobs[i][2]) for i in kept],
        "seconds": [out[i][1] for i in kept],
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(cache, mel=mel, meta=json.dumps(meta))
    return {"mel": mel, **meta}


def make_model(tokenizer: Any, labels: list[str], args: argparse.Namespace) -> WhisperForMultiTask:
    """A small multi-task Whisper (a few MB) whose prompt is ``<|startoftranscript|>
    <|notimestamps|>``: an English-only-style vocabulary, so faster-whisper adds no language
    or task token (Whisper has no Twi token; see the Space's ``language`` setting)."""
    from transformers import WhisperConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIALS}
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=N_MELS,
        d_model=args.d_model,
        encoder_layers=args.encoder_layers,
        decoder_layers=args.decoder_layers,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=4 * args.d_model,
        decoder_ffn_dim=4 * args.d_model,
        max_source_positions=CHUNK_SECONDS * 50,
        max_target_positions=448,
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|endoftext|>"],
        decoder_start_token_id=ids["<|startoftranscript|>"],
        suppress_tokens=[],
        begin_suppress_tokens=[],
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        dropout=args.dropout,
    )
    config.custom_model = CUSTOM_MODEL
    config.task_types = TASK_TYPES
    model = WhisperForMultiTask(config)
    model.generation_config.no_timestamps_token_id = ids["<|notimestamps|>"]
    model.generation_config.decoder_start_token_id = ids["<|startoftranscript|>"]
    model.generation_config.is_multilingual = False
    return model


def prompt_ids(tokenizer: Any) -> list[int]:
    """The decoder prompt faster-whisper sends this model."""
    return [tokenizer.convert_tokens_to_ids(t) for t in ("<|startoftranscript|>",
                                                          "<|notimestamps|>")]  # fmt: skip


def label_ids(tokenizer: Any, texts: list[str]) -> torch.Tensor:
    """(clips, tokens) decoder targets: prompt, ``" " + text`` tokens, end; -100 padding."""
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    rows = [prompt_ids(tokenizer) + tokenizer.encode(" " + t, add_special_tokens=False) + [eot]
            for t in texts]  # fmt: skip
    width = max(map(len, rows))
    return torch.tensor([r + [-100] * (width - len(r)) for r in rows])


def augment(mel: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """SpecAugment-style masks: two frequency bands and two time spans per clip."""
    mel = mel.clone()
    batch, n_mels, frames = mel.shape
    floor = mel.amin(dim=(1, 2), keepdim=True)
    for b in range(batch):
        for _ in range(2):
            width = int(torch.randint(0, 10, (1,), generator=generator))
            start = int(torch.randint(0, n_mels - width, (1,), generator=generator))
            mel[b, start : start + width] = floor[b]
            span = int(torch.randint(0, 30, (1,), generator=generator))
            begin = int(torch.randint(0, frames - span, (1,), generator=generator))
            mel[b, :, begin : begin + span] = floor[b]
    return mel


class CharacterCTC(torch.nn.Module):
    """A training-only CTC head over the encoder's frames, on the transcript's characters.

    Whisper's decoder can lower its loss for a while as a language model of the 762
    sentences, without listening; a CTC loss on the encoder makes the encoder learn where
    each sound is from the first steps (hybrid CTC/attention training). It is not part of the
    exported model.
    """

    def __init__(self, d_model: int, texts: list[str]) -> None:
        super().__init__()
        self.chars = {c: i + 1 for i, c in enumerate(sorted({c for t in texts for c in t}))}
        self.proj = torch.nn.Linear(d_model, len(self.chars) + 1)  # 0 is the blank

    def forward(self, encoder: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Mean CTC loss of (batch, frames, d_model) encoder states against ``texts``."""
        logprobs = self.proj(encoder).log_softmax(-1).transpose(0, 1)  # (frames, batch, chars)
        targets = [torch.tensor([self.chars[c] for c in t]) for t in texts]
        return torch.nn.functional.ctc_loss(
            logprobs, torch.cat(targets), torch.full((len(texts),), encoder.shape[1]),
            torch.tensor([len(t) for t in targets]), zero_infinity=True,
        )  # fmt: skip


@torch.inference_mode()
def greedy_transcripts(model: WhisperForMultiTask, tokenizer: Any, mel: np.ndarray,
                       max_tokens: int = 48) -> tuple[list[str], np.ndarray]:  # fmt: skip
    """Greedy transcripts and intent logits of clips (the evaluation's reading)."""
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    texts, logits = [], []
    for start in range(0, len(mel), 32):
        features = torch.from_numpy(mel[start : start + 32].astype(np.float32))
        encoder = model.model.encoder(features).last_hidden_state
        logits.append(model.intent_logits(encoder).numpy())
        ids = torch.tensor([prompt_ids(tokenizer)] * len(features))
        done = torch.zeros(len(features), dtype=torch.bool)
        for _ in range(max_tokens):
            out = model.model.decoder(input_ids=ids, encoder_hidden_states=encoder)
            step = model.proj_out(out.last_hidden_state[:, -1]).argmax(-1)
            step = torch.where(done, torch.full_like(step, eot), step)
            ids = torch.cat([ids, step[:, None]], dim=1)
            done |= step == eot
            if bool(done.all()):
                break
        for row in ids[:, 2:].tolist():
            row = row[: row.index(eot)] if eot in row else row
            texts.append(tokenizer.decode(row).strip())
    return texts, np.concatenate(logits)


def evaluate(model: WhisperForMultiTask, tokenizer: Any, data: dict[str, Any],
             labels: list[str]) -> dict[str, float]:  # fmt: skip
    """WER, CER and intent accuracy of a clip set."""
    import jiwer

    model.eval()
    texts, logits = greedy_transcripts(model, tokenizer, data["mel"])
    predicted = [labels[i] for i in logits.argmax(-1)]
    truth = data["texts"]
    return {
        "clips": len(truth),
        "wer": jiwer.wer(truth, texts),
        "cer": jiwer.cer(truth, texts),
        "intent_accuracy": float(
            np.mean([p == t for p, t in zip(predicted, data["intents"], strict=True)])
        ),
        "most_predicted_share": Counter(predicted).most_common(1)[0][1] / len(predicted),
    }


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Synthesize, train, evaluate and write the model; returns the figures."""
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    train_utts, held_utts = load_utterances(args.intents)
    labels = sorted({intent for _, intent in train_utts})
    tokenizer = build_tokenizer([t for t, _ in train_utts], args.vocab_size)
    data = synthesize(train_utts, synth.TRAIN_VOICES, args.per_utterance, args.seed, "train",
                      args.threads)  # fmt: skip
    seen = synthesize(train_utts, synth.HELD_OUT_VOICES, 1, args.seed + 1, "heldout-voices",
                      args.threads)  # fmt: skip
    unseen = synthesize(held_utts, synth.HELD_OUT_VOICES, 2, args.seed + 2, "heldout-both",
                        args.threads)  # fmt: skip
    model = make_model(tokenizer, labels, args)
    mel = torch.from_numpy(data["mel"].astype(np.float32))
    targets = label_ids(tokenizer, data["texts"])
    intents = torch.tensor([labels.index(i) for i in data["intents"]])
    ctc = CharacterCTC(args.d_model, data["texts"])
    steps = args.epochs * math.ceil(len(mel) / args.batch_size)
    parameters = [*model.parameters(), *ctc.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))),
    )
    generator = torch.Generator().manual_seed(args.seed)
    start = time.monotonic()
    progress = tqdm(total=steps, desc="training", unit="step")
    model.train()
    # Masks slow the start (the encoder must first find the sounds): they begin later.
    augment_from = int(args.augment_after * steps)
    step = 0
    for _ in range(args.epochs):
        order = torch.randperm(len(mel), generator=generator)
        for i in range(0, len(mel), args.batch_size):
            batch = order[i : i + args.batch_size]
            features = augment(mel[batch], generator) if step >= augment_from else mel[batch]
            width = int((targets[batch] != -100).sum(1).max())
            encoder = model.model.encoder(features).last_hidden_state
            loss, asr, intent = model.multitask_loss(
                features, targets[batch][:, :width], intents[batch],
                intent_weight=args.intent_weight, encoder_hidden=encoder,
            )  # fmt: skip
            aligned = ctc(encoder, [data["texts"][j] for j in batch.tolist()])
            loss = loss + args.ctc_weight * aligned
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            step += 1
            optimizer.step()
            schedule.step()
            progress.update()
            progress.set_postfix(asr=f"{asr.item():.3f}", intent=f"{intent.item():.3f}",
                                 ctc=f"{aligned.item():.3f}")  # fmt: skip
    progress.close()
    train_s = time.monotonic() - start
    figures = {
        "train_seconds": round(train_s),
        "train_clips": len(mel),
        "held_out_voices": evaluate(model, tokenizer, seen, labels),
        "held_out_voices_and_paraphrases": evaluate(model, tokenizer, unseen, labels),
    }
    export(model, tokenizer, labels, figures, args)
    return figures


def export(model: WhisperForMultiTask, tokenizer: Any, labels: list[str],
           figures: dict[str, Any], args: argparse.Namespace) -> None:  # fmt: skip
    """Write the model folder: weights, tokenizer, feature extractor, labels, model card."""
    from transformers import WhisperFeatureExtractor

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=N_MELS, chunk_length=CHUNK_SECONDS).save_pretrained(out)
    (out / "intent_labels.json").write_text(json.dumps({
        "label_to_id": {label: i for i, label in enumerate(labels)},
        "id_to_label": {str(i): label for i, label in enumerate(labels)},
    }, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")  # fmt: skip
    # The Space reports a model with this marker as demo weights (/health "demo": true).
    (out / "demo_weights.json").write_text(json.dumps({
        "demo": True,
        "architecture": CUSTOM_MODEL,
        "note": "trained on synthetic espeak-ng speech of intents.yaml, not on Twi speakers",
        "built_by": "spaces/twi-speech/training/train_multitask.py",
    }, indent=2) + "\n", encoding="utf-8")  # fmt: skip
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    (out / "training.json").write_text(json.dumps({"args": settings, **figures}, indent=2) + "\n")
    (out / "README.md").write_text(model_card(figures, args, len(labels)), encoding="utf-8")


def model_card(figures: dict[str, Any], args: argparse.Namespace, n_labels: int) -> str:
    """The model card: what the model is, how it was made, what it scored, and its limits."""
    rows = []
    for name, key in [
        ("training utterances, held-out voices", "held_out_voices"),
        ("held-out paraphrases, held-out voices", "held_out_voices_and_paraphrases"),
    ]:
        f = figures[key]
        rows.append(f"| {name} | {f['clips']} | {f['wer']:.1%} | {f['cer']:.1%} | "
                    f"{f['intent_accuracy']:.1%} |")  # fmt: skip
    table = "\n".join(rows)
    return f"""---
language: tw
tags: [whisper, multitask, intent-classification, synthetic-speech]
---

# Demo multi-task Whisper for twi-speech (synthetic speech)

A small `WhisperForMultiTask` (Whisper encoder-decoder with an intent head over the encoder
output; {args.d_model}-wide, {args.encoder_layers}+{args.decoder_layers} layers,
{CHUNK_SECONDS} s windows)
trained from scratch by `spaces/twi-speech/training/train_multitask.py` (`make train-twi`) on
**synthetic speech**: espeak-ng
voices of other languages (espeak-ng has no Akan voice) reading this project's Twi shopping
commands (`intents.yaml`, {n_labels} intents), through clean, telephone, reverb and noise
channels. It is **not a model of Twi speakers**: it exists so that `make demo` and the tests
serve a model that answers generated commands. For real users set `MODEL_ID` to a Twi
checkpoint.

Training: {figures["train_clips"]} clips ({args.per_utterance} per utterance) in voices
{", ".join(synth.TRAIN_VOICES)}, cut by the Space's VAD and turned into features the way the
Space does (`multitask.log_mel`); seed {args.seed}; {args.epochs} epochs of batches of
{args.batch_size}; loss = transcript + {args.intent_weight:g} x intent + {args.ctc_weight:g} x a
character CTC loss on the encoder (training only, not exported: it makes a from-scratch encoder
find the sounds early); SpecAugment masks after {args.augment_after:.0%} of the steps;
{figures["train_seconds"]} s on the build machine's 2 CPU cores.

Evaluation in voices never trained on ({", ".join(synth.HELD_OUT_VOICES)}), by the training
script (torch, greedy decoding); the served figures (CTranslate2 int8, `make eval-twi`) are in
the monorepo's `benchmarks/results/twi-speech-eval.md`:

| clips | n | WER | CER | intent accuracy |
|---|---:|---:|---:|---:|
{table}

Limits: the decoder has heard only ~{figures["train_clips"] // args.per_utterance} sentences,
so it writes those well and new wordings poorly (the paraphrase row); accents, real
microphones and spontaneous speech are all unlike the training data.
"""


def main() -> None:
    """Command line: ``python train_multitask.py [--epochs N] ...``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--per-utterance", type=int, default=6, help="clips per utterance")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--encoder-layers", type=int, default=3)
    parser.add_argument("--decoder-layers", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=600)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--intent-weight", type=float, default=1.0)
    parser.add_argument(
        "--ctc-weight",
        type=float,
        default=1.0,
        help="weight of the training-only character CTC loss on the encoder",
    )
    parser.add_argument(
        "--augment-after",
        type=float,
        default=0.3,
        help="share of the steps before SpecAugment masks begin",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--intents", type=Path, default=SPACE / "intents.yaml")
    parser.add_argument("--out", type=Path, default=OUT, help="model folder to write")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    figures = train(args)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
