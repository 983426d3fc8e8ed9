"""Tests for shared.labels: mapping raw classifier labels to a Space's canonical labels."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import ModelLoadError
from shared.labels import LABEL_MAP_FILENAME, LabelMapper, LabelMappingError, load_label_map

CANONICAL = ["harmful", "safe"]
JIGSAW = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
TOXIC_NON_TOXIC = {"toxic": "harmful", "non_toxic": "safe"}


def _write_label_map(model_dir, content):
    path = model_dir / LABEL_MAP_FILENAME
    path.write_text(content if isinstance(content, str) else json.dumps(content), "utf-8")
    return path


# --- the one rule: label_map.json, else the config's map, else an error ------------------------


def test_generic_labels_map_through_the_space_config():
    mapper = LabelMapper.build(
        ["LABEL_0", "LABEL_1"], CANONICAL, config_map={"LABEL_0": "Safe", "LABEL_1": "HARMFUL"}
    )
    assert mapper.mapping == {"LABEL_0": "safe", "LABEL_1": "harmful"}


def test_generic_labels_map_through_label_map_json(tmp_path):
    path = _write_label_map(tmp_path, {"LABEL_0": "harmful", "LABEL_1": "safe"})
    mapper = LabelMapper.build(["LABEL_0", "LABEL_1"], CANONICAL, label_map_file=path)
    assert mapper.mapping == {"LABEL_0": "harmful", "LABEL_1": "safe"}


def test_label_map_json_targets_match_ignoring_case(tmp_path):
    path = _write_label_map(tmp_path, {"toxic": "HARMFUL", "clean": "Safe"})
    mapper = LabelMapper.build(["toxic", "clean"], CANONICAL, label_map_file=path)
    assert mapper.mapping == {"toxic": "harmful", "clean": "safe"}


def test_a_missing_label_map_file_is_skipped_for_the_config_map(tmp_path):
    mapper = LabelMapper.build(
        ["toxic", "non_toxic"],
        CANONICAL,
        label_map_file=tmp_path / LABEL_MAP_FILENAME,
        config_map={"toxic": "harmful", "non_toxic": "safe"},
    )
    assert mapper.mapping == {"toxic": "harmful", "non_toxic": "safe"}


def test_label_map_json_wins_over_the_config_map_whole(tmp_path):
    path = _write_label_map(tmp_path, {"LABEL_0": "harmful", "LABEL_1": "safe"})
    mapper = LabelMapper.build(
        ["LABEL_0", "LABEL_1"],
        CANONICAL,
        label_map_file=path,
        config_map={"LABEL_0": "safe", "LABEL_1": "harmful", "LABEL_9": "nonsense"},
    )
    assert mapper.mapping == {"LABEL_0": "harmful", "LABEL_1": "safe"}


def test_a_partial_label_map_json_does_not_borrow_from_the_config(tmp_path):
    path = _write_label_map(tmp_path, {"LABEL_1": "harmful"})
    with pytest.raises(LabelMappingError) as caught:
        LabelMapper.build(
            ["LABEL_0", "LABEL_1"],
            CANONICAL,
            label_map_file=path,
            config_map={"LABEL_0": "safe", "LABEL_1": "harmful"},
        )
    assert str(caught.value) == (
        f"{path} does not map the model label(s) ['LABEL_0']; the model's labels are "
        "['LABEL_0', 'LABEL_1']: map each to one of ['harmful', 'safe']"
    )


@pytest.mark.parametrize("config_map", [None, {}])
def test_no_map_is_a_model_load_error_listing_the_labels(tmp_path, config_map):
    # Named labels are not guessed either: the Space's own alias table, if it has one, makes
    # the config map.
    with pytest.raises(ModelLoadError) as caught:
        LabelMapper.build(
            ["toxic", "clean"],
            CANONICAL,
            label_map_file=tmp_path / LABEL_MAP_FILENAME,
            config_map=config_map,
        )
    assert isinstance(caught.value, LabelMappingError)
    assert str(caught.value) == (
        "no label map for the model's labels ['toxic', 'clean']: add a label_map.json beside "
        "the model or set label_map in the Space config (each label to one of "
        "['harmful', 'safe'])"
    )


def test_an_unmapped_label_is_refused_listing_the_labels():
    with pytest.raises(LabelMappingError) as caught:
        LabelMapper.build(["LABEL_0", "LABEL_1"], CANONICAL, config_map={"LABEL_0": "safe"})
    assert str(caught.value) == (
        "the Space config's label_map does not map the model label(s) ['LABEL_1']; the model's "
        "labels are ['LABEL_0', 'LABEL_1']: map each to one of ['harmful', 'safe']"
    )


def test_a_label_the_model_lacks_is_refused_even_in_label_map_json(tmp_path):
    path = _write_label_map(tmp_path, {"LABEL_0": "safe", "LABEL_1": "harmful", "x": "safe"})
    with pytest.raises(LabelMappingError, match=r"maps \['x'\], which the model does not have"):
        LabelMapper.build(["LABEL_0", "LABEL_1"], CANONICAL, label_map_file=path)


# --- startup errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {"config_map": {"LABEL_0": "benign", "LABEL_1": "harmful"}},
            "the Space config's label_map maps model label 'LABEL_0' to 'benign', which is not "
            "a canonical label; use one of ['harmful', 'safe']",
        ),
        (
            {"config_map": {"LABEL_0": "safe", "LABEL_1": "harmful", "LABEL_2": "safe"}},
            "the Space config's label_map maps ['LABEL_2'], which the model does not have; "
            "the model's labels are ['LABEL_0', 'LABEL_1']",
        ),
        (
            {"config_map": {0: "safe", "LABEL_1": "harmful"}},
            "the Space config's label_map maps [0], which the model does not have",
        ),
        (
            {"config_map": {"LABEL_0": 1, "LABEL_1": "harmful"}},
            "the Space config's label_map maps model label 'LABEL_0' to 1, which is not a "
            "canonical label",
        ),
        (
            {"config_map": {"LABEL_0": "harmful", "LABEL_1": "harmful"}},
            "canonical label(s) ['safe'] get no model label; the mapping is "
            "{'LABEL_0': 'harmful', 'LABEL_1': 'harmful'} and the model's labels are "
            "['LABEL_0', 'LABEL_1']",
        ),
        (
            {"config_map": {"LABEL_0": "safe", "LABEL_1": "harmful"}, "complement": "unsafe"},
            "complement 'unsafe' is not a canonical label; use one of ['harmful', 'safe']",
        ),
    ],
)
def test_bad_mappings_fail_at_build_with_a_message_that_says_what_to_fix(kwargs, expected):
    with pytest.raises(LabelMappingError) as caught:
        LabelMapper.build(["LABEL_0", "LABEL_1"], CANONICAL, **kwargs)
    assert expected in str(caught.value)


def test_a_map_that_targets_other_names_is_refused():
    with pytest.raises(LabelMappingError, match="maps model label 'toxic' to 'harmful', which"):
        LabelMapper.build(
            ["toxic", "non-toxic"],
            ["toxic_content", "fine"],
            config_map={"toxic": "harmful", "non-toxic": "safe"},
        )


@pytest.mark.parametrize(
    ("model_labels", "canonical", "expected"),
    [
        ([], CANONICAL, "the model labels are empty"),
        (["toxic", "toxic"], CANONICAL, "model labels must be unique; ['toxic'] appear"),
        (["toxic", ""], CANONICAL, "model labels must be non-empty strings, got ''"),
        (["toxic", "safe"], ["harmful", "harmful"], "canonical labels must be unique"),
        ("toxic", CANONICAL, "the model labels must be a list of names, got the string 'toxic'"),
    ],
)
def test_label_lists_are_checked(model_labels, canonical, expected):
    with pytest.raises(LabelMappingError) as caught:
        LabelMapper.build(model_labels, canonical, config_map={"toxic": "harmful"})
    assert expected in str(caught.value)


def test_canonical_of_an_unknown_label_lists_the_model_labels():
    mapper = LabelMapper.build(["toxic", "non_toxic"], CANONICAL, config_map=TOXIC_NON_TOXIC)
    with pytest.raises(LabelMappingError, match=r"'LABEL_0' is not a label of this model; its"):
        mapper.canonical_of("LABEL_0")


# --- load_label_map -----------------------------------------------------------------------------


def test_load_label_map_reads_the_file_or_returns_none(tmp_path):
    assert load_label_map(tmp_path) is None
    _write_label_map(tmp_path, {"LABEL_0": "safe", "LABEL_1": "harmful"})
    assert load_label_map(tmp_path) == {"LABEL_0": "safe", "LABEL_1": "harmful"}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"LABEL_0": "safe",}', "is not valid JSON (Expecting property name"),
        ('["safe", "harmful"]', "holds a JSON list; it must be a JSON object such as"),
        ('{"LABEL_0": 0}', "maps 'LABEL_0' to 0, which is not a string"),
        ('{"LABEL_0": null}', "maps 'LABEL_0' to None, which is not a string"),
    ],
)
def test_load_label_map_explains_a_malformed_file(tmp_path, content, expected):
    path = _write_label_map(tmp_path, content)
    with pytest.raises(LabelMappingError) as caught:
        load_label_map(tmp_path)
    assert str(path) in str(caught.value)
    assert expected in str(caught.value)


def test_a_folder_given_as_the_label_map_file_is_refused(tmp_path):
    with pytest.raises(LabelMappingError, match=r"is a folder; pass the label_map\.json file"):
        LabelMapper.build(["LABEL_0"], ["safe"], label_map_file=tmp_path)


def test_load_label_map_refuses_binary_files(tmp_path):
    (tmp_path / LABEL_MAP_FILENAME).write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(LabelMappingError, match="is not UTF-8 text"):
        load_label_map(tmp_path)


# --- aggregate ----------------------------------------------------------------------------------


def test_softmax_sums_each_canonical_label():
    mapper = LabelMapper.build(
        ["hate_speech", "offensive_language", "neither"],
        CANONICAL,
        config_map={"hate_speech": "harmful", "offensive_language": "harmful", "neither": "safe"},
    )
    scores = mapper.aggregate(
        {"neither": 0.6, "hate_speech": 0.1, "offensive_language": 0.3}, "softmax"
    )
    assert list(scores) == CANONICAL
    assert scores == pytest.approx({"harmful": 0.4, "safe": 0.6})


def test_sigmoid_takes_the_max_head_and_the_complement_for_a_missing_safe_head():
    mapper = LabelMapper.build(
        JIGSAW, CANONICAL, config_map=dict.fromkeys(JIGSAW, "harmful"), complement="safe"
    )
    heads = dict.fromkeys(JIGSAW, 0.01) | {"insult": 0.7, "toxic": 0.9}

    scores = mapper.aggregate(heads, "sigmoid")

    assert scores == pytest.approx({"harmful": 0.9, "safe": 0.1})
    assert list(scores) == CANONICAL


def test_jigsaw_heads_without_a_complement_are_refused():
    with pytest.raises(LabelMappingError, match=r"canonical label\(s\) \['safe'\] get no model"):
        LabelMapper.build(JIGSAW, CANONICAL, config_map=dict.fromkeys(JIGSAW, "harmful"))


def test_an_explicit_safe_head_wins_over_the_complement():
    mapper = LabelMapper.build(
        ["toxic", "non_toxic"], CANONICAL, config_map=TOXIC_NON_TOXIC, complement="safe"
    )
    assert mapper.aggregate({"toxic": 0.7, "non_toxic": 0.2}, "sigmoid") == pytest.approx(
        {"harmful": 0.7, "safe": 0.2}
    )


def test_softmax_complement_is_what_the_other_labels_leave():
    mapper = LabelMapper.build(
        ["LABEL_0", "LABEL_1"],
        ["hate", "offensive", "other"],
        config_map={"LABEL_0": "hate", "LABEL_1": "offensive"},
        complement="other",
    )
    scores = mapper.aggregate({"LABEL_0": 0.25, "LABEL_1": 0.5}, "softmax")
    assert scores == pytest.approx({"hate": 0.25, "offensive": 0.5, "other": 0.25})


def test_aggregate_accepts_numpy_scores():
    mapper = LabelMapper.build(
        ["LABEL_0", "LABEL_1"], CANONICAL, config_map={"LABEL_0": "safe", "LABEL_1": "harmful"}
    )
    probabilities = np.array([0.25, 0.75], dtype=np.float32)
    scores = mapper.aggregate(dict(zip(mapper.raw_labels, probabilities, strict=True)), "softmax")
    assert scores == pytest.approx({"harmful": 0.75, "safe": 0.25})
    assert all(type(score) is float for score in scores.values())


@pytest.mark.parametrize(
    ("raw_scores", "mode", "error", "expected"),
    [
        ({"toxic": 0.5}, "softmax", LabelMappingError, "missing ['non_toxic'], unknown []"),
        (
            {"toxic": 0.5, "non_toxic": 0.5, "LABEL_2": 0.0},
            "softmax",
            LabelMappingError,
            "scores must have one entry per model label ['toxic', 'non_toxic']; "
            "missing [], unknown ['LABEL_2']",
        ),
        ({"toxic": 0.5, "non_toxic": 0.5}, "argmax", ValueError, "mode must be 'softmax' or"),
        ({"toxic": 3.2, "non_toxic": -1.0}, "softmax", ValueError, "apply softmax or sigmoid"),
        ({"toxic": math.nan, "non_toxic": 0.5}, "sigmoid", ValueError, "is nan; aggregate()"),
        ({"toxic": "0.5", "non_toxic": 0.5}, "sigmoid", ValueError, "must be a number"),
        ({"toxic": True, "non_toxic": 0.5}, "sigmoid", ValueError, "must be a number"),
    ],
)
def test_aggregate_checks_its_input(raw_scores, mode, error, expected):
    mapper = LabelMapper.build(["toxic", "non_toxic"], CANONICAL, config_map=TOXIC_NON_TOXIC)
    with pytest.raises(error) as caught:
        mapper.aggregate(raw_scores, mode)
    assert expected in str(caught.value)


@st.composite
def mapped_scores(draw, *, softmax):
    """A mapper over 2-8 raw labels spread across 1-3 canonical labels, and scores for them."""
    canonical = [f"class_{i}" for i in range(draw(st.integers(1, 3)))]
    n_raw = draw(st.integers(len(canonical), 8))
    targets = canonical + [draw(st.sampled_from(canonical)) for _ in range(n_raw - len(canonical))]
    targets = draw(st.permutations(targets))
    raw_labels = [f"LABEL_{i}" for i in range(n_raw)]
    mapper = LabelMapper.build(
        raw_labels, canonical, config_map=dict(zip(raw_labels, targets, strict=True))
    )
    if softmax:
        weights = draw(st.lists(st.floats(0, 1), min_size=n_raw, max_size=n_raw))
        total = math.fsum(weights)
        values = [w / total for w in weights] if total > 0 else [1 / n_raw] * n_raw
    else:
        values = draw(st.lists(st.floats(0, 1), min_size=n_raw, max_size=n_raw))
    return mapper, dict(zip(raw_labels, values, strict=True))


@given(mapped_scores(softmax=True))
def test_softmax_aggregation_is_a_distribution(case):
    mapper, raw_scores = case
    scores = mapper.aggregate(raw_scores, "softmax")

    assert list(scores) == list(mapper.canonical)
    assert math.fsum(scores.values()) == pytest.approx(1.0)
    assert all(0.0 <= score <= 1.0 for score in scores.values())
    for label, score in scores.items():
        group = [p for raw, p in raw_scores.items() if mapper.canonical_of(raw) == label]
        assert score == pytest.approx(math.fsum(group))


@given(mapped_scores(softmax=False), st.floats(0, 1))
def test_sigmoid_threshold_on_the_aggregate_equals_any_head_over_it(case, threshold):
    mapper, raw_scores = case
    scores = mapper.aggregate(raw_scores, "sigmoid")

    for label, score in scores.items():
        group = [p for raw, p in raw_scores.items() if mapper.canonical_of(raw) == label]
        assert score == max(group)
        assert (score > threshold) == any(p > threshold for p in group)
