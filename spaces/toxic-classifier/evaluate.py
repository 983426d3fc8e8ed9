"""Measure a toxicity model on a labelled JSONL file, and calibrate the Space's threshold.

Usage:
    python evaluate.py data/eval.jsonl [--model-id ID] [--revision REV] [--threshold T]
                       [--precision fp32|bf16|int8] [--runtime onnxruntime|torch]
                       [--compare-precision int8] [--onnx-cache DIR]
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
import re
import sys
import textwrap
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NoReturn

import numpy as np

from classifier import CONFIG_PATH, ClassifierConfig, Prepared, ToxicityClassifier
from shared.errors import InputError, ModelLoadError

logger = logging.getLogger("evaluate")

LABELS = ("harmful", "safe")
BATCH_SIZE = 32


@dataclass(frozen=True)
class Example:
    """One labelled text."""

    # The text to classify.
    text: str
    # "harmful" or "safe".
    label: str
    # Its line in the JSONL file, for error messages.
    line: int = 0


@dataclass(frozen=True)
class ClassReport:
    """Precision, recall and F1 of one class."""

    precision: float
    recall: float
    f1: float
    # Number of examples of this class.
    support: int


@dataclass(frozen=True)
class Report:
    """What the evaluation measured."""

    # Model id@revision and precision.
    model: str
    # Threshold the predictions used.
    threshold: float
    # Number of examples.
    n: int
    # Per-class metrics, harmful first.
    classes: dict[str, ClassReport]
    # Fraction of correct predictions.
    accuracy: float
    # Area under the ROC curve of p(harmful); None when only one class is present.
    roc_auc: float | None
    # Rows: true harmful/safe; columns: predicted harmful/safe.
    confusion: list[list[int]]
    # Fraction of texts predicted harmful.
    harmful_rate: float
    # Plain-language warnings about bias.
    warnings: list[str]


def load_examples(path: Path) -> list[Example]:
    """Read a labelled JSONL file.

    Raises:
        ValueError: a line that is not ``{"text": ..., "label": ...}`` JSON with a known label
            (the message names the file and line), or a file with no examples.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e})") from e
    examples = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text, label = row["text"], row["label"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{number}: expected {{'text', 'label'}} JSON ({e})") from e
        if label not in LABELS:
            raise ValueError(f"{path}:{number}: label must be one of {LABELS}, got {label!r}")
        examples.append(Example(text=text, label=label, line=number))
    if not examples:
        raise ValueError(f"{path} has no examples")
    return examples


def prepare_examples(
    classifier: ToxicityClassifier, examples: list[Example], path: Path
) -> list[Prepared]:
    """Every text through the Space's checks and preprocessing, before any is scored.

    Raises:
        ValueError: a text the Space would refuse (not a string, empty, too long, only
            diacritics); the message names the file and line and the limit.
    """
    prepared = []
    for example in examples:
        try:
            prepared.append(classifier.preprocess(example.text))
        except InputError as e:
            raise ValueError(f"{path}:{example.line}: {e}") from e
    return prepared


def harmful_probabilities(classifier: ToxicityClassifier, prepared: list[Prepared]) -> np.ndarray:
    """p(harmful) for every prepared text, in batches (the Space's forward and decision rule)."""
    scores: list[float] = []
    for start in range(0, len(prepared), BATCH_SIZE):
        probs, truncated = classifier.forward(prepared[start : start + BATCH_SIZE])
        scores.extend(v.scores["harmful"] for v in classifier.postprocess(probs, truncated))
    return np.asarray(scores, dtype=np.float64)


def build_report(y_true: np.ndarray, p_harmful: np.ndarray, threshold: float, model: str) -> Report:
    """Compute the metrics for ``harmful iff p >= threshold``.

    Args:
        y_true: 1 for harmful, 0 for safe.
        p_harmful: The model's p(harmful).
        threshold: The decision threshold.
        model: Name shown in the report.

    Returns:
        The report.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

    y_pred = (p_harmful >= threshold).astype(int)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=[1, 0], zero_division=0
    )
    classes = {
        name: ClassReport(float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
        for i, name in enumerate(LABELS)
    }
    both = len(set(y_true.tolist())) == 2
    roc_auc = float(roc_auc_score(y_true, p_harmful)) if both else None
    confusion = confusion_matrix(y_true, y_pred, labels=[1, 0]).tolist()
    harmful_rate = float(y_pred.mean())
    return Report(
        model=model,
        threshold=threshold,
        n=len(y_true),
        classes=classes,
        accuracy=float((y_pred == y_true).mean()),
        roc_auc=roc_auc,
        confusion=confusion,
        harmful_rate=harmful_rate,
        warnings=bias_warnings(classes, roc_auc, harmful_rate),
    )


def bias_warnings(
    classes: dict[str, ClassReport], roc_auc: float | None, harmful_rate: float
) -> list[str]:
    """Say plainly when the model leans to one answer or cannot tell the classes apart."""
    warnings = []
    harmful_recall = classes["harmful"].recall
    safe_recall = classes["safe"].recall
    if classes["harmful"].support and harmful_recall < 0.5:
        warnings.append(f"flags {harmful_recall:.0%} of harmful texts: the model is biased to safe")
    if classes["safe"].support and safe_recall < 0.5:
        warnings.append(
            f"flags {1 - safe_recall:.0%} of safe texts as harmful: the model is biased to harmful"
        )
    if roc_auc is not None and roc_auc < 0.6:
        warnings.append(
            f"ROC-AUC {roc_auc:.2f}: the model barely separates harmful from safe (0.5 is chance)"
        )
    if harmful_rate in (0.0, 1.0):
        label = "harmful" if harmful_rate else "safe"
        warnings.append(f"every text is predicted {label}")
    return warnings


def format_report(report: Report) -> str:
    """The report as text for a terminal."""
    lines = [
        f"model: {report.model}",
        f"examples: {report.n}   threshold: {report.threshold:.3f}",
        "",
        f"{'class':<10}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}",
    ]
    for name, c in report.classes.items():
        lines.append(f"{name:<10}{c.precision:>10.3f}{c.recall:>10.3f}{c.f1:>10.3f}{c.support:>10}")
    roc = "n/a" if report.roc_auc is None else f"{report.roc_auc:.3f}"
    (th, tf), (fh, fs) = report.confusion
    lines += [
        "",
        f"accuracy: {report.accuracy:.3f}   ROC-AUC: {roc}   "
        f"harmful rate: {report.harmful_rate:.1%}",
        "",
        "confusion matrix (rows: true, columns: predicted)",
        f"{'':<10}{'harmful':>10}{'safe':>10}",
        f"{'harmful':<10}{th:>10}{tf:>10}",
        f"{'safe':<10}{fh:>10}{fs:>10}",
    ]
    lines += [""] + [f"WARNING: {w}" for w in report.warnings] if report.warnings else []
    return "\n".join(lines)


def calibrate_threshold(
    y_true: np.ndarray, p_harmful: np.ndarray, target_recall: float | None = None
) -> float:
    """Pick a threshold from the scores themselves.

    Args:
        y_true: 1 for harmful, 0 for safe.
        p_harmful: The model's p(harmful).
        target_recall: When given, the highest threshold whose harmful recall reaches it;
            otherwise the threshold with the best F1 on harmful.

    Returns:
        The threshold, in [0, 1].

    Raises:
        ValueError: ``y_true`` lacks one of the classes (no threshold can be chosen from it), or
            no threshold reaches ``target_recall``.
    """
    from sklearn.metrics import precision_recall_curve

    if len(set(np.asarray(y_true).tolist())) < 2:
        raise ValueError("calibration needs harmful and safe texts; the data has only one class")
    precision, recall, thresholds = precision_recall_curve(y_true, p_harmful)
    # precision/recall have one more entry than thresholds (the point at recall 0).
    precision, recall = precision[:-1], recall[:-1]
    if target_recall is not None:
        reaching = np.flatnonzero(recall >= target_recall)
        if reaching.size == 0:
            raise ValueError(f"no threshold reaches recall {target_recall}")
        return float(thresholds[reaching.max()])
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    return float(thresholds[int(np.argmax(f1))])


def write_threshold(config_path: Path, threshold: float) -> None:
    """Replace the ``threshold:`` line of the Space config, keeping its comments."""
    text = config_path.read_text(encoding="utf-8")
    new, count = re.subn(r"(?m)^threshold:.*$", f"threshold: {threshold:.6g}", text, count=1)
    if count == 0:
        new = text.rstrip("\n") + f"\nthreshold: {threshold:.6g}\n"
    config_path.write_text(new, encoding="utf-8")


def reliability_plot(y_true: np.ndarray, p_harmful: np.ndarray, path: Path, title: str) -> None:
    """Save a reliability (calibration) diagram of p(harmful) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve

    observed, predicted = calibration_curve(y_true, p_harmful, n_bins=10, strategy="uniform")
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True
    )
    top.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfectly calibrated")
    top.plot(predicted, observed, marker="o", label="model")
    top.set_ylabel("fraction actually harmful")
    # A local model's title is a long path: wrapped, so that it is not cut off at the edges.
    top.set_title("\n".join(textwrap.wrap(title, 60, break_on_hyphens=False)), fontsize=9)
    top.legend(loc="upper left")
    bottom.hist(p_harmful, bins=20, range=(0, 1), color="tab:blue")
    bottom.set_xlabel("predicted p(harmful)")
    bottom.set_ylabel("texts")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
        "--runtime", choices=["onnxruntime", "torch"], help="what runs int8 (default: the config's)"
    )
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
        config = ClassifierConfig.load(
            args.config,
            model_id=args.model_id,
            revision=args.revision,
            threshold=args.threshold,
            precision=args.precision,
            runtime=args.runtime,
        )
        examples = load_examples(args.data)
    except (OSError, ValueError, ModelLoadError) as e:  # ValueError: a bad line, named
        fail(e)
    try:
        classifier = ToxicityClassifier.load(config, cache_dir=args.onnx_cache)
    except ModelLoadError as e:
        fail(e)
    try:
        prepared = prepare_examples(classifier, examples, args.data)
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
                replace(config, precision=args.compare_precision), cache_dir=args.onnx_cache
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
        reliability_plot(y_true, p_harmful, args.plot, f"Reliability: {name}")
        print(f"reliability diagram: {args.plot}")
    if args.report_json:
        args.report_json.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
