"""Answer sheets to register number and subject code: the pipeline, with no web framework in it.

decode (``shared.documents``) -> deskew (projection profiles, up to ±``max_skew`` degrees) ->
orientation (the page is portrait: upright or upside down, or sideways one way or the other;
the detector's confidence decides, and when it is unsure the readings of the two best turns do)
-> detect the two fields (YOLO, ONNX) -> snap each box's ends to its row of boxes -> crop ->
read (CRNN, greedy CTC with the field's alphabet) -> validate (the exam type's regular
expressions) -> ``needs_review`` when a field is missing, breaks its rule or is under its
calibrated confidence threshold.

Models are ONNX files (the shipped ones) or the team's PyTorch weights: an Ultralytics ``.pt``
detector and CRNN state dicts (``.pth``) of :mod:`crnn`'s architecture, both read with
``torch.load(weights_only=True)`` and exported to ONNX once (cached by checksum). A model spec
is a path (relative to this folder) or ``owner/repo[@revision]:path/in/repo``.
"""

from __future__ import annotations

import ast
import hashlib
import logging
import math
import re
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import onnxruntime as ort
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ctc import ALPHABET, HEIGHT, MAX_WIDTH, greedy_decode
from shared.config import load_config
from shared.documents import DocumentLimits, load_document
from shared.errors import InputError, ModelLoadError
from shared.models import is_lfs_pointer, lfs_pointer_message
from shared.serving import ModelInfo

logger = logging.getLogger(__name__)

SPACE_DIR = Path(__file__).resolve().parent
CONFIG_PATH = SPACE_DIR / "config.yaml"
FIELDS = ("register_number", "subject_code")
PAGES = ("first", "all")
# Slack added around a detected box, in box heights. The reader was trained on crops with 0.05
# to 0.5 box heights beyond each end of the row (0.03 to 0.27 above and below), and the
# detector's ends land up to a third of a box height inside the row: 0.45 at the ends keeps
# the first and last characters whole. A box whose ends were snapped onto the row's ends
# (``snap_to_row``, within a few hundredths of a height) gets the middle of the trained range.
_PAD_ENDS = 0.45
_PAD_SNAPPED = 0.25
# Boxes per field and turn kept from the detector (best first), and the most read in place of
# a field's box that breaks its rule.
_POOL = 6
_ALTERNATES = 4
_PAD_SIDES = 0.15


# --- configuration -----------------------------------------------------------------------------


class FieldRule(BaseModel):
    """How one field is read and checked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pattern: str  # regular expression a value must match in full to be valid
    alphabet: str  # the characters the reader may output for this field

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as e:
            raise ValueError(f"not a regular expression ({e})") from e
        return value

    @field_validator("alphabet")
    @classmethod
    def _known(cls, value: str) -> str:
        unknown = sorted(set(value) - set(ALPHABET))
        if not value or unknown:
            raise ValueError(f"must be characters of {ALPHABET!r}; unknown: {unknown}")
        return value


class Settings(BaseModel):
    """config.yaml, after environment overrides."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    detector_model: str  # YOLO detector: .onnx or Ultralytics .pt; path or owner/repo:file
    register_model: str  # CRNN reader of the register number: .onnx or .pth
    subject_model: str  # CRNN reader of the subject code (the same file is loaded once)
    detector_confidence: float = Field(0.25, gt=0, lt=1)  # least score of a detected field
    # Least score of a box read in place of a field whose boxes break its rule or were not
    # found; such a box is taken only if its reading follows the rule.
    alternate_confidence: float = Field(0.05, gt=0, lt=1)
    # A candidate orientation whose two fields both score this much is taken without trying the
    # other one.
    orientation_confidence: float = Field(0.6, gt=0, lt=1)
    max_skew: float = Field(10.0, ge=0, le=20)  # degrees searched by the deskew step
    thresholds: dict[str, float]  # least field confidence accepted without review
    exam_types: dict[str, dict[str, FieldRule]]  # exam type -> field -> rule
    default_exam_type: str = "default"
    dpi: int = Field(200, ge=72, le=600)  # PDF render resolution
    max_pages: int = Field(20, ge=1)
    max_pixels: int = Field(40_000_000, ge=1_000_000)
    max_bytes: int = Field(20 * 2**20, ge=1024)  # largest upload
    max_request_bytes: int = Field(22 * 2**20, ge=1024)  # largest REST body (the form around it)
    threads: int | None = Field(None, ge=1)  # ONNX Runtime threads per model; None: all cores

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.default_exam_type not in self.exam_types:
            raise ValueError(
                f"default_exam_type {self.default_exam_type!r} is not one of exam_types "
                f"{sorted(self.exam_types)}"
            )
        for name, rules in self.exam_types.items():
            if set(rules) != set(FIELDS):
                raise ValueError(f"exam type {name!r} must give rules for exactly {FIELDS}")
        if self.alternate_confidence > self.detector_confidence:
            raise ValueError(
                f"alternate_confidence {self.alternate_confidence} must not exceed "
                f"detector_confidence {self.detector_confidence}"
            )
        if set(self.thresholds) != set(FIELDS):
            raise ValueError(f"thresholds must give exactly {FIELDS}")
        for name, value in self.thresholds.items():
            if not 0 <= value <= 1:
                raise ValueError(f"thresholds.{name} must be in [0, 1], got {value}")
        return self

    @property
    def limits(self) -> DocumentLimits:
        """The document limits every upload is checked against."""
        return DocumentLimits(
            max_pages=self.max_pages,
            dpi=self.dpi,
            max_pixels=self.max_pixels,
            max_bytes=self.max_bytes,
        )


def load_settings(path: Path = CONFIG_PATH, overrides: Sequence[Any] = ()) -> Settings:
    """The Space's settings: ``config.yaml`` with ``overrides`` (``shared.config``) on top."""
    return load_config(Settings, path, overrides)


# --- model files -------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    """The file's SHA-256, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_HUB_SPEC = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<rev>[\w./-]+))?:(?P<file>.+)$")


def resolve_file(spec: str, *, token: str | None = None) -> Path:
    """The local path of a model file: ``owner/repo[@revision]:file`` is fetched from the Hub;
    anything else is a path (relative ones from this Space's folder). LFS pointers are refused.
    """
    match = _HUB_SPEC.match(spec)
    if match and not Path(spec).exists():
        from huggingface_hub import hf_hub_download

        try:
            path = Path(
                hf_hub_download(match["repo"], match["file"], revision=match["rev"], token=token)
            )
        except Exception as e:  # the hub client raises many types; all mean "not available"
            raise ModelLoadError(
                f"could not fetch {match['file']} from {match['repo']} on the Hugging Face Hub "
                f"({type(e).__name__}: {' '.join(str(e).split())}); check the repo, the file "
                "name and HF_TOKEN, or point the setting at a local file"
            ) from e
    else:
        path = Path(spec).expanduser()
        path = path if path.is_absolute() else SPACE_DIR / path
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist (from {spec!r})")
    if is_lfs_pointer(path):
        raise ModelLoadError(lfs_pointer_message(path))
    return path


def _session(path: Path, threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle pool threads sleep instead of spinning: with the API's concurrent requests on a
    # few cores, spinning threads take the cores from the requests' decode and detection
    # (make bench-answer-sheet: +17-20% pages/s at concurrency 8, the same at 1).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for bad files
        raise ModelLoadError(f"{path.name} is not a loadable ONNX model ({e})") from e


def _onnx_cache(path: Path, kind: str) -> Path:
    """Where the ONNX export of a PyTorch weights file is kept (keyed by its checksum)."""
    folder = Path(tempfile.gettempdir()) / "answer-sheet-onnx"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{kind}-{sha256(path)[:16]}.onnx"


def _yolo_to_onnx(path: Path) -> Path:
    """Export an Ultralytics ``.pt`` detector to ONNX (once), reading it with weights_only;
    its class names go in the metadata, as Ultralytics' own export writes them."""
    out = _onnx_cache(path, "detector")
    if out.exists():
        return out
    import onnx
    import torch

    from yolo_weights import load_yolo_checkpoint

    model, imgsz = load_yolo_checkpoint(path)
    example = torch.zeros(1, 3, imgsz, imgsz)
    with torch.no_grad():  # not inference_mode: the exporter traces these tensors again
        model(example)  # builds the head's anchors and strides for this size
    tmp = out.with_suffix(".tmp")
    torch.onnx.export(
        model,
        (example,),
        str(tmp),
        input_names=["images"],
        output_names=["output0"],
        opset_version=17,
        dynamo=False,
    )
    proto = onnx.load(str(tmp))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "names", repr(dict(getattr(model, "names", {}) or {}))
    onnx.save(proto, str(tmp))
    tmp.replace(out)
    return out


def _crnn_to_onnx(path: Path) -> Path:
    out = _onnx_cache(path, "reader")
    if out.exists():
        return out
    from crnn import export_onnx, load_state_dict

    try:
        model = load_state_dict(path)
    except Exception as e:  # a pickle that needs code, or another architecture's keys
        raise ModelLoadError(
            f"{path.name} is not a CRNN state dict of crnn.py's architecture "
            f"({type(e).__name__}: {e})"
        ) from e
    return export_onnx(model, out)


@dataclass(frozen=True)
class LoadedFile:
    """A model file as ``/extract`` and ``/status`` name it."""

    name: str  # the configured spec
    sha256: str  # checksum of the file the spec resolved to
    format: str  # "onnx", or the PyTorch format it was exported from ("pt", "pth")

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "sha256": self.sha256, "format": self.format}


# --- detector ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Detection:
    """One detected field."""

    field: str
    confidence: float
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1) in the image's pixels
    snapped: bool = False  # the ends moved onto the row's ruled line (snap_to_row)


@dataclass(frozen=True)
class Orientation:
    """One quarter turn of the straightened page and what the detector found on it."""

    page: np.ndarray  # the page turned, full size, gray (what the readers read)
    turn: int  # degrees counter-clockwise: 0, 90, 180, 270
    found: dict[str, list[Detection]]  # candidate boxes per field, best first
    # Every box of either field scoring at least the alternates' least score, best first: read
    # only when a field's own boxes break its rule or are missing.
    pool: list[Detection] = field(default_factory=list)

    @property
    def score(self) -> float:
        """The sum of each field's best detection score."""
        return sum(c[0].confidence for c in self.found.values())


#: Class names other detectors give the fields (the team's own weights).
CLASS_ALIASES = {
    "register_number": ("register_number", "register", "register_no", "reg_no", "regno"),
    "subject_code": ("subject_code", "subject", "sub_code", "subjectcode", "code"),
}


def field_classes(names: str | None) -> dict[str, int]:
    """Each field's class index, from the detector's class names (Ultralytics writes them in
    the ONNX metadata as a dict literal); classes 0 and 1 when it names none."""
    if not names:
        return {name: i for i, name in enumerate(FIELDS)}
    try:
        table = ast.literal_eval(names)
    except (ValueError, SyntaxError) as e:
        raise ModelLoadError(
            f"the detector's class names are not readable ({names[:100]!r})"
        ) from e
    by_name = {
        str(v).strip().lower().replace(" ", "_").replace(".", ""): int(k)
        for k, v in dict(table).items()
    }
    if not by_name:
        return {name: i for i, name in enumerate(FIELDS)}
    classes = {}
    for field_name, aliases in CLASS_ALIASES.items():
        match = next((by_name[a] for a in aliases if a in by_name), None)
        if match is None:
            raise ModelLoadError(
                f"the detector has no class for {field_name} (its classes: {sorted(by_name)}); "
                f"name one of {list(aliases)}"
            )
        classes[field_name] = match
    return classes


class Detector:
    """YOLO (Ultralytics layout: ``(1, 4 + classes, anchors)`` output) through ONNX Runtime."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        self.session = _session(path, threads)
        shape = self.session.get_inputs()[0].shape  # (1, 3, imgsz, imgsz)
        self.imgsz = int(shape[2]) if isinstance(shape[2], int) else 640
        self.input = self.session.get_inputs()[0].name
        self.classes = field_classes(self.session.get_modelmeta().custom_metadata_map.get("names"))

    def shrink(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """An RGB page scaled to fit the input square, and the factor from its pixels back to
        the page's. Its quarter turns fit too: shrink once, then turn the small page."""
        h, w = image.shape[:2]
        scale = self.imgsz / max(h, w)
        if scale == 1:
            return image, 1.0
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        return cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA), 1 / scale

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, float, tuple[int, int]]:
        """Letterbox an RGB page to the input square: (tensor, scale, (pad_x, pad_y))."""
        resized, factor = self.shrink(image)
        scale = 1 / factor
        nh, nw = resized.shape[:2]
        px, py = (self.imgsz - nw) // 2, (self.imgsz - nh) // 2
        canvas = np.full((self.imgsz, self.imgsz, 3), 114, np.uint8)
        canvas[py : py + nh, px : px + nw] = resized
        tensor = canvas.transpose(2, 0, 1)[None].astype(np.float32) / 255.0  # (1, 3, S, S)
        return tensor, scale, (px, py)

    def detect(self, image: np.ndarray, min_confidence: float) -> dict[str, Detection]:
        """The best box of each field scoring at least ``min_confidence``."""
        return {name: c[0] for name, c in self.candidates(image, min_confidence, 1).items()}

    def candidates(
        self, image: np.ndarray, min_confidence: float, k: int = 3
    ) -> dict[str, list[Detection]]:
        """Up to ``k`` boxes of each field scoring at least ``min_confidence``, best first,
        none overlapping a better one (IoU over 0.5)."""
        tensor, scale, (px, py) = self.preprocess(image)
        out = self.session.run(None, {self.input: tensor})[0][0]  # (4 + classes, anchors)
        h, w = image.shape[:2]
        found: dict[str, list[Detection]] = {}
        for name, cls in self.classes.items():
            scores = out[4 + cls]
            picked: list[Detection] = []
            for i in np.argsort(-scores)[: 50 * k]:
                if scores[i] < min_confidence or len(picked) == k:
                    break
                cx, cy, bw, bh = out[:4, i]
                box = (
                    max(0.0, float((cx - bw / 2 - px) / scale)),
                    max(0.0, float((cy - bh / 2 - py) / scale)),
                    min(float(w), float((cx + bw / 2 - px) / scale)),
                    min(float(h), float((cy + bh / 2 - py) / scale)),
                )
                if all(box_iou(box, d.box) <= 0.5 for d in picked):
                    picked.append(Detection(name, float(scores[i]), box))
            if picked:
                found[name] = picked
        return found


def scale_box(box: Sequence[float], factor: float) -> tuple[float, float, float, float]:
    """An (x0, y0, x1, y1) box scaled by ``factor``."""
    return (box[0] * factor, box[1] * factor, box[2] * factor, box[3] * factor)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# --- reader ------------------------------------------------------------------------------------


class Reader:
    """The CRNN through ONNX Runtime: crops in, text and per-character confidences out."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        self.session = _session(path, threads)
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("alphabet", ALPHABET) != ALPHABET:
            raise ModelLoadError(f"{path.name} reads another alphabet ({meta['alphabet']!r})")
        self.input = self.session.get_inputs()[0].name

    @staticmethod
    def preprocess(gray: np.ndarray) -> np.ndarray:
        """A grayscale crop scaled to the reader's height (and at most its width)."""
        h, w = gray.shape
        width = max(8, min(MAX_WIDTH, round(w * HEIGHT / h)))
        return cv2.resize(gray, (width, HEIGHT), interpolation=cv2.INTER_AREA)

    def read(
        self, crops: Sequence[np.ndarray], alphabets: Sequence[str]
    ) -> list[tuple[str, list[float]]]:
        """Read crops (already preprocessed) in one batch, each with its own alphabet."""
        if not crops:
            return []
        width = max(c.shape[1] for c in crops)
        width = -(-width // 4) * 4
        batch = np.full((len(crops), 1, HEIGHT, width), 1.0, np.float32)
        for i, c in enumerate(crops):
            batch[i, 0, :, : c.shape[1]] = c / 255.0
        out = self.session.run(None, {self.input: batch})[0]  # (batch, time, classes)
        return [greedy_decode(out[i], a) for i, a in enumerate(alphabets)]


def snap_to_row(gray: np.ndarray, box: Sequence[float]) -> tuple[float, float, float, float]:
    """The detected box with its ends moved onto the ends of the row of boxes it lies on.

    A detector's box often ends inside the row, cutting off the first or last character (CTC
    then drops it, with no low confidence to show for it). Every box style has a ruled line
    along the bottom of the row (a comb's spine, the boxes' lower sides) and a wall at each
    end. The line's extent, found by a morphological opening with a horizontal line longer than
    a character's strokes, is where the row begins and ends, trimmed to the outermost walls
    (a pen stroke can run on from the line). Rules much longer than the box (a table's, a ruled
    answer line) are left out; the box keeps its ends when no line runs along its bottom.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    h = y1 - y0
    if h < 6 or x1 - x0 < h:
        return x0, y0, x1, y1
    rows, cols = gray.shape[:2]
    top, bottom = max(0, int(y1 - 0.6 * h)), min(rows, math.ceil(y1 + 0.35 * h))
    left, right = max(0, int(x0 - 2.5 * h)), min(cols, math.ceil(x1 + 2.5 * h))
    patch = gray[top:bottom, left:right]
    if patch.size == 0:
        return x0, y0, x1, y1
    _, ink = cv2.threshold(patch, 0, 255, cv2.THRESH_BINARY_INV | cv2.THRESH_OTSU)
    band = ink[max(0, int(y1 - 0.35 * h) - top) :]  # around the bottom line
    lines = cv2.morphologyEx(band, cv2.MORPH_OPEN, np.ones((1, max(3, round(0.6 * h))), np.uint8))
    _, labels, stats, _ = cv2.connectedComponentsWithStats(lines, connectivity=8)
    long = np.flatnonzero(stats[:, cv2.CC_STAT_WIDTH] > (x1 - x0) + 3 * h)
    covered = (lines > 0) & ~np.isin(labels, long[long > 0])
    columns = np.flatnonzero(covered.any(axis=0))
    # Runs of ruled columns, bridging the gaps between separate boxes (up to 0.45 heights).
    runs: list[list[int]] = []
    for x in columns:
        if runs and x - runs[-1][1] <= 0.45 * h:
            runs[-1][1] = int(x)
        else:
            runs.append([int(x), int(x)])
    if not runs:
        return x0, y0, x1, y1
    a, b = x0 - left, x1 - left
    start, end = max(runs, key=lambda r: min(r[1], b) - max(r[0], a))
    if min(end, b) - max(start, a) < 0.6 * (b - a):  # the line is not this box's row
        return x0, y0, x1, y1
    # The walls: vertical strokes at least 0.4 heights tall in the row's lower part (a comb's
    # teeth are under half a box tall; labels beside the row stay shorter than that there).
    walls = cv2.morphologyEx(
        ink[: max(1, round(y1 - top))],
        cv2.MORPH_OPEN,
        np.ones((max(3, round(0.4 * h)), 1), np.uint8),
    )
    inner = start + np.flatnonzero(walls[:, start : end + 1].any(axis=0))
    if len(inner):
        start = int(inner[0]) if inner[0] - start <= 1.5 * h else start
        end = int(inner[-1]) if end - inner[-1] <= 1.5 * h else end
    if start - a < -2 * h or end - b > 2 * h:  # it runs on past the row: not a row's line
        return x0, y0, x1, y1
    return float(left + start), y0, float(left + end + 1), y1


def snap_detection(gray: np.ndarray, det: Detection) -> Detection:
    """The detection with its ends on its row's ends (:func:`snap_to_row`) when they moved."""
    box = snap_to_row(gray, det.box)
    return det if box == tuple(det.box) else replace(det, box=box, snapped=True)


# --- orientation -------------------------------------------------------------------------------


def estimate_skew(gray: np.ndarray, max_skew: float) -> float:
    """The page's skew in degrees (counter-clockwise positive), from the sharpness of its ink
    projection profiles: rows of text, rules and boxes line up when the angle is right. Works
    the same whichever quarter turn the page is in."""
    h, w = gray.shape
    scale = 1000 / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    _, ink = cv2.threshold(small, 0, 1, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    ys, xs = np.nonzero(ink)
    if len(xs) < 200:  # a blank page: nothing to straighten
        return 0.0
    if len(xs) > 40_000:
        pick = np.random.default_rng(0).choice(len(xs), 40_000, replace=False)
        xs, ys = xs[pick], ys[pick]
    xs = xs.astype(np.float32) - small.shape[1] / 2
    ys = ys.astype(np.float32) - small.shape[0] / 2
    size = int(math.hypot(*small.shape)) + 2

    def sharpness(angles: np.ndarray) -> np.ndarray:
        t = np.radians(angles)[:, None].astype(np.float32)
        cos, sin = np.cos(t), np.sin(t)
        # Coordinates of every ink pixel after rotating the page by -angle (deskewed).
        rows = (ys * cos + xs * sin + size / 2).astype(np.int32)  # (angles, points)
        cols = (xs * cos - ys * sin + size / 2).astype(np.int32)
        scores = []
        for r, c in zip(rows, cols, strict=True):
            hr = np.bincount(r, minlength=size).astype(np.float64)
            hc = np.bincount(c, minlength=size).astype(np.float64)
            scores.append((hr**2).sum() + (hc**2).sum())
        return np.array(scores)

    coarse = np.arange(-max_skew, max_skew + 1e-6, 0.5)
    best = float(coarse[sharpness(coarse).argmax()])
    fine = np.arange(best - 0.5, best + 0.5 + 1e-6, 0.1)
    return round(float(fine[sharpness(fine).argmax()]), 2)


def rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate counter-clockwise by ``degrees``, growing the canvas so nothing is cut (white)."""
    if degrees == 0:
        return image
    m, nw, nh = _rotation_matrix(image.shape, degrees)
    white = (255,) * (image.shape[2] if image.ndim == 3 else 1)
    return cv2.warpAffine(image, m, (nw, nh), flags=cv2.INTER_LINEAR, borderValue=white)


def _rotation_matrix(shape: tuple[int, ...], degrees: float) -> tuple[np.ndarray, int, int]:
    """The affine matrix of :func:`rotate` and the rotated canvas's (width, height)."""
    h, w = shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(h * sin + w * cos), int(h * cos + w * sin)
    m[0, 2] += nw / 2 - w / 2
    m[1, 2] += nh / 2 - h / 2
    return m, nw, nh


def to_corrected(
    points: np.ndarray, shape: tuple[int, ...], deskew: float, turn: int
) -> np.ndarray:
    """Where points ``(n, 2)`` of the page as decoded land on the corrected page (after
    ``rotate(deskew)`` then ``quarter_turn(turn)``)."""
    m, nw, nh = _rotation_matrix(shape, deskew)
    pts = np.c_[points, np.ones(len(points))] @ m.T if deskew else np.asarray(points, float)
    width, height = (nw, nh) if deskew else (shape[1], shape[0])
    for _ in range(turn // 90):  # np.rot90: a quarter turn counter-clockwise each time
        pts = np.stack([pts[:, 1], width - pts[:, 0]], axis=1)
        width, height = height, width
    return pts


_QUARTER_TURNS = {
    90: cv2.ROTATE_90_COUNTERCLOCKWISE,
    180: cv2.ROTATE_180,
    270: cv2.ROTATE_90_CLOCKWISE,
}


def quarter_turn(image: np.ndarray, degrees: int) -> np.ndarray:
    """Rotate by 0, 90, 180 or 270 degrees counter-clockwise (exact, no resampling)."""
    degrees %= 360
    return image if degrees == 0 else cv2.rotate(image, _QUARTER_TURNS[degrees])


# --- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldResult:
    """One field as ``/extract`` reports it."""

    value: str | None  # the characters read; None when the field was not found
    confidence: float  # the lowest character confidence (0 when nothing was read)
    characters: list[dict[str, Any]]  # [{"char", "confidence"}] in reading order
    box: list[float] | None  # [x0, y0, x1, y1] in the corrected page's pixels
    detection_confidence: float | None  # the detector's score for the box
    valid: bool  # the value matches the exam type's rule
    accepted: bool  # valid and confident enough to skip review

    def to_json(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "confidence": round(self.confidence, 4),
            "characters": self.characters,
            "box": self.box,
            "detection_confidence": None
            if self.detection_confidence is None
            else round(self.detection_confidence, 4),
            "valid": self.valid,
            "accepted": self.accepted,
        }


@dataclass(frozen=True)
class PageResult:
    """What was read on one page."""

    page: int  # 1-based page number in the document
    fields: dict[str, FieldResult]
    rotation: int  # quarter turn applied (degrees counter-clockwise: 0, 90, 180, 270)
    deskew: float  # further rotation applied to straighten the page (degrees, ccw)
    size: tuple[int, int]  # (width, height) of the corrected page

    @property
    def needs_review(self) -> bool:
        """A field is missing, breaks its rule, or is under its confidence threshold."""
        return not all(f.accepted for f in self.fields.values())

    @property
    def reading_score(self) -> tuple[int, float]:
        """How well the page read: fields following their rule, then the sum of the fields'
        confidences (comparing turns of one page)."""
        return (
            sum(f.valid for f in self.fields.values()),
            sum(f.confidence for f in self.fields.values()),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            **{name: f.to_json() for name, f in self.fields.items()},
            "needs_review": self.needs_review,
            "page": self.page,
            "rotation": self.rotation,
            "deskew": round(self.deskew, 2),
            "page_size": list(self.size),
        }


@dataclass(frozen=True)
class Extraction:
    """The answer of one upload."""

    pages: list[PageResult]  # the pages read (one for pages="first")
    page_count: int  # pages in the document
    exam_type: str
    processing_ms: float
    models: dict[str, dict[str, str]]

    def to_json(self, mode: str) -> dict[str, Any]:
        """The ``/extract`` body: the first page's result at the top level; with
        ``pages=all``, every page's in ``pages`` too."""
        body = {
            **self.pages[0].to_json(),
            "needs_review": any(p.needs_review for p in self.pages),
            "page_count": self.page_count,
            "exam_type": self.exam_type,
            "processing_ms": round(self.processing_ms, 1),
            "models": self.models,
        }
        if mode == "all":
            body["pages"] = [p.to_json() for p in self.pages]
        return body


# --- the pipeline ------------------------------------------------------------------------------


class SheetReader:
    """The loaded models and the pipeline around them. Thread-safe: ONNX Runtime sessions run
    concurrently, and the pipeline keeps no state between calls but counters."""

    def __init__(
        self,
        settings: Settings,
        detector: Detector,
        readers: dict[str, Reader],
        files: dict[str, LoadedFile],
    ) -> None:
        self.settings = settings
        self.detector = detector
        self.readers = readers
        self.files = files
        self._lock = threading.Lock()
        self.pages_read = 0

    @classmethod
    def load(cls, settings: Settings, *, token: str | None = None) -> SheetReader:
        """Resolve, check and load the three model settings (a file named twice loads once)."""
        files: dict[str, LoadedFile] = {}
        loaded: dict[Path, Reader] = {}
        det_path = resolve_file(settings.detector_model, token=token)
        if det_path.suffix == ".pt":
            onnx_path = _yolo_to_onnx(det_path)
            files["detector"] = LoadedFile(settings.detector_model, sha256(det_path), "pt")
        else:
            onnx_path = det_path
            files["detector"] = LoadedFile(settings.detector_model, sha256(det_path), "onnx")
        detector = Detector(onnx_path, settings.threads)
        readers = {}
        for name, spec in (
            ("register_number", settings.register_model),
            ("subject_code", settings.subject_model),
        ):
            path = resolve_file(spec, token=token)
            fmt = "onnx" if path.suffix == ".onnx" else path.suffix.lstrip(".")
            if path not in loaded:
                loaded[path] = Reader(
                    path if fmt == "onnx" else _crnn_to_onnx(path), settings.threads
                )
            readers[name] = loaded[path]
            key = "register_reader" if name == "register_number" else "subject_reader"
            files[key] = LoadedFile(spec, sha256(path), fmt)
        return cls(settings, detector, readers, files)

    @property
    def info(self) -> ModelInfo:
        """What ``/health`` reports."""
        return ModelInfo(
            id=self.settings.detector_model,
            revision=None,
            device="cpu",
            precision="fp32",
            demo=False,
            extra={"files": {k: v.to_json() for k, v in self.files.items()}},
        )

    def status(self) -> dict[str, Any]:
        """The ``GET /status`` body (the web app's ``/extract/status`` reads it)."""
        s = self.settings
        return {
            "extraction_available": True,
            "mode": "onnx",
            "models": {k: v.to_json() for k, v in self.files.items()},
            "exam_types": {
                name: {f: r.pattern for f, r in rules.items()}
                for name, rules in s.exam_types.items()
            },
            "default_exam_type": s.default_exam_type,
            "thresholds": s.thresholds,
            "limits": {
                "max_bytes": s.max_bytes,
                "max_pages": s.max_pages,
                "max_pixels": s.max_pixels,
                "dpi": s.dpi,
                "formats": ["pdf", "png", "jpeg", "tiff", "bmp", "webp"],
            },
            "pages_read": self.pages_read,
        }

    def rules(self, exam_type: str | None) -> tuple[str, dict[str, FieldRule]]:
        """The exam type's name and rules; an unknown type is a 422 naming the known ones."""
        name = exam_type or self.settings.default_exam_type
        if name not in self.settings.exam_types:
            raise InputError(
                f"unknown exam_type {name!r}; known: {sorted(self.settings.exam_types)}"
            )
        return name, self.settings.exam_types[name]

    def extract(
        self, data: bytes, *, exam_type: str | None = None, pages: Literal["first", "all"] = "first"
    ) -> Extraction:
        """Read one uploaded document.

        Args:
            data: The file's bytes (PDF, PNG, JPEG, TIFF, BMP or WebP).
            exam_type: The rules to validate against (config.yaml ``exam_types``); the default
                type when None.
            pages: ``first`` reads only the first page (only it is rendered); ``all`` reads
                every page as its own sheet.

        Raises:
            InputError: the file is not a readable document, is over a limit, or the exam type
                or ``pages`` value is unknown.
        """
        started = time.perf_counter()
        if pages not in PAGES:
            raise InputError(f"pages must be one of {PAGES}, got {pages!r}")
        name, rules = self.rules(exam_type)
        limits = self.settings.limits
        document = load_document(data, limits=limits, first=1 if pages == "first" else None)
        results = [
            self.read_page(np.asarray(img), number, rules)
            for number, img in enumerate(document.pages, start=1)
        ]
        with self._lock:
            self.pages_read += len(results)
        return Extraction(
            pages=results,
            page_count=document.page_count,
            exam_type=name,
            processing_ms=(time.perf_counter() - started) * 1000,
            models={k: v.to_json() for k, v in self.files.items()},
        )

    def orient(self, rgb: np.ndarray) -> tuple[list[Orientation], float]:
        """Deskew, then try quarter turns until one finds both fields confidently; returns the
        turns tried, best detection score first, and the deskew angle."""
        angle = estimate_skew(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), self.settings.max_skew)
        straight = rotate(rgb, -angle)
        # Each turn is made of the readers' page (full size, gray) and of the detector's (its
        # input size): the full-size colour page is shrunk once, not turned.
        gray = cv2.cvtColor(straight, cv2.COLOR_RGB2GRAY)
        small, factor = self.detector.shrink(straight)
        h, w = straight.shape[:2]
        # Sheets are portrait: a landscape image is most likely a sideways page, one way or the
        # other; the other two turns are tried only when neither finds both fields (a photo
        # with a wide margin around the sheet).
        likely, unlikely = ((90, 270), (0, 180)) if w > h else ((0, 180), (90, 270))
        tried: list[Orientation] = []
        for turn in (*likely, *unlikely):
            if turn == unlikely[0] and len(max(tried, key=lambda o: o.score).found) == len(FIELDS):
                break
            low = {
                name: [replace(d, box=scale_box(d.box, factor)) for d in boxes]
                for name, boxes in self.detector.candidates(
                    quarter_turn(small, turn), self.settings.alternate_confidence, _POOL
                ).items()
            }
            page = quarter_turn(gray, turn)
            found = {
                name: kept
                for name, boxes in low.items()
                if (kept := [d for d in boxes if d.confidence >= self.settings.detector_confidence])
            }
            pool = sorted((d for boxes in low.values() for d in boxes), key=lambda d: -d.confidence)
            tried.append(Orientation(page, turn, found, pool))
            if (
                len(found) == len(FIELDS)
                and min(c[0].confidence for c in found.values())
                >= self.settings.orientation_confidence
            ):
                break
        return sorted(tried, key=lambda o: -o.score), -angle

    def read_page(self, rgb: np.ndarray, number: int, rules: Mapping[str, FieldRule]) -> PageResult:
        """Orient, detect, read and validate the fields of one page.

        The turn whose detections score best is read. When the first turn tried (upright, or
        sideways for a landscape image) was not found confidently, so that other turns were
        tried, the runner-up is read as well, and the turn whose readings follow more rules,
        then are more confident, is kept: on layouts unlike its training sheets the detector can
        score a page upside down above the page upright, but the reader cannot read the
        characters upside down.
        """
        tried, deskew = self.orient(rgb)
        return self.read_oriented(tried, number, deskew, rules)

    def read_oriented(
        self,
        tried: Sequence[Orientation],
        number: int,
        deskew: float,
        rules: Mapping[str, FieldRule],
    ) -> PageResult:
        """The fields of a page :meth:`orient` turned: its best turn, or the runner-up when
        that reads better (see :meth:`read_page`)."""
        best = self._read_turn(tried[0], number, deskew, rules)
        if len(tried) > 1 and tried[1].found:
            other = self._read_turn(tried[1], number, deskew, rules)
            if other.reading_score > best.reading_score:
                return other
        return best

    def _read_turn(
        self, turned: Orientation, number: int, deskew: float, rules: Mapping[str, FieldRule]
    ) -> PageResult:
        """Read and validate the fields on one turn of the page.

        Each field is read from its best box. When that reading breaks the field's rule, or
        the field was not found, other boxes are read: the field's next ones, then boxes of
        either field down to ``alternate_confidence``, and the first whose reading follows the
        rule (and is not the other field's box) is taken. The detector sometimes scores a date
        or seat number row above the field, gives the field's row to the other class, or
        scores it under ``detector_confidence``; the rule tells them apart where the few-pixel
        labels cannot.
        """
        gray, turn = turned.page, turned.turn
        candidates = turned.found  # snapped only when read: most pages read just the best
        best = {name: snap_detection(gray, c[0]) for name, c in candidates.items()}
        readings = self._read(gray, list(best.values()), rules)
        chosen = {name: (best[name], readings[i]) for i, name in enumerate(best)}
        for name in FIELDS:
            if name in chosen:
                first, reading = chosen[name]
                if reading is not None and re.fullmatch(rules[name].pattern, reading[0]):
                    continue
                listed = [first]
            else:
                listed = []
            taken = [d.box for n, (d, _) in chosen.items() if n != name]
            others: list[Detection] = []
            for box in (*candidates.get(name, [])[1:], *turned.pool):
                if len(others) == _ALTERNATES:
                    break
                if any(box_iou(box.box, d.box) > 0.5 for d in listed) or any(
                    box_iou(box.box, t) > 0.5 for t in taken
                ):
                    continue
                listed.append(box)
                others.append(snap_detection(gray, replace(box, field=name)))
            for alt, alt_reading in zip(others, self._read(gray, others, rules), strict=True):
                if alt_reading is not None and re.fullmatch(rules[name].pattern, alt_reading[0]):
                    chosen[name] = (alt, alt_reading)
                    break
        fields = {}
        for name in FIELDS:
            det, reading = chosen.get(name, (None, None))
            text, confs = reading if reading is not None else ("", [])
            value = text if det is not None else None
            confidence = min(confs) if confs else 0.0
            valid = value is not None and re.fullmatch(rules[name].pattern, value) is not None
            fields[name] = FieldResult(
                value=value,
                confidence=confidence,
                characters=[
                    {"char": c, "confidence": round(p, 4)} for c, p in zip(text, confs, strict=True)
                ],
                box=None if det is None else [round(v, 1) for v in det.box],
                detection_confidence=None if det is None else det.confidence,
                valid=valid,
                accepted=valid and confidence >= self.settings.thresholds[name],
            )
        h, w = gray.shape[:2]
        return PageResult(number, fields, turn, deskew, (w, h))

    def _read(
        self, gray: np.ndarray, boxes: Sequence[Detection], rules: Mapping[str, FieldRule]
    ) -> list[tuple[str, list[float]] | None]:
        """Each box's reading with its field's alphabet (None for a box too small to read);
        boxes sharing a reader are read in one batch."""
        h, w = gray.shape
        crops: list[np.ndarray | None] = []
        for det in boxes:
            x0, y0, x1, y1 = det.box
            px = (y1 - y0) * (_PAD_SNAPPED if det.snapped else _PAD_ENDS)
            py = (y1 - y0) * _PAD_SIDES
            crop = gray[
                max(0, int(y0 - py)) : min(h, math.ceil(y1 + py)),
                max(0, int(x0 - px)) : min(w, math.ceil(x1 + px)),
            ]
            big = crop.shape[0] >= 4 and crop.shape[1] >= 4
            crops.append(Reader.preprocess(crop) if big else None)
        out: list[tuple[str, list[float]] | None] = [None] * len(boxes)
        by_reader: dict[int, list[int]] = {}
        for i, det in enumerate(boxes):
            if crops[i] is not None:
                by_reader.setdefault(id(self.readers[det.field]), []).append(i)
        for indices in by_reader.values():
            reader = self.readers[boxes[indices[0]].field]
            read = reader.read(
                [crops[i] for i in indices],  # type: ignore[misc]
                [rules[boxes[i].field].alphabet for i in indices],
            )
            for i, r in zip(indices, read, strict=True):
                out[i] = r
        return out


def corrected_page(rgb: np.ndarray, page: Mapping[str, Any]) -> np.ndarray:
    """A decoded page turned the way ``/extract`` read it (its ``deskew``, then ``rotation``):
    the image its ``box`` coordinates refer to."""
    return quarter_turn(rotate(rgb, float(page["deskew"])), int(page["rotation"]))


def draw_fields(image: np.ndarray, page: Mapping[str, Any]) -> Image.Image:
    """The corrected page with each field's box drawn and labelled: green when accepted,
    orange when it needs review.

    Args:
        image: The corrected page (:func:`corrected_page`), RGB.
        page: The page's ``/extract`` result (the top level, or an entry of ``pages``).
    """
    image = image.copy()
    thickness = max(2, image.shape[1] // 400)
    scale = max(0.6, image.shape[1] / 1400)
    for name in FIELDS:
        f = page.get(name) or {}
        if not f.get("box"):
            continue
        x0, y0, x1, y1 = (int(v) for v in f["box"])
        color = (0, 150, 0) if f.get("accepted") else (230, 110, 0)
        cv2.rectangle(image, (x0, y0), (x1, y1), color, thickness)
        label = f"{name}: {f['value']} ({f['confidence']:.2f})"
        cv2.putText(
            image,
            label,
            (x0, max(int(30 * scale), y0 - int(10 * scale))),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            color,
            max(1, thickness // 2),
            cv2.LINE_AA,
        )
    return Image.fromarray(image)
