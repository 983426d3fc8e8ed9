"""The evaluate command: metrics, bias warnings, calibration, the reliability plot."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from evaluate import LABELS, build_report, main, write_threshold
from scripts.launcher import ONNX_CACHE_DIR
from shared.metrics import bias_warnings, calibrate_threshold

SPACE = Path(__file__).resolve().parent.parent


def test_report_on_known_predictions():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.4, 0.3, 0.2, 0.1, 0.6, 0.05])
    report = build_report(y, p, 0.5, "m")
    assert report.confusion == [[2, 2], [1, 3]]
    assert report.classes["harmful"].precision == pytest.approx(2 / 3)
    assert report.classes["harmful"].recall == pytest.approx(0.5)
    assert report.classes["safe"].recall == pytest.approx(0.75)
    assert report.positive_rate == pytest.approx(3 / 8)
    assert report.roc_auc == pytest.approx(14 / 16)  # harmful outscores safe in 14 of 16 pairs
    assert report.accuracy == pytest.approx(5 / 8)


def test_a_model_that_calls_everything_safe_is_called_out():
    y = np.array([1] * 30 + [0] * 70)
    p = np.array([0.05] * 29 + [0.95] + [0.04] * 70)
    report = build_report(y, p, 0.5, "m")
    assert "flags 3% of harmful texts: the model is biased to safe" in report.warnings


def test_no_warning_for_a_good_model():
    y = np.array([1] * 50 + [0] * 50)
    p = np.concatenate([np.linspace(0.6, 0.99, 50), np.linspace(0.01, 0.4, 50)])
    assert build_report(y, p, 0.5, "m").warnings == []


def test_bias_to_harmful_is_called_out():
    report = build_report(np.array([1, 0, 0, 0]), np.array([0.9, 0.8, 0.7, 0.2]), 0.5, "m")
    assert any("biased to harmful" in w for w in report.warnings)
    assert bias_warnings(report.classes, 0.55, 0.75, LABELS)[-1].startswith("ROC-AUC 0.55")


def test_calibrate_best_f1():
    y = np.array([1, 1, 1, 0, 0, 0])
    p = np.array([0.35, 0.3, 0.25, 0.2, 0.1, 0.05])
    # Every harmful text scores above every safe one: the best threshold separates them.
    threshold = calibrate_threshold(y, p)
    assert 0.2 < threshold <= 0.25


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.floats(0, 1)), min_size=4, max_size=60).filter(
        lambda rows: any(r[0] for r in rows) and not all(r[0] for r in rows)
    ),
    st.floats(0.05, 1.0),
)
def test_calibrate_reaches_target_recall(rows, target):
    y = np.array([int(r[0]) for r in rows])
    p = np.array([r[1] for r in rows])
    threshold = calibrate_threshold(y, p, target_recall=target)
    recall = ((p >= threshold) & (y == 1)).sum() / (y == 1).sum()
    assert recall >= target - 1e-9
    assert 0.0 <= threshold <= 1.0


def test_write_threshold_keeps_comments(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("# keep me\nmodel_id: x\nthreshold: 0.5  # old\nprecision: fp32\n")
    write_threshold(config, 0.4213)
    assert config.read_text() == "# keep me\nmodel_id: x\nthreshold: 0.4213\nprecision: fp32\n"


@pytest.mark.slow
def test_cli_on_the_demo_model(demo_models, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    shutil.copy(SPACE / "config.yaml", config)
    # Output folders that do not exist yet are made.
    report_path, plot = tmp_path / "out" / "report.json", tmp_path / "plots" / "reliability.png"
    model = demo_models["toxic-classifier"]["MODEL_ID"]
    data = SPACE / "data" / "eval.jsonl"
    code = main(
        [str(data), "--config", str(config), "--model-id", model, "--calibrate",
         "--target-recall", "0.9", "--plot", str(plot), "--report-json", str(report_path),
         "--compare-precision", "int8", "--precision", "fp32", "--onnx-cache", str(ONNX_CACHE_DIR)]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "confusion matrix" in out
    assert "ROC-AUC" in out
    assert "[demo weights]" in out
    result = json.loads(report_path.read_text())
    n = sum(1 for line in data.read_text().splitlines() if line.strip())
    assert result["report"]["n"] == n
    calibrated = result["calibrated"]
    assert calibrated["classes"]["harmful"]["recall"] >= 0.9
    written = float(next(line for line in config.read_text().splitlines()
                         if line.startswith("threshold:")).split(":")[1])  # fmt: skip
    assert written == pytest.approx(calibrated["threshold"], abs=1e-5)
    comparison = result["precision_comparison"]
    assert comparison["precision"] == "int8"
    assert 0 < comparison["mean_abs_diff"] <= comparison["max_abs_diff"] < 0.1
    assert 0.5 <= comparison["verdict_agreement"] <= 1.0
    assert f"max |Δp(harmful)| = {comparison['max_abs_diff']:.4f}" in out
    with Image.open(plot) as image:
        assert image.format == "PNG"
        assert image.size[0] > 300


@pytest.mark.parametrize(
    ("data", "model", "message"),
    [
        ('{"text": "x"}\n', None, r"bad\.jsonl:1: expected \{'text', 'label'\} JSON"),
        ('{"text": "x", "label": "toxic"}\n', None, r"bad\.jsonl:1: label must be one of"),
        ("\n", None, r"bad\.jsonl has no examples"),
        (None, None, r"No such file or directory: '.*missing\.jsonl'"),
        ('{"text": "x", "label": "safe"}\n', "no-such-model", r"model directory .*no-such-model"),
        (
            '{"text": "x", "label": "safe"}\n{"text": "", "label": "safe"}\n',
            None,
            r"bad\.jsonl:2: text is empty$",
        ),
        ('{"text": 5, "label": "harmful"}\n', None, r"bad\.jsonl:1: text must be a string"),
        ('{"text": "ـــ", "label": "safe"}\n', None, r"bad\.jsonl:1: text is empty after"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(demo_models, tmp_path, capsys, data, model, message):
    path = tmp_path / ("bad.jsonl" if data is not None else "missing.jsonl")
    if data is not None:
        path.write_text(data, encoding="utf-8")
    model = str(tmp_path / model) if model else demo_models["toxic-classifier"]["MODEL_ID"]
    with pytest.raises(SystemExit) as exit_:
        main([str(path), "--model-id", model, "--onnx-cache", str(ONNX_CACHE_DIR)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert re.search(r"^evaluate\.py: error: .*" + message, err), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("config", "data", "message"),
    [
        ("threshold: [0.5\n", b'{"text": "x", "label": "safe"}\n', r"is not valid YAML"),
        (
            "threshold: abc\n",
            b'{"text": "x", "label": "safe"}\n',
            r"config\.yaml: threshold='abc': Input should be a valid number",
        ),
        ("runtime: torch\n", b'{"text": "x", "label": "safe"}\n', r"unknown key 'runtime'"),
        (None, b"\xff\xfe\x00", r"bad\.jsonl is not UTF-8 text"),
    ],
)
def test_cli_bad_config_or_data_file_is_one_line(tmp_path, capsys, config, data, message):
    args = []
    if config is not None:
        (tmp_path / "config.yaml").write_text(config)
        args = ["--config", str(tmp_path / "config.yaml")]
    (tmp_path / "bad.jsonl").write_bytes(data)
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "bad.jsonl"), *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert re.search(r"^evaluate\.py: error: .*" + message, err), err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_cli_calibration_refuses_one_class_data_and_keeps_the_threshold(
    demo_models, tmp_path, capsys
):
    config = tmp_path / "config.yaml"
    shutil.copy(SPACE / "config.yaml", config)
    data = tmp_path / "safe.jsonl"
    data.write_text('{"text": "شكرا", "label": "safe"}\n{"text": "مرحبا", "label": "safe"}\n')
    model = demo_models["toxic-classifier"]["MODEL_ID"]
    with pytest.raises(SystemExit) as exit_:
        main([str(data), "--config", str(config), "--model-id", model, "--calibrate",
              "--onnx-cache", str(ONNX_CACHE_DIR)])  # fmt: skip
    assert exit_.value.code == 2
    assert "only one class; the threshold was not changed" in capsys.readouterr().err
    assert config.read_text() == (SPACE / "config.yaml").read_text()


def test_cli_threshold_out_of_range_names_the_option(tmp_path, capsys):
    (tmp_path / "x.jsonl").write_text('{"text": "x", "label": "safe"}\n')
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "x.jsonl"), "--threshold", "1.5"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--threshold=1.5: threshold: Input should be less than or equal to 1" in err


@pytest.mark.parametrize("recall", ["0", "1.5", "-0.1"])
def test_cli_target_recall_must_be_a_recall(tmp_path, capsys, recall):
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "x.jsonl"), "--target-recall", recall])
    assert exit_.value.code == 2
    assert f"--target-recall must be in (0, 1], got {float(recall)}" in capsys.readouterr().err


def test_calibrate_best_f1_when_no_threshold_scores(recwarn):
    # Every harmful text scores below every safe one: F1 is 0 at all but the lowest threshold,
    # and no 0/0 warning is raised on the way.
    y = np.array([1, 1, 0, 0])
    p = np.array([0.1, 0.2, 0.8, 0.9])
    assert calibrate_threshold(y, p) == pytest.approx(0.1)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_eval_set_is_balanced_and_has_the_reported_sentence():
    rows = [json.loads(line) for line in (SPACE / "data/eval.jsonl").read_text().splitlines()]
    labels = [r["label"] for r in rows]
    assert len(rows) >= 200
    assert labels.count("harmful") == labels.count("safe")
    assert {r["dialect"] for r in rows} >= {"msa", "gulf", "levantine", "egyptian"}
    assert any(r["text"] == "أكره هذا الشخص وأتمنى أن يختفي" for r in rows)
    assert len({r["text"] for r in rows}) == len(rows)
