"""The synthetic sheet generator: reproducible, its fields follow the sheet rules, its boxes
are where the writing is, and the held-out styles share nothing with the training styles."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
import sheets

SUBJECT = re.compile(r"^[A-Z]{2}[A-Z0-9]{3,6}$")


def test_the_same_seed_draws_the_same_sheet():
    a, b = sheets.make_sheet(7, dpi=100), sheets.make_sheet(7, dpi=100)
    assert a.truth() == b.truth()
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert sheets.make_sheet(8, dpi=100).truth() != a.truth()


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10**9), st.sampled_from(sheets.FIELDS))
def test_field_texts_follow_the_sheet_rules(seed, kind):
    import random

    text = sheets.random_text(random.Random(seed), kind)
    if kind == "register_number":
        assert text.isdigit() and 8 <= len(text) <= 14
    else:
        assert SUBJECT.fullmatch(text)


def test_held_out_styles_share_no_font_layout_or_label_with_training():
    for role in ("hand", "print"):
        assert not set(sheets.FONTS[role]["train"]) & set(sheets.FONTS[role]["heldout"])
    assert not set(sheets.LAYOUTS["train"]) & set(sheets.LAYOUTS["heldout"])
    for kind in sheets.FIELDS:
        assert not set(sheets.LABELS["train"][kind]) & set(sheets.LABELS["heldout"][kind])
    styles = {sheets.make_sheet(i, "heldout", dpi=72).style.layout for i in range(6)}
    assert styles <= set(sheets.LAYOUTS["heldout"])


@pytest.mark.parametrize("turn", [0, 90, 180, 270])
def test_boxes_surround_the_ink_after_skew_and_turn(turn):
    clean = sheets.make_sheet(3, dpi=100, skew=0.0, rotation=0, effects=False)
    turned = sheets.make_sheet(3, dpi=100, skew=6.0, rotation=turn, effects=False)
    if turn in (90, 270):
        assert turned.image.width > turned.image.height  # a portrait page lying on its side
    gray = np.asarray(turned.image.convert("L"))
    for kind in sheets.FIELDS:
        x0, y0, x1, y1 = (int(v) for v in turned.fields[kind].box)
        assert 0 <= x0 < x1 <= gray.shape[1] and 0 <= y0 < y1 <= gray.shape[0]
        assert (gray[y0:y1, x0:x1] < 128).mean() > 0.05  # box lines and writing are inside
        assert turned.fields[kind].text == clean.fields[kind].text
        quad = np.asarray(turned.fields[kind].quad)
        assert quad[:, 0].min() == pytest.approx(x0, abs=1) and quad[:, 1].max() == pytest.approx(
            y1, abs=1
        )


def test_field_crops_are_reader_sized_and_hold_their_text():
    for seed in range(5):
        crop, text, kind = sheets.make_field_crop(seed, height=32)
        assert crop.dtype == np.uint8 and crop.shape[0] == 32 and crop.shape[1] > 32
        assert kind in sheets.FIELDS and text
        assert (crop < 128).mean() > 0.02


def test_truth_folders_are_what_evaluate_reads(tmp_path):
    path = sheets.write_truth_folder(tmp_path, 2, "heldout", seed=5, pdf=True)
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    import json

    record = json.loads(lines[0])
    assert (tmp_path / record["file"]).read_bytes().startswith(b"%PDF")
    assert set(record["fields"]) == set(sheets.FIELDS)
    assert record["style"]["split"] == "heldout"
