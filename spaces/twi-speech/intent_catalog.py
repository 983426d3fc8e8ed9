"""The Space's intents as ``intents.yaml`` lists them: what each means and how shoppers say it.

:func:`load_intents` reads and checks the file once; the training command trains on
:meth:`IntentCatalog.training_pairs` and scores :meth:`IntentCatalog.held_out_pairs`, and the
Space's edge reads ``fallback_reply`` and ``min_confidence`` from the same object.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

INTENTS_PATH = Path(__file__).with_name("intents.yaml")
CATEGORIES = ("navigation", "search", "cart", "checkout", "after_purchase", "help")


@dataclass(frozen=True)
class Utterance:
    """One thing a shopper says, with its meaning in English."""

    # What the shopper says, in Twi.
    twi: str
    # An English gloss.
    en: str


@dataclass(frozen=True)
class Intent:
    """One action of the app and the ways of asking for it."""

    # Identifier the app dispatches on, e.g. "add_to_cart".
    name: str
    # One of CATEGORIES.
    category: str
    # One line of English saying what the app does.
    description: str
    # Utterances the classifier is trained on.
    examples: tuple[Utterance, ...]
    # Paraphrases kept out of training, to measure accuracy on.
    held_out: tuple[Utterance, ...]


@dataclass(frozen=True)
class IntentCatalog:
    """Every intent, and what the app does when none is recognised."""

    # In the file's order.
    intents: tuple[Intent, ...]
    # What the app says when it cannot act on an utterance.
    fallback_reply: str
    # Smallest top-intent probability the app acts on; below it, fallback_reply.
    min_confidence: float

    @property
    def names(self) -> tuple[str, ...]:
        """The intent names, in the file's order."""
        return tuple(intent.name for intent in self.intents)

    def training_pairs(self) -> list[tuple[str, str]]:
        """(Twi text, intent) for every training example."""
        return [(u.twi, i.name) for i in self.intents for u in i.examples]

    def held_out_pairs(self) -> list[tuple[str, str]]:
        """(Twi text, intent) for every held-out paraphrase."""
        return [(u.twi, i.name) for i in self.intents for u in i.held_out]


def load_intents(path: Path = INTENTS_PATH) -> IntentCatalog:
    """Read and check ``intents.yaml``.

    Args:
        path: The intents file.

    Returns:
        The catalog.

    Raises:
        ValueError: the file is not YAML of the expected shape; the message names the file,
            the intent and the key.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read the intents ({e})") from e
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping with fallback_reply, min_confidence, intents")
    min_confidence = data.get("min_confidence")
    if not isinstance(min_confidence, int | float) or not 0.0 <= min_confidence <= 1.0:
        raise ValueError(
            f"{path}: min_confidence must be a number in [0, 1], got {min_confidence!r}"
        )
    fallback = _text(data.get("fallback_reply"), f"{path}: fallback_reply")
    entries = data.get("intents")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: intents must be a non-empty list")
    intents = [_intent(entry, f"{path}: intents[{n}]") for n, entry in enumerate(entries)]
    names = [intent.name for intent in intents]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{path}: intent names must be unique; repeated: {repeated}")
    return IntentCatalog(tuple(intents), fallback, float(min_confidence))


def _intent(entry: Any, where: str) -> Intent:
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: expected a mapping with name, category, description, ...")
    name = _text(entry.get("name"), f"{where}.name")
    where = f"{where} ({name})"
    category = entry.get("category")
    if category not in CATEGORIES:
        raise ValueError(f"{where}: category must be one of {CATEGORIES}, got {category!r}")
    return Intent(
        name=name,
        category=category,
        description=_text(entry.get("description"), f"{where}.description"),
        examples=_utterances(entry.get("examples"), f"{where}.examples"),
        held_out=_utterances(entry.get("held_out"), f"{where}.held_out"),
    )


def _utterances(entries: Any, where: str) -> tuple[Utterance, ...]:
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{where}: expected a non-empty list of {{twi: ..., en: ...}}")
    utterances = []
    for n, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or set(entry) != {"twi", "en"}:
            raise ValueError(f"{where}[{n}]: expected {{twi: ..., en: ...}}, got {entry!r}")
        utterances.append(
            Utterance(
                _text(entry["twi"], f"{where}[{n}].twi"), _text(entry["en"], f"{where}[{n}].en")
            )
        )
    return tuple(utterances)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: expected non-empty text, got {value!r}")
    return value
