"""The toxicity predictor: text in, a ``harmful``/``safe`` verdict out, no Gradio or HTTP here.

preprocess (clean, limits, Arabic normalisation, tokenize) -> forward (pad, model, under
``torch.inference_mode``) -> postprocess (softmax or sigmoid, raw labels mapped onto
``harmful``/``safe`` through ``shared.labels``, the threshold rule). The Space, the evaluate
command and the benchmark all call :class:`ToxicityClassifier`.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from shared.errors import InputError, ModelLoadError
from shared.labels import TOXICITY_ALIASES, LabelMapper, LabelMappingError, load_label_map
from shared.models import (
    TRANSFORMERS_WEIGHTS,
    ModelSource,
    demo_info,
    resolve_model,
    select_device,
)
from shared.text import ArabicNormalization, TextLimits, check_text, normalize_arabic

logger = logging.getLogger(__name__)

CANONICAL = ("harmful", "safe")
CONFIG_PATH = Path(__file__).with_name("config.yaml")
Precision = Literal["fp32", "bf16", "int8"]
Runtime = Literal["onnxruntime", "torch"]


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything about the model and the decision rule that is not the weights."""

    # Hub repo id or local directory of the model.
    model_id: str = "Bisharababish/arabert-toxic-classifier"
    # Hub revision; None means the default branch.
    revision: str | None = None
    # harmful iff p(harmful) >= threshold.
    threshold: float = 0.5
    # Raw model label -> canonical label, for models without a label_map.json.
    label_map: Mapping[str, str] = field(default_factory=dict)
    # The Arabic normalisation the model was trained with.
    normalization: ArabicNormalization = field(default_factory=ArabicNormalization.arabert_v02)
    # Longest accepted input, in characters.
    max_chars: int = 20_000
    # Most texts in one predict_batch call.
    max_batch: int = 64
    # Numeric precision of the forward pass on CPU.
    precision: Precision = "fp32"
    # What runs int8 on CPU: "onnxruntime" (an int8 ONNX export, cached) or "torch" (eager
    # dynamic int8 Linear layers). fp32, bf16 and GPUs always run in torch.
    runtime: Runtime = "onnxruntime"
    # Most padded tokens in one forward pass; bigger batches are cut into length-sorted chunks.
    batch_tokens: int = 512
    # Batches run at once, each on its share of the cores (the Space's batcher threads).
    workers: int = 1
    # "auto" (a GPU when one is visible), "cpu" or "cuda".
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @classmethod
    def load(cls, path: Path = CONFIG_PATH, **overrides: Any) -> ClassifierConfig:
        """Read the Space config file, then apply non-None ``overrides`` (from env vars).

        Args:
            path: The YAML config file.
            **overrides: Field values that win over the file (None values are ignored).

        Returns:
            The configuration.

        Raises:
            ModelLoadError: the file is not YAML, or a key or value is wrong; the message
                names the file and the key.
        """
        try:
            raw: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as e:
            raise ModelLoadError(f"{path} is not UTF-8 text ({e})") from e
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ModelLoadError(f"{path} is not a valid YAML config ({problem}{where})") from e
        if not isinstance(raw, dict):
            raise ModelLoadError(f"{path} must be a YAML mapping of keys to values")
        raw |= {k: v for k, v in overrides.items() if v is not None}
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ModelLoadError(f"unknown keys {unknown} in {path}; valid keys: {sorted(known)}")
        raw["normalization"] = _normalization(raw.get("normalization", "arabert_v02"))
        raw["threshold"] = _number(raw.get("threshold", cls.threshold), float, "threshold", path)
        if not 0.0 <= raw["threshold"] <= 1.0:
            raise ModelLoadError(f"threshold must be in [0, 1], got {raw['threshold']}")
        if raw.get("precision", "fp32") not in ("fp32", "bf16", "int8"):
            raise ModelLoadError(f"precision must be fp32, bf16 or int8, got {raw['precision']!r}")
        if raw.get("runtime", "onnxruntime") not in ("onnxruntime", "torch"):
            raise ModelLoadError(f"runtime must be onnxruntime or torch, got {raw['runtime']!r}")
        raw["workers"] = _number(raw.get("workers", cls.workers), int, "workers", path)
        if raw["workers"] < 1:
            raise ModelLoadError(f"workers must be at least 1, got {raw['workers']}")
        if raw.get("device", "auto") not in ("auto", "cpu", "cuda"):
            raise ModelLoadError(f"device must be auto, cpu or cuda, got {raw['device']!r}")
        return cls(**raw)


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


def _number(value: object, kind: type[float] | type[int], key: str, path: Path) -> Any:
    """``kind(value)``, or a ModelLoadError naming the key and the file."""
    try:
        return kind(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"{key} in {path} must be a number, got {value!r}") from e


def _config_label_map(
    label_map: Mapping[str, str],
    model_labels: Sequence[str],
    label_map_file: Path | None,
    model_ref: str,
) -> dict[str, str] | None:
    """The config's ``label_map``, where it applies to this model.

    It is written for the production checkpoint, so it is set aside (with a warning) for a
    model whose own ``label_map.json`` maps every label, and for a model that has none of the
    labels it names (another checkpoint's ``LABEL_0``/``LABEL_1`` on a model with named
    labels), which then maps through the alias and name rules. Otherwise it is used label by
    label after ``label_map.json``, and :meth:`LabelMapper.build` refuses a map that names some
    of the model's labels and others it lacks (a typo, not another checkpoint).

    Raises:
        LabelMappingError: a target is not ``harmful`` or ``safe`` (checked even for a map
            that is set aside, so a typo in it never passes unseen).
    """
    if not label_map:
        return None
    # Targets match ignoring case, as LabelMapper.build matches them.
    canonical = {label.casefold() for label in CANONICAL}
    wrong = {
        raw: target
        for raw, target in label_map.items()
        if not isinstance(target, str) or target.casefold() not in canonical
    }
    if wrong:
        raise LabelMappingError(
            f"the Space's label_map maps {wrong}; targets must be one of {list(CANONICAL)}"
        )
    own = (load_label_map(label_map_file.parent) or {}) if label_map_file is not None else {}
    if set(model_labels) <= set(own):
        # Only worth a warning when the two maps disagree (the demo models agree).
        differ = {
            raw: {"config": target, "label_map.json": own[raw]}
            for raw, target in label_map.items()
            if raw in own and target.casefold() != own[raw].casefold()
        }
        level = logging.WARNING if differ else logging.INFO
        reason = f"its label_map.json maps all of {list(model_labels)}"
        if differ:
            reason += f", differently: {differ}"
    elif not set(label_map) & set(model_labels):
        level = logging.INFO
        reason = f"it has none of those labels (its labels: {list(model_labels)})"
    else:
        return dict(label_map)
    logger.log(level, "%s: config label_map %s not used: %s", model_ref, sorted(label_map), reason)
    return None


def plan_chunks(lengths: Sequence[int], budget: int) -> list[tuple[int, int]]:
    """Cut length-sorted texts into forward passes of at most ``budget`` padded tokens.

    A chunk is padded to its longest (last) text, so ``(end - start) * lengths[end - 1]`` must
    stay within the budget; a text longer than the budget runs alone. The fewest chunks that
    fit are found greedily, then the texts are spread evenly over that many chunks when the
    even split fits too: 16 similar texts with room for 10 run as 8 + 8, not 10 + 6.

    Args:
        lengths: Token counts, ascending.
        budget: Most padded tokens per chunk.

    Returns:
        ``(start, end)`` index ranges covering ``lengths`` in order.
    """

    def fits(start: int, end: int) -> bool:
        return (end - start) * lengths[end - 1] <= max(budget, lengths[start])

    greedy: list[tuple[int, int]] = []
    start = 0
    while start < len(lengths):
        end = start + 1
        while end < len(lengths) and fits(start, end + 1):
            end += 1
        greedy.append((start, end))
        start = end
    n, k = len(lengths), len(greedy)
    even = list(itertools.pairwise(round(i * n / k) for i in range(k + 1))) if k else []
    return even if all(fits(s, e) for s, e in even) else greedy


class ToxicityClassifier:
    """A sequence classifier behind the harmful/safe decision rule.

    Args:
        model: A transformers sequence-classification model in eval mode, or an
            ``shared.quantize.OnnxModel`` (anything called as ``model(**inputs).logits`` with a
            transformers ``config``).
        tokenizer: Its tokenizer.
        config: The Space configuration.
        model_ref: ``id@revision`` reported in every verdict.
        demo: True when the weights are the offline demo weights.
        label_map_file: A ``label_map.json`` beside the model; it wins over the config's map.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        config: ClassifierConfig,
        model_ref: str,
        *,
        demo: bool = False,
        label_map_file: Path | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.model_ref = model_ref
        self.demo = demo
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        self.raw_labels = labels
        self.multi_label = model.config.problem_type == "multi_label_classification"
        self.mapper = LabelMapper.build(
            labels,
            CANONICAL,
            explicit=_config_label_map(config.label_map, labels, label_map_file, model_ref),
            aliases=TOXICITY_ALIASES,
            label_map_file=label_map_file,
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
        self.limits = TextLimits(max_chars=config.max_chars)
        self.device = str(model.device)
        # True when an int8 ONNX export runs in ONNX Runtime (shared.quantize.OnnxModel).
        self.onnx = getattr(model, "runtime", "torch") == "onnxruntime"

    @classmethod
    def load(
        cls,
        config: ClassifierConfig,
        *,
        token: str | None = None,
        num_threads: int | None = None,
        cache_dir: Path | None = None,
    ) -> ToxicityClassifier:
        """Resolve, validate and load the model named by ``config``.

        int8 on CPU with the ``onnxruntime`` runtime loads the model's int8 ONNX export from
        ``cache_dir``, exporting it first if it is not there (tens of seconds, once per model).

        Args:
            config: The Space configuration (model id, revision, precision, ...).
            token: Hub token for private models.
            num_threads: Intra-op threads (torch or ONNX Runtime); the runtime's default when None.
            cache_dir: Where int8 ONNX exports are cached; ``shared.quantize.default_cache_dir``
                (under ``$HF_HOME``) when None.

        Returns:
            The ready classifier.

        Raises:
            ModelLoadError: missing files, LFS pointers, unmapped labels.
        """
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        if num_threads:
            torch.set_num_threads(num_threads)
        source = ModelSource.parse(config.model_id, config.revision)
        folder = resolve_model(source, required=["config.json", TRANSFORMERS_WEIGHTS], token=token)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        choice = select_device(config.device)
        precision: Precision = config.precision
        if choice.device == "cuda" and precision == "int8":
            # Dynamic int8 is a CPU kernel; a GPU gets its own fast dtype instead.
            precision = "bf16" if choice.dtype == "bfloat16" else "fp32"
            logger.info("int8 is CPU-only: running %s on the GPU", precision)
        model: Any
        if precision == "int8" and config.runtime == "onnxruntime":
            from shared.quantize import OnnxModel, cached_int8_onnx

            try:
                path = cached_int8_onnx(
                    folder,
                    lambda: AutoModelForSequenceClassification.from_pretrained(folder).eval(),
                    lambda: _example_inputs(tokenizer),
                    cache_dir,
                )
                model = OnnxModel(path, AutoConfig.from_pretrained(folder), threads=num_threads)
            except ModelLoadError as e:
                raise ModelLoadError(
                    f"{e}. To serve this model without ONNX Runtime, set RUNTIME=torch "
                    "(or runtime: torch in config.yaml)"
                ) from e
        else:
            model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
            model = _apply_precision(model, precision).to(choice.device)
        config = replace(config, precision=precision)
        label_map_file = folder / "label_map.json"
        return cls(
            model,
            tokenizer,
            config,
            str(source),
            demo=demo_info(folder) is not None,
            label_map_file=label_map_file if label_map_file.is_file() else None,
        )

    # -- preprocess ---------------------------------------------------------------------------

    def preprocess(self, text: object) -> Prepared:
        """Validate, normalise and tokenize one input.

        Raises:
            InputError: naming the limit the input broke.
        """
        normalized = normalize_arabic(check_text(text, self.limits), self.config.normalization)
        if not normalized.strip():
            # e.g. only tashkeel or tatweel, which the normalisation removes
            raise InputError("text is empty after normalisation (only diacritics or tatweel)")
        ids, truncated = self._encode(normalized)
        return Prepared(text=normalized, input_ids=ids, truncated=truncated)

    # -- forward ------------------------------------------------------------------------------

    def forward(self, prepared: Sequence[Prepared]) -> tuple[torch.Tensor, list[bool]]:
        """Run the model on a batch, in length-sorted chunks of at most ``batch_tokens``.

        Padding a short text to a long one's length wastes the work on the padding, and one
        huge padded batch runs slower per token on CPU than a few cache-sized ones, so texts are
        sorted by length and cut into chunks whose padded size stays within the budget.

        Returns:
            Probabilities ``(batch, num_labels)`` in input order and, per text, whether it was
            truncated.
        """
        order = sorted(range(len(prepared)), key=lambda i: prepared[i].tokens)
        logits = torch.empty(len(prepared), self.model.config.num_labels)  # (batch, num_labels)
        lengths = [prepared[i].tokens for i in order]
        for start, end in plan_chunks(lengths, self.config.batch_tokens):
            chunk = order[start:end]
            inputs = self._pad([prepared[i].input_ids for i in chunk])
            with torch.inference_mode():
                out = self.model(**inputs).logits  # (chunk, num_labels)
            logits[chunk] = out.float().cpu()
        probs = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)
        return probs, [p.truncated for p in prepared]

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

    def postprocess(self, probs: torch.Tensor, truncated: Sequence[bool]) -> list[Verdict]:
        """Map raw label probabilities onto verdicts with the threshold rule."""
        verdicts = []
        mode = "sigmoid" if self.multi_label else "softmax"
        threshold = self.config.threshold
        for row, cut in zip(probs.tolist(), truncated, strict=True):
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
                    truncated=cut,
                    model=self.model_ref,
                )
            )
        return verdicts

    # -- the whole pipeline -------------------------------------------------------------------

    def classify(self, texts: Sequence[object]) -> list[Verdict]:
        """Classify a batch of texts, in order.

        Args:
            texts: The inputs; each must be a non-empty string within the length limit.

        Returns:
            One verdict per text.

        Raises:
            InputError: naming the first bad input and the limit it broke.
        """
        if not texts:
            return []
        probs, truncated = self.forward(self.preprocess_all(texts))
        return self.postprocess(probs, truncated)

    def preprocess_all(self, texts: Sequence[object]) -> list[Prepared]:
        """Preprocess several texts; the error names which one was bad."""
        prepared = []
        for i, text in enumerate(texts):
            try:
                prepared.append(self.preprocess(text))
            except InputError as e:
                if len(texts) == 1:
                    raise
                raise InputError(f"text {i + 1} of {len(texts)}: {e}") from e
        return prepared

    def classify_one(self, text: object) -> Verdict:
        """Classify a single text."""
        return self.classify([text])[0]

    def check_batch(self, texts: object) -> list[object]:
        """Validate a ``predict_batch`` payload: a list of at most ``max_batch`` items."""
        if not isinstance(texts, list):
            raise InputError(f"texts must be a list of strings, got {type(texts).__name__}")
        if not texts:
            raise InputError("texts is empty: send at least one text")
        if len(texts) > self.config.max_batch:
            raise InputError(
                f"{len(texts)} texts in one batch; the limit is {self.config.max_batch}"
            )
        return texts


def _normalization(value: object) -> ArabicNormalization:
    """A preset name (``arabert_v02`` or ``none``) or a mapping of step options."""
    if isinstance(value, ArabicNormalization):
        return value
    if isinstance(value, Mapping):
        return ArabicNormalization.from_dict(value)
    presets = {"arabert_v02": ArabicNormalization.arabert_v02, "none": ArabicNormalization.none}
    if value not in presets:
        raise ModelLoadError(
            f"normalization must be one of {sorted(presets)} or a mapping of options, got {value!r}"
        )
    return presets[value]()


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


def _apply_precision(model: torch.nn.Module, precision: Precision) -> torch.nn.Module:
    if precision == "int8":
        # Dynamic int8 Linear layers: VNNI makes these matmuls several times cheaper on CPU.
        import warnings

        from torch.ao.quantization import quantize_dynamic

        # torch deprecates eager-mode quantization in favour of torchao, which has no CPU int8
        # dynamic path on this torch build; the eager one is still shipped and measured here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
            return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    if precision == "bf16":
        return model.to(torch.bfloat16)
    return model
