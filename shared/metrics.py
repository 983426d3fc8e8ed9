"""Metrics of a binary classifier, shared by every Space's ``evaluate.py``.

A Space's evaluation scores a labelled set with its own predictor, then calls
:func:`binary_report` on the scores: precision, recall and F1 per class, accuracy, ROC-AUC,
expected calibration error, the confusion matrix, the rate of positive predictions and plain
warnings when the model leans to one class. :func:`calibrate_threshold` picks a decision
threshold from the scores and :func:`reliability_plot` draws a calibration diagram.

scikit-learn and matplotlib are evaluation dependencies (the dev group), not serving ones: they
are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from shared.errors import InputError

P = TypeVar("P")

__all__ = [
    "BinaryReport",
    "ClassReport",
    "Example",
    "bias_warnings",
    "binary_report",
    "calibrate_threshold",
    "expected_calibration_error",
    "format_report",
    "load_examples",
    "prepare_examples",
    "reliability_plot",
    "write_config_value",
]


@dataclass(frozen=True)
class Example:
    """One labelled text of an evaluation set."""

    # The text to classify.
    text: str
    # Its label, one of the set's labels.
    label: str
    # Its line in the JSONL file, for error messages.
    line: int = 0
    # The line's other keys (``lang``, ``category``, ...), for per-group figures.
    fields: dict[str, Any] = field(default_factory=dict)


def load_examples(path: Path, labels: Sequence[str]) -> list[Example]:
    """Read a labelled JSONL file: one ``{"text": ..., "label": ..., ...}`` object per line.

    Raises:
        ValueError: a line that is not such JSON with a known label (the message names the
            file and the line), a file that is not UTF-8, or one without examples.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e.reason})") from e
    examples = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text, label = row.pop("text"), row.pop("label")
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{path}:{number}: expected {{'text', 'label'}} JSON ({e})") from e
        if label not in labels:
            raise ValueError(
                f"{path}:{number}: label must be one of {tuple(labels)}, got {label!r}"
            )
        examples.append(Example(text, label, number, row))
    if not examples:
        raise ValueError(f"{path} has no examples")
    return examples


def prepare_examples(
    preprocess: Callable[[object], P], examples: Sequence[Example], path: Path
) -> list[P]:
    """Every text through the Space's own checks and preprocessing, before any is scored.

    Raises:
        ValueError: a text the Space would refuse; the message names the file, the line and
            the limit.
    """
    prepared = []
    for example in examples:
        try:
            prepared.append(preprocess(example.text))
        except InputError as e:
            raise ValueError(f"{path}:{example.line}: {e}") from e
    return prepared


@dataclass(frozen=True)
class ClassReport:
    """Precision, recall and F1 of one class."""

    precision: float
    recall: float
    f1: float
    # Number of examples of this class.
    support: int


@dataclass(frozen=True)
class BinaryReport:
    """What an evaluation measured."""

    # Model id@revision (and precision), as shown.
    model: str
    # (positive, negative) label names, e.g. ("harmful", "safe").
    labels: tuple[str, str]
    # Threshold the predictions used: positive iff p(positive) >= threshold.
    threshold: float
    # Number of examples.
    n: int
    # Per-class metrics, positive first.
    classes: dict[str, ClassReport]
    # Fraction of correct predictions.
    accuracy: float
    # Area under the ROC curve of p(positive); None when only one class is present.
    roc_auc: float | None
    # Expected calibration error of p(positive) over 10 equal-width bins.
    ece: float
    # Rows: true positive/negative; columns: predicted positive/negative.
    confusion: list[list[int]]
    # Fraction of examples predicted positive.
    positive_rate: float
    # Plain-language warnings about bias.
    warnings: list[str]


def binary_report(
    y_true: np.ndarray,
    p_positive: np.ndarray,
    threshold: float,
    model: str,
    labels: tuple[str, str],
) -> BinaryReport:
    """Compute the metrics for ``positive iff p >= threshold``.

    Args:
        y_true: 1 for the positive class, 0 for the negative one.
        p_positive: The model's probability of the positive class.
        threshold: The decision threshold.
        model: Name shown in the report.
        labels: (positive, negative) names.

    Returns:
        The report.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

    y_true = np.asarray(y_true)
    p_positive = np.asarray(p_positive, dtype=np.float64)
    y_pred = (p_positive >= threshold).astype(int)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=[1, 0], zero_division=0
    )
    classes = {
        name: ClassReport(float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
        for i, name in enumerate(labels)
    }
    both = len(set(y_true.tolist())) == 2
    roc_auc = float(roc_auc_score(y_true, p_positive)) if both else None
    positive_rate = float(y_pred.mean())
    return BinaryReport(
        model=model,
        labels=labels,
        threshold=threshold,
        n=len(y_true),
        classes=classes,
        accuracy=float((y_pred == y_true).mean()),
        roc_auc=roc_auc,
        ece=expected_calibration_error(y_true, p_positive),
        confusion=confusion_matrix(y_true, y_pred, labels=[1, 0]).tolist(),
        positive_rate=positive_rate,
        warnings=bias_warnings(classes, roc_auc, positive_rate, labels),
    )


def expected_calibration_error(y_true: np.ndarray, p_positive: np.ndarray, bins: int = 10) -> float:
    """The mean gap between predicted and observed positive rates, weighted by bin size.

    Bins are equal-width over [0, 1] (the last one closed); an empty bin weighs nothing.
    """
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(p_positive, dtype=np.float64)
    if p.size == 0:
        return 0.0
    index = np.minimum((p * bins).astype(int), bins - 1)
    gap = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            gap += members.sum() * abs(p[members].mean() - y[members].mean())
    return float(gap / p.size)


def bias_warnings(
    classes: dict[str, ClassReport],
    roc_auc: float | None,
    positive_rate: float,
    labels: tuple[str, str],
) -> list[str]:
    """Say plainly when the model leans to one answer or cannot tell the classes apart."""
    positive, negative = labels
    warnings = []
    pos_recall, neg_recall = classes[positive].recall, classes[negative].recall
    if classes[positive].support and pos_recall < 0.5:
        warnings.append(
            f"flags {pos_recall:.0%} of {positive} texts: the model is biased to {negative}"
        )
    if classes[negative].support and neg_recall < 0.5:
        warnings.append(
            f"flags {1 - neg_recall:.0%} of {negative} texts as {positive}: "
            f"the model is biased to {positive}"
        )
    if roc_auc is not None and roc_auc < 0.6:
        warnings.append(
            f"ROC-AUC {roc_auc:.2f}: the model barely separates {positive} from {negative} "
            "(0.5 is chance)"
        )
    if positive_rate in (0.0, 1.0):
        warnings.append(f"every text is predicted {positive if positive_rate else negative}")
    return warnings


def format_report(report: BinaryReport) -> str:
    """The report as text for a terminal."""
    positive, negative = report.labels
    width = max(10, len(positive) + 2, len(negative) + 2)
    lines = [
        f"model: {report.model}",
        f"examples: {report.n}   threshold: {report.threshold:.3f}",
        "",
        f"{'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}",
    ]
    for name, c in report.classes.items():
        lines.append(
            f"{name:<{width}}{c.precision:>10.3f}{c.recall:>10.3f}{c.f1:>10.3f}{c.support:>10}"
        )
    roc = "n/a" if report.roc_auc is None else f"{report.roc_auc:.3f}"
    (tp, fn), (fp, tn) = report.confusion
    lines += [
        "",
        f"accuracy: {report.accuracy:.3f}   ROC-AUC: {roc}   ECE: {report.ece:.3f}   "
        f"{positive} rate: {report.positive_rate:.1%}",
        "",
        "confusion matrix (rows: true, columns: predicted)",
        f"{'':<{width}}{positive:>{width}}{negative:>{width}}",
        f"{positive:<{width}}{tp:>{width}}{fn:>{width}}",
        f"{negative:<{width}}{fp:>{width}}{tn:>{width}}",
    ]
    if report.warnings:
        lines += ["", *(f"WARNING: {w}" for w in report.warnings)]
    return "\n".join(lines)


def calibrate_threshold(
    y_true: np.ndarray, p_positive: np.ndarray, target_recall: float | None = None
) -> float:
    """Pick a threshold from the scores themselves.

    Args:
        y_true: 1 for positive, 0 for negative.
        p_positive: The model's p(positive).
        target_recall: When given, the highest threshold whose positive recall reaches it;
            otherwise the threshold with the best F1 on the positive class.

    Returns:
        The threshold, in [0, 1].

    Raises:
        ValueError: ``y_true`` lacks one of the classes (no threshold can be chosen from it), or
            no threshold reaches ``target_recall``.
    """
    from sklearn.metrics import precision_recall_curve

    if len(set(np.asarray(y_true).tolist())) < 2:
        raise ValueError("calibration needs examples of both classes; the data has only one class")
    precision, recall, thresholds = precision_recall_curve(y_true, p_positive)
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


def write_config_value(config_path: Path, key: str, value: str) -> None:
    """Replace the top-level ``key:`` line of a YAML config, keeping its comments.

    Args:
        config_path: The Space's ``config.yaml``.
        key: A top-level key.
        value: Its new value, already written as YAML (e.g. ``0.42`` or ``{spam: 0.6}``).
    """
    text = config_path.read_text(encoding="utf-8")
    pattern = rf"(?m)^{re.escape(key)}:.*$"
    new, count = re.subn(pattern, lambda _: f"{key}: {value}", text, count=1)
    if count == 0:
        new = text.rstrip("\n") + f"\n{key}: {value}\n"
    config_path.write_text(new, encoding="utf-8")


def reliability_plot(
    y_true: np.ndarray, p_positive: np.ndarray, path: Path, title: str, positive: str
) -> None:
    """Save a reliability (calibration) diagram of p(positive) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve

    observed, predicted = calibration_curve(y_true, p_positive, n_bins=10, strategy="uniform")
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True
    )
    top.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfectly calibrated")
    top.plot(predicted, observed, marker="o", label="model")
    top.set_ylabel(f"fraction actually {positive}")
    # A local model's title is a long path: wrapped, so that it is not cut off at the edges.
    top.set_title("\n".join(textwrap.wrap(title, 60, break_on_hyphens=False)), fontsize=9)
    top.legend(loc="upper left")
    bottom.hist(p_positive, bins=20, range=(0, 1), color="tab:blue")
    bottom.set_xlabel(f"predicted p({positive})")
    bottom.set_ylabel("texts")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
