"""Wire formats: Text Generation Inference, the users' ``/api/generate`` and OpenAI chat.

Field names, defaults and error wording follow TGI's router (``router/src/lib.rs``,
``validation.rs``) and OpenAI's chat completions API, so existing clients work unmodified. Types
are strict (a string where a number belongs is a 422, as serde would answer), unknown fields are
ignored (clients send ``adapter_id``, ``watermark``... that this server does not use).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.llm import GenerationResult, TokenEvent

_STRICT = ConfigDict(strict=True, extra="ignore")


#: Largest seed: TGI takes a u64, and so does torch.Generator.manual_seed.
MAX_SEED = 2**64 - 1


class Grammar(BaseModel):
    """TGI's grammar parameter."""

    model_config = _STRICT

    # "json" (value: a JSON schema object) or "regex" (value: a pattern).
    type: Literal["json", "regex", "json_object"]
    # The schema or the pattern.
    value: Any = None


class GenerateParameters(BaseModel):
    """TGI's ``parameters`` object; None means "not given" (the tier's default applies)."""

    model_config = _STRICT

    # Sample instead of greedy decoding (also implied by temperature/top_k/top_p/typical_p).
    do_sample: bool = False
    # Most tokens to generate (capped by the tier).
    max_new_tokens: int | None = None
    # Softmax temperature, > 0.
    temperature: float | None = None
    # Keep the k most likely tokens, > 0.
    top_k: int | None = None
    # Nucleus sampling, in (0, 1).
    top_p: float | None = None
    # Typical sampling, in (0, 1).
    typical_p: float | None = None
    # > 0; 1.0 is no penalty.
    repetition_penalty: float | None = None
    # In [-2, 2].
    frequency_penalty: float | None = None
    # Sampling seed (TGI's u64).
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    # Stop sequences (the output keeps the one that matched).
    stop: list[str] = Field(default_factory=list)
    # Prepend the prompt to generated_text.
    return_full_text: bool | None = None
    # Keep only the last N prompt tokens.
    truncate: int | None = None
    # Return finish_reason, token counts and tokens.
    details: bool = False
    # Also return the prompt tokens in details.prefill.
    decoder_input_details: bool = False
    # Only 1 is supported (as in TGI without best_of sampling).
    best_of: int | None = None
    # Constrained decoding.
    grammar: Grammar | None = None


class GenerateRequest(BaseModel):
    """Body of ``POST /generate``, ``POST /generate_stream`` and ``POST /``."""

    model_config = _STRICT

    # The prompt.
    inputs: str
    # Generation parameters.
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)
    # ``POST /`` only: answer as server-sent events.
    stream: bool = False


class ProductGenerateRequest(GenerateRequest):
    """Body of ``POST /api/generate``: the users' shape, plus an optional tier."""

    # Tier to use; the default tier when left out.
    tier: str | None = None
    # Model revision the caller expects this tier to serve; a mismatch is a 409.
    revision: str | None = None
    # JSON object rendered into the prompt (e.g. facts about the user).
    context: dict[str, Any] | None = None


class PrefillToken(BaseModel):
    """A prompt token in ``details.prefill``."""

    id: int
    text: str
    logprob: float | None = None


class Token(BaseModel):
    """A generated token as TGI reports it."""

    id: int
    text: str
    logprob: float
    special: bool

    @classmethod
    def of(cls, event: TokenEvent) -> Token:
        """Wire form of an engine token."""
        return cls(id=event.id, text=event.text, logprob=event.logprob, special=event.special)


class Details(BaseModel):
    """``details`` of a ``/generate`` answer."""

    finish_reason: str
    generated_tokens: int
    seed: int | None
    prefill: list[PrefillToken]
    tokens: list[Token]
    top_tokens: list[list[Token]] = Field(default_factory=list)
    best_of_sequences: list[Any] | None = None


class StreamDetails(BaseModel):
    """``details`` of the last stream event."""

    finish_reason: str
    generated_tokens: int
    seed: int | None
    input_length: int


class GenerateResponse(BaseModel):
    """Answer of ``POST /generate`` (and items of ``POST /``)."""

    generated_text: str
    details: Details | None = None


class StreamResponse(BaseModel):
    """One server-sent event of ``/generate_stream``."""

    index: int
    token: Token
    top_tokens: list[Token] = Field(default_factory=list)
    generated_text: str | None = None
    details: StreamDetails | None = None


class ErrorBody(BaseModel):
    """TGI's error body."""

    error: str
    error_type: str


class Info(BaseModel):
    """Answer of ``GET /info`` (TGI's fields, plus the tier)."""

    model_id: str
    model_sha: str | None
    model_dtype: str
    model_device_type: str
    model_pipeline_tag: str = "text-generation"
    max_concurrent_requests: int
    max_best_of: int = 1
    max_stop_sequences: int
    max_input_tokens: int
    max_total_tokens: int
    max_client_batch_size: int = 1
    router: str = "llm-tiers"
    version: str
    sha: str | None = None
    docker_label: str | None = None
    tier: str
    adapter: str | None
    demo_weights: bool


# ---- OpenAI chat completions -------------------------------------------------------------------


class ChatMessage(BaseModel):
    """A chat message (text content only)."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    # A string, or OpenAI's list of {"type": "text", "text": ...} parts.
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The message's text, with content parts joined."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(str(part.get("text", "")) for part in self.content)


class JsonSchemaFormat(BaseModel):
    """OpenAI's ``response_format.json_schema``."""

    model_config = ConfigDict(extra="ignore")

    name: str = "response"
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's ``response_format`` (and TGI's ``{"type": "json", "value": schema}``)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "json_object", "json_schema", "json", "regex"]
    json_schema: JsonSchemaFormat | None = None
    value: Any = None


class StreamOptions(BaseModel):
    """OpenAI's ``stream_options``."""

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """Body of ``POST /v1/chat/completions``."""

    model_config = ConfigDict(extra="ignore")

    # The tier name.
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1)
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None


class Usage(BaseModel):
    """Token counts of a chat completion."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatChoiceMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatChoiceMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(BaseModel):
    """Answer of a non-streaming chat completion."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One streamed chat completion event."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    """An entry of ``GET /v1/models``."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def completion_id() -> str:
    """A fresh chat completion id."""
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def now() -> int:
    """Unix time in seconds, for ``created``."""
    return int(time.time())


def openai_finish_reason(result: GenerationResult) -> str:
    """Map TGI's finish reasons to OpenAI's (``length`` or ``stop``)."""
    return "length" if result.finish_reason == "length" else "stop"
