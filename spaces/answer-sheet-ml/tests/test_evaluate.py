"""evaluate.py: its report on generated sheets, the threshold rule, and the config update."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import evaluate
from predictor import CONFIG_PATH, SheetReader, box_iou, load_settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
import sheets


def test_the_report_on_generated_sheets(tmp_path):
    sheets.write_truth_folder(tmp_path, 3, "train", seed=40_000_000)
    reader = SheetReader.load(load_settings(CONFIG_PATH))
    report = evaluate.evaluate(reader, [tmp_path], "any")
    assert report["sheets"] == 3 and report["orientation_accuracy"] is not None
    for scores in report["fields"].values():
        assert scores["sheets"] == 3
        assert 0 <= scores["exact_match"] <= 1 and 0 <= scores["detection_recall"] <= 1
        assert scores["auto_accepted_errors"] >= 0


def test_threshold_is_the_lowest_with_no_accepted_error():
    confidences = [
        (0.99, True, True),
        (0.95, True, True),
        (0.9, True, False),
        (0.8, True, True),
        (0.97, False, False),
    ]
    assert evaluate.choose_threshold(confidences, 0.999) == 0.95
    assert evaluate.choose_threshold([(0.5, True, False)], 0.999) == 1.0
    assert evaluate.choose_threshold([(0.4, True, True), (0.3, True, True)], 0.999) == 0.3


def test_calibration_rewrites_only_the_threshold_lines(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG_PATH.read_text())
    evaluate.write_thresholds(config, {"register_number": 0.8123, "subject_code": 0.7})
    before, after = CONFIG_PATH.read_text().splitlines(), config.read_text().splitlines()
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert [b for _, b in changed] == ["  register_number: 0.8123", "  subject_code: 0.7"]


@given(st.text("0123456789AB", max_size=14), st.text("0123456789AB", max_size=14))
def test_edit_distance_and_misreads(a, b):
    d = evaluate.edit_distance(a, b)
    assert d == evaluate.edit_distance(b, a) and abs(len(a) - len(b)) <= d <= max(len(a), len(b))
    assert (d == 0) == (a == b)
    assert all(t in a for t, _ in evaluate.misreads(a, b))


def test_iou_and_average_precision():
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(1 / 3)
    assert evaluate.average_precision([(0.9, True), (0.8, True)], 2) == 1.0
    assert evaluate.average_precision([(0.9, False), (0.8, True)], 2) == pytest.approx(0.25)
