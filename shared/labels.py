"""Map a classifier's raw labels onto a Space's canonical labels, and its scores with them.

A model says ``LABEL_1``, ``toxic`` or ``OFF``; the Space answers ``harmful`` or ``safe``.
:meth:`LabelMapper.build` decides the mapping once, at startup, by one rule: the model's own
``label_map.json``, else the Space config's map, else a startup error listing the model's labels.
A guessed default would silently invert a classifier.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from shared.errors import ModelLoadError

logger = logging.getLogger(__name__)

__all__ = ["LABEL_MAP_FILENAME", "LabelMapper", "LabelMappingError", "load_label_map"]

#: The file beside a model's weights that maps its raw labels to canonical ones.
LABEL_MAP_FILENAME: Final = "label_map.json"

_HOW_TO_FIX = "add a label_map.json beside the model or set label_map in the Space config"
# Scores may exceed [0, 1] by float rounding (a float16 softmax); more than this is not rounding.
_SCORE_TOLERANCE = 1e-4


class LabelMappingError(ModelLoadError):
    """A model label that maps to no canonical label, or a malformed label map."""


def load_label_map(model_dir: Path) -> dict[str, str] | None:
    """Read ``label_map.json`` from a model folder, if there is one.

    Args:
        model_dir: The folder that holds the model's ``config.json`` and weights.

    Returns:
        The raw-label -> canonical-label mapping, or ``None`` when the folder has no
        ``label_map.json``.

    Raises:
        LabelMappingError: The file is not UTF-8 JSON, not an object, or has a value that is not
            a string; the message names the file and shows the expected shape.
    """
    return _read_label_map(Path(model_dir) / LABEL_MAP_FILENAME)


def _read_label_map(path: Path) -> dict[str, str] | None:
    if path.is_dir():
        raise LabelMappingError(
            f"{path} is a folder; pass the {LABEL_MAP_FILENAME} file inside it, "
            f"or the model folder to load_label_map()"
        )
    if not path.is_file():
        return None
    expected = 'it must be a JSON object such as {"LABEL_0": "safe", "LABEL_1": "harmful"}'
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise LabelMappingError(f"{path} is not UTF-8 text; {expected}") from e
    except json.JSONDecodeError as e:
        raise LabelMappingError(
            f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); {expected}"
        ) from e
    if not isinstance(data, dict):
        raise LabelMappingError(f"{path} holds a JSON {type(data).__name__}; {expected}")
    for raw, target in data.items():
        if not isinstance(target, str):
            raise LabelMappingError(
                f"{path} maps {raw!r} to {target!r}, which is not a string; {expected}"
            )
    return data


@dataclass(frozen=True)
class LabelMapper:
    """A checked mapping from a model's raw labels to a Space's canonical labels.

    Build it with :meth:`build`; constructing it directly only checks consistency.
    """

    raw_labels: tuple[str, ...]  # the model's labels, in its id2label order
    canonical: tuple[str, ...]  # the Space's labels, in the order results are reported
    targets: tuple[str, ...]  # the canonical label of each raw label, aligned with raw_labels
    complement: str | None = None  # canonical label scored 1 - the others when no raw label has it

    def __post_init__(self) -> None:
        _check_unique("model label", self.raw_labels)
        _check_unique("canonical label", self.canonical)
        if len(self.targets) != len(self.raw_labels):
            raise ValueError(
                f"targets has {len(self.targets)} entries for {len(self.raw_labels)} raw labels"
            )
        for raw, target in zip(self.raw_labels, self.targets, strict=True):
            if target not in self.canonical:
                raise LabelMappingError(
                    f"model label {raw!r} maps to {target!r}, which is not a canonical label; "
                    f"use one of {list(self.canonical)}"
                )
        if self.complement is not None and self.complement not in self.canonical:
            raise LabelMappingError(
                f"complement {self.complement!r} is not a canonical label; "
                f"use one of {list(self.canonical)}"
            )
        unused = [
            label
            for label in self.canonical
            if label not in self.targets and label != self.complement
        ]
        if unused:
            raise LabelMappingError(
                f"canonical label(s) {unused} get no model label; the mapping is {self.mapping} "
                f"and the model's labels are {list(self.raw_labels)}: {_HOW_TO_FIX}; for a "
                f"multi-label model with no {unused[0]!r} head, build the mapper with "
                f"complement={unused[0]!r}"
            )

    @classmethod
    def build(
        cls,
        model_labels: Sequence[str],
        canonical: Sequence[str],
        *,
        label_map_file: Path | None = None,
        config_map: Mapping[str, str] | None = None,
        complement: str | None = None,
    ) -> LabelMapper:
        """Map every model label to a canonical label, or refuse to start.

        One map decides: the model's ``label_map.json`` when ``label_map_file`` exists, else
        ``config_map`` (the Space config's). It must map every model label and name no label
        the model lacks; targets match canonical names ignoring case.

        Args:
            model_labels: The model's labels in id order (``config.id2label`` values).
            canonical: The Space's labels, e.g. ``["harmful", "safe"]``.
            label_map_file: Path of the model's ``label_map.json``; a missing file is skipped.
            config_map: Raw label -> canonical label from the Space's config.
            complement: A canonical label the model may have no head for, as multi-label
                toxicity models (Jigsaw) have no ``safe`` head. Its score is then ``1 -`` the
                other canonical scores (see :meth:`aggregate`).

        Returns:
            The mapper.

        Raises:
            LabelMappingError: No map applies, a model label is unmapped, a map names a label
                the model does not have or a target that is not canonical, or a canonical label
                gets no model label; the message lists the model's labels and says what to add.
        """
        _check_unique("model label", model_labels)
        _check_unique("canonical label", canonical)
        raw_labels = tuple(model_labels)
        canonical_labels = tuple(canonical)
        file_map = _read_label_map(Path(label_map_file)) if label_map_file is not None else None
        if file_map is not None:
            source, table = str(label_map_file), file_map
        elif config_map:
            source, table = "the Space config's label_map", dict(config_map)
        else:
            raise LabelMappingError(
                f"no label map for the model's labels {list(raw_labels)}: {_HOW_TO_FIX} "
                f"(each label to one of {list(canonical_labels)})"
            )
        extra = [raw for raw in table if raw not in raw_labels]
        if extra:
            raise LabelMappingError(
                f"{source} maps {extra}, which the model does not have; "
                f"the model's labels are {list(raw_labels)}: {_HOW_TO_FIX}"
            )
        unmapped = [raw for raw in raw_labels if raw not in table]
        if unmapped:
            raise LabelMappingError(
                f"{source} does not map the model label(s) {unmapped}; the model's labels are "
                f"{list(raw_labels)}: map each to one of {list(canonical_labels)}"
            )
        by_name = {label.casefold(): label for label in canonical_labels}
        targets: list[str] = []
        for raw in raw_labels:
            target = table[raw]
            if not isinstance(target, str) or target.casefold() not in by_name:
                raise LabelMappingError(
                    f"{source} maps model label {raw!r} to {target!r}, which is not a canonical "
                    f"label; use one of {list(canonical_labels)}"
                )
            targets.append(by_name[target.casefold()])
        mapper = cls(raw_labels, canonical_labels, tuple(targets), complement)
        logger.info("label mapping (from %s): %s", source, mapper.mapping)
        return mapper

    @property
    def mapping(self) -> dict[str, str]:
        """Raw label -> canonical label, in the model's label order."""
        return dict(zip(self.raw_labels, self.targets, strict=True))

    def canonical_of(self, raw: str) -> str:
        """Return the canonical label of one of the model's raw labels.

        Args:
            raw: A label the model produced.

        Returns:
            Its canonical label.

        Raises:
            LabelMappingError: ``raw`` is not one of the model's labels.
        """
        try:
            return self.targets[self.raw_labels.index(raw)]
        except ValueError:
            raise LabelMappingError(
                f"{raw!r} is not a label of this model; its labels are {list(self.raw_labels)}"
            ) from None

    def aggregate(
        self, raw_scores: Mapping[str, float], mode: Literal["softmax", "sigmoid"]
    ) -> dict[str, float]:
        """Turn per-raw-label probabilities into per-canonical-label scores.

        ``softmax`` (one distribution over the raw labels): each canonical score is the sum of
        its raw labels' probabilities, so the result is again a distribution. ``sigmoid``
        (independent multi-label heads): each canonical score is the max over its heads, so
        "harmful if any harmful head passes the threshold" is "harmful score passes it".
        The :attr:`complement` label, when no raw label maps to it, scores ``1 - sum`` (softmax)
        or ``1 - max`` (sigmoid) of the other canonical scores: a Jigsaw-style model is ``safe``
        exactly as much as its most confident harmful head is not.

        Args:
            raw_scores: A probability in [0, 1] for every raw label of the model (not logits).
            mode: How the model's probabilities were produced.

        Returns:
            Canonical label -> score in [0, 1], in :attr:`canonical` order.

        Raises:
            LabelMappingError: The keys of ``raw_scores`` are not exactly the model's labels.
            ValueError: ``mode`` is unknown, or a score is not a number in [0, 1].
        """
        if mode not in ("softmax", "sigmoid"):
            raise ValueError(f"mode must be 'softmax' or 'sigmoid', got {mode!r}")
        if set(raw_scores) != set(self.raw_labels):
            missing = [label for label in self.raw_labels if label not in raw_scores]
            unknown = [label for label in raw_scores if label not in self.raw_labels]
            raise LabelMappingError(
                f"scores must have one entry per model label {list(self.raw_labels)}; "
                f"missing {missing}, unknown {unknown}"
            )
        grouped: dict[str, list[float]] = {label: [] for label in self.canonical}
        for raw, target in zip(self.raw_labels, self.targets, strict=True):
            grouped[target].append(_probability(raw, raw_scores[raw]))
        combine = math.fsum if mode == "softmax" else max
        scores = {label: _clamp(combine(values)) for label, values in grouped.items() if values}
        if self.complement is not None and self.complement not in scores:
            # Never empty: every raw label maps to some other canonical label.
            scores[self.complement] = _clamp(1.0 - combine(list(scores.values())))
        return {label: scores[label] for label in self.canonical}


def _check_unique(kind: str, labels: Sequence[str]) -> None:
    if isinstance(labels, str):
        raise LabelMappingError(f"the {kind}s must be a list of names, got the string {labels!r}")
    if not labels:
        raise LabelMappingError(f"the {kind}s are empty; a classifier needs at least one")
    for label in labels:
        if not isinstance(label, str) or not label:
            raise LabelMappingError(f"{kind}s must be non-empty strings, got {label!r}")
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise LabelMappingError(f"{kind}s must be unique; {repeated} appear more than once")


def _probability(raw: str, score: object) -> float:
    if isinstance(score, bool) or not isinstance(score, numbers.Real):
        raise ValueError(f"score for {raw!r} must be a number, got {score!r}")
    value = float(score)
    if not -_SCORE_TOLERANCE <= value <= 1 + _SCORE_TOLERANCE:  # also refuses NaN
        raise ValueError(
            f"score for {raw!r} is {value}; aggregate() takes probabilities in [0, 1]: "
            "apply softmax or sigmoid to the logits first"
        )
    return _clamp(value)


def _clamp(value: float) -> float:
    return min(1.0, max(0.0, value))
