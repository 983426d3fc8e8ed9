"""Binary-classifier metrics shared by the Spaces' evaluations."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.metrics import (
    binary_report,
    calibrate_threshold,
    expected_calibration_error,
    format_report,
    reliability_plot,
    write_config_value,
)

LABELS = ("spam", "not_spam")


def test_a_perfect_model_scores_one_and_warns_of_nothing():
    y = np.array([1, 1, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.1, 0.2, 0.3])
    report = binary_report(y, p, 0.5, "m", LABELS)
    assert report.accuracy == 1.0
    assert report.roc_auc == 1.0
    assert report.confusion == [[2, 0], [0, 3]]
    assert report.classes["spam"].support == 2
    assert report.warnings == []
    text = format_report(report)
    assert "not_spam" in text
    assert "ECE" in text


def test_a_model_that_calls_everything_safe_is_called_biased():
    y = np.array([1, 1, 1, 0, 0])
    p = np.array([0.1, 0.2, 0.3, 0.1, 0.2])
    report = binary_report(y, p, 0.5, "m", ("harmful", "safe"))
    assert report.positive_rate == 0.0
    assert any("biased to safe" in w for w in report.warnings)
    assert any("every text is predicted safe" in w for w in report.warnings)


def test_ece_of_calibrated_and_overconfident_scores():
    y = np.array([1, 0] * 50)
    assert expected_calibration_error(y, np.full(100, 0.5)) == pytest.approx(0.0)
    assert expected_calibration_error(y, np.full(100, 0.95)) == pytest.approx(0.45)
    assert expected_calibration_error(np.array([]), np.array([])) == 0.0


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 1)), min_size=1, max_size=200))
def test_ece_is_a_weighted_gap_in_zero_one(rows):
    y = np.array([int(t) for t, _ in rows])
    p = np.array([q for _, q in rows])
    ece = expected_calibration_error(y, p)
    assert 0.0 <= ece <= 1.0
    assert ece <= float(np.mean(np.abs(p - y))) + 1e-12  # binning can only average gaps away


def test_calibrate_threshold_best_f1_and_target_recall():
    y = np.array([1, 1, 1, 0, 0, 0])
    p = np.array([0.9, 0.7, 0.4, 0.5, 0.2, 0.1])
    assert calibrate_threshold(y, p) == pytest.approx(0.4)
    assert calibrate_threshold(y, p, target_recall=2 / 3) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="both classes"):
        calibrate_threshold(np.ones(3), p[:3])


def test_write_config_value_keeps_comments(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("# keep me\nthreshold: 0.5  # old\nother: 1\n", encoding="utf-8")
    write_config_value(path, "threshold", "0.42")
    write_config_value(path, "calibration", "{spam: 0.6, not_spam: 0.4}")
    assert path.read_text(encoding="utf-8") == (
        "# keep me\nthreshold: 0.42\nother: 1\ncalibration: {spam: 0.6, not_spam: 0.4}\n"
    )


def test_reliability_plot_writes_a_png(tmp_path):
    out = tmp_path / "rel.png"
    reliability_plot(np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.6, 0.4]), out, "m", "spam")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
