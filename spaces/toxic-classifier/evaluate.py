"""Measure a toxicity model on a labelled JSONL file, and calibrate the Space's threshold.

Usage:
    python evaluate.py data/eval.jsonl [--model-id ID] [--revision REV] [--threshold T]
                       [--precision fp32|bf16|int8] [--compare-precision int8]
                       [--onnx-cache DIR]
                       [--calibrate [--target-recall 0.9]] [--plot reliability.png]
                       [--report-json report.json]

Each JSONL line is ``{"text": ..., "label": "harmful"|"safe", ...}``. The report prints
precision, recall and F1 per class, ROC-AUC, the confusion matrix, the rate of ``harmful``
predictions and a plain warning when the model is biased. ``--calibrate`` picks the threshold
that maximises F1 on ``harmful`` (or, with ``--target-recall``, the highest threshold that
reaches that recall) and writes it to ``config.yaml``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import NoReturn

import numpy as np

from predictor import CONFIG_PATH, Prepared, ToxicityClassifier, load_settings
from shared.config import Override
from shared.errors import ModelLoadError
from shared.metrics import (
    BinaryReport,
    binary_report,
    calibrate_threshold,
    format_report,
    load_examples,
    prepare_examples,
    reliability_plot,
    write_config_value,
)
from shared.serving import run_batch

logger = logging.getLogger("evaluate")

LABELS = ("harmful", "safe")
BATCH_SIZE = 32


def harmful_probabilities(classifier: ToxicityClassifier, prepared: list[Prepared]) -> np.ndarray:
    """p(harmful) for every prepared text, in batches (the Space's forward and decision rule)."""
    scores: list[float] = []
    for start in range(0, len(prepared), BATCH_SIZE):
        verdicts = run_batch(classifier, prepared[start : start + BATCH_SIZE])
        scores.extend(v.scores["harmful"] for v in verdicts)
    return np.asarray(scores, dtype=np.float64)


def build_report(
    y_true: np.ndarray, p_harmful: np.ndarray, threshold: float, model: str
) -> BinaryReport:
    """The metrics (``shared.metrics``) of ``harmful iff p(harmful) >= threshold``."""
    return binary_report(y_true, p_harmful, threshold, model, LABELS)


def write_threshold(config_path: Path, threshold: float) -> None:
    """Replace the ``threshold:`` line of the Space config, keeping its comments."""
    write_config_value(config_path, "threshold", f"{threshold:.6g}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="evaluate.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="labelled JSONL file")
    parser.add_argument("--config", type=Path, default=CONFIG_PATH, help="Space config file")
    parser.add_argument("--model-id", help="model to evaluate (default: the config's)")
    parser.add_argument("--revision", help="model revision")
    parser.add_argument("--threshold", type=float, help="decision threshold to report at")
    parser.add_argument("--precision", choices=["fp32", "bf16", "int8"], help="forward precision")
    parser.add_argument(
        "--onnx-cache",
        type=Path,
        default=os.environ.get("ONNX_CACHE") or None,
        help="where int8 ONNX exports are kept (default: $ONNX_CACHE, else $HF_HOME/onnx)",
    )
    parser.add_argument(
        "--compare-precision",
        choices=["fp32", "bf16", "int8"],
        help="also run at this precision and report the largest p(harmful) difference",
    )
    parser.add_argument("--calibrate", action="store_true", help="write the best threshold")
    parser.add_argument(
        "--target-recall", type=float, help="calibrate for this harmful recall, in (0, 1]"
    )
    parser.add_argument("--plot", type=Path, help="save a reliability diagram (PNG) here")
    parser.add_argument("--report-json", type=Path, help="also write the report as JSON")
    args = parser.parse_args(argv)
    if args.target_recall is not None and not 0 < args.target_recall <= 1:
        parser.error(f"--target-recall must be in (0, 1], got {args.target_recall}")
    logging.basicConfig(level=logging.WARNING)

    # A missing file, a bad line, a bad config or a model that will not load is one line
    # naming it, not a stack trace; anything else (a bug) keeps its traceback.
    def fail(error: Exception) -> NoReturn:
        parser.exit(2, f"{parser.prog}: error: {error}\n")

    try:
        # The options win over the config file; an error names the option (--threshold=...).
        given = {
            "model_id": args.model_id,
            "revision": args.revision,
            "threshold": args.threshold,
            "precision": args.precision,
        }
        overrides = [
            Override(f"--{key.replace('_', '-')}", (key,), value)
            for key, value in given.items()
            if value is not None
        ]
        config = load_settings(args.config, overrides)
        examples = load_examples(args.data, LABELS)
    except (OSError, ValueError, ModelLoadError) as e:  # ValueError: a bad line, named
        fail(e)
    try:
        classifier = ToxicityClassifier.load(config, cache_dir=args.onnx_cache)
    except ModelLoadError as e:
        fail(e)
    try:
        prepared = prepare_examples(classifier.preprocess, examples, args.data)
    except ValueError as e:  # a text the Space would refuse, named by line
        fail(e)
    y_true = np.asarray([e.label == "harmful" for e in examples], dtype=int)
    p_harmful = harmful_probabilities(classifier, prepared)
    name = f"{classifier.model_ref} ({config.precision})"
    if classifier.demo:
        name += " [demo weights]"

    report = build_report(y_true, p_harmful, config.threshold, name)
    print(format_report(report))
    result: dict[str, object] = {"report": asdict(report)}

    if args.compare_precision:
        try:
            other = ToxicityClassifier.load(
                config.model_copy(update={"precision": args.compare_precision}),
                cache_dir=args.onnx_cache,
            )
        except ModelLoadError as e:
            fail(e)
        p_other = harmful_probabilities(other, prepared)  # same tokenizer, same preprocessing
        diff = np.abs(p_other - p_harmful)
        agree = float(((p_other >= config.threshold) == (p_harmful >= config.threshold)).mean())
        print(
            f"\n{args.compare_precision} vs {config.precision}: max |Δp(harmful)| = "
            f"{diff.max():.4f}, mean {diff.mean():.4f}, same verdict on {agree:.1%}"
        )
        result["precision_comparison"] = {
            "precision": args.compare_precision,
            "max_abs_diff": float(diff.max()),
            "mean_abs_diff": float(diff.mean()),
            "verdict_agreement": agree,
        }

    if args.calibrate or args.target_recall is not None:
        try:
            threshold = calibrate_threshold(y_true, p_harmful, args.target_recall)
        except ValueError as e:
            fail(ValueError(f"{e}; the threshold was not changed"))
        calibrated = build_report(y_true, p_harmful, threshold, name)
        recall = args.target_recall
        goal = f"recall >= {recall}" if recall is not None else "best F1 on harmful"
        print(f"\ncalibrated threshold ({goal}): {threshold:.4f}\n")
        print(format_report(calibrated))
        write_threshold(args.config, threshold)
        print(f"\nwrote threshold {threshold:.4f} to {args.config}")
        result["calibrated"] = asdict(calibrated)

    for output in (args.plot, args.report_json):
        if output is not None:
            output.parent.mkdir(parents=True, exist_ok=True)
    if args.plot:
        reliability_plot(y_true, p_harmful, args.plot, f"Reliability: {name}", "harmful")
        print(f"reliability diagram: {args.plot}")
    if args.report_json:
        args.report_json.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
