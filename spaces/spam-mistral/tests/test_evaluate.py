"""evaluate.py on the demo model: the report, calibration, and one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from evaluate import main
from predictor import CONFIG_PATH, LABELS
from shared.metrics import load_examples
from tests.harness import DEMO_MODELS_DIR

MISTRAL = str(DEMO_MODELS_DIR / "mistral-tiny")


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", "utf-8")
    return path


ROWS = [
    {"text": "You won a prize, click bit.ly/x", "label": "spam", "lang": "en", "category": "prize"},
    {"text": "ربحت جائزة! أرسل رمز التحقق", "label": "spam", "lang": "ar", "category": "otp"},
    {"text": "See you at 7", "label": "not_spam", "lang": "en", "category": "personal"},
    {"text": "تم شحن طلبك", "label": "not_spam", "lang": "ar", "category": "delivery"},
]


def test_the_shipped_eval_set_is_well_formed():
    examples = load_examples(CONFIG_PATH.parent / "data" / "eval.jsonl", LABELS)
    assert len(examples) >= 300
    spam = sum(e.label == "spam" for e in examples) / len(examples)
    assert 0.35 <= spam <= 0.45
    assert {e.fields["lang"] for e in examples} == {"en", "ar"}
    assert sum(e.fields["category"] == "injection" for e in examples) >= 10
    assert len({e.text for e in examples}) == len(examples)


def test_report_and_calibration_on_the_demo_model(demo_models, tmp_path, capsys):
    data = write_jsonl(tmp_path / "eval.jsonl", ROWS)
    config = tmp_path / "config.yaml"
    shutil.copy(CONFIG_PATH, config)
    plot, report = tmp_path / "out" / "rel.png", tmp_path / "r.json"
    args = [str(data), "--model-id", MISTRAL, "--config", str(config), "--calibrate",
            "--plot", str(plot), "--report-json", str(report)]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    for expected in ("precision", "ROC-AUC", "ECE", "confusion matrix", "accuracy by lang",
                     "accuracy by category", "latency", "demo model"):  # fmt: skip
        assert expected in out
    written = yaml.safe_load(config.read_text(encoding="utf-8"))
    assert set(written["calibration"]) == {"spam", "not_spam"}
    assert 0 <= written["threshold"] <= 1
    assert "#" in config.read_text(encoding="utf-8")  # the comments are kept
    body = json.loads(report.read_text())
    assert body["n"] == 4 and body["labels"] == ["spam", "not_spam"]
    assert plot.is_file()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"text": "a", "label": "ham"}\n', "label must be one of ('spam', 'not_spam')"),
        ('{"text": "a"}\n', ":1: expected {'text', 'label'} JSON"),
        ("not json\n", ":1: expected"),
        ('{"text": "", "label": "spam"}\n', ":1: text is empty"),
        ("", "has no examples"),
    ],
)
def test_bad_data_is_one_line_and_exit_2(demo_models, tmp_path, capsys, content, expected):
    data = tmp_path / "bad.jsonl"
    data.write_text(content, encoding="utf-8")
    with pytest.raises(SystemExit) as stop:
        main([str(data), "--model-id", MISTRAL])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("evaluate.py: error:") and expected in err and "\n" not in err


def test_an_unloadable_model_is_one_line(tmp_path, capsys):
    data = write_jsonl(tmp_path / "eval.jsonl", ROWS)
    with pytest.raises(SystemExit) as stop:
        main([str(data), "--model-id", str(tmp_path / "nowhere")])
    assert stop.value.code == 2
    assert "cannot load the model" in capsys.readouterr().err
