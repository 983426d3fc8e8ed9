"""Measure the spam classifier on a labelled JSONL file, and calibrate it.

Usage:
    python evaluate.py data/eval.jsonl [--model-id ID] [--revision REV] [--dtype DTYPE]
                       [--threshold T] [--calibrate] [--config config.yaml]
                       [--plot reliability.png] [--report-json report.json]

Each JSONL line is ``{"text": ..., "label": "spam"|"not_spam", ...}`` (``lang`` and
``category``, when present, get their own accuracy lines, e.g. the prompt-injection messages).
The report (``shared.metrics``, the same code as toxic-classifier's evaluation) prints accuracy,
precision, recall and F1 per class, ROC-AUC, expected calibration error, the confusion matrix,
and a plain warning when the model leans to one class.

``--calibrate`` measures the label distribution on the content-free messages of the config
(contextual calibration, Zhao et al. 2021), divides it out, picks the threshold with the best F1
on spam, and writes both to the config (``calibration:`` and ``threshold:``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import NoReturn

import numpy as np

from predictor import CONFIG_PATH, LABELS, Prepared, SpamClassifier, load_classifier, load_settings
from shared.config import ConfigError, Override
from shared.errors import ModelLoadError
from shared.metrics import (
    Example,
    binary_report,
    calibrate_threshold,
    format_report,
    load_examples,
    prepare_examples,
    reliability_plot,
    write_config_value,
)
from shared.serving import run_batch

BATCH_SIZE = 16


def spam_probabilities(classifier: SpamClassifier, prepared: list[Prepared]) -> np.ndarray:
    """Calibrated p(spam) of every prepared message: the Space's forward and decision rule."""
    scores: list[float] = []
    for start in range(0, len(prepared), BATCH_SIZE):
        verdicts = run_batch(classifier, prepared[start : start + BATCH_SIZE])
        scores.extend(v.probabilities["spam"] for v in verdicts)
    return np.asarray(scores, dtype=np.float64)


def group_accuracy(
    examples: list[Example], y_pred: np.ndarray, field: str
) -> dict[str, tuple[float, int]]:
    """Accuracy and count per value of ``field`` (``lang`` or ``category``)."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for example, predicted in zip(examples, y_pred, strict=True):
        value = example.fields.get(field)
        if value is not None:
            groups[value].append(bool(predicted) == (example.label == "spam"))
    return {k: (float(np.mean(v)), len(v)) for k, v in sorted(groups.items())}


def fail(message: str) -> NoReturn:
    """One line on stderr and exit status 2, instead of a traceback."""
    print(f"evaluate.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="labelled JSONL file")
    parser.add_argument("--model-id", help="Hub id or local folder (default: config.yaml's)")
    parser.add_argument("--revision", help="Hub revision of --model-id")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--threshold", type=float, help="decision threshold (default: config's)")
    parser.add_argument("--config", type=Path, default=CONFIG_PATH, help="the Space config")
    parser.add_argument("--calibrate", action="store_true", help="write calibration+threshold")
    parser.add_argument("--plot", type=Path, help="write a reliability diagram (PNG)")
    parser.add_argument("--report-json", type=Path, help="write the report as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # errors stay one line on stderr

    overrides = [
        Override(f"--{flag.replace('_', '-')}", path, value)
        for flag, path, value in [
            ("model_id", ("classifier", "model_id"), args.model_id),
            ("revision", ("classifier", "revision"), args.revision),
            ("dtype", ("dtype",), args.dtype),
            ("threshold", ("threshold",), args.threshold),
        ]
        if value is not None
    ]
    if args.calibrate:  # measured uncalibrated, then calibrated here
        overrides.append(Override("--calibrate", ("calibration",), None))
    try:
        settings = load_settings(args.config, overrides)
        examples = load_examples(args.data, LABELS)
    except (ConfigError, ValueError, OSError) as e:
        fail(str(e))
    try:
        classifier = load_classifier(settings, token=os.environ.get("HF_TOKEN") or None)
    except ModelLoadError as e:
        fail(f"cannot load the model: {e}")
    try:
        prepared = prepare_examples(classifier.preprocess, examples, args.data)
    except ValueError as e:
        fail(str(e))

    y_true = np.array([int(e.label == "spam") for e in examples])
    start = time.perf_counter()
    p_spam = spam_probabilities(classifier, prepared)
    seconds = time.perf_counter() - start
    threshold = settings.threshold
    if args.calibrate:
        raw = classifier.raw_distribution(settings.content_free)
        prior = {label: float(np.mean([d[label] for d in raw])) for label in LABELS}
        uncalibrated = binary_report(y_true, p_spam, threshold, classifier.model_ref, LABELS)
        print("before calibration:\n" + format_report(uncalibrated) + "\n")
        calibrated = classifier.__class__(
            classifier.loaded,
            settings.model_copy(update={"calibration": prior}),
            classifier.model_ref,
            demo=classifier.demo,
        )
        p_spam = spam_probabilities(
            calibrated, prepare_examples(calibrated.preprocess, examples, args.data)
        )
        try:
            threshold = calibrate_threshold(y_true, p_spam)
        except ValueError as e:
            fail(str(e))
        write_config_value(
            args.config,
            "calibration",
            "{" + ", ".join(f"{k}: {v:.6g}" for k, v in prior.items()) + "}",
        )
        write_config_value(args.config, "threshold", f"{threshold:.6g}")
        print(f"calibration {prior} and threshold {threshold:.4f} written to {args.config}\n")

    report = binary_report(y_true, p_spam, threshold, classifier.model_ref, LABELS)
    print(format_report(report))
    y_pred = (p_spam >= threshold).astype(int)
    for field in ("lang", "category"):
        groups = group_accuracy(examples, y_pred, field)
        if groups:
            print(f"\naccuracy by {field}:")
            for name, (accuracy, count) in groups.items():
                print(f"  {name:<20}{accuracy:>7.1%}  ({count})")
    print(f"\nlatency: {1000 * seconds / len(examples):.1f} ms per message (batches of "
          f"{BATCH_SIZE}, {len(examples)} messages)")  # fmt: skip
    if classifier.demo:
        print(
            "\nNOTE: the model is the offline demo model (random weights): its scores mean nothing."
        )
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        reliability_plot(y_true, p_spam, args.plot, classifier.model_ref, "spam")
        print(f"reliability diagram: {args.plot}")
    if args.report_json:
        args.report_json.parent.mkdir(parents=True, exist_ok=True)
        args.report_json.write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
