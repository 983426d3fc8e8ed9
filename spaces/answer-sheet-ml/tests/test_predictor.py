"""The pipeline through SheetReader, the object /extract and predict call: the shipped models
on generated sheets, orientation, multi-page PDFs, validation rules, model files and bad input."""

from __future__ import annotations

import io
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from crnn import CRNN
from ctc import ALPHABET, greedy_decode
from predictor import (
    CONFIG_PATH,
    FIELDS,
    Detection,
    SheetReader,
    estimate_skew,
    load_settings,
    quarter_turn,
    resolve_file,
    rotate,
    scale_box,
    snap_to_row,
    to_corrected,
)
from shared.config import ConfigError, Override
from shared.errors import InputError, ModelLoadError

SPACE_DIR = Path(__file__).resolve().parents[1]
EXAMPLES = SPACE_DIR / "examples"
TRUTH = {
    json.loads(line)["file"]: json.loads(line)
    for line in (EXAMPLES / "truth.jsonl").read_text().splitlines()
}
sys.path.insert(0, str(SPACE_DIR / "training"))
import sheets  # noqa: E402


@pytest.fixture(scope="module")
def reader() -> SheetReader:
    return SheetReader.load(load_settings(CONFIG_PATH))


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_the_upright_example_is_read_exactly(reader):
    truth = TRUTH["sheet-upright.jpg"]
    body = reader.extract((EXAMPLES / "sheet-upright.jpg").read_bytes()).to_json("first")
    for name in FIELDS:
        assert body[name]["value"] == truth["fields"][name]["text"]
        assert len(body[name]["characters"]) == len(body[name]["value"])
        assert body[name]["confidence"] == min(c["confidence"] for c in body[name]["characters"])
        x0, y0, x1, y1 = body[name]["box"]
        assert 0 <= x0 < x1 <= body["page_size"][0] and 0 <= y0 < y1 <= body["page_size"][1]
    assert body["rotation"] == 0 and body["page"] == 1 and body["page_count"] == 1
    assert set(body["models"]) == {"detector", "register_reader", "subject_reader"}
    assert "pages" not in body


@pytest.mark.parametrize("name", ["sheet-heldout-style-sideways.jpg", "sheet-upside-down.jpg"])
def test_turned_sheets_are_turned_back(reader, name):
    truth = TRUTH[name]
    body = reader.extract((EXAMPLES / name).read_bytes()).to_json("first")
    assert (body["rotation"] + truth["rotation"]) % 360 == 0
    assert body["deskew"] == pytest.approx(-truth["skew"], abs=0.5)
    for field in FIELDS:
        assert body[field]["box"] is not None


def test_a_close_call_between_turns_is_settled_by_reading_them(reader, monkeypatch):
    # A detector that, as on layouts unlike its training sheets, scores the upside-down page
    # above the upright one: the upright page's readings follow the rules, the upside-down
    # page's do not, so the page is read upright.
    real = reader.detector.candidates
    upright_page = {}

    def fooled(image, min_confidence, k=3):
        key = image.shape
        if key not in upright_page:  # the first turn tried is the upright page
            upright_page[key] = image
        if np.array_equal(image, upright_page[key]):
            found = real(image, min_confidence, k)
            return {n: [replace(d, confidence=0.5) for d in c] for n, c in found.items()}
        if np.array_equal(image, upright_page[key][::-1, ::-1]):  # the page upside down
            h, w = image.shape[:2]
            found = real(upright_page[key], min_confidence, k)
            return {
                n: [
                    replace(
                        d,
                        confidence=0.9,
                        box=(w - d.box[2], h - d.box[3], w - d.box[0], h - d.box[1]),
                    )
                    for d in c
                ]
                for n, c in found.items()
            }
        return {}

    monkeypatch.setattr(reader.detector, "candidates", fooled)
    truth = TRUTH["sheet-upright.jpg"]
    body = reader.extract((EXAMPLES / "sheet-upright.jpg").read_bytes()).to_json("first")
    assert body["rotation"] == 0
    for name in FIELDS:
        assert body[name]["value"] == truth["fields"][name]["text"]


def test_a_field_given_to_the_other_class_under_the_least_score_is_still_read(reader, monkeypatch):
    # A detector that, as on some sheets, puts the subject code's best box on a row that is
    # not it and finds the subject code's row only as a weak register number box: the subject
    # box reads against the rule, so the weak boxes of either class are read, and the one that
    # follows the rule is taken.
    real = reader.detector.candidates

    def confused(image, min_confidence, k=3):
        found = real(image, reader.settings.detector_confidence, 1)
        if len(found) < len(FIELDS):  # not the upright page
            return {}
        register, subject = found["register_number"][0], found["subject_code"][0]
        h, w = image.shape[:2]
        elsewhere = Detection("subject_code", 0.9, (0.05 * w, 0.01 * h, 0.4 * w, 0.03 * h))
        weak = replace(subject, field="register_number", confidence=0.1)
        boxes = {"register_number": [register, weak], "subject_code": [elsewhere]}
        return {
            name: [d for d in ds if d.confidence >= min_confidence][:k]
            for name, ds in boxes.items()
        }

    monkeypatch.setattr(reader.detector, "candidates", confused)
    truth = TRUTH["sheet-upright.jpg"]
    body = reader.extract((EXAMPLES / "sheet-upright.jpg").read_bytes()).to_json("first")
    for name in FIELDS:
        assert body[name]["value"] == truth["fields"][name]["text"]
    assert body["subject_code"]["detection_confidence"] == pytest.approx(0.1)
    # With alternates only down to the detector's own least score, the weak box is not read.
    monkeypatch.setattr(
        reader, "settings", reader.settings.model_copy(update={"alternate_confidence": 0.25})
    )
    body = reader.extract((EXAMPLES / "sheet-upright.jpg").read_bytes()).to_json("first")
    assert body["subject_code"]["value"] != truth["fields"]["subject_code"]["text"]
    assert body["needs_review"]


@pytest.mark.parametrize("turn", [0, 90, 180, 270])
def test_every_quarter_turn_is_undone(reader, turn):
    sheet = sheets.make_sheet(41, "train", dpi=150, skew=3.0, rotation=turn)
    body = reader.extract(png(sheet.image)).to_json("first")
    assert (body["rotation"] + turn) % 360 == 0
    assert body["page_size"][1] > body["page_size"][0]  # portrait again


def test_a_pdf_reads_its_first_page_or_every_page(reader):
    data = (EXAMPLES / "two-sheets.pdf").read_bytes()
    truth = TRUTH["two-sheets.pdf"]["pages"]
    first = reader.extract(data, pages="first").to_json("first")
    assert first["page_count"] == 2 and "pages" not in first and first["page"] == 1
    every = reader.extract(data, pages="all").to_json("all")
    assert [p["page"] for p in every["pages"]] == [1, 2]
    assert every["pages"][0]["register_number"] == first["register_number"]
    for page, expected in zip(every["pages"], truth, strict=True):
        assert page["register_number"]["value"] == expected["fields"]["register_number"]["text"]
    assert every["needs_review"] == any(p["needs_review"] for p in every["pages"])


def test_the_exam_type_decides_validity(reader):
    data = (EXAMPLES / "sheet-upright.jpg").read_bytes()
    value = TRUTH["sheet-upright.jpg"]["fields"]["register_number"]["text"]
    strict = reader.extract(data, exam_type="default").to_json("first")
    loose = reader.extract(data, exam_type="any").to_json("first")
    assert strict["register_number"]["valid"] == (len(value) == 12)
    assert loose["register_number"]["valid"]
    if not strict["register_number"]["valid"]:
        assert strict["needs_review"] and not strict["register_number"]["accepted"]
    with pytest.raises(InputError, match="unknown exam_type 'nope'; known: \\['any', 'default'\\]"):
        reader.extract(data, exam_type="nope")
    with pytest.raises(InputError, match="pages must be one of"):
        reader.extract(data, pages="some")  # type: ignore[arg-type]


def test_a_blank_page_or_a_photo_has_no_fields_and_needs_review(reader):
    blank = Image.new("RGB", (1240, 1754), "white")
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (900, 1200, 3), np.uint8))
    for image in (blank, noise):
        body = reader.extract(png(image)).to_json("first")
        assert body["needs_review"]
        for name in FIELDS:
            if body[name]["value"] is None:
                assert body[name]["box"] is None and body[name]["confidence"] == 0
                assert not body[name]["valid"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "document is empty"),
        (b"just some text, not a sheet", "unsupported document type"),
        (b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog", "could not read the PDF"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "could not read the image"),
    ],
)
def test_bad_files_are_input_errors(reader, data, message):
    with pytest.raises(InputError, match=message):
        reader.extract(data)


def test_too_many_pages_and_pixel_bombs_are_refused():
    limited = SheetReader.load(
        load_settings(CONFIG_PATH, [Override("MAX_PAGES", ("max_pages",), 1)])
    )
    with pytest.raises(InputError, match="the PDF has 2 pages; the limit is 1"):
        limited.extract((EXAMPLES / "two-sheets.pdf").read_bytes())
    # A 60 KB PNG declaring 30000 x 30000 pixels: refused before any pixel is decoded.
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 30001 * 2000))
        + chunk(b"IEND", b"")
    )
    with pytest.raises(InputError, match=r"too many pixels.*the limit is 40,000,000 pixels"):
        limited.extract(bomb)


@pytest.mark.parametrize("skew", [-9.0, -2.5, 0.0, 4.0, 9.5])
def test_skew_is_measured(skew):
    sheet = sheets.make_sheet(11, "heldout", dpi=100, skew=skew, rotation=0)
    gray = cv2.cvtColor(np.asarray(sheet.image), cv2.COLOR_RGB2GRAY)
    assert estimate_skew(gray, 10.0) == pytest.approx(skew, abs=0.4)


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_a_box_cut_short_or_overlong_is_snapped_to_the_ends_of_its_row(split):
    # Straight sheets with every scan effect (strokes and stamps across the boxes included), a
    # box off the row's true ends by up to 0.45 heights either way, as the detector's are.
    rng = np.random.default_rng(7)
    errors = []
    for seed in range(8):
        sheet = sheets.make_sheet(70_000 + seed, split, skew=0.0, rotation=0)
        gray = np.asarray(sheet.image.convert("L"))
        for truth in sheet.fields.values():
            x0, y0, x1, y1 = truth.box
            h = y1 - y0
            cut = (x0 + rng.uniform(-0.45, 0.45) * h, y0, x1 + rng.uniform(-0.45, 0.45) * h, y1)
            sx0, _, sx1, _ = snap_to_row(gray, cut)
            errors.append(max(abs(sx0 - x0), abs(sx1 - x1)) / h)
    # Within a tenth of a height of both ends (the ruled line's own width), on all but one row.
    assert sum(e <= 0.1 for e in errors) >= len(errors) - 1, np.round(errors, 2)


def test_a_box_on_no_row_or_on_a_long_rule_keeps_its_ends():
    page = np.full((400, 1200), 255, np.uint8)
    box = (300.0, 100.0, 700.0, 140.0)
    assert snap_to_row(page, box) == box  # nothing ruled under it
    cv2.line(page, (20, 140), (1180, 140), 0, 2)  # a rule across the page, not a row's line
    assert snap_to_row(page, box) == box
    for x in range(400, 681, 40):  # a row of boxes, 40 px tall, from x=400 to x=680
        cv2.rectangle(page, (x, 300), (x + 40, 340), 0, 2)
    sx0, _, sx1, _ = snap_to_row(page, (410.0, 300.0, 700.0, 340.0))
    assert abs(sx0 - 400) <= 2 and abs(sx1 - 721) <= 2


def test_corrected_coordinates_follow_the_rotation():
    image = np.full((300, 200, 3), 255, np.uint8)
    image[50:54, 30:34] = 0  # a dot at (32, 52)
    for deskew, turn in [(0.0, 90), (7.0, 0), (-5.0, 180), (3.0, 270)]:
        out = np.ascontiguousarray(np.rot90(rotate(image, deskew), turn // 90))
        ys, xs = np.nonzero(out[..., 0] < 128)
        ((x, y),) = to_corrected(np.array([[32.0, 52.0]]), image.shape, deskew, turn)
        assert math.hypot(x - xs.mean(), y - ys.mean()) < 2


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 2400),
    st.integers(1, 2400),
    st.sampled_from([(), (3,)]),
    st.sampled_from([0, 90, 180, 270]),
    st.integers(0, 2**32 - 1),
)
def test_the_detector_sees_each_turn_as_the_turned_page_shrunk(reader, h, w, channels, turn, seed):
    # orient shrinks a page once and turns the small page: that must be the turned page
    # shrunk (up to rounding), and a box found on it must scale back onto the turned page.
    assume(max(h, w) > reader.detector.imgsz)  # pages are shrunk, never enlarged
    image = np.random.default_rng(seed).integers(0, 256, (h, w, *channels), dtype=np.uint8)
    turned = quarter_turn(image, turn)
    assert np.array_equal(turned, np.rot90(image, turn // 90))
    small, factor = reader.detector.shrink(image)
    direct, direct_factor = reader.detector.shrink(turned)
    assert factor == pytest.approx(direct_factor)
    assert max(small.shape[:2]) == reader.detector.imgsz
    assert quarter_turn(small, turn).shape == direct.shape
    assert np.abs(quarter_turn(small, turn).astype(int) - direct.astype(int)).max() <= 1
    sh, sw = small.shape[:2]
    assert scale_box((0, 0, sw, sh), factor) == pytest.approx((0, 0, w, h), abs=factor)


@pytest.mark.parametrize("shape", [(1, 2000), (2000, 1), (1, 1)])
def test_a_page_a_pixel_thin_has_no_fields_and_needs_review(reader, shape):
    # Shrunk to the detector's or the deskew's size, a side of under half a pixel once made
    # OpenCV raise (a 500 from /extract).
    blank = Image.fromarray(np.full(shape, 255, np.uint8))
    body = reader.extract(png(blank)).to_json("first")
    assert body["needs_review"]
    assert body["register_number"]["value"] is None


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 60), st.sampled_from(["0123456789", ALPHABET]), st.integers(0, 2**32 - 1))
def test_greedy_decoding_keeps_to_the_field_alphabet(frames, allowed, seed):
    log_probs = np.log(np.random.default_rng(seed).dirichlet(np.ones(1 + len(ALPHABET)), frames))
    text, confidences = greedy_decode(log_probs, allowed)
    assert set(text) <= set(allowed)
    assert len(confidences) == len(text) <= frames
    assert all(0 < c <= 1 for c in confidences)


def test_greedy_decoding_merges_repeats_and_splits_on_blanks():
    def frame(ch: str | None, p: float = 0.9) -> np.ndarray:
        probs = np.full(1 + len(ALPHABET), (1 - p) / len(ALPHABET))
        probs[0 if ch is None else 1 + ALPHABET.index(ch)] = p
        return np.log(probs)

    frames = [frame("1"), frame("1", 0.95), frame(None), frame("1", 0.6), frame("O"), frame(None)]
    text, confidences = greedy_decode(np.stack(frames), ALPHABET)
    assert text == "11O"
    assert confidences[0] == pytest.approx(0.95, abs=1e-6)
    digits, _ = greedy_decode(np.stack(frames), "0123456789")
    assert digits == "11" or digits.startswith("11")  # O is not a digit: never read as one


def test_configuration_errors_name_the_setting(tmp_path):
    with pytest.raises(ConfigError, match="MAX_PAGES='0'"):
        load_settings(CONFIG_PATH, [Override("MAX_PAGES", ("max_pages",), "0")])
    with pytest.raises(ConfigError, match="default_exam_type 'other' is not one of exam_types"):
        load_settings(CONFIG_PATH, [Override("DEFAULT_EXAM_TYPE", ("default_exam_type",), "other")])
    low = tmp_path / "low.yaml"
    low.write_text(
        CONFIG_PATH.read_text().replace("alternate_confidence: 0.05", "alternate_confidence: 0.5")
    )
    with pytest.raises(ConfigError, match=r"alternate_confidence 0\.5 must not exceed"):
        load_settings(low)
    bad = tmp_path / "config.yaml"
    bad.write_text(CONFIG_PATH.read_text().replace("'^\\d{12}$'", "'^(\\d{12}$'"))
    with pytest.raises(ConfigError, match="not a regular expression"):
        load_settings(bad)


def test_model_files_that_are_lfs_pointers_or_missing_are_named(tmp_path):
    pointer = tmp_path / "detector.onnx"
    pointer.write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 10485760\n"
    )
    with pytest.raises(ModelLoadError, match=r"detector\.onnx is a Git LFS pointer"):
        resolve_file(str(pointer))
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_file(str(tmp_path / "missing.onnx"))


def test_team_weights_load_a_crnn_state_dict_and_an_ultralytics_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "yolo"))
    from ultralytics import YOLO

    torch.manual_seed(0)
    state = tmp_path / "reader.pth"
    torch.save(CRNN().state_dict(), state)
    detector = tmp_path / "detector.pt"
    yolo = YOLO("yolo11n.yaml")  # random weights, saved in the layout Ultralytics writes
    yolo.model.names = {0: "Reg No", 1: "subject"}  # the team's class names
    yolo.save(str(detector))
    overrides = [
        Override("REGISTER_MODEL", ("register_model",), str(state)),
        Override("DETECTOR_MODEL", ("detector_model",), str(detector)),
    ]
    loaded = SheetReader.load(load_settings(CONFIG_PATH, overrides))
    assert loaded.files["register_reader"].format == "pth"
    assert loaded.files["detector"].format == "pt"
    assert loaded.readers["register_number"] is not loaded.readers["subject_code"]
    body = loaded.extract((EXAMPLES / "sheet-upright.jpg").read_bytes()).to_json("first")
    assert set(FIELDS) <= set(body)  # random weights: the answer's shape, not its values
    coco = tmp_path / "coco.pt"
    YOLO("yolo11n.yaml").save(str(coco))  # 80 COCO classes, none of them a field
    overrides = [Override("DETECTOR_MODEL", ("detector_model",), str(coco))]
    with pytest.raises(ModelLoadError, match="the detector has no class for register_number"):
        SheetReader.load(load_settings(CONFIG_PATH, overrides))


def test_a_checkpoint_holding_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this would run",))

    evil = tmp_path / "reader.pth"
    torch.save({"state_dict": Payload()}, evil)
    overrides = [Override("REGISTER_MODEL", ("register_model",), str(evil))]
    with pytest.raises(ModelLoadError, match="not a CRNN state dict"):
        SheetReader.load(load_settings(CONFIG_PATH, overrides))
    detector = tmp_path / "detector.pt"
    torch.save({"model": Payload()}, detector)
    overrides = [Override("DETECTOR_MODEL", ("detector_model",), str(detector))]
    with pytest.raises(ModelLoadError, match="not a plain Ultralytics YOLO checkpoint"):
        SheetReader.load(load_settings(CONFIG_PATH, overrides))
