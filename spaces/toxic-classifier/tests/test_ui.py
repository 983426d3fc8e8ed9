"""The UI's own helpers: the banner that follows the model load, the batch box."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from types import ModuleType

import pytest

from shared.errors import ModelLoadError
from shared.serving import Service

SPACE = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ui(demo_models) -> ModuleType:
    """The Space's app.py, imported under its own name (every Space has an ``app`` module),
    configured for the demo model in fp32 (no int8 export)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MODEL_ID", demo_models["toxic-classifier"]["MODEL_ID"])
        env.setenv("PRECISION", "fp32")
        spec = importlib.util.spec_from_file_location("toxic_classifier_app", SPACE / "app.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def test_batch_box_lines_become_the_list_predict_batch_takes(ui):
    assert ui.batch_lines("أكره هذا\n\n   \n شكرا جزيلا\n") == ["أكره هذا", " شكرا جزيلا"]
    assert ui.batch_lines("") == []


def test_banner_follows_the_load_then_the_timer_stops(ui, monkeypatch):
    release = threading.Event()

    def slow_load():
        release.wait(30)
        return ui.load_engine()

    service = Service("toxic-classifier", slow_load)
    monkeypatch.setattr(ui, "service", service)
    service.start_loading()
    note, timer = ui.refresh_note()
    assert note.startswith("⏳") and "loading" in note
    assert timer.active is True
    release.set()
    assert service.wait_ready(60)
    note, timer = ui.refresh_note()
    assert "threshold **0.50**" in note and "Demo weights" in note
    assert timer.active is False


def test_banner_says_a_failed_load_failed_and_stops_polling(ui, monkeypatch):
    def broken():
        raise ModelLoadError("model directory /nowhere does not exist")

    service = Service("toxic-classifier", broken)
    monkeypatch.setattr(ui, "service", service)
    service.start_loading(background=False)
    note, timer = ui.refresh_note()
    assert note.startswith("❌") and "failed to load: model directory /nowhere" in note
    assert timer.active is False
