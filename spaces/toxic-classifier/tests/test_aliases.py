"""The Space's alias table (``label_map: aliases``): well-known label names to harmful/safe."""

from __future__ import annotations

import pytest

from predictor import CANONICAL, TOXICITY_ALIASES, _alias_key, alias_label_map
from shared.labels import LabelMapper, LabelMappingError

JIGSAW = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]


def build(model_labels: list[str], **kwargs) -> LabelMapper:
    """The mapper the Space builds for a model without label_map.json under ``aliases``."""
    return LabelMapper.build(
        model_labels, CANONICAL, config_map=alias_label_map(model_labels), **kwargs
    )


@pytest.mark.parametrize(
    ("model_labels", "expected"),
    [
        (["non-toxic", "toxic"], ["safe", "harmful"]),
        (["Non_Toxic", "Toxic"], ["safe", "harmful"]),
        (["not toxic", "TOXIC"], ["safe", "harmful"]),
        (["NOT_OFF", "OFF"], ["safe", "harmful"]),  # OSACT
        (["NOT", "OFF"], ["safe", "harmful"]),  # OLID / OffensEval
        (["Not Offensive", "offensive"], ["safe", "harmful"]),
        (["NOT_HS", "HS"], ["safe", "harmful"]),
        (["hate_speech", "offensive_language", "neither"], ["harmful", "harmful", "safe"]),
        (["hatespeech", "offensive", "normal"], ["harmful", "harmful", "safe"]),  # HateXplain
        (["abusive", "hate", "normal"], ["harmful", "harmful", "safe"]),  # L-HSAB
        (["clean", "insult", "threat"], ["safe", "harmful", "harmful"]),
        (["neutral", "hateful"], ["safe", "harmful"]),
    ],
)
def test_common_label_names_map_through_the_toxicity_aliases(model_labels, expected):
    mapper = build(model_labels)

    assert mapper.raw_labels == tuple(model_labels)
    assert [mapper.canonical_of(raw) for raw in model_labels] == expected
    assert mapper.mapping == dict(zip(model_labels, expected, strict=True))


def test_canonical_names_are_aliases_too_ignoring_case():
    assert build(["SAFE", "Harmful"]).mapping == {"SAFE": "safe", "Harmful": "harmful"}


def test_every_toxicity_alias_maps_and_none_collide():
    aliases = list(TOXICITY_ALIASES)
    assert build(aliases).mapping == dict(TOXICITY_ALIASES)
    assert {"toxic", "non-toxic", "OFF", "NOT_OFF", "NOT", "identity_hate", "clean"} <= set(aliases)
    # Written two ways (case, '-', '_', spaces), an alias is one key with one target.
    targets: dict[str, set[str]] = {}
    for alias, target in TOXICITY_ALIASES.items():
        targets.setdefault(_alias_key(alias), set()).add(target)
    assert all(len(found) == 1 for found in targets.values())
    assert set(TOXICITY_ALIASES.values()) == set(CANONICAL)


def test_generic_labels_are_never_guessed():
    assert alias_label_map(["LABEL_0", "label_1", "Label_2"]) == {}
    with pytest.raises(LabelMappingError, match=r"no label map for the model's labels \['LABEL_0'"):
        build(["LABEL_0", "LABEL_1"])


def test_aliases_are_only_used_for_labels_the_model_has():
    assert alias_label_map(["toxic", "ok"]) == {"toxic": "harmful", "ok": "safe"}


def test_unknown_names_fail_at_startup_listing_the_labels():
    with pytest.raises(LabelMappingError) as caught:
        build(["toxic", "spam", "ham"])
    message = str(caught.value)
    assert "does not map the model label(s) ['spam', 'ham']" in message
    assert "the model's labels are ['toxic', 'spam', 'ham']" in message


def test_jigsaw_heads_score_safe_as_the_complement():
    mapper = build(JIGSAW, complement="safe")
    heads = dict.fromkeys(JIGSAW, 0.01) | {"insult": 0.7, "toxic": 0.9}
    assert mapper.aggregate(heads, "sigmoid") == pytest.approx({"harmful": 0.9, "safe": 0.1})
