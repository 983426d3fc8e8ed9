"""The training scripts run end to end on tiny data and write models the Space loads."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from predictor import Detector, Reader

TRAINING = Path(__file__).resolve().parents[1] / "training"
sys.path.insert(0, str(TRAINING))
import train_detector  # noqa: E402
import train_reader  # noqa: E402


def test_reader_training_exports_an_onnx_reader(tmp_path):
    out = tmp_path / "reader.onnx"
    train_reader.main(
        [
            "--count",
            "64",
            "--val-count",
            "16",
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--workers",
            "1",
            "--out",
            str(out),
            "--cache",
            str(tmp_path),
        ]
    )
    reader = Reader(out)
    crop = Reader.preprocess(np.full((40, 300), 255, np.uint8))
    ((text, confidences),) = reader.read([crop], ["0123456789"])
    assert set(text) <= set("0123456789") and len(confidences) == len(text)
    assert (tmp_path / "reader-training.json").exists()


def test_detector_training_exports_an_onnx_detector(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "yolo"))
    out = tmp_path / "detector.onnx"
    train_detector.main(
        [
            "--count",
            "4",
            "--val-count",
            "2",
            "--epochs",
            "1",
            "--imgsz",
            "96",
            "--finetune-imgsz",
            "128",
            "--finetune-epochs",
            "1",
            "--negatives",
            "2",
            "--batch-size",
            "4",
            "--workers",
            "1",
            "--out",
            str(out),
            "--cache",
            str(tmp_path),
        ]
    )
    detector = Detector(out)
    assert detector.imgsz == 128  # the second stage's size
    assert detector.classes == {"register_number": 0, "subject_code": 1}
    found = detector.detect(np.full((400, 300, 3), 255, np.uint8), 0.25)
    assert set(found) <= {"register_number", "subject_code"}
