"""Synthetic exam answer sheets: a page with a register number and a subject code in boxes.

Every sheet is drawn from a :class:`Style` (the fonts of the printed matter and of the writer,
the layout family, the box style) and scan effects (skew, quarter turns, JPEG, noise, blur,
shadows, stamps and pen strokes across the boxes). Fonts and layouts are split in two:
``train`` styles are the only ones the models see, ``heldout`` styles (other fonts, other
layouts, other label wordings) measure how the models do on sheets unlike their training data.

Outputs, for each sheet: the page image, each field's string and the box around its row of
character boxes (page pixels, after every geometric effect), and the style drawn. Writers give
the Ultralytics detection layout (``images/``, ``labels/`` with one ``class cx cy w h`` line per
field), ``truth.jsonl`` (the evaluation format) and crops for the readers.

Usage (a folder of sheets with ground truth, e.g. to evaluate or to try the Space; or the UI's
examples):
    python training/sheets.py OUT --count 50 --split heldout [--seed 0] [--pdf]
    python training/sheets.py examples --examples
"""

from __future__ import annotations

import argparse
import json
import math
import random
import string
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path

import cv2
import numpy as np
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FIELDS = ("register_number", "subject_code")
SPLITS = ("train", "heldout")
DIGITS = string.digits
ALPHANUMERIC = string.ascii_uppercase + string.digits
FONT_DIR = Path("/usr/share/fonts")

#: Font files by role and split (Debian packages: see scripts/setup_system.sh). Handwriting-like
#: fonts write the characters; printed fonts set the labels and the printed matter, and the
#: characters of typed sheets.
FONTS: dict[str, dict[str, tuple[str, ...]]] = {
    "hand": {
        "train": (
            "truetype/fifthhorseman/dkg.ttf",
            "truetype/fifthhorseman/dkgBd.ttf",
            "truetype/breip/Breip.ttf",
            "opentype/bwht/BecauseWeBuild-Regular.otf",
            "opentype/bwht/BecauseWeConnect-Regular.otf",
            "opentype/bwht/BecauseWeCreate-Regular.otf",
            "opentype/bwht/BecauseWeLearn-Regular.otf",
            "truetype/humor-sans/Humor-Sans.ttf",
            "opentype/comic-neue/ComicNeue-Regular.otf",
            "opentype/comic-neue/ComicNeue-Bold.otf",
            "opentype/kaushanscript/KaushanScript-Regular.otf",
        ),
        "heldout": (
            "truetype/femkeklaver/femkeklaver.ttf",
            "truetype/kristi/Kristi.ttf",
            "opentype/bwht/BecauseWeMentor-Regular.otf",
            "opentype/bwht/BecauseWeOrganize-Regular.otf",
            "opentype/dancingscript/DancingScript-Regular.otf",
        ),
    },
    "print": {
        "train": (
            "truetype/dejavu/DejaVuSans.ttf",
            "truetype/dejavu/DejaVuSans-Bold.ttf",
            "truetype/dejavu/DejaVuSansMono.ttf",
            "truetype/liberation/LiberationSans-Regular.ttf",
            "truetype/liberation/LiberationSans-Bold.ttf",
            "truetype/liberation/LiberationSerif-Regular.ttf",
            "truetype/freefont/FreeSans.ttf",
            "fonts-go/Go-Regular.ttf",
            "truetype/lato/Lato-Regular.ttf",
            "opentype/cantarell/Cantarell-Regular.otf",
        ),
        "heldout": (
            "truetype/crosextra/Carlito-Regular.ttf",
            "opentype/linux-libertine/LinLibertine_R.otf",
            "truetype/inconsolata/Inconsolata.otf",
            "truetype/freefont/FreeMono.ttf",
            "truetype/liberation/LiberationMono-Regular.ttf",
            "truetype/dejavu/DejaVuSerif.ttf",
        ),
    },
}
#: How the two fields are placed: each family is a different arrangement of labels and boxes.
LAYOUTS = {"train": ("inline", "stacked", "pair"), "heldout": ("table", "corner")}
#: The printed labels of each field.
LABELS = {
    "train": {
        "register_number": (
            "REGISTER NUMBER",
            "Register No.",
            "Reg. No.",
            "REG. NO",
            "Register Number",
        ),
        "subject_code": ("SUBJECT CODE", "Subject Code", "Sub. Code", "SUB CODE"),
    },
    "heldout": {
        "register_number": ("Reg. Number", "REGISTER NO.", "Candidate Register No"),
        "subject_code": ("Subject code", "SUBJ. CODE", "Code of the Subject"),
    },
}
#: Other rows of boxes and numbers a sheet carries, so the detector learns the labels too.
DISTRACTORS = ("DATE", "Seat No.", "Booklet No.", "Room", "Q. Paper No.", "Semester")
#: Subject code shapes: L = letter, D = digit, A = either (e.g. CS3491, EC2T03, GE3151).
SUBJECT_PATTERNS = ("LLDDDD", "LLDDDD", "LLDDDD", "LLDLDD", "LLLDDD", "LLDDD", "LLLDDDD", "LLDDDDL")
PAGE_MM = {"A4": (210.0, 297.0), "Letter": (215.9, 279.4)}
WORDS = (
    "answer all questions write legibly use blue or black ink only do not write in the margin "
    "each question carries equal marks the candidate must sign below any malpractice will lead "
    "to disqualification mobile phones are not allowed inside the examination hall part section "
    "university examinations controller of semester end theory practical degree"
).split()
UNIVERSITIES = (
    "ANNA UNIVERSITY",
    "Kalinga Institute of Technology",
    "UNIVERSITY OF MADRAS",
    "St. Joseph's College of Engineering",
    "NATIONAL INSTITUTE OF SCIENCE",
    "Coastal University",
    "Government College of Technology",
    "SRI VENKATESWARA COLLEGE",
)


@dataclass(frozen=True)
class FieldTruth:
    """One field of a sheet: what is written and where its row of boxes is."""

    text: str  # the characters written in the boxes
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1) around the box row, page pixels
    # The row's corners (top-left, top-right, bottom-left, bottom-right) in page pixels: with
    # the page skewed, ``box`` is wider than the row, the corners are exact.
    quad: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class Style:
    """Everything a sheet's appearance is drawn from."""

    split: str  # "train" or "heldout": which fonts, layouts and labels
    layout: str  # the layout family (LAYOUTS)
    hand_font: str  # the writer's font (a path), or the printed font of a typed sheet
    print_font: str  # labels and printed matter
    handwritten: bool  # characters written by hand (most sheets) or typed
    box_style: str  # "boxes" (separate squares), "joined" (shared walls) or "comb"
    page: str  # "A4" or "Letter"


@dataclass
class Sheet:
    """A generated sheet: the page, the truth of both fields and how it was drawn."""

    image: Image.Image
    fields: dict[str, FieldTruth]
    style: Style
    dpi: int
    rotation: int  # quarter turns applied, in degrees counter-clockwise (0, 90, 180, 270)
    skew: float  # degrees, counter-clockwise
    extra: dict[str, object] = field(default_factory=dict)

    def truth(self) -> dict[str, object]:
        """The ground truth as one JSON-able record (the evaluation format)."""
        return {
            "fields": {
                k: {
                    "text": v.text,
                    "box": [round(c, 1) for c in v.box],
                    "quad": [[round(x, 1), round(y, 1)] for x, y in v.quad],
                }
                for k, v in self.fields.items()
            },
            "style": asdict(self.style),
            "dpi": self.dpi,
            "rotation": self.rotation,
            "skew": round(self.skew, 2),
        }


# --- fonts -------------------------------------------------------------------------------------


@cache
def covers(path: str, chars: str = ALPHANUMERIC) -> bool:
    """Whether the font file exists and has a glyph for every character in ``chars``."""
    try:
        cmap = TTFont(path, lazy=True).getBestCmap() or {}
    except Exception:
        return False
    return all(ord(c) in cmap for c in chars)


def fonts(role: str, split: str) -> list[str]:
    """The installed font files of a role ("hand" or "print") and split that cover A-Z0-9."""
    found = [str(FONT_DIR / p) for p in FONTS[role][split] if covers(str(FONT_DIR / p))]
    if not found:
        raise RuntimeError(
            f"no {role} fonts of the {split} split are installed under {FONT_DIR}: run "
            "scripts/setup_system.sh (Debian font packages)"
        )
    return found


@cache
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def font(path: str, size: float) -> ImageFont.FreeTypeFont:
    """The font at ``size`` pixels (sizes rounded so the cache stays small)."""
    return _font(path, max(6, round(size)))


# --- drawing -----------------------------------------------------------------------------------


def random_text(rng: random.Random, kind: str) -> str:
    """A register number (8-14 digits, most often 12) or a subject code."""
    if kind == "register_number":
        n = rng.choice((12, 12, 12, 12, 8, 9, 10, 11, 13, 14))
        return "".join(rng.choice(DIGITS) for _ in range(n))
    pattern = rng.choice(SUBJECT_PATTERNS)
    pools = {"L": string.ascii_uppercase, "D": DIGITS, "A": ALPHANUMERIC}
    return "".join(rng.choice(pools[p]) for p in pattern)


def random_style(rng: random.Random, split: str) -> Style:
    """A style of the split: fonts, layout, boxes and page drawn at random."""
    handwritten = rng.random() < 0.75
    return Style(
        split=split,
        layout=rng.choice(LAYOUTS[split]),
        hand_font=rng.choice(fonts("hand" if handwritten else "print", split)),
        print_font=rng.choice(fonts("print", split)),
        handwritten=handwritten,
        box_style=rng.choice(("boxes", "boxes", "joined", "joined", "comb")),
        page=rng.choice(("A4", "A4", "Letter")),
    )


class Canvas:
    """A white page and the drawing helpers that work in millimetres."""

    def __init__(self, width_mm: float, height_mm: float, dpi: int, rng: random.Random) -> None:
        self.dpi, self.rng = dpi, rng
        self.image = Image.new("L", (self.px(width_mm), self.px(height_mm)), 255)
        self.draw = ImageDraw.Draw(self.image)

    def px(self, mm: float) -> int:
        return round(mm * self.dpi / 25.4)

    def text(
        self,
        x_mm: float,
        y_mm: float,
        text: str,
        font_path: str,
        size_mm: float,
        fill: int = 0,
        anchor: str = "ls",
    ) -> tuple[float, float, float, float]:
        """Draw text with its baseline-left (by default) at the point; returns its box in mm."""
        f = font(font_path, self.px(size_mm))
        xy = (self.px(x_mm), self.px(y_mm))
        self.draw.text(xy, text, font=f, fill=fill, anchor=anchor)
        x0, y0, x1, y1 = self.draw.textbbox(xy, text, font=f, anchor=anchor)
        k = 25.4 / self.dpi
        return x0 * k, y0 * k, x1 * k, y1 * k

    def text_width(self, text: str, font_path: str, size_mm: float) -> float:
        return font(font_path, self.px(size_mm)).getlength(text) * 25.4 / self.dpi

    def line(
        self, x0: float, y0: float, x1: float, y1: float, width_mm: float = 0.3, fill: int = 0
    ) -> None:
        self.draw.line(
            [(self.px(x0), self.px(y0)), (self.px(x1), self.px(y1))],
            fill=fill,
            width=max(1, self.px(width_mm)),
        )

    def rect(
        self, x0: float, y0: float, x1: float, y1: float, width_mm: float = 0.3, fill: int = 0
    ) -> None:
        self.draw.rectangle(
            [self.px(x0), self.px(y0), self.px(x1), self.px(y1)],
            outline=fill,
            width=max(1, self.px(width_mm)),
        )


def draw_boxes(
    canvas: Canvas,
    x: float,
    y: float,
    n: int,
    cell: float,
    style: Style,
    gap: float,
    line_mm: float,
) -> tuple[float, float, float, float]:
    """A row of ``n`` character boxes with its top-left at (x, y); returns the row's box (mm)."""
    step = cell + (gap if style.box_style == "boxes" else 0.0)
    for i in range(n):
        x0 = x + i * step
        if style.box_style == "comb":
            canvas.line(x0, y + cell, x0 + cell, y + cell, line_mm)
            canvas.line(x0, y + cell * 0.55, x0, y + cell, line_mm)
            if i == n - 1:
                canvas.line(x0 + cell, y + cell * 0.55, x0 + cell, y + cell, line_mm)
        else:
            canvas.rect(x0, y, x0 + cell, y + cell, line_mm)
    return x, y, x + (n - 1) * step + cell, y + cell


def write_characters(
    canvas: Canvas,
    row: tuple[float, float, float, float],
    text: str,
    style: Style,
    rng: random.Random,
    ink: int,
) -> None:
    """Write one character per box, by hand (jittered size, slant and place) or typed."""
    x0, y0, x1, y1 = row
    n = len(text)
    cell = y1 - y0
    step = (x1 - x0 - cell) / (n - 1) if n > 1 else 0.0
    size = cell * (rng.uniform(0.55, 0.85) if style.handwritten else rng.uniform(0.5, 0.7))
    f = font(style.hand_font, canvas.px(size))
    for i, ch in enumerate(text):
        cx = x0 + i * step + cell / 2
        cy = y0 + cell / 2
        if not style.handwritten:
            canvas.draw.text((canvas.px(cx), canvas.px(cy)), ch, font=f, fill=ink, anchor="mm")
            continue
        # Each character on its own small layer: rotated, scaled and moved like a hand does.
        fs = font(style.hand_font, canvas.px(size * rng.uniform(0.85, 1.15)))
        side = canvas.px(cell * 1.6)
        layer = Image.new("L", (side, side), 0)
        ImageDraw.Draw(layer).text((side / 2, side / 2), ch, font=fs, fill=255, anchor="mm")
        if rng.random() < 0.5:  # pen pressure: thicker or thinner strokes
            k = rng.choice((3, 3, 5)) if canvas.dpi > 200 else 3
            layer = layer.filter(ImageFilter.MaxFilter(k))
        layer = layer.rotate(rng.uniform(-12, 12), resample=Image.BILINEAR)
        dx = canvas.px(cx + rng.uniform(-0.12, 0.12) * cell) - side // 2
        dy = canvas.px(cy + rng.uniform(-0.12, 0.1) * cell) - side // 2
        canvas.image.paste(ink, (dx, dy), layer)


def draw_field(
    canvas: Canvas,
    kind: str,
    text: str,
    style: Style,
    rng: random.Random,
    x: float,
    y: float,
    label_pos: str,
    cell: float,
    ink: int,
    max_x: float,
) -> tuple[float, float, float, float]:
    """A label and its row of boxes with the text written in; returns the row's box (mm).

    ``label_pos`` is "left" (the label before the boxes, on their middle line) or "above".
    """
    label = rng.choice(LABELS[style.split][kind])
    if rng.random() < 0.3 and not label.endswith((".", ":")):
        label += " :"
    size = cell * rng.uniform(0.42, 0.6)
    gap = cell * rng.uniform(0.1, 0.3)
    n = len(text)
    step = cell + (gap if style.box_style == "boxes" else 0.0)
    row_width = (n - 1) * step + cell
    if label_pos == "left":
        width = canvas.text_width(label, style.print_font, size)
        bx = x + width + cell * rng.uniform(0.4, 1.2)
        if bx + row_width > max_x:  # no room beside: the boxes go under the label
            label_pos = "above"
        else:
            canvas.text(x, y + cell / 2, label, style.print_font, size, anchor="lm")
            row = draw_boxes(canvas, bx, y, n, cell, style, gap, rng.uniform(0.2, 0.45))
    if label_pos == "above":
        canvas.text(x, y, label, style.print_font, size, anchor="ls")
        row = draw_boxes(canvas, x, y + cell * 0.35, n, cell, style, gap, rng.uniform(0.2, 0.45))
    write_characters(canvas, row, text, style, rng, ink)
    return row


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def draw_header(canvas: Canvas, style: Style, rng: random.Random, width: float) -> float:
    """The university name, a logo, the title; returns the y (mm) below them."""
    y = rng.uniform(12, 22)
    size = rng.uniform(5, 8)
    name = rng.choice(UNIVERSITIES)
    if rng.random() < 0.6:  # a logo: a ring with initials
        r = rng.uniform(6, 10)
        lx = rng.uniform(14, 20)
        canvas.draw.ellipse(
            [canvas.px(lx - r), canvas.px(y - r), canvas.px(lx + r), canvas.px(y + r)],
            outline=0,
            width=canvas.px(0.6),
        )
        canvas.text(
            lx, y, "".join(w[0] for w in name.split()[:3]), style.print_font, r * 0.7, anchor="mm"
        )
    canvas.text(width / 2, y + size / 3, name, style.print_font, size, anchor="ms")
    y += size + rng.uniform(3, 6)
    title = rng.choice(
        (
            "ANSWER BOOKLET",
            "END SEMESTER EXAMINATIONS",
            "Answer Sheet",
            "B.E. / B.Tech. DEGREE EXAMINATION",
        )
    )
    canvas.text(width / 2, y, title, style.print_font, size * 0.65, anchor="ms")
    y += rng.uniform(5, 9)
    if rng.random() < 0.7:
        canvas.line(10, y, width - 10, y, rng.uniform(0.3, 0.8))
        y += rng.uniform(4, 7)
    return y


def draw_distractor(
    canvas: Canvas,
    style: Style,
    rng: random.Random,
    x: float,
    y: float,
    cell: float,
    ink: int,
    max_x: float,
) -> float:
    """Another labelled field (a date in boxes, a seat number, a name line); returns its
    bottom (mm)."""
    label = rng.choice((*DISTRACTORS, "Name of the Candidate", "Signature"))
    size = cell * rng.uniform(0.42, 0.6)
    end = canvas.text(x, y + cell / 2, label, style.print_font, size, anchor="lm")[2]
    bx = end + cell * 0.8
    if label in ("Name of the Candidate", "Signature"):
        canvas.line(bx, y + cell * 0.9, min(max_x, bx + rng.uniform(50, 110)), y + cell * 0.9)
        if label.startswith("Name") and rng.random() < 0.7:
            canvas.text(
                bx + 3,
                y + cell * 0.8,
                rng.choice(("R. Kumar", "Priya S", "A. Mensah", "John", "S. Lakshmi")),
                style.hand_font,
                cell * 0.6,
                fill=ink,
            )
        return y + cell
    n = 8 if label == "DATE" else rng.randint(2, 8)
    n = max(1, min(n, int((max_x - bx) / (cell * 1.1))))
    if n < 2:
        return y + cell
    text = "".join(rng.choice(DIGITS) for _ in range(n))
    row = draw_boxes(canvas, bx, y, n, cell, style, cell * 0.15, rng.uniform(0.2, 0.4))
    if rng.random() < 0.8:
        write_characters(canvas, row, text, style, rng, ink)
    return y + cell


def draw_body(
    canvas: Canvas, style: Style, rng: random.Random, y: float, width: float, height: float
) -> None:
    """Instructions, a marks table and ruled answer lines below the fields."""
    size = rng.uniform(2.8, 3.8)
    for _ in range(rng.randint(1, 4)):
        canvas.text(15, y, _sentence(rng, rng.randint(6, 12)), style.print_font, size)
        y += size * 1.6
    y += 4
    if rng.random() < 0.8:  # the marks table
        cols, rows = rng.randint(5, 12), rng.randint(2, 4)
        cw = (width - 30) / cols
        rh = rng.uniform(6, 9)
        for r in range(rows + 1):
            canvas.line(15, y + r * rh, 15 + cols * cw, y + r * rh)
        for c in range(cols + 1):
            canvas.line(15 + c * cw, y, 15 + c * cw, y + rows * rh)
        for c in range(cols):
            canvas.text(
                15 + c * cw + cw / 2,
                y + rh * 0.7,
                str(c + 1),
                style.print_font,
                rh * 0.45,
                anchor="ms",
            )
        y += rows * rh + 8
    spacing = rng.uniform(7, 10)
    while y < height - 15:
        canvas.line(15, y, width - 15, y, 0.15, fill=rng.randint(120, 200))
        y += spacing


def layout_fields(
    canvas: Canvas, style: Style, rng: random.Random, texts: dict[str, str], y: float, width: float
) -> tuple[dict[str, tuple], float]:
    """Place the two fields (and distractors) by the style's layout; returns each field's row
    box (mm) and the y below the block."""
    cell = rng.uniform(5.5, 9.0)
    ink = rng.choice((0, 20, 40))
    rows: dict[str, tuple] = {}
    order = list(FIELDS) if rng.random() < 0.8 else list(reversed(FIELDS))
    left = rng.uniform(12, 30)
    right = width - 12
    gap_y = cell * rng.uniform(0.9, 2.0)
    if style.layout in ("inline", "stacked"):
        pos = "left" if style.layout == "inline" else "above"
        if rng.random() < 0.5:
            y = draw_distractor(canvas, style, rng, left, y, cell, ink, right) + gap_y
        for kind in order:
            if pos == "above":
                y += cell * 0.7
            rows[kind] = draw_field(
                canvas, kind, texts[kind], style, rng, left, y, pos, cell, ink, right
            )
            y = rows[kind][3] + gap_y
            if rng.random() < 0.35:
                y = draw_distractor(canvas, style, rng, left, y, cell, ink, right) + gap_y
    elif style.layout == "pair":
        # Both fields on one line when they fit; the register number first.
        y += cell * 0.7
        a = draw_field(
            canvas, order[0], texts[order[0]], style, rng, left, y, "above", cell, ink, right
        )
        x2 = a[2] + rng.uniform(8, 20)
        need = len(texts[order[1]]) * cell * 1.3
        if x2 + need > right:
            x2, y = left, a[3] + gap_y + cell * 0.7
        b = draw_field(
            canvas, order[1], texts[order[1]], style, rng, x2, y, "above", cell, ink, right
        )
        rows = {order[0]: a, order[1]: b}
        y = max(a[3], b[3]) + gap_y
        if rng.random() < 0.5:
            y = draw_distractor(canvas, style, rng, left, y, cell, ink, right) + gap_y
    elif style.layout == "table":
        # A bordered table: one row per item, the label in the first column.
        items = [*order, *rng.sample(("Name of the Candidate", "DATE", "Seat No."), 2)]
        rng.shuffle(items)
        row_h = cell * 1.7
        label_w = rng.uniform(45, 60)
        x1 = right - rng.uniform(0, 20)
        canvas.rect(left, y, x1, y + row_h * len(items), 0.5)
        canvas.line(left + label_w, y, left + label_w, y + row_h * len(items), 0.4)
        for i, item in enumerate(items):
            top = y + i * row_h
            if i:
                canvas.line(left, top, x1, top, 0.4)
            if item in FIELDS:
                label = rng.choice(LABELS[style.split][item])
                canvas.text(
                    left + 2, top + row_h / 2, label, style.print_font, cell * 0.5, anchor="lm"
                )
                by = top + (row_h - cell) / 2
                row = draw_boxes(
                    canvas,
                    left + label_w + 3,
                    by,
                    len(texts[item]),
                    cell,
                    style,
                    cell * 0.15,
                    rng.uniform(0.2, 0.4),
                )
                write_characters(canvas, row, texts[item], style, rng, ink)
                rows[item] = row
            else:
                canvas.text(
                    left + 2, top + row_h / 2, item, style.print_font, cell * 0.5, anchor="lm"
                )
        y += row_h * len(items) + gap_y
    else:  # "corner": the fields stacked at the top right, the candidate's details at the left
        for kind in order:
            n = len(texts[kind])
            step = cell * 1.18 if style.box_style == "boxes" else cell
            x = right - (n - 1) * step - cell - rng.uniform(0, 6)
            y += cell * 0.7
            rows[kind] = draw_field(
                canvas, kind, texts[kind], style, rng, x, y, "above", cell, ink, right + 1
            )
            y = rows[kind][3] + gap_y
        ly = rows[order[0]][1]
        for _ in range(2):
            ly = draw_distractor(canvas, style, rng, left, ly, cell, ink, width * 0.45) + gap_y
        y = max(y, ly)
    return rows, y


def draw_sheet(
    style: Style, texts: dict[str, str], dpi: int, rng: random.Random
) -> tuple[Image.Image, dict[str, tuple[float, float, float, float]]]:
    """A clean upright page (grayscale) and each field's box row in page pixels."""
    width, height = PAGE_MM[style.page]
    canvas = Canvas(width, height, dpi, rng)
    y = draw_header(canvas, style, rng, width)
    rows, y = layout_fields(canvas, style, rng, texts, y + rng.uniform(0, 10), width)
    draw_body(canvas, style, rng, y + rng.uniform(4, 12), width, height)
    k = dpi / 25.4
    return canvas.image, {f: tuple(c * k for c in rows[f]) for f in FIELDS}


# --- scan effects ------------------------------------------------------------------------------


def elastic(gray: np.ndarray, rng: np.random.Generator, alpha: float, sigma: float) -> np.ndarray:
    """Elastic distortion (Simard et al. 2003): a smooth random displacement field."""
    h, w = gray.shape
    dx = cv2.GaussianBlur(rng.uniform(-1, 1, (h, w)).astype(np.float32), (0, 0), sigma) * alpha
    dy = cv2.GaussianBlur(rng.uniform(-1, 1, (h, w)).astype(np.float32), (0, 0), sigma) * alpha
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(gray, xs + dx, ys + dy, cv2.INTER_LINEAR, borderValue=255)


def warp(
    page: Image.Image, rng: random.Random, nprng: np.random.Generator, dpi: int
) -> Image.Image:
    """Half of the time, the paper's elastic distortion (at a strength scaled to the dpi)."""
    if rng.random() >= 0.5:
        return page
    alpha, sigma = rng.uniform(0.5, 2.0) * dpi / 200, rng.uniform(6, 12) * dpi / 200
    return Image.fromarray(elastic(np.asarray(page), nprng, alpha, sigma))


def stamp_and_strokes(
    image: Image.Image, boxes: Sequence[tuple], rng: random.Random
) -> Image.Image:
    """A round ink stamp and pen strokes, often across a field's boxes."""
    rgb = image.convert("RGB")
    overlay = Image.new("RGBA", rgb.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    scale = rgb.width / 1000
    if rng.random() < 0.35:
        x0, y0, x1, y1 = rng.choice(boxes)
        cx = rng.uniform(x0, x1)
        cy = rng.uniform(y0 - 40 * scale, y1 + 40 * scale)
        r = rng.uniform(30, 60) * scale
        color = rng.choice(((170, 30, 40), (40, 60, 160), (110, 40, 140)))
        alpha = rng.randint(70, 150)
        for rr in (r, r * 0.78):
            draw.ellipse(
                [cx - rr, cy - rr, cx + rr, cy + rr],
                outline=(*color, alpha),
                width=max(1, int(3 * scale)),
            )
        draw.text(
            (cx, cy),
            "VERIFIED",
            fill=(*color, alpha),
            anchor="mm",
            font=font(str(FONT_DIR / FONTS["print"]["train"][1]), r * 0.3),
        )
    for _ in range(rng.choice((0, 0, 1, 1, 2))):
        x0, y0, x1, y1 = rng.choice(boxes)
        pts = [(rng.uniform(x0 - 50 * scale, x1), rng.uniform(y0, y1)) for _ in range(3)]
        color = rng.choice(((20, 20, 120), (10, 10, 10), (150, 20, 20)))
        draw.line(pts, fill=(*color, 200), width=max(1, int(rng.uniform(1, 2.5) * scale)))
    return Image.alpha_composite(rgb.convert("RGBA"), overlay).convert("RGB")


def scan(image: Image.Image, rng: random.Random, nprng: np.random.Generator) -> Image.Image:
    """Paper and scanner: shadow, paper and ink tone, noise, blur (no geometry change)."""
    out = np.asarray(image.convert("RGB"), dtype=np.float32)
    h, w = out.shape[:2]
    if rng.random() < 0.5:  # a shadow across the page
        xs = np.linspace(0, 1, w, dtype=np.float32)[None, :]
        ys = np.linspace(0, 1, h, dtype=np.float32)[:, None]
        a, b, c = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(-0.5, 0.5)
        shade = 1 - rng.uniform(0.1, 0.45) * np.clip(a * xs + b * ys + c, 0, 1)
        out *= shade[..., None]
    paper = rng.uniform(225, 255)
    ink_floor = rng.uniform(0, 60)
    out *= (paper - ink_floor) / 255
    out += ink_floor
    out += nprng.standard_normal(out.shape, dtype=np.float32) * rng.uniform(1, 9)
    if rng.random() < 0.5:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.3, 1.1) * max(w, h) / 1700 + 0.3)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def rotate_page(
    image: Image.Image, boxes: dict[str, tuple], angle: float, quarter: int
) -> tuple[Image.Image, dict[str, tuple], dict[str, tuple]]:
    """Skew by ``angle`` degrees and turn by ``quarter`` x 90 (both counter-clockwise), with
    the page's corners kept; returns the image, the upright box around each box's rotated
    corners, and those corners."""
    w, h = image.size
    theta = math.radians(angle)
    cos, sin = abs(math.cos(theta)), abs(math.sin(theta))
    nw, nh = int(w * cos + h * sin), int(w * sin + h * cos)
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    m[0, 2] += nw / 2 - w / 2
    m[1, 2] += nh / 2 - h / 2
    arr = cv2.warpAffine(
        np.asarray(image), m, (nw, nh), flags=cv2.INTER_LINEAR, borderValue=(255, 255, 255)
    )
    out = {}
    for name, (x0, y0, x1, y1) in boxes.items():
        pts = np.array([[x0, y0, 1], [x1, y0, 1], [x0, y1, 1], [x1, y1, 1]], np.float64) @ m.T
        out[name] = pts
    rot = Image.fromarray(arr)
    for _ in range(quarter // 90):  # 90 degrees counter-clockwise each time
        W = rot.width
        rot = rot.transpose(Image.Transpose.ROTATE_90)
        out = {k: np.stack([p[:, 1], W - p[:, 0]], axis=1) for k, p in out.items()}
    aabbs = {
        k: (float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max()))
        for k, p in out.items()
    }
    quads = {k: tuple((float(x), float(y)) for x, y in p[:, :2]) for k, p in out.items()}
    return rot, aabbs, quads


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    """The image after a JPEG round trip at ``quality``."""
    import io

    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def make_sheet(
    seed: int,
    split: str = "train",
    *,
    dpi: int | None = None,
    skew: float | None = None,
    rotation: int | None = None,
    effects: bool = True,
) -> Sheet:
    """One sheet, the same for the same arguments.

    Args:
        seed: Seed of everything drawn.
        split: "train" or "heldout" styles.
        dpi: Scan resolution; drawn from 150-300 when None.
        skew: Degrees of skew; drawn from ±10 when None (a third of sheets are straight).
        rotation: Quarter turn (0, 90, 180, 270); 0 for 85% of sheets when None, else drawn.
        effects: Scan effects (stamps, strokes, warp, shadow, noise, JPEG) when True.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(f"{split}-{seed}")
    nprng = np.random.default_rng(rng.getrandbits(32))
    style = random_style(rng, split)
    dpi = dpi or rng.choice((150, 200, 200, 240, 300))
    texts = {kind: random_text(rng, kind) for kind in FIELDS}
    page, boxes = draw_sheet(style, texts, dpi, rng)
    if effects:
        page = warp(page, rng, nprng, dpi)
    image = stamp_and_strokes(page, list(boxes.values()), rng) if effects else page.convert("RGB")
    if effects:
        image = scan(image, rng, nprng)
    if skew is None:
        skew = 0.0 if rng.random() < 0.3 else rng.uniform(-10, 10)
    if rotation is None:
        rotation = 0 if rng.random() < 0.85 else rng.choice((90, 180, 270))
    image, boxes, quads = rotate_page(image, boxes, skew, rotation)
    if effects and rng.random() < 0.7:
        image = jpeg(image, rng.randint(35, 95))
    fields = {k: FieldTruth(texts[k], boxes[k], quads[k]) for k in FIELDS}
    return Sheet(image, fields, style, dpi, rotation, skew)


def make_field_crop(
    seed: int, split: str = "train", kind: str | None = None, *, height: int = 32
) -> tuple[np.ndarray, str, str]:
    """A reader's training sample: one field drawn alone (label, boxes, writing, distractors and
    scan effects as on a sheet), cropped around its box row with the slack of a detector's box
    and a residual skew; returns (grayscale crop ``height`` px tall, text, field kind)."""
    rng = random.Random(f"crop-{split}-{seed}")
    nprng = np.random.default_rng(rng.getrandbits(32))
    style = random_style(rng, split)
    kind = kind or rng.choice(FIELDS)
    text = random_text(rng, kind)
    cell = rng.uniform(5.5, 9.0)
    # Drawn at a resolution where a box is 28-70 px: the crop is scaled to ``height`` anyway,
    # and a 300 dpi canvas would cost ten times the pixels for the same sample.
    dpi = int(rng.uniform(28, 70) * 25.4 / cell)
    label_pos = "left" if style.layout in ("inline", "table") else "above"
    width = 16 + len(text) * cell * 1.3 + (60 if label_pos == "left" else 20)
    canvas = Canvas(width, cell * 5, dpi, rng)
    if style.layout == "table":  # the table's rules around the row
        canvas.rect(2, cell * 1.2, width - 2, cell * 3.2, 0.4)
    row = draw_field(
        canvas,
        kind,
        text,
        style,
        rng,
        4,
        cell * 1.7,
        label_pos,
        cell,
        rng.choice((0, 20, 40)),
        width - 2,
    )
    if rng.random() < 0.3:  # the next row's boxes just below
        draw_boxes(
            canvas,
            row[0] + rng.uniform(-5, 5),
            row[3] + cell * rng.uniform(0.4, 0.9),
            rng.randint(2, 12),
            cell,
            style,
            cell * 0.15,
            0.3,
        )
    k = dpi / 25.4
    box = tuple(c * k for c in row)
    page = warp(canvas.image, rng, nprng, dpi)
    image = scan(stamp_and_strokes(page, [box], rng), rng, nprng)
    image, boxes, _ = rotate_page(image, {"f": box}, rng.uniform(-1.5, 1.5), 0)
    if rng.random() < 0.7:
        image = jpeg(image, rng.randint(35, 95))
    x0, y0, x1, y1 = boxes["f"]
    h = y1 - y0
    # A detector's box is off by a few percent on each side; the reader pads by 15%.
    x0 += h * rng.uniform(-0.35, 0.1) - 0.15 * h
    x1 += h * rng.uniform(-0.1, 0.35) + 0.15 * h
    y0 += h * rng.uniform(-0.12, 0.12) - 0.15 * h
    y1 += h * rng.uniform(-0.12, 0.12) + 0.15 * h
    crop = image.convert("L").crop((int(x0), int(y0), math.ceil(x1), math.ceil(y1)))
    scale = height / crop.height
    crop = crop.resize((max(8, round(crop.width * scale)), height), Image.BILINEAR)
    return np.asarray(crop), text, kind


def iter_sheets(count: int, split: str, seed: int = 0, **kwargs: object) -> Iterator[Sheet]:
    """``count`` sheets of a split, seeds ``seed`` .. ``seed + count - 1``."""
    for i in range(count):
        yield make_sheet(seed + i, split, **kwargs)  # type: ignore[arg-type]


def write_truth_folder(
    out: Path, count: int, split: str, seed: int = 0, *, pdf: bool = False
) -> Path:
    """Sheets as files (PNG, or one-page PDFs) and ``truth.jsonl`` (one record per file, with
    its ``file``): the format ``evaluate.py`` reads."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "truth.jsonl").open("w", encoding="utf-8") as f:
        for i, sheet in enumerate(iter_sheets(count, split, seed)):
            name = f"{split}-{seed + i:05d}" + (".pdf" if pdf else ".png")
            if pdf:
                sheet.image.save(out / name, "PDF", resolution=sheet.dpi)
            else:
                sheet.image.save(out / name)
            f.write(json.dumps({"file": name, **sheet.truth()}) + "\n")
    return out / "truth.jsonl"


#: The UI's examples (examples/): (file name, split, seed, dpi, skew, quarter turn).
EXAMPLES = (
    ("sheet-upright.jpg", "train", 900_001, 150, 2.5, 0),
    ("sheet-heldout-style-sideways.jpg", "heldout", 900_002, 150, -4.0, 90),
    ("sheet-upside-down.jpg", "heldout", 900_003, 150, 1.0, 180),
)


def write_examples(out: Path) -> list[Path]:
    """The UI's example sheets (JPEG) and a two-page PDF, with ``truth.jsonl``."""
    out.mkdir(parents=True, exist_ok=True)
    written, records = [], []
    for name, split, seed, dpi, skew, turn in EXAMPLES:
        sheet = make_sheet(seed, split, dpi=dpi, skew=skew, rotation=turn)
        sheet.image.save(out / name, quality=85)
        written.append(out / name)
        records.append({"file": name, **sheet.truth()})
    pdf_pages = [make_sheet(900_010 + i, "train", dpi=150, skew=0.0, rotation=0) for i in range(2)]
    pdf = out / "two-sheets.pdf"
    pdf_pages[0].image.save(
        pdf, "PDF", resolution=150, save_all=True, append_images=[pdf_pages[1].image]
    )
    written.append(pdf)
    records.append(
        {"file": pdf.name, "pages": [p.truth() for p in pdf_pages], **pdf_pages[0].truth()}
    )
    (out / "truth.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return written


def main(argv: Sequence[str] | None = None) -> None:
    """Write a folder of generated sheets with their ground truth."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--split", choices=SPLITS, default="heldout")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pdf", action="store_true", help="write one-page PDFs, not PNGs")
    parser.add_argument("--examples", action="store_true", help="write the UI's examples to OUT")
    args = parser.parse_args(argv)
    if args.examples:
        for path in write_examples(args.out):
            print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
        return
    path = write_truth_folder(args.out, args.count, args.split, args.seed, pdf=args.pdf)
    print(f"wrote {args.count} sheets and {path}")


if __name__ == "__main__":
    main()
