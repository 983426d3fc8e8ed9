"""evaluate.py on a small labelled set: both input forms, and the report's figures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from evaluate import evaluate, format_report, load_clips, main
from predictor import SpeechPredictor, TwiSettings
from training import synth

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """``<intent>/<file>`` folder: one command with its transcript, one silent clip."""
    root = tmp_path_factory.mktemp("labelled")
    (root / "go_home").mkdir()
    (root / "search").mkdir()
    shutil.copy(DATA / "fa_me_ko_fie.wav", root / "go_home" / "a.wav")
    (root / "go_home" / "a.txt").write_text("Fa me kɔ fie\n", encoding="utf-8")
    synth.write_wav(root / "search" / "b.wav", np.zeros(synth.SAMPLE_RATE, dtype=np.float32))
    return root


def test_a_folder_and_a_jsonl_list_the_same_clips(labelled, tmp_path):
    from_folder = load_clips(labelled)
    lines = [{"audio": str(c.path), "intent": c.intent, "transcript": c.transcript}
             for c in from_folder]  # fmt: skip
    jsonl = tmp_path / "set.jsonl"
    jsonl.write_text("\n".join(json.dumps(row) for row in lines) + "\n", encoding="utf-8")
    assert [(c.intent, c.transcript) for c in load_clips(jsonl)] == [
        ("go_home", "Fa me kɔ fie"),
        ("search", None),
    ]


def test_a_jsonl_line_without_its_intent_names_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"audio": "x.wav"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        load_clips(bad)


def test_the_report_scores_transcripts_intents_and_silence(labelled, demo_models, tmp_path):
    settings = TwiSettings(model_id=demo_models["twi-speech"]["MODEL_ID"], device="cpu")
    predictor = SpeechPredictor.load(settings, cache_dir=tmp_path / "ct2")
    report = evaluate(predictor, load_clips(labelled))
    assert report["clips"] == 2
    assert report["no_speech_rate"] == 0.5  # the silent clip, gated by the VAD
    assert report["wer"] is not None and report["wer"] >= 0  # one clip has a transcript
    assert 0 <= report["intent_accuracy"] <= 0.5  # the silent one cannot be right
    assert report["latency_ms"]["p95"] >= report["latency_ms"]["p50"] > 0
    text = format_report(report)
    assert "WER" in text and "intent accuracy" in text


def test_the_command_line_needs_data(capsys):
    with pytest.raises(SystemExit):
        main([])
    assert "give DATA or --synthetic" in capsys.readouterr().err
