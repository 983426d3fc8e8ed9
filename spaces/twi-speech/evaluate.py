"""Measure a speech model on labelled recordings: WER, CER, intent accuracy, bias, latency.

Usage:
    python evaluate.py DATA [--model-id ID] [--revision REV] [--model-type auto|multi|single|ctc]
                            [--report-json report.json]
    python evaluate.py --synthetic OUT_DIR [--per-utterance 1] [...]   (make eval-twi)

``DATA`` is a JSONL file (one ``{"audio": path, "transcript": ..., "intent": ...}`` per line,
paths relative to the file) or a folder of ``<intent>/<name>.<ext>`` recordings with an optional
``<name>.txt`` transcript beside each. ``--synthetic`` first writes such a set from
``intents.yaml``: every held-out paraphrase and every training utterance, read by the
espeak-ng voices no model here was trained on (``training/synth.py``), then measures it.

The report: WER and CER (jiwer) over the clips with a transcript, intent accuracy and macro-F1,
the most confused intents, the share of the most predicted intent with a plain warning when the
model leans to it, the no-speech rate, and the latency per clip (p50/p95), one clip at a time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from predictor import CONFIG_PATH, AudioInput, SpeechPredictor, load_settings
from shared.config import Override
from training.train_text_intents import intent_report

HERE = Path(__file__).resolve().parent
AUDIO_SUFFIXES = {".wav", ".mp3", ".ogg", ".opus", ".webm", ".m4a", ".flac"}


@dataclass(frozen=True)
class Clip:
    """One labelled recording."""

    path: Path
    intent: str
    # What was said, or None when the set gives no transcript.
    transcript: str | None


def load_clips(data: Path) -> list[Clip]:
    """The clips of a JSONL file or an ``<intent>/<file>`` folder (see the module docstring)."""
    if data.is_dir():
        clips = []
        for path in sorted(data.glob("*/*")):
            if path.suffix.lower() in AUDIO_SUFFIXES:
                text = path.with_suffix(".txt")
                transcript = text.read_text(encoding="utf-8").strip() if text.is_file() else None
                clips.append(Clip(path, path.parent.name, transcript))
        return clips
    clips = []
    for number, line in enumerate(data.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "audio" not in row or "intent" not in row:
            raise ValueError(f"{data}:{number}: each line needs 'audio' and 'intent'")
        clips.append(Clip(data.parent / row["audio"], row["intent"], row.get("transcript")))
    return clips


def write_synthetic(out: Path, per_utterance: int, seed: int) -> Path:
    """Write the held-out-voice evaluation set as ``<intent>/<n>.wav`` + ``.txt``; its folder."""
    from intent_catalog import load_intents
    from training import synth

    catalog = load_intents()
    pairs = catalog.held_out_pairs() + catalog.training_pairs()
    count = Counter[str]()
    for clip in synth.render(pairs, languages=synth.HELD_OUT_VOICES,
                             per_utterance=per_utterance, seed=seed):  # fmt: skip
        folder = out / clip.intent
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{count[clip.intent]:03d}"
        count[clip.intent] += 1
        synth.write_wav(folder / f"{name}.wav", clip.audio)
        (folder / f"{name}.txt").write_text(clip.text + "\n", encoding="utf-8")
    return out


def evaluate(predictor: SpeechPredictor, clips: list[Clip]) -> dict[str, Any]:
    """Run every clip through the predictor (one at a time) and score it."""
    import jiwer

    heard, latency = [], []
    for clip in clips:
        start = time.perf_counter()
        prepared = [predictor.preprocess(AudioInput(clip.path.read_bytes(), clip.path.name))]
        (result,) = predictor.postprocess(predictor.forward(prepared), prepared)
        latency.append((time.perf_counter() - start) * 1000)
        heard.append(result)
    with_text = [(c.transcript, r.transcription) for c, r in zip(clips, heard, strict=True)
                 if c.transcript]  # fmt: skip
    truth = [t for t, _ in with_text]
    said = [h for _, h in with_text]
    predicted = [r.intent or "(no speech)" for r in heard]
    report = intent_report([c.path.name for c in clips], [c.intent for c in clips], predicted,
                           [r.confidence for r in heard], predictor.labels)  # fmt: skip
    top, top_n = Counter(predicted).most_common(1)[0]
    share = top_n / len(clips)
    true_share = sum(c.intent == top for c in clips) / len(clips)
    warnings = []
    if share > max(2 * true_share, 2 / len(predictor.labels)):
        warnings.append(
            f"{share:.0%} of clips are predicted {top!r} (it is {true_share:.0%} of the set): "
            "the model is biased toward it"
        )
    return {
        "clips": len(clips),
        "model": predictor.info.ref,
        "model_type": predictor.model_type,
        "wer": jiwer.wer(truth, said) if truth else None,
        "cer": jiwer.cer(truth, said) if truth else None,
        "intent_accuracy": report.accuracy,
        "macro_f1": report.macro_f1,
        "most_confused": [list(c) for c in report.confused],
        "most_predicted": {"intent": top, "share": share},
        "no_speech_rate": sum(r.no_speech for r in heard) / len(clips),
        "confident_rate": sum(r.confident for r in heard) / len(clips),
        "latency_ms": {
            "p50": float(np.percentile(latency, 50)),
            "p95": float(np.percentile(latency, 95)),
        },
        "warnings": warnings,
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as the lines ``evaluate.py`` prints."""
    pct = lambda x: "n/a" if x is None else f"{x:.1%}"  # noqa: E731
    lines = [
        f"model: {report['model']} ({report['model_type']}), {report['clips']} clips",
        f"WER {pct(report['wer'])}   CER {pct(report['cer'])}",
        f"intent accuracy {pct(report['intent_accuracy'])}   macro-F1 {report['macro_f1']:.3f}",
        f"most predicted: {report['most_predicted']['intent']} "
        f"({pct(report['most_predicted']['share'])} of clips)",
        f"no speech {pct(report['no_speech_rate'])}   confident {pct(report['confident_rate'])}",
        f"latency per clip: p50 {report['latency_ms']['p50']:.0f} ms, "
        f"p95 {report['latency_ms']['p95']:.0f} ms",
    ]
    if report["most_confused"]:
        lines.append("most confused (true -> predicted: count):")
        lines += [f"  {t} -> {p}: {k}" for t, p, k in report["most_confused"]]
    lines += [f"WARNING: {w}" for w in report["warnings"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, nargs="?", help="JSONL file or <intent>/<file> folder")
    parser.add_argument(
        "--synthetic",
        type=Path,
        metavar="OUT_DIR",
        help="write the held-out-voice set here first, then measure it",
    )
    parser.add_argument("--per-utterance", type=int, default=1)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--model-id")
    parser.add_argument("--revision")
    parser.add_argument("--model-type", choices=["auto", "multi", "single", "ctc"])
    parser.add_argument("--report-json", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.synthetic:
        data = write_synthetic(args.synthetic, args.per_utterance, args.seed)
    elif args.data:
        data = args.data
    else:
        parser.error("give DATA or --synthetic OUT_DIR")
    overrides = [Override(f"--{k.replace('_', '-')}", (k,), v)
                 for k, v in [("model_id", args.model_id), ("revision", args.revision),
                              ("model_type", args.model_type)] if v]  # fmt: skip
    settings = load_settings(CONFIG_PATH, overrides)
    predictor = SpeechPredictor.load(settings, token=os.environ.get("HF_TOKEN") or None)
    clips = load_clips(data)
    if not clips:
        print(f"no labelled clips in {data}", file=sys.stderr)
        return 1
    report = evaluate(predictor, clips)
    print(format_report(report))
    if args.report_json:
        args.report_json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
