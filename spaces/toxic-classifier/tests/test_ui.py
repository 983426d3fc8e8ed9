"""The UI's own helpers: the banner that follows the model load, the batch box."""

from __future__ import annotations

import threading

import pytest

from predictor import ToxicityClassifier, load_settings
from shared.errors import ModelLoadError
from shared.serving import Service
from ui import banner, batch_lines, build_ui


@pytest.fixture(scope="module")
def model_id(demo_models) -> str:
    return demo_models["toxic-classifier"]["MODEL_ID"]


def test_batch_box_lines_become_the_list_predict_batch_takes():
    assert batch_lines("أكره هذا\n\n   \n شكرا جزيلا\n") == ["أكره هذا", " شكرا جزيلا"]
    assert batch_lines("") == []


def test_banner_follows_the_load_then_the_timer_stops(model_id):
    release = threading.Event()
    settings = load_settings().model_copy(update={"model_id": model_id, "precision": "fp32"})

    def slow_load() -> ToxicityClassifier:
        release.wait(30)
        return ToxicityClassifier.load(settings)

    service = Service("toxic-classifier", slow_load)
    service.start_loading()
    note, loading = banner(service, model_id)
    assert note.startswith("⏳") and "loading" in note and model_id in note
    assert loading is True
    release.set()
    assert service.wait_ready(60)
    note, loading = banner(service, model_id)
    assert f"Model **{model_id}**" in note and "fp32" in note
    assert "threshold **0.50**" in note and "Demo weights" in note
    assert loading is False


def test_banner_says_a_failed_load_failed_and_stops_polling():
    def broken():
        raise ModelLoadError("model directory /nowhere does not exist")

    service = Service("toxic-classifier", broken)
    service.start_loading(background=False)
    note, loading = banner(service, "/nowhere")
    assert note.startswith("❌") and "failed to load: model directory /nowhere" in note
    assert loading is False


def test_the_blocks_name_the_two_api_endpoints():
    service = Service("toxic-classifier", lambda: None)
    config = build_ui(service, model_id="m").get_config_file()
    names = {d.get("api_name") for d in config["dependencies"]}
    assert {"predict", "predict_batch"} <= names
