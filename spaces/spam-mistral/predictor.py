"""The spam predictor and the conversation simulator: no Gradio or HTTP here.

Classification reads label probabilities, it does not parse generated text: preprocess (check
the message, delimit it inside the chat-templated prompt, tokenize) -> forward (one batched
forward pass, the next-token log-probabilities after the answer prefix) -> postprocess (each
label's verbalizer tokens, normalised over the labels, contextual calibration, the threshold).
Nothing is generated, so nothing is unparseable.

Replies come from the shared generation engine (``shared.llm``): a persona and a style from
``personas.yaml`` become the system prompt, the conversation the turns; the reply is streamed,
its contact points redacted (``redact.py``), and it is marked as simulated.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from redact import redact
from shared.config import load_config
from shared.errors import InputError, ModelLoadError
from shared.llm import (
    CausalLMRegistry,
    EngineLimits,
    GenerationRequest,
    LoadedModel,
    ModelSpec,
    SamplingOptions,
    TokenStream,
    encode_prefix,
)
from shared.serving import ModelInfo, plan_chunks, predict
from shared.text import TextLimits, check_text

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
CONFIG_PATH = HERE / "config.yaml"
PERSONAS_PATH = HERE / "personas.yaml"
LABELS = ("spam", "not_spam")
Label = Literal["spam", "not_spam"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
# Notice shown with every simulated reply.
SIMULATED_NOTICE = "Simulated message for scam-awareness training; contact points are redacted."


# -- settings -----------------------------------------------------------------------------------


class ModelRef(BaseModel):
    """A model by Hub id or local folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Hub repo id or local directory.
    model_id: str = Field(min_length=1)
    # Hub revision; None means the default branch.
    revision: str | None = None


class GenerationSettings(BaseModel):
    """Reply generation defaults and limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Tokens to generate when the request does not say.
    max_new_tokens: int = Field(150, ge=1)
    # Most tokens a request may ask for.
    max_new_tokens_cap: int = Field(400, ge=1)
    # Sampling temperature.
    temperature: float = Field(0.7, gt=0, le=5, allow_inf_nan=False)
    # Nucleus sampling mass.
    top_p: float = Field(0.9, gt=0, le=1, allow_inf_nan=False)
    # Most turns in one conversation.
    max_turns: int = Field(50, ge=1)

    @model_validator(mode="after")
    def _default_within_cap(self) -> GenerationSettings:
        if self.max_new_tokens > self.max_new_tokens_cap:
            raise ValueError(
                f"max_new_tokens ({self.max_new_tokens}) is above max_new_tokens_cap "
                f"({self.max_new_tokens_cap})"
            )
        return self


class SpamSettings(BaseModel):
    """config.yaml: the models, the prompt, the decision rule and the limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The model that classifies, and the one that writes replies (the same id: one copy).
    classifier: ModelRef = ModelRef(model_id="mistralai/Mistral-7B-Instruct-v0.3")
    generator: ModelRef = ModelRef(model_id="mistralai/Mistral-7B-Instruct-v0.3")
    # Precision of the weights.
    dtype: Dtype = "auto"
    # "auto" (a GPU when one is visible), "cpu" or "cuda".
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # spam iff calibrated p(spam) >= threshold.
    threshold: float = Field(0.5, ge=0, le=1, allow_inf_nan=False)
    # p(label) the model gives content-free messages (divided out); None: uncalibrated.
    calibration: dict[Label, float] | None = None
    # The content-free messages the calibration is measured on.
    content_free: list[str] = ["N/A", "", "[MASK]"]
    # The classification instruction (the system prompt).
    instruction: str = Field(min_length=1)
    # Text after the generation prompt whose next token is read.
    answer_prefix: str = "Answer:"
    # Words whose first token stands for each label.
    verbalizers: dict[Label, list[str]]
    # Longest accepted message, in characters.
    max_chars: int = Field(20_000, ge=1)
    # Most messages in one predict_batch call.
    max_batch: int = Field(64, ge=1)
    # Most bytes in a request body; a bigger one is answered 413 before it is read in full.
    max_request_bytes: int = Field(2 * 1024 * 1024, ge=1024)
    # Tokens of a message the prompt keeps.
    max_message_tokens: int = Field(512, ge=8)
    # Most padded tokens per forward pass (length-sorted chunks of a batch).
    batch_tokens: int = Field(2048, ge=1)
    # Verdicts kept in the cache of recent messages.
    cache_size: int = Field(4096, ge=0)
    # Reply generation.
    generation: GenerationSettings = GenerationSettings()

    @model_validator(mode="after")
    def _check(self) -> SpamSettings:
        if set(self.verbalizers) != set(LABELS) or not all(self.verbalizers.values()):
            raise ValueError(f"verbalizers must give at least one word for each of {LABELS}")
        if self.calibration is not None:
            if set(self.calibration) != set(LABELS):
                raise ValueError(f"calibration must give p for each of {LABELS}")
            if not all(0 < p < math.inf for p in self.calibration.values()):
                raise ValueError("calibration probabilities must be positive numbers")
        return self


def load_settings(path: Path = CONFIG_PATH, overrides: Sequence[Any] = ()) -> SpamSettings:
    """The Space's settings: ``config.yaml`` with ``overrides`` (``shared.config``) on top."""
    return load_config(SpamSettings, path, overrides)


class Persona(BaseModel):
    """One side of a simulated conversation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # One line for the UI.
    description: str
    # The persona's system prompt.
    system_prompt: str = Field(min_length=1)
    # The conversation role its replies have ("scammer" or "victim").
    speaks_as: str = Field(min_length=1)


class Style(BaseModel):
    """How a persona writes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # One line for the UI.
    description: str
    # Appended to the persona's system prompt.
    instruction: str


class PersonaDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    persona: str
    style: str


class Personas(BaseModel):
    """personas.yaml: the personas and styles a reply can be asked in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    personas: dict[str, Persona] = Field(min_length=1)
    styles: dict[str, Style] = Field(min_length=1)
    defaults: PersonaDefaults

    @model_validator(mode="after")
    def _check(self) -> Personas:
        if self.defaults.persona not in self.personas:
            raise ValueError(f"defaults.persona must be one of {sorted(self.personas)}")
        if self.defaults.style not in self.styles:
            raise ValueError(f"defaults.style must be one of {sorted(self.styles)}")
        return self

    @property
    def roles(self) -> list[str]:
        """The conversation roles turns may have."""
        return sorted({p.speaks_as for p in self.personas.values()})

    def persona(self, name: str | None) -> tuple[str, Persona]:
        """The persona called ``name`` (the default when None); InputError lists the valid."""
        name = name or self.defaults.persona
        if name not in self.personas:
            raise InputError(f"unknown persona {name!r}; valid personas: {sorted(self.personas)}")
        return name, self.personas[name]

    def style(self, name: str | None) -> tuple[str, Style]:
        """The style called ``name`` (the default when None); InputError lists the valid."""
        name = name or self.defaults.style
        if name not in self.styles:
            raise InputError(f"unknown style {name!r}; valid styles: {sorted(self.styles)}")
        return name, self.styles[name]


def load_personas(path: Path = PERSONAS_PATH) -> Personas:
    """Read ``personas.yaml``."""
    return load_config(Personas, path)


def model_info(loaded: LoadedModel, demo: bool, **extra: Any) -> ModelInfo:
    """The ``/health`` entry of a loaded model, with ``extra`` beside the fixed keys."""
    return ModelInfo(
        id=loaded.model_id,
        revision=loaded.revision,
        device=loaded.device,
        precision=loaded.precision,
        demo=demo,
        load_s=loaded.load_seconds,
        extra=extra,
    )


# -- classification -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SpamVerdict:
    """The answer for one message."""

    # "spam" or "not_spam".
    classification: str
    # Probability of ``classification``.
    confidence: float
    # {"spam": p, "not_spam": 1 - p}, calibrated.
    probabilities: dict[str, float]
    # "model_id@revision".
    model: str
    # True when the message was cut to max_message_tokens.
    truncated: bool

    def to_json(self) -> dict[str, Any]:
        """The JSON object the endpoints return."""
        return asdict(self)


@dataclass(frozen=True)
class Prepared:
    """One message after preprocessing."""

    # The cache key: the cleaned text.
    key: str
    # The prompt's token ids (special tokens included).
    prompt_ids: tuple[int, ...]
    # True when the message was cut to max_message_tokens.
    truncated: bool
    # The verdict from the cache, when the message was seen recently.
    cached: SpamVerdict | None = None


# A closing or opening delimiter inside a message, however it is spaced or cased.
_DELIMITER = re.compile(r"<\s*(/?)\s*message\s*>", re.IGNORECASE)


def neutralise(text: str) -> str:
    """A message that cannot close its delimiters: ``</message>`` (``<message>``) inside it
    becomes ``‹/message›`` (``‹message›``), so the text after it is still read as data."""
    return _DELIMITER.sub(lambda m: f"‹{m.group(1)}message›", text)


def delimit(text: str) -> str:
    """The message between ``<message>`` delimiters it cannot close."""
    return f"<message>\n{neutralise(text)}\n</message>"


# Stands for the message while the prompt around it is rendered once (a private-use character).
_SLOT = "\ue000"


def render_chat(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """Messages through the model's chat template, with the generation prompt.

    A template that refuses a system turn (some Mistral ones) gets the system text at the top
    of the first user turn instead; a tokenizer with no template gets ``role: content`` lines.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        lines = [f"{m['role']}: {m['content']}" for m in messages]
        return "\n".join([*lines, "assistant:"])
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:
        if not messages or messages[0]["role"] != "system" or len(messages) < 2:
            raise
        system, first, *rest = messages
        merged = {**first, "content": f"{system['content']}\n\n{first['content']}"}
        return tokenizer.apply_chat_template(
            [merged, *rest], tokenize=False, add_generation_prompt=True
        )


class VerdictCache:
    """A bounded LRU of recent verdicts, thread-safe, with hit and miss counters."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, SpamVerdict] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> SpamVerdict | None:
        with self._lock:
            verdict = self._items.get(key)
            if verdict is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return verdict

    def put(self, key: str, verdict: SpamVerdict) -> None:
        if self.capacity == 0:
            return
        with self._lock:
            self._items[key] = verdict
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def stats(self) -> dict[str, int]:
        """Size, capacity, hits and misses, for /stats."""
        with self._lock:
            return {
                "size": len(self._items),
                "capacity": self.capacity,
                "hits": self.hits,
                "misses": self.misses,
            }


def verbalizer_ids(
    tokenizer: Any, verbalizers: Mapping[str, Sequence[str]]
) -> dict[str, list[int]]:
    """Each label's candidate next tokens: the first token of each verbalizer word, with and
    without a leading space. A token two labels share stands for neither and is dropped.

    Raises:
        ModelLoadError: a label is left without a token of its own.
    """
    firsts: dict[str, set[int]] = {}
    for label, words in verbalizers.items():
        ids = set()
        for word in words:
            for variant in (word, " " + word):
                encoded = tokenizer.encode(variant, add_special_tokens=False)
                if encoded:
                    ids.add(int(encoded[0]))
        firsts[label] = ids
    shared = set.intersection(*firsts.values()) if len(firsts) > 1 else set()
    out = {label: sorted(ids - shared) for label, ids in firsts.items()}
    empty = [label for label, ids in out.items() if not ids]
    if empty:
        raise ModelLoadError(
            f"the verbalizers of {empty} share every first token with another label in this "
            "tokenizer; choose words that start differently (verbalizers in config.yaml)"
        )
    return out


class SpamClassifier:
    """An instruct LLM behind the spam / not_spam decision rule.

    Args:
        loaded: The causal LM (``shared.llm.LoadedModel``).
        settings: The Space's settings.
        model_ref: ``id@revision`` reported in every verdict and in the cache key.
        demo: True when the weights are the offline demo weights.
    """

    def __init__(
        self, loaded: LoadedModel, settings: SpamSettings, model_ref: str, *, demo: bool = False
    ) -> None:
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.settings = settings
        self.model_ref = model_ref
        self.demo = demo
        self.limits = TextLimits(max_chars=settings.max_chars)
        self.label_ids = verbalizer_ids(self.tokenizer, settings.verbalizers)
        self.cache = VerdictCache(settings.cache_size)
        # Every prompt is [instruction ... <message>\n] message [\n</message> ... Answer:]: the
        # part before the message is the same for all, so it runs once (shared.llm's
        # PromptPrefix) and each message costs only its own tokens and the short tail.
        messages = [
            {"role": "system", "content": settings.instruction},
            {"role": "user", "content": delimit(_SLOT)},
        ]
        template = render_chat(self.tokenizer, messages) + settings.answer_prefix
        if template.count(_SLOT) != 1:
            raise ModelLoadError("the chat template does not keep the message in one place")
        head, tail = template.split(_SLOT)
        self.prefix_ids = tuple(self.tokenizer.encode(head, add_special_tokens=False))
        self.tail_ids = tuple(self.tokenizer.encode(tail, add_special_tokens=False))
        self.prefix = encode_prefix(loaded.model, self.prefix_ids)
        self.info = model_info(
            loaded,
            demo,
            role="classifier",
            threshold=settings.threshold,
            calibrated=settings.calibration is not None,
        )

    # -- preprocess ---------------------------------------------------------------------------

    def preprocess(self, text: object) -> Prepared:
        """Check one message and build its prompt (or find its verdict in the cache).

        Raises:
            InputError: not a string, empty, or over the length limit.
        """
        cleaned = check_text(text, self.limits)
        key = f"{self.model_ref}\x00{cleaned}"
        cached = self.cache.get(key)
        if cached is not None:
            return Prepared(key, (), cached.truncated, cached)
        ids, truncated = self.prompt_ids(cleaned)
        return Prepared(key, ids, truncated)

    def prompt_ids(self, message: str) -> tuple[tuple[int, ...], bool]:
        """The ids of a message's prompt after the shared prefix (:attr:`prefix_ids`): the
        message, cut to ``max_message_tokens``, then the tail up to the answer prefix; and
        whether it was cut."""
        ids = self.tokenizer.encode(neutralise(message), add_special_tokens=False)
        limit = self.settings.max_message_tokens
        return tuple(ids[:limit]) + self.tail_ids, len(ids) > limit

    # -- forward ------------------------------------------------------------------------------

    def forward(self, batch: Sequence[Prepared]) -> torch.Tensor:
        """Label log-scores ``(batch, 2)`` (spam, not_spam), uncalibrated, from one forward
        pass over the messages not found in the cache (their rows are NaN)."""
        scores = torch.full((len(batch), len(LABELS)), math.nan)
        todo = [i for i, p in enumerate(batch) if p.cached is None]
        if todo:
            scores[todo] = self.label_scores([batch[i].prompt_ids for i in todo])
        return scores

    def label_scores(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """``(prompts, 2)``: log of the summed next-token probability of each label's tokens.

        Prompts run length-sorted, in forward passes of at most ``batch_tokens`` padded tokens
        (``shared.serving.plan_chunks``): a short message padded to a long one's length would
        pay for the padding, and attention grows with the square of it.
        """
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        lengths = [len(prompts[i]) for i in order]
        scores = torch.empty(len(prompts), len(LABELS))
        for start, end in plan_chunks(lengths, self.settings.batch_tokens):
            chunk = order[start:end]
            scores[chunk] = self._label_scores([prompts[i] for i in chunk])
        return scores

    def _label_scores(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        logprobs = self.loaded.next_token_logprobs(prompts, prefix=self.prefix).cpu()
        return torch.stack(
            [torch.logsumexp(logprobs[:, self.label_ids[label]], dim=-1) for label in LABELS],
            dim=-1,
        )

    # -- postprocess --------------------------------------------------------------------------

    def postprocess(self, outputs: torch.Tensor, batch: Sequence[Prepared]) -> list[SpamVerdict]:
        """Normalise over the labels, divide out the calibration, apply the threshold."""
        verdicts = []
        for prepared, row in zip(batch, outputs.tolist(), strict=True):
            if prepared.cached is not None:
                verdicts.append(prepared.cached)
                continue
            p_spam = self.calibrated(row)
            label = "spam" if p_spam >= self.settings.threshold else "not_spam"
            probabilities = {"spam": p_spam, "not_spam": 1.0 - p_spam}
            verdict = SpamVerdict(
                label, probabilities[label], probabilities, self.model_ref, prepared.truncated
            )
            self.cache.put(prepared.key, verdict)
            verdicts.append(verdict)
        return verdicts

    def calibrated(self, scores: Sequence[float]) -> float:
        """p(spam) from the label log-scores, with contextual calibration when configured."""
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        if self.settings.calibration is not None:
            weights = [w / self.settings.calibration[lab] for w, lab in zip(weights, LABELS)]  # noqa: B905
        return weights[0] / sum(weights)

    # -- the whole pipeline -------------------------------------------------------------------

    def classify(self, texts: Sequence[object]) -> list[SpamVerdict]:
        """Classify messages in the caller's thread (the served path batches the same steps).

        Raises:
            InputError: naming the first bad message.
        """
        return predict(self, texts, what="message")

    def raw_distribution(self, texts: Sequence[str]) -> list[dict[str, float]]:
        """The uncalibrated label distribution of each text, checks skipped (the content-free
        inputs of calibration include the empty string)."""
        if not texts:
            return []
        scores = self.label_scores([self.prompt_ids(t)[0] for t in texts])
        probs = torch.softmax(scores, dim=-1).tolist()
        return [dict(zip(LABELS, row, strict=True)) for row in probs]

    def check_batch(self, texts: object) -> list[object]:
        """Validate a ``predict_batch`` payload: a list of 1 to ``max_batch`` items."""
        if not isinstance(texts, list):
            raise InputError(f"texts must be a list of strings, got {type(texts).__name__}")
        if not texts:
            raise InputError("texts is empty: send at least one message")
        if len(texts) > self.settings.max_batch:
            raise InputError(
                f"{len(texts)} messages in one batch; the limit is {self.settings.max_batch}"
            )
        return texts


# -- conversation simulation --------------------------------------------------------------------


@dataclass(frozen=True)
class ReplyOptions:
    """Generation parameters of one reply (None: the Space's default)."""

    # Most tokens to generate (capped by max_new_tokens_cap).
    max_new_tokens: int | None = None
    # Sampling temperature (> 0).
    temperature: float | None = None
    # Nucleus sampling mass, in (0, 1].
    top_p: float | None = None
    # Random seed, for a reproducible reply.
    seed: int | None = None


@dataclass(frozen=True)
class Reply:
    """A simulated message."""

    # The reply, with contact points redacted.
    reply: str
    # The persona and style it was written in.
    persona: str
    style: str
    # "length", "eos_token" or "stop_sequence"; None while streaming.
    finish_reason: str | None
    # Always True: this is a simulated message.
    simulated: bool = True
    # What the redaction replaced, e.g. {"[LINK]": 1}.
    redacted: dict[str, int] = field(default_factory=dict)
    # Shown with every reply.
    notice: str = SIMULATED_NOTICE

    def to_json(self) -> dict[str, Any]:
        """The JSON object the endpoints return."""
        return asdict(self)


# A word holding one of these may be part of a contact point still being generated.
_CONTACT_CHAR = re.compile(r"[0-9\u0660-\u0669\u06f0-\u06f9@:/.+]")
_WORD = re.compile(r"\S+\s*")


def streamable(text: str) -> str:
    """The redacted text, minus a trailing part that may still grow into a contact point.

    The trailing words that hold a digit, ``@``, ``:``, ``/``, ``.`` or ``+`` are held back
    while streaming, so a number is never shown before it is complete enough to be redacted.
    Linear in the text's length: this runs on every streamed token, holding the GIL, and a
    backtracking pattern here once froze the whole Space on a generated ``a.a.a.…``.
    """
    shown = redact(text).text
    start = len(shown)
    for word in reversed(list(_WORD.finditer(shown))):
        if not _CONTACT_CHAR.search(word.group()):
            break
        start = word.start()
    return shown[:start]


class ReplyGenerator:
    """Writes one side of a scam conversation with the shared generation engine.

    Args:
        loaded: The causal LM (``shared.llm.LoadedModel``) with its engine.
        personas: The personas and styles.
        settings: Generation defaults and limits.
        demo: True when the weights are the offline demo weights.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        personas: Personas,
        settings: GenerationSettings,
        *,
        demo: bool = False,
    ) -> None:
        self.loaded = loaded
        self.personas = personas
        self.settings = settings
        self.limits = TextLimits(max_chars=20_000)
        self.info = model_info(
            loaded,
            demo,
            role="generator",
            personas=sorted(personas.personas),
            styles=sorted(personas.styles),
        )

    def turns(self, conversation: object) -> list[dict[str, str]]:
        """A conversation as ``{"role", "text"}`` turns; one text is one turn of the other side
        (its role is given by the persona, see :meth:`prepare`).

        Raises:
            InputError: a malformed conversation, naming the turn and what is wrong.
        """
        if isinstance(conversation, str):
            return [{"role": "", "text": check_text(conversation, self.limits)}]
        if not isinstance(conversation, list) or not conversation:
            raise InputError(
                "conversation must be a text or a non-empty list of "
                f'{{"role": one of {self.personas.roles}, "text": ...}} turns'
            )
        if len(conversation) > self.settings.max_turns:
            raise InputError(f"{len(conversation)} turns; the limit is {self.settings.max_turns}")
        turns = []
        total = 0
        for i, turn in enumerate(conversation, start=1):
            if not isinstance(turn, dict) or set(turn) != {"role", "text"}:
                raise InputError(
                    f'turn {i} must be {{"role": ..., "text": ...}}, got {str(turn)[:80]!r}'
                )
            if turn["role"] not in self.personas.roles:
                raise InputError(
                    f"turn {i}: role must be one of {self.personas.roles}, got {turn['role']!r}"
                )
            try:
                text = check_text(turn["text"], self.limits)
            except InputError as e:
                raise InputError(f"turn {i}: {e}") from e
            total += len(text)
            if total > self.limits.max_chars:
                raise InputError(
                    f"the conversation has over {self.limits.max_chars} characters of text"
                )
            turns.append({"role": turn["role"], "text": text})
        return turns

    def prepare(
        self,
        conversation: object,
        persona: str | None,
        style: str | None,
        options: ReplyOptions | None = None,
    ) -> tuple[GenerationRequest, str, str]:
        """Validate a request and build the engine request.

        Returns:
            The request, the persona's name and the style's name.

        Raises:
            InputError: unknown persona or style (listing the valid ones), a malformed
                conversation, a bad parameter.
        """
        persona_name, who = self.personas.persona(persona)
        style_name, how = self.personas.style(style)
        turns = self.turns(conversation)
        other = next((r for r in self.personas.roles if r != who.speaks_as), who.speaks_as)
        if turns[0]["role"] == "":
            turns = [{"role": other, "text": turns[0]["text"]}]
        if turns[-1]["role"] == who.speaks_as:
            raise InputError(
                f"the last turn is the {who.speaks_as}'s own: the {persona_name} persona replies "
                f"to the {other}, so end the conversation with a {other} turn"
            )
        options = options or ReplyOptions()
        sampling, max_new = self._sampling(options)
        system = f"{who.system_prompt}\n\n{how.instruction}".strip()
        # The persona's own turns are the assistant's; consecutive turns of one side merge,
        # since chat templates expect user and assistant to alternate.
        messages: list[dict[str, str]] = []
        for turn in turns:
            role = "assistant" if turn["role"] == who.speaks_as else "user"
            if messages and messages[-1]["role"] == role:
                messages[-1]["content"] += "\n" + turn["text"]
            else:
                messages.append({"role": role, "content": turn["text"]})
        if messages[0]["role"] == "assistant":
            messages.insert(0, {"role": "user", "content": "(the conversation starts)"})
        ids = self._fit(system, messages, max_new)
        request = GenerationRequest(input_ids=ids, max_new_tokens=max_new, sampling=sampling)
        return request, persona_name, style_name

    def _sampling(self, options: ReplyOptions) -> tuple[SamplingOptions, int]:
        s = self.settings
        max_new = options.max_new_tokens if options.max_new_tokens is not None else s.max_new_tokens
        if not 1 <= max_new <= s.max_new_tokens_cap:
            raise InputError(
                f"max_new_tokens must be in [1, {s.max_new_tokens_cap}], got {max_new}"
            )
        temperature = options.temperature if options.temperature is not None else s.temperature
        if not (math.isfinite(temperature) and 0 < temperature <= 5):
            raise InputError(f"temperature must be in (0, 5], got {temperature}")
        top_p = options.top_p if options.top_p is not None else s.top_p
        if not (math.isfinite(top_p) and 0 < top_p <= 1):
            raise InputError(f"top_p must be in (0, 1], got {top_p}")
        seed = options.seed
        if seed is not None and not 0 <= seed < 2**63:
            raise InputError(f"seed must be in [0, 2**63), got {seed}")
        sampling = SamplingOptions(
            do_sample=True, temperature=temperature, top_p=top_p if top_p < 1 else None, seed=seed
        )
        return sampling, max_new

    def _fit(self, system: str, messages: list[dict[str, str]], max_new: int) -> tuple[int, ...]:
        """The prompt's ids; the oldest turns are dropped until prompt + reply fit the model."""
        budget = self.loaded.engine.max_total_tokens - max_new
        tokenizer = self.loaded.tokenizer
        while True:
            prompt = render_chat(tokenizer, [{"role": "system", "content": system}, *messages])
            ids = tokenizer.encode(prompt, add_special_tokens=False)
            if len(ids) <= budget:
                return tuple(ids)
            if len(messages) <= 1:
                raise InputError(
                    f"the last turn is too long: {len(ids)} prompt tokens and {max_new} new "
                    f"tokens exceed the model's {self.loaded.engine.max_total_tokens}"
                )
            messages = messages[1:] if messages[0]["role"] == "user" else messages[2:]
            if messages and messages[0]["role"] == "assistant":
                messages = messages[1:]

    def stream(
        self,
        conversation: object,
        persona: str | None = None,
        style: str | None = None,
        options: ReplyOptions | None = None,
    ) -> Iterator[Reply]:
        """The reply as it is generated (redacted, partial), then the finished reply.

        Raises:
            InputError: see :meth:`prepare`.
            shared.llm.EngineOverloaded: too many replies in flight.
        """
        request, persona_name, style_name = self.prepare(conversation, persona, style, options)
        stream: TokenStream = self.loaded.engine.submit(request)
        text = ""
        shown = ""
        for token in stream:
            text += token.text
            partial = streamable(text)
            if partial != shown:
                shown = partial
                yield Reply(partial.strip(), persona_name, style_name, None)
        assert stream.result is not None
        final = redact(stream.result.text.strip())
        yield Reply(
            final.text,
            persona_name,
            style_name,
            stream.result.finish_reason,
            redacted=final.replaced,
        )

    def generate_reply(
        self,
        conversation: object,
        persona: str | None = None,
        style: str | None = None,
        options: ReplyOptions | None = None,
    ) -> Reply:
        """The finished reply (blocking)."""
        *_, reply = self.stream(conversation, persona, style, options)
        return reply


# -- loading ------------------------------------------------------------------------------------


# Replies decoded together, and in flight before the Space answers 429.
ENGINE_LIMITS = EngineLimits(max_batch_size=8, max_concurrent_requests=32)


@dataclass
class SpamModels:
    """What the Space serves: the classifier (batched by the Space) and the reply generator."""

    # The classifier, behind the batcher (shared.serving.BatchedPredictor) in the Space.
    classifier: Any
    # The conversation simulator.
    generator: ReplyGenerator

    def infos(self) -> dict[str, ModelInfo]:
        """/health entries: the classifier and the generator (the same weights when their ids
        are the same)."""
        return {"classifier": self.classifier.info, "generator": self.generator.info}


def load_classifier(
    settings: SpamSettings,
    *,
    registry: CausalLMRegistry | None = None,
    token: str | None = None,
    device: Literal["auto", "cpu", "cuda"] = "auto",
) -> SpamClassifier:
    """Load the classifier alone (evaluate.py, the benchmark).

    Raises:
        ModelLoadError: missing files, LFS pointers, verbalizers the tokenizer cannot tell apart.
    """
    registry = registry or CausalLMRegistry(token=token, device=device)
    spec = ModelSpec.parse(settings.classifier.model_id, settings.classifier.revision,
                           dtype=settings.dtype)  # fmt: skip
    loaded = registry.get(spec, ENGINE_LIMITS, name="classifier")
    return SpamClassifier(loaded, settings, _ref(spec), demo=loaded.demo is not None)


def load_models(
    settings: SpamSettings,
    personas: Personas,
    *,
    token: str | None = None,
    device: Literal["auto", "cpu", "cuda"] = "auto",
) -> tuple[SpamClassifier, ReplyGenerator]:
    """Load the classifier and the generator (one copy of the weights when the same model).

    Raises:
        ModelLoadError: missing files, LFS pointers, verbalizers the tokenizer cannot tell apart.
    """
    registry = CausalLMRegistry(token=token, device=device)
    classifier = load_classifier(settings, registry=registry)
    spec = ModelSpec.parse(settings.generator.model_id, settings.generator.revision,
                           dtype=settings.dtype)  # fmt: skip
    loaded = registry.get(spec, ENGINE_LIMITS, name="generator")
    generator = ReplyGenerator(loaded, personas, settings.generation,
                               demo=loaded.demo is not None)  # fmt: skip
    return classifier, generator


def _ref(spec: ModelSpec) -> str:
    return f"{spec.model}@{spec.revision}" if spec.revision else spec.model
