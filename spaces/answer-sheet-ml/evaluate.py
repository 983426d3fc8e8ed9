"""Measure the Space's models on sheets with ground truth, and calibrate its thresholds.

Reads a folder in the generator's format (``truth.jsonl``: one record per file with each
field's ``text`` and ``quad``), runs every sheet through the same pipeline ``/extract`` runs,
and prints per field: exact match, character accuracy, detection recall and AP at IoU 0.5, the
rate and accuracy of auto-accepted fields, the most frequent misread characters, and the time
per page. ``--calibrate`` chooses each field's confidence threshold on these sheets (the lowest
one whose accepted fields are at least ``--target`` correct) and writes it to config.yaml; run
it on sheets the report is not made on.

Usage:
    python evaluate.py FOLDER [FOLDER ...] [--exam-type any] [--json OUT] [--calibrate]
    python evaluate.py --synthetic heldout --count 200 [--seed 30000000]
"""

from __future__ import annotations

import argparse
import collections
import difflib
import json
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from predictor import CONFIG_PATH, FIELDS, SheetReader, box_iou, load_settings, to_corrected
from shared.documents import load_pages

SPACE_DIR = Path(__file__).resolve().parent
BUILD = SPACE_DIR.parents[1] / "build" / "answer-sheet"


@dataclass
class FieldScores:
    """Everything measured on one field over a set of sheets."""

    exact: list[bool] = field(default_factory=list)
    chars: list[tuple[int, int]] = field(default_factory=list)  # (edit distance, true length)
    detections: list[tuple[float, bool]] = field(default_factory=list)  # (score, IoU >= 0.5)
    found: int = 0
    total: int = 0
    confidences: list[tuple[float, bool, bool]] = field(default_factory=list)  # (conf, valid, ok)
    accepted: list[bool] = field(default_factory=list)  # correct, for each accepted field
    confusions: collections.Counter = field(default_factory=collections.Counter)

    def summary(self) -> dict[str, Any]:
        errors = sum(d for d, _ in self.chars)
        length = sum(n for _, n in self.chars)
        return {
            "sheets": self.total,
            "exact_match": _rate(self.exact),
            "char_accuracy": round(1 - errors / length, 4) if length else None,
            "detection_recall": round(self.found / self.total, 4) if self.total else None,
            "detection_ap50": average_precision(self.detections, self.total),
            "auto_accepted": round(len(self.accepted) / self.total, 4) if self.total else None,
            "auto_accepted_correct": _rate(self.accepted),
            "auto_accepted_errors": self.accepted.count(False),
            "confusions": [
                f"{t}->{r or '∅'} x{n}" for (t, r), n in self.confusions.most_common(10)
            ],
        }


def _rate(values: list[bool]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two strings."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def misreads(truth: str, read: str) -> list[tuple[str, str]]:
    """(true character, read character) of each substitution, '' for a dropped character."""
    pairs = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(
        None, truth, read, autojunk=False
    ).get_opcodes():
        if op == "replace":
            for k in range(i2 - i1):
                pairs.append((truth[i1 + k], read[j1 + k] if j1 + k < j2 else ""))
        elif op == "delete":
            pairs.extend((c, "") for c in truth[i1:i2])
    return pairs


def average_precision(detections: list[tuple[float, bool]], n_truth: int) -> float | None:
    """AP (all-point interpolation) of scored detections against ``n_truth`` true boxes."""
    if not n_truth:
        return None
    ranked = sorted(detections, key=lambda d: -d[0])
    tp = np.cumsum([ok for _, ok in ranked])
    fp = np.cumsum([not ok for _, ok in ranked])
    recall = np.concatenate([[0.0], tp / n_truth, [1.0]]) if ranked else np.array([0.0, 1.0])
    precision = (
        np.concatenate([[1.0], tp / np.maximum(tp + fp, 1), [0.0]]) if ranked else np.zeros(2)
    )
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return round(float(np.sum((recall[1:] - recall[:-1]) * precision[1:])), 4)


def truth_box(
    record: dict[str, Any], name: str, shape: tuple[int, ...], page: dict[str, Any]
) -> list[float]:
    """The true box of a field on the corrected page (its corners moved the way the pipeline
    turned the page)."""
    quad = np.asarray(record["fields"][name]["quad"], dtype=float)
    pts = to_corrected(quad, shape, float(page["deskew"]), int(page["rotation"]))
    return [
        float(pts[:, 0].min()),
        float(pts[:, 1].min()),
        float(pts[:, 0].max()),
        float(pts[:, 1].max()),
    ]


def evaluate(reader: SheetReader, folders: list[Path], exam_type: str) -> dict[str, Any]:
    """Run every sheet of the folders and score it."""
    scores = {name: FieldScores() for name in FIELDS}
    times, rotations_ok = [], []
    records = [
        (folder, json.loads(line))
        for folder in folders
        for line in (folder / "truth.jsonl").read_text().splitlines()
        if line.strip()
    ]
    for folder, record in tqdm(records, desc="sheets", unit="sheet"):
        data = (folder / record["file"]).read_bytes()
        started = time.perf_counter()
        result = reader.extract(data, exam_type=exam_type).to_json("first")
        times.append((time.perf_counter() - started) * 1000)
        shape = np.asarray(load_pages(data, limits=reader.settings.limits, first=1)[0]).shape
        upright = (int(result["rotation"]) + int(record["rotation"])) % 360 == 0
        rotations_ok.append(upright)
        for name in FIELDS:
            s, got, true = scores[name], result[name], record["fields"][name]["text"]
            s.total += 1
            value = got["value"] or ""
            s.exact.append(value == true)
            s.chars.append((edit_distance(true, value), len(true)))
            if value != true:
                s.confusions.update(misreads(true, value))
            if got["box"] is not None:
                hit = box_iou(got["box"], truth_box(record, name, shape, result)) >= 0.5
                s.found += hit
                s.detections.append((got["detection_confidence"], hit))
                s.confidences.append((got["confidence"], got["valid"], value == true))
            if got["accepted"]:
                s.accepted.append(value == true)
    return {
        "sheets": len(records),
        "exam_type": exam_type,
        "orientation_accuracy": _rate(rotations_ok),
        "ms_per_page": {
            "p50": round(statistics.median(times), 1),
            "p95": round(float(np.percentile(times, 95)), 1),
        },
        "fields": {name: s.summary() for name, s in scores.items()},
        "_confidences": {name: s.confidences for name, s in scores.items()},
    }


def choose_threshold(confidences: list[tuple[float, bool, bool]], target: float) -> float:
    """The lowest threshold whose accepted fields (valid, confidence at least it) are at least
    ``target`` correct, counting errors as the worst case allows: with n accepted, at most
    ``floor(n * (1 - target))`` may be wrong."""
    candidates = sorted({c for c, valid, _ in confidences if valid})
    for t in candidates:
        accepted = [ok for c, valid, ok in confidences if valid and c >= t]
        wrong = accepted.count(False)
        if accepted and wrong <= int(len(accepted) * (1 - target)):
            return round(t, 4)
    return 1.0


def write_thresholds(path: Path, thresholds: dict[str, float]) -> None:
    """Replace the ``thresholds:`` values in config.yaml, keeping its comments."""
    text = path.read_text()
    for name, value in thresholds.items():
        text, n = re.subn(rf"(?m)^(  {name}: )[0-9.]+$", rf"\g<1>{value}", text, count=1)
        if n != 1:
            raise SystemExit(f"{path}: no `  {name}: <number>` line under thresholds to update")
    path.write_text(text)


def print_report(report: dict[str, Any]) -> None:
    """The report as a readable table."""
    print(
        f"\n{report['sheets']} sheets · exam type {report['exam_type']} · orientation "
        f"correct {report['orientation_accuracy']:.2%} · ms/page p50 "
        f"{report['ms_per_page']['p50']} p95 {report['ms_per_page']['p95']}"
    )
    keys = (
        "exact_match",
        "char_accuracy",
        "detection_recall",
        "detection_ap50",
        "auto_accepted",
        "auto_accepted_correct",
        "auto_accepted_errors",
    )
    print(f"{'field':<18}" + "".join(f"{k:>24}" for k in keys))
    for name, s in report["fields"].items():
        print(f"{name:<18}" + "".join(f"{'-' if s[k] is None else s[k]!s:>24}" for k in keys))
    for name, s in report["fields"].items():
        print(f"misread in {name}: {', '.join(s['confusions']) or 'none'}")


def markdown(reports: dict[str, dict[str, Any]], command: str) -> str:
    """The reports (one per set of sheets) as the results file's markdown."""
    import platform

    lines = [
        "# answer-sheet-ml evaluation",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- machine: {platform.machine()}, Python {platform.python_version()}",
        f"- command: `{command}`",
        "",
        "| sheets | field | exact match | char accuracy | detection recall | AP50 | auto-accepted "
        "| accepted correct | accepted errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for title, report in reports.items():
        for name, f in report["fields"].items():
            lines.append(
                f"| {title} ({report['sheets']}) | {name} | {f['exact_match']:.1%} | "
                f"{f['char_accuracy']:.1%} | {f['detection_recall']:.1%} | {f['detection_ap50']} | "
                f"{f['auto_accepted']:.1%} | "
                + (
                    "-"
                    if f["auto_accepted_correct"] is None
                    else f"{f['auto_accepted_correct']:.1%}"
                )
                + f" | {f['auto_accepted_errors']} |"
            )
    lines.append("")
    for title, report in reports.items():
        lines.append(
            f"- {title}: orientation correct {report['orientation_accuracy']:.1%}; ms per page "
            f"p50 {report['ms_per_page']['p50']}, p95 {report['ms_per_page']['p95']}; "
            f"thresholds {report['thresholds']}"
        )
        for name, f in report["fields"].items():
            lines.append(f"  - misread in {name}: {', '.join(f['confusions']) or 'none'}")
    return "\n".join(lines) + "\n"


def synthesize(split: str, count: int, seed: int) -> Path:
    """A folder of generated sheets (cached under build/answer-sheet/)."""
    sys.path.insert(0, str(SPACE_DIR / "training"))
    import sheets

    folder = BUILD / f"eval-{split}-{seed}-{count}"
    if not (folder / "truth.jsonl").exists():
        sheets.write_truth_folder(folder, count, split, seed)
    return folder


def main(argv: list[str] | None = None) -> None:
    """Evaluate (and optionally calibrate) the configured models."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="*", type=Path, help="folders with truth.jsonl")
    parser.add_argument(
        "--synthetic",
        choices=("train", "heldout"),
        action="append",
        help="generate sheets of this split's styles (repeatable)",
    )
    parser.add_argument("--count", type=int, default=200, help="sheets per --synthetic split")
    parser.add_argument("--seed", type=int, default=30_000_000, help="first seed (not trained on)")
    parser.add_argument("--exam-type", default="any", help="rules to validate with")
    parser.add_argument("--json", type=Path, help="write the report as JSON here")
    parser.add_argument("--calibrate", action="store_true", help="write thresholds to config.yaml")
    parser.add_argument("--target", type=float, default=0.999, help="accepted fields correct")
    parser.add_argument("--markdown", type=Path, help="write one table per folder here")
    args = parser.parse_args(argv)

    folders = list(args.folders)
    for split in args.synthetic or []:
        folders.append(synthesize(split, args.count, args.seed))
    if not folders:
        parser.error("give a folder with truth.jsonl or --synthetic SPLIT")
    settings = load_settings(CONFIG_PATH)
    reader = SheetReader.load(settings)
    if args.markdown:  # each folder on its own (train styles, held-out styles), then written
        reports = {}
        for folder in folders:
            one = evaluate(reader, [folder], args.exam_type)
            one.pop("_confidences")
            one["thresholds"] = dict(settings.thresholds)
            print_report(one)
            reports[folder.name] = one
        command = "python evaluate.py " + " ".join(sys.argv[1:] if argv is None else argv)
        args.markdown.write_text(markdown(reports, command))
        print(f"wrote {args.markdown}")
        return
    report = evaluate(reader, folders, args.exam_type)
    confidences = report.pop("_confidences")
    report["thresholds"] = dict(settings.thresholds)
    report["folders"] = [str(f) for f in folders]
    print_report(report)
    if args.calibrate:
        chosen = {name: choose_threshold(c, args.target) for name, c in confidences.items()}
        write_thresholds(CONFIG_PATH, chosen)
        report["calibrated"] = chosen
        print(f"\nwrote thresholds {chosen} to {CONFIG_PATH} (target {args.target:.1%} correct)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
