"""The toxicity predictor: text in, a ``harmful``/``safe`` verdict out, no Gradio or HTTP here.

preprocess (clean, limits, Arabic normalisation, tokenize) -> forward (pad, model, under
``torch.inference_mode``) -> postprocess (softmax or sigmoid, raw labels mapped onto
``harmful``/``safe`` through ``shared.labels``, the threshold rule). The Space serves
:class:`ToxicityClassifier` behind ``shared.serving.BatchedPredictor``; the tests, the evaluate
command and the benchmark call :meth:`ToxicityClassifier.classify`, the same three steps.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.config import Override, load_config
from shared.errors import InputError, ModelLoadError
from shared.labels import LABEL_MAP_FILENAME, LabelMapper
from shared.models import (
    TRANSFORMERS_WEIGHTS,
    ModelSource,
    demo_info,
    resolve_model,
    select_device,
)
from shared.serving import ModelInfo, plan_chunks, predict
from shared.text import ArabicNormalization, TextLimits, check_text, normalize_arabic

logger = logging.getLogger(__name__)

CANONICAL = ("harmful", "safe")
CONFIG_PATH = Path(__file__).with_name("config.yaml")
Precision = Literal["fp32", "bf16", "int8"]


# -- label names --------------------------------------------------------------------------------


def _alias_key(label: str) -> str:
    """``Non-Toxic``, ``non_toxic`` and ``non toxic`` are one alias: ``nontoxic``."""
    return re.sub(r"[-_\s]+", "", label).casefold()


#: Common raw label names of toxicity, offensive-language and hate-speech classifiers (Jigsaw,
#: OLID/OffensEval, OSACT, HateXplain, ...) mapped to ``harmful`` / ``safe``; used when the
#: config says ``label_map: aliases``. Matching ignores case, ``-``, ``_`` and spaces, so
#: ``NOT_OFF`` also matches ``not-off``.
TOXICITY_ALIASES: Final[Mapping[str, str]] = MappingProxyType(
    {
        **dict.fromkeys(
            [
                "harmful",
                "unsafe",
                "toxic",
                "toxicity",
                "severe_toxic",
                "severe_toxicity",
                "obscene",
                "threat",
                "insult",
                "identity_hate",
                "identity_attack",
                "sexual_explicit",
                "offensive",
                "offensive_language",
                "OFF",
                "hate",
                "hateful",
                "hate_speech",
                "HS",
                "abusive",
                "abuse",
                "profanity",
                "profane",
                "harassment",
                "bullying",
                "cyberbullying",
                "racism",
                "sexism",
                "vulgar",
            ],
            "harmful",
        ),
        **dict.fromkeys(
            [
                "safe",
                "non-toxic",
                "not_toxic",
                "not offensive",
                "non_offensive",
                "NOT_OFF",
                "NOT",
                "not_hate",
                "non_hate",
                "NOT_HS",
                "not_abusive",
                "non_abusive",
                "clean",
                "neutral",
                "normal",
                "neither",
                "none",
                "benign",
                "acceptable",
                "ok",
            ],
            "safe",
        ),
    }
)
_ALIASES_BY_KEY = {_alias_key(alias): target for alias, target in TOXICITY_ALIASES.items()}
# transformers' placeholder names (id2label when nobody named the classes): LABEL_1 is toxic in
# one checkpoint and safe in another, so only an explicit map may place it.
_GENERIC_LABEL = re.compile(r"LABEL_\d+", re.IGNORECASE)


def alias_label_map(model_labels: Iterable[str]) -> dict[str, str]:
    """The model's labels that :data:`TOXICITY_ALIASES` knows, mapped to harmful/safe.

    Generic ``LABEL_<n>`` names are never guessed; a label the table lacks is left out, and
    ``LabelMapper.build`` then refuses the model, listing its labels.
    """
    return {
        raw: _ALIASES_BY_KEY[_alias_key(raw)]
        for raw in model_labels
        if not _GENERIC_LABEL.fullmatch(raw) and _alias_key(raw) in _ALIASES_BY_KEY
    }


# -- settings -----------------------------------------------------------------------------------


class Settings(BaseModel):
    """Everything about the model, the decision rule and its serving that is not the weights.

    ``config.yaml`` holds the Space's values; :func:`load_settings` reads it with overrides.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    # Hub repo id or local directory of the model.
    model_id: str = "Bisharababish/arabert-toxic-classifier"
    # Hub revision; None means the default branch.
    revision: str | None = None
    # harmful iff p(harmful) >= threshold.
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    # Raw model label -> harmful/safe for a model without a label_map.json of its own, or
    # "aliases": map the model's label names through TOXICITY_ALIASES.
    label_map: dict[str, str] | Literal["aliases"] = Field(default_factory=dict)
    # The Arabic normalisation the model was trained with: arabert_v02, none, or step options.
    normalization: ArabicNormalization = Field(default_factory=ArabicNormalization.arabert_v02)
    # Longest accepted input, in characters.
    max_chars: int = Field(20_000, ge=1)
    # Most texts in one predict_batch call.
    max_batch: int = Field(64, ge=1)
    # Most bytes in a request body; a bigger one is answered 413 before it is read in full.
    max_request_bytes: int = Field(2 * 1024 * 1024, ge=1024)
    # Precision of the forward pass; int8 on CPU runs the model's int8 ONNX export in ONNX
    # Runtime, and a GPU runs bf16 (or fp32) instead.
    precision: Precision = "fp32"
    # Most padded tokens in one forward pass; bigger batches are cut into length-sorted chunks.
    batch_tokens: int = Field(512, ge=1)
    # Batches run at once, each on its share of the cores (the Space's batcher threads).
    workers: int = Field(1, ge=1)
    # "auto" (a GPU when one is visible), "cpu" or "cuda".
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("normalization", mode="before")
    @classmethod
    def _normalization(cls, value: object) -> object:
        """A preset name (``arabert_v02`` or ``none``) or a mapping of step options."""
        if isinstance(value, Mapping):
            return ArabicNormalization.from_dict(value)
        if isinstance(value, str):
            presets = {"arabert_v02": ArabicNormalization.arabert_v02,
                       "none": ArabicNormalization.none}  # fmt: skip
            if value not in presets:
                raise ValueError(f"use one of {sorted(presets)} or a mapping of step options")
            return presets[value]()
        return value

    @field_validator("label_map", mode="before")
    @classmethod
    def _aliases_or_mapping(cls, value: object) -> object:
        if isinstance(value, str) and value != "aliases":
            raise ValueError("use a mapping of model labels to harmful/safe, or 'aliases'")
        return value

    @field_validator("label_map")
    @classmethod
    def _targets(cls, value: dict[str, str] | str) -> dict[str, str] | str:
        """Every target is harmful or safe (ignoring case), checked even when a model's own
        label_map.json makes the map unused, so a typo never passes unseen."""
        if isinstance(value, dict):
            wrong = {raw: t for raw, t in value.items() if t.casefold() not in CANONICAL}
            if wrong:
                raise ValueError(f"maps {wrong}; targets must be one of {list(CANONICAL)}")
        return value


def load_settings(path: Path = CONFIG_PATH, overrides: Iterable[Override] = ()) -> Settings:
    """The Space's settings: ``path`` (``config.yaml``) with ``overrides`` on top.

    Raises:
        shared.config.ConfigError: one line naming the variable or key, the value and what
            is allowed.
    """
    return load_config(Settings, path, overrides)


# -- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """The answer for one text."""

    # "harmful" or "safe".
    label: str
    # Probability of ``label``.
    score: float
    # {"harmful": p, "safe": 1 - p}.
    scores: dict[str, float]
    # The threshold the verdict was decided with.
    threshold: float
    # The model's own labels and scores, in the model's label order.
    raw: list[dict[str, Any]]
    # True when the text was cut at the model's maximum length.
    truncated: bool
    # "model_id@revision".
    model: str

    def to_json(self) -> dict[str, Any]:
        """The JSON object the endpoints return."""
        return asdict(self)


@dataclass(frozen=True)
class Prepared:
    """One text after preprocessing: normalised and tokenized, ready to pad and run."""

    # The normalised text.
    text: str
    # Its token ids, special tokens included, cut at the model's maximum length.
    input_ids: tuple[int, ...]
    # True when the text had more tokens than the model's maximum length.
    truncated: bool

    @property
    def tokens(self) -> int:
        """How many tokens the model runs on (the batcher's cost of this text)."""
        return len(self.input_ids)


class ToxicityClassifier:
    """A sequence classifier behind the harmful/safe decision rule (a ``shared.serving``
    predictor: :meth:`preprocess` -> :meth:`forward` -> :meth:`postprocess`).

    Args:
        model: A transformers sequence-classification model in eval mode, or an
            ``shared.quantize.OnnxModel`` (anything called as ``model(**inputs).logits`` with a
            transformers ``config``).
        tokenizer: Its tokenizer.
        settings: The Space's settings.
        model_ref: ``id@revision`` reported in every verdict.
        demo: True when the weights are the offline demo weights.
        label_map_file: The model's ``label_map.json`` (a missing file is skipped); it wins over
            the settings' ``label_map``.
        threads: Intra-op threads the model was loaded with, for ``/health``.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        settings: Settings,
        model_ref: str,
        *,
        demo: bool = False,
        label_map_file: Path | None = None,
        threads: int | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.model_ref = model_ref
        self.demo = demo
        self.threads = threads
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        self.raw_labels = labels
        self.multi_label = model.config.problem_type == "multi_label_classification"
        config_map = settings.label_map
        if config_map == "aliases":
            config_map = alias_label_map(labels)
        self.mapper = LabelMapper.build(
            labels,
            CANONICAL,
            label_map_file=label_map_file,
            config_map=config_map,
            complement="safe",
        )
        positions = getattr(model.config, "max_position_embeddings", 512)
        self.max_length = min(int(tokenizer.model_max_length), int(positions))
        self._encode = _encoder(tokenizer, self.max_length)
        pad_id = tokenizer.pad_token_id
        self._pad_id = pad_id if pad_id is not None else model.config.pad_token_id
        if self._pad_id is None:
            raise ModelLoadError(
                f"{model_ref}: neither the tokenizer nor the model config has a pad token id, "
                "so texts of different lengths cannot share a batch; set pad_token_id in "
                "config.json"
            )
        self.limits = TextLimits(max_chars=settings.max_chars)
        self.device = str(model.device)
        # True when an int8 ONNX export runs in ONNX Runtime (shared.quantize.OnnxModel).
        self.onnx = getattr(model, "runtime", "torch") == "onnxruntime"

    @classmethod
    def load(
        cls,
        settings: Settings,
        *,
        token: str | None = None,
        threads: int | None = None,
        cache_dir: Path | None = None,
    ) -> ToxicityClassifier:
        """Resolve, validate and load the model named by ``settings``.

        int8 on CPU loads the model's int8 ONNX export from ``cache_dir``, exporting it first
        if it is not there (tens of seconds, once per model).

        Args:
            settings: The Space's settings (model id, revision, precision, ...).
            token: Hub token for private models.
            threads: Intra-op threads (torch or ONNX Runtime); the runtime's default when None.
            cache_dir: Where int8 ONNX exports are cached; ``shared.quantize.default_cache_dir``
                (under ``$HF_HOME``) when None.

        Returns:
            The ready classifier.

        Raises:
            ModelLoadError: missing files, LFS pointers, unmapped labels, a failed export.
        """
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        source = ModelSource.parse(settings.model_id, settings.revision)
        folder = resolve_model(source, required=["config.json", TRANSFORMERS_WEIGHTS], token=token)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        choice = select_device(settings.device)
        precision: Precision = settings.precision
        if choice.device == "cuda" and precision == "int8":
            # int8 is an ONNX Runtime CPU kernel; a GPU gets its own fast dtype instead.
            precision = "bf16" if choice.dtype == "bfloat16" else "fp32"
            logger.info("int8 is CPU-only: running %s on the GPU", precision)
        model: Any
        if precision == "int8":
            from shared.quantize import OnnxModel, cached_int8_onnx

            try:
                path = cached_int8_onnx(
                    folder,
                    lambda: AutoModelForSequenceClassification.from_pretrained(folder).eval(),
                    lambda: _example_inputs(tokenizer),
                    cache_dir,
                )
                model = OnnxModel(path, AutoConfig.from_pretrained(folder), threads=threads)
            except ModelLoadError as e:
                raise ModelLoadError(
                    f"{e}. To serve this model without ONNX Runtime, set PRECISION=fp32 "
                    "(or precision: fp32 in config.yaml)"
                ) from e
        else:
            model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
            if precision == "bf16":
                model = model.to(torch.bfloat16)
            model = model.to(choice.device)
        return cls(
            model,
            tokenizer,
            settings.model_copy(update={"precision": precision}),
            str(source),
            demo=demo_info(folder) is not None,
            label_map_file=folder / LABEL_MAP_FILENAME,
            threads=threads,
        )

    @property
    def info(self) -> ModelInfo:
        """What ``/health`` reports about this model."""
        settings = self.settings
        return ModelInfo(
            id=settings.model_id,
            revision=settings.revision,
            device=self.device,
            precision=settings.precision,
            demo=self.demo,
            extra={
                "threshold": settings.threshold,
                "labels": self.raw_labels,
                "label_map": self.mapper.mapping,
                "runtime": "onnxruntime" if self.onnx else "torch",
                "workers": settings.workers,
                "threads_per_worker": self.threads,
                "max_length": self.max_length,
                "max_chars": settings.max_chars,
                "max_batch": settings.max_batch,
            },
        )

    # -- preprocess ---------------------------------------------------------------------------

    def preprocess(self, item: object) -> Prepared:
        """Validate, normalise and tokenize one input (on the caller's thread).

        Raises:
            InputError: naming the limit the input broke (``text must be a string, got int``).
        """
        normalized = normalize_arabic(check_text(item, self.limits), self.settings.normalization)
        if not normalized.strip():
            # e.g. only tashkeel or tatweel, which the normalisation removes
            raise InputError("text is empty after normalisation (only diacritics or tatweel)")
        ids, truncated = self._encode(normalized)
        return Prepared(text=normalized, input_ids=ids, truncated=truncated)

    # -- forward ------------------------------------------------------------------------------

    def forward(self, batch: Sequence[Prepared]) -> torch.Tensor:
        """Run the model on a batch, in length-sorted chunks of at most ``batch_tokens``.

        Padding a short text to a long one's length wastes the work on the padding, and one
        huge padded batch runs slower per token on CPU than a few cache-sized ones, so texts are
        sorted by length and cut into chunks whose padded size stays within the budget.

        Returns:
            Probabilities ``(batch, num_labels)``, in input order.
        """
        order = sorted(range(len(batch)), key=lambda i: batch[i].tokens)
        logits = torch.empty(len(batch), self.model.config.num_labels)  # (batch, num_labels)
        lengths = [batch[i].tokens for i in order]
        for start, end in plan_chunks(lengths, self.settings.batch_tokens):
            chunk = order[start:end]
            inputs = self._pad([batch[i].input_ids for i in chunk])
            with torch.inference_mode():
                out = self.model(**inputs).logits  # (chunk, num_labels)
            logits[chunk] = out.float().cpu()
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)

    def _pad(self, rows: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Token id rows padded to the longest, on the tokenizer's padding side."""
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)  # (chunk, width)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (chunk, width)
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        for i, row in enumerate(rows):
            span = slice(width - len(row), width) if left else slice(0, len(row))
            input_ids[i, span] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, span] = 1
        return {
            "input_ids": input_ids.to(self.device),
            "attention_mask": attention_mask.to(self.device),
        }

    # -- postprocess --------------------------------------------------------------------------

    def postprocess(self, outputs: torch.Tensor, batch: Sequence[Prepared]) -> list[Verdict]:
        """Map raw label probabilities ``(batch, num_labels)`` onto verdicts with the threshold
        rule; each verdict's ``truncated`` comes from its prepared text."""
        verdicts = []
        mode = "sigmoid" if self.multi_label else "softmax"
        threshold = self.settings.threshold
        for row, prepared in zip(outputs.tolist(), batch, strict=True):
            raw = dict(zip(self.raw_labels, row, strict=True))
            harmful = float(self.mapper.aggregate(raw, mode)["harmful"])
            label = "harmful" if harmful >= threshold else "safe"
            scores = {"harmful": harmful, "safe": 1.0 - harmful}
            verdicts.append(
                Verdict(
                    label=label,
                    score=scores[label],
                    scores=scores,
                    threshold=threshold,
                    raw=[{"label": k, "score": v} for k, v in raw.items()],
                    truncated=prepared.truncated,
                    model=self.model_ref,
                )
            )
        return verdicts

    # -- the whole pipeline -------------------------------------------------------------------

    def classify(self, texts: Sequence[object]) -> list[Verdict]:
        """Classify texts in the caller's thread, in order: ``shared.serving.predict``, the
        composition the Space's batcher runs.

        Args:
            texts: The inputs; each must be a non-empty string within the length limit.

        Returns:
            One verdict per text.

        Raises:
            InputError: naming the first bad input and the limit it broke
                (``text 2 of 3: text is empty``).
        """
        return predict(self, texts, what="text")

    def classify_one(self, text: object) -> Verdict:
        """Classify a single text."""
        return self.classify([text])[0]

    def check_batch(self, texts: object) -> list[object]:
        """Validate a ``predict_batch`` payload: a list of at most ``max_batch`` items."""
        if not isinstance(texts, list):
            raise InputError(f"texts must be a list of strings, got {type(texts).__name__}")
        if not texts:
            raise InputError("texts is empty: send at least one text")
        if len(texts) > self.settings.max_batch:
            raise InputError(
                f"{len(texts)} texts in one batch; the limit is {self.settings.max_batch}"
            )
        return texts


def _encoder(tokenizer: Any, max_length: int) -> Callable[[str], tuple[tuple[int, ...], bool]]:
    """A thread-safe ``text -> (token ids cut at max_length, truncated)`` for ``tokenizer``.

    A transformers tokenizer rewrites its Rust tokenizer's truncation and padding settings
    whenever a call asks for other ones (shared state), and the Space tokenizes in many request
    threads at once; so a private copy of the Rust tokenizer is set up once and only read
    afterwards. Its ``overflowing`` tokens tell whether a text was cut, without tokenizing it
    twice. A tokenizer with no Rust backend is called under a lock.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        from tokenizers import Tokenizer

        rust = Tokenizer.from_str(backend.to_str())
        rust.encode_special_tokens = backend.encode_special_tokens  # not in the serialization
        rust.no_padding()
        rust.enable_truncation(
            max_length, direction=getattr(tokenizer, "truncation_side", None) or "right"
        )

        def encode(text: str) -> tuple[tuple[int, ...], bool]:
            encoding = rust.encode(text)
            return tuple(encoding.ids), bool(encoding.overflowing)

        return encode
    lock = threading.Lock()

    def encode_slow(text: str) -> tuple[tuple[int, ...], bool]:
        with lock:
            ids = tokenizer(text, truncation=False)["input_ids"]
        if len(ids) <= max_length:
            return tuple(ids), False
        with lock:
            cut = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
        return tuple(cut), True

    return encode_slow


def _example_inputs(tokenizer: Any) -> dict[str, torch.Tensor]:
    """Two padded texts of different lengths: the export's example batch.

    Only what :meth:`ToxicityClassifier.forward` passes (``input_ids`` and
    ``attention_mask``), so the graph takes exactly the inputs the torch path gives the model.
    """
    texts = ["نص قصير", "نص أطول قليلا من الأول للتصدير"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    return {name: batch[name] for name in ("input_ids", "attention_mask")}
