"""HTTP routes: TGI (root and ``/tiers/{tier}``), ``/api/generate``, OpenAI ``/v1``, service.

One error boundary turns every failure into TGI's body ``{"error", "error_type"}``: 422
validation, 401 authentication, 404 unknown tier, 409 revision mismatch, 424 generation,
429 overloaded, 503 model not loadable. Streams are server-sent events; a client that goes away
cancels its generation.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from engine import EngineOverloaded, GenerationCancelled, GenerationFailed, TokenStream
from protocol import (
    ChatChoice,
    ChatChoiceMessage,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    Details,
    GenerateParameters,
    GenerateRequest,
    GenerateResponse,
    Grammar,
    Info,
    ModelCard,
    ModelList,
    PrefillToken,
    ProductGenerateRequest,
    StreamDetails,
    StreamResponse,
    Token,
    Usage,
    completion_id,
    now,
    openai_finish_reason,
)
from service import Prepared, TierGenerator
from shared.errors import InputError, ModelLoadError
from shared.serving import RequestStats
from tiers import TierNotFound

logger = logging.getLogger(__name__)

VERSION = "1.0.0"


class AuthError(PermissionError):
    """Missing or wrong bearer token; served as HTTP 401."""


class RevisionMismatch(InputError):
    """The caller expects another revision than the tier serves; served as HTTP 409."""


def _error(status: int, message: str, error_type: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message, "error_type": error_type}, status, headers=headers)


def _describe(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "Input validation error: " + ("; ".join(parts) or "invalid request body")


def install_error_handlers(app: FastAPI) -> None:
    """Map every error type to TGI's status codes and error body."""

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _describe(exc), "validation")

    @app.exception_handler(RevisionMismatch)
    async def _revision(_: Request, exc: RevisionMismatch) -> JSONResponse:
        return _error(409, str(exc), "revision_mismatch")

    @app.exception_handler(InputError)
    async def _input(_: Request, exc: InputError) -> JSONResponse:
        return _error(422, str(exc), "validation")

    @app.exception_handler(TierNotFound)
    async def _tier(_: Request, exc: TierNotFound) -> JSONResponse:
        return _error(404, str(exc.args[0]), "not_found")

    @app.exception_handler(AuthError)
    async def _auth(_: Request, exc: AuthError) -> JSONResponse:
        return _error(401, str(exc), "authentication", **{"WWW-Authenticate": "Bearer"})

    @app.exception_handler(EngineOverloaded)
    async def _overloaded(_: Request, exc: EngineOverloaded) -> JSONResponse:
        return _error(429, "Model is overloaded", "overloaded")

    @app.exception_handler(GenerationFailed)
    async def _failed(_: Request, exc: GenerationFailed) -> JSONResponse:
        return _error(424, str(exc), "generation")

    @app.exception_handler(GenerationCancelled)
    async def _cancelled(_: Request, exc: GenerationCancelled) -> JSONResponse:
        # Nobody reads this answer: the client went away (nginx's "client closed request").
        return _error(499, str(exc), "cancelled")

    @app.exception_handler(ModelLoadError)
    async def _load(_: Request, exc: ModelLoadError) -> JSONResponse:
        return _error(503, str(exc), "unavailable", **{"Retry-After": "30"})


def bearer_guard(api_key: str | None) -> Callable[[Request], None]:
    """A dependency that requires ``Authorization: Bearer <api_key>`` when a key is set."""

    def guard(request: Request) -> None:
        if not api_key:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), api_key):
            raise AuthError(
                "missing or invalid bearer token: send `Authorization: Bearer <API_KEY>`"
            )

    return guard


def _sse(payload: Any, *, space: bool = False) -> str:
    body = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {body}\n\n" if space else f"data:{body}\n\n"


async def _collect(stream: TokenStream, request: Request) -> Any:
    """Wait for a whole generation, cancelling it if the client disconnects meanwhile."""
    task = asyncio.ensure_future(stream.acollect())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if done:
                return task.result()
            if await request.is_disconnected():
                stream.cancel()
                raise GenerationCancelled("the client went away")
    finally:
        if not task.done():
            stream.cancel()
            task.cancel()


class Routes:
    """Builds the routers around one :class:`TierGenerator`.

    Args:
        generator: The plain-Python generator.
        stats: Request statistics shared with the UI.
        api_key: Bearer token required on generation routes, or None for open routes.
    """

    def __init__(self, generator: TierGenerator, stats: RequestStats, api_key: str | None) -> None:
        self.generator = generator
        self.stats = stats
        self.guard = bearer_guard(api_key)

    # ---- TGI ----------------------------------------------------------------------------------

    def _prepare(self, tier: str, body: GenerateRequest) -> Prepared:
        return self.generator.prepare(tier, body.inputs, body.parameters, sampling_defaults=False)

    async def generate(self, tier: str, body: GenerateRequest, request: Request) -> dict[str, Any]:
        """``POST /generate``: the whole output as one object (``details`` only when asked)."""
        with self.stats.track(f"{tier}/generate"):
            prepared = self._prepare(tier, body)
            stream = self.generator.stream(prepared, loop=asyncio.get_running_loop())
            result = await _collect(stream, request)
            text = prepared.prompt + result.text if prepared.return_full_text else result.text
            details = None
            if body.parameters.details:
                prefill: list[PrefillToken] = []
                if body.parameters.decoder_input_details:
                    tokenizer = prepared.model.tokenizer
                    prefill = [
                        PrefillToken(id=i, text=tokenizer.decode([i]))
                        for i in prepared.request.input_ids
                    ]
                details = Details(
                    finish_reason=result.finish_reason,
                    generated_tokens=result.generated_tokens,
                    seed=result.seed,
                    prefill=prefill,
                    tokens=[Token.of(t) for t in result.tokens],
                )
            answer = GenerateResponse(generated_text=text, details=details).model_dump()
            if details is None:
                del answer["details"]
            return answer

    def generate_stream(self, tier: str, body: GenerateRequest) -> StreamingResponse:
        """``POST /generate_stream``: TGI's server-sent events."""
        prepared = self._prepare(tier, body)
        stream = self.generator.stream(prepared, loop=asyncio.get_running_loop())
        return StreamingResponse(
            self._tgi_events(tier, prepared, stream, body.parameters),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _tgi_events(
        self, tier: str, prepared: Prepared, stream: TokenStream, params: GenerateParameters
    ) -> AsyncIterator[str]:
        start = time.perf_counter()
        ok = False
        try:
            async for token in stream:
                event = StreamResponse(index=token.index + 1, token=Token.of(token))
                if stream.result is not None:
                    result = stream.result
                    text = (
                        prepared.prompt + result.text if prepared.return_full_text else result.text
                    )
                    event.generated_text = text
                    if params.details:
                        event.details = StreamDetails(
                            finish_reason=result.finish_reason,
                            generated_tokens=result.generated_tokens,
                            seed=result.seed,
                            input_length=result.input_tokens,
                        )
                yield _sse(event.model_dump(exclude_none=False))
            ok = True
        except GenerationFailed as e:
            yield _sse({"error": str(e), "error_type": "generation"})
        finally:
            self.stats.record(f"{tier}/generate_stream", time.perf_counter() - start, ok=ok)

    async def compat(self, tier: str, body: GenerateRequest, request: Request) -> Any:
        """``POST /``: a list of one object, or server-sent events with ``"stream": true``."""
        if body.stream:
            return self.generate_stream(tier, body)
        return [await self.generate(tier, body, request)]

    def info(self, tier: str) -> Info:
        """``GET /info`` for a tier (from its config until the model is loaded)."""
        registry = self.generator.registry
        config = registry.config.resolved(tier)
        loaded = registry.loaded(tier)
        max_total = config.limits.max_total_tokens or 0
        if loaded is not None:
            max_total = loaded.engine.max_total_tokens
        return Info(
            model_id=loaded.model_id if loaded else str(config.model),
            model_sha=loaded.revision if loaded else config.revision,
            model_dtype=loaded.dtype if loaded else config.dtype,
            model_device_type=loaded.device if loaded else "unknown",
            max_concurrent_requests=config.limits.max_concurrent_requests,
            max_stop_sequences=config.limits.max_stop_sequences,
            max_input_tokens=max(0, max_total - 1),
            max_total_tokens=max_total,
            version=VERSION,
            tier=tier,
            adapter=config.adapter,
            demo_weights=bool(loaded and loaded.demo),
        )

    def tier_health(self, tier: str) -> JSONResponse:
        """``GET /tiers/{tier}/health``: 200 unless the tier's model failed to load."""
        registry = self.generator.registry
        registry.config.tier(tier)
        error = registry.error(tier)
        if error:
            return _error(503, error, "unavailable")
        status = "ok" if registry.loaded(tier) else "not_loaded"
        return JSONResponse({"status": status, "tier": tier})

    # ---- the users' /api/generate ---------------------------------------------------------------

    async def product_generate(self, body: ProductGenerateRequest, request: Request) -> Any:
        """``POST /api/generate``: chat-templated with the tier's system prompt."""
        tier = body.tier or self.generator.default_tier
        config = self.generator.registry.config.resolved(tier)
        if body.revision and body.revision != (config.revision or "main"):
            raise RevisionMismatch(
                f"tier {tier!r} serves {config.model} at revision {config.revision or 'main'}, "
                f"not {body.revision!r}; update the revision configured for this tier"
            )
        if not body.inputs:
            raise InputError("Input validation error: `inputs` cannot be empty")
        prompt = self.generator.chat_prompt(
            tier, [{"role": "user", "content": body.inputs}], context=body.context
        )
        prepared = self.generator.prepare(tier, prompt, body.parameters, templated=True)
        if body.stream:
            stream = self.generator.stream(prepared, loop=asyncio.get_running_loop())
            return StreamingResponse(
                self._tgi_events(tier, prepared, stream, body.parameters),
                media_type="text/event-stream",
            )
        with self.stats.track(f"{tier}/api/generate"):
            stream = self.generator.stream(prepared, loop=asyncio.get_running_loop())
            result = await _collect(stream, request)
        answer: dict[str, Any] = {"generated_text": result.text}
        if body.parameters.details:
            answer["details"] = {
                "finish_reason": result.finish_reason,
                "generated_tokens": result.generated_tokens,
                "input_tokens": result.input_tokens,
                "seed": result.seed,
            }
        return answer

    # ---- OpenAI -------------------------------------------------------------------------------

    async def chat_completions(self, body: ChatCompletionRequest, request: Request) -> Any:
        """``POST /v1/chat/completions`` with ``model`` = tier name."""
        tier = body.model
        self.generator.registry.config.tier(tier)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        prompt = self.generator.chat_prompt(tier, messages)
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        grammar = None
        if body.response_format is not None:
            fmt = body.response_format
            if fmt.type == "json_schema":
                if fmt.json_schema is None or fmt.json_schema.schema_ is None:
                    raise InputError("response_format.json_schema.schema is required")
                grammar = Grammar(type="json", value=fmt.json_schema.schema_)
            elif fmt.type == "json_object":
                grammar = Grammar(type="json_object")
            elif fmt.type in ("json", "regex"):
                grammar = Grammar(type=fmt.type, value=fmt.value)
        greedy = body.temperature == 0
        params = GenerateParameters(
            max_new_tokens=body.max_completion_tokens or body.max_tokens,
            temperature=None if greedy else body.temperature,
            top_p=body.top_p if body.top_p is not None and body.top_p < 1.0 else None,
            frequency_penalty=body.frequency_penalty,
            seed=body.seed,
            stop=stop,
            grammar=grammar,
        )
        prepared = self.generator.prepare(tier, prompt, params, templated=True, greedy=greedy)
        stream = self.generator.stream(prepared, loop=asyncio.get_running_loop())
        cid, created = completion_id(), now()
        fingerprint = f"{prepared.model.model_id}@{prepared.model.revision or 'local'}"
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                self._openai_events(tier, stream, cid, created, fingerprint, include_usage),
                media_type="text/event-stream",
            )
        with self.stats.track(f"{tier}/v1/chat/completions"):
            result = await _collect(stream, request)
        text = result.text
        if result.finish_reason == "stop_sequence":
            text = _strip_stop(text, stop)
        return ChatCompletion(
            id=cid,
            created=created,
            model=tier,
            system_fingerprint=fingerprint,
            choices=[
                ChatChoice(
                    message=ChatChoiceMessage(content=text),
                    finish_reason=openai_finish_reason(result),
                )
            ],
            usage=Usage(
                prompt_tokens=result.input_tokens,
                completion_tokens=result.generated_tokens,
                total_tokens=result.input_tokens + result.generated_tokens,
            ),
        )

    async def _openai_events(
        self,
        tier: str,
        stream: TokenStream,
        cid: str,
        created: int,
        fingerprint: str,
        include_usage: bool,
    ) -> AsyncIterator[str]:
        def chunk(delta: ChatDelta, finish: str | None = None, usage: Usage | None = None) -> str:
            choices = [] if usage else [ChatChunkChoice(delta=delta, finish_reason=finish)]
            event = ChatCompletionChunk(
                id=cid,
                created=created,
                model=tier,
                system_fingerprint=fingerprint,
                choices=choices,
                usage=usage,
            )
            return _sse(event.model_dump(exclude_none=True), space=True)

        start = time.perf_counter()
        ok = False
        try:
            yield chunk(ChatDelta(role="assistant", content=""))
            async for token in stream:
                if token.text:
                    yield chunk(ChatDelta(content=token.text))
            result = stream.result
            assert result is not None
            yield chunk(ChatDelta(), openai_finish_reason(result))
            if include_usage:
                usage = Usage(
                    prompt_tokens=result.input_tokens,
                    completion_tokens=result.generated_tokens,
                    total_tokens=result.input_tokens + result.generated_tokens,
                )
                yield chunk(ChatDelta(), usage=usage)
            ok = True
        except GenerationFailed as e:
            yield _sse({"error": {"message": str(e), "type": "generation"}}, space=True)
        finally:
            self.stats.record(f"{tier}/v1/chat/completions", time.perf_counter() - start, ok=ok)
        yield _sse("[DONE]", space=True)

    def models(self) -> ModelList:
        """``GET /v1/models``: one entry per tier."""
        config = self.generator.registry.config
        created = now()
        return ModelList(
            data=[
                ModelCard(id=name, created=created, owned_by=str(config.resolved(name).model))
                for name in config.tiers
            ]
        )

    # ---- service ------------------------------------------------------------------------------

    def tiers(self) -> dict[str, Any]:
        """``GET /tiers``: every tier, its weights, and whether they are loaded / shared."""
        registry = self.generator.registry
        out = []
        for name in registry.names:
            config = registry.config.resolved(name)
            loaded = registry.loaded(name)
            key = registry.key(name)
            out.append(
                {
                    "tier": name,
                    "description": config.description,
                    "model": config.model,
                    "revision": config.revision,
                    "adapter": config.adapter,
                    "dtype": loaded.dtype if loaded else config.dtype,
                    "loaded": loaded is not None,
                    "demo_weights": bool(loaded and loaded.demo),
                    "shares_weights_with": [
                        other
                        for other in registry.names
                        if other != name and registry.key(other) == key
                    ],
                    "error": registry.error(name),
                    "max_new_tokens": config.limits.max_new_tokens,
                }
            )
        return {
            "default_tier": registry.config.default_tier,
            "tiers": out,
            "loaded_models": len(registry.models()),
        }

    def engine_stats(self) -> dict[str, Any]:
        """Per loaded model: batch size, queue and counters."""
        return {
            f"{m.model_id}{'+' + m.adapter if m.adapter else ''}": asdict(m.engine.stats())
            for m in self.generator.registry.models()
        }

    def router(self) -> APIRouter:
        """All routes; the caller adds ``/health`` (it knows about preloading)."""
        r = APIRouter()
        guard = [Depends(self.guard)]
        default = self.generator.default_tier

        async def generate_default(body: GenerateRequest, request: Request) -> dict[str, Any]:
            return await self.generate(default, body, request)

        async def generate_tier(
            tier: str, body: GenerateRequest, request: Request
        ) -> dict[str, Any]:
            self.generator.registry.config.tier(tier)
            return await self.generate(tier, body, request)

        async def stream_default(body: GenerateRequest) -> StreamingResponse:
            return self.generate_stream(default, body)

        async def stream_tier(tier: str, body: GenerateRequest) -> StreamingResponse:
            self.generator.registry.config.tier(tier)
            return self.generate_stream(tier, body)

        async def compat_default(body: GenerateRequest, request: Request) -> Any:
            return await self.compat(default, body, request)

        async def compat_tier(tier: str, body: GenerateRequest, request: Request) -> Any:
            self.generator.registry.config.tier(tier)
            return await self.compat(tier, body, request)

        def info_default() -> Info:
            return self.info(default)

        def info_tier(tier: str) -> Info:
            self.generator.registry.config.tier(tier)
            return self.info(tier)

        r.add_api_route("/generate", generate_default, methods=["POST"], dependencies=guard,
                        tags=["tgi"])  # fmt: skip
        r.add_api_route("/generate_stream", stream_default, methods=["POST"], dependencies=guard,
                        tags=["tgi"])  # fmt: skip
        r.add_api_route("/", compat_default, methods=["POST"], dependencies=guard, tags=["tgi"])
        r.add_api_route("/info", info_default, methods=["GET"], tags=["tgi"])
        prefix = "/tiers/{tier}"
        r.add_api_route(f"{prefix}/generate", generate_tier, methods=["POST"], dependencies=guard,
                        tags=["tiers"])  # fmt: skip
        r.add_api_route(f"{prefix}/generate_stream", stream_tier, methods=["POST"],
                        dependencies=guard, tags=["tiers"])  # fmt: skip
        for path in (prefix, f"{prefix}/"):
            r.add_api_route(path, compat_tier, methods=["POST"], dependencies=guard,
                            tags=["tiers"])  # fmt: skip
        r.add_api_route(f"{prefix}/info", info_tier, methods=["GET"], tags=["tiers"])
        r.add_api_route(f"{prefix}/health", self.tier_health, methods=["GET"], tags=["tiers"])
        r.add_api_route("/tiers", self.tiers, methods=["GET"], tags=["tiers"])
        r.add_api_route("/api/generate", self.product_generate, methods=["POST"],
                        dependencies=guard, tags=["product"])  # fmt: skip
        r.add_api_route("/v1/chat/completions", self.chat_completions, methods=["POST"],
                        dependencies=guard, tags=["openai"])  # fmt: skip
        r.add_api_route("/v1/models", self.models, methods=["GET"], dependencies=guard,
                        tags=["openai"])  # fmt: skip
        return r


def _strip_stop(text: str, stops: list[str]) -> str:
    """OpenAI leaves the matched stop sequence out of the content."""
    for stop in stops:
        index = text.find(stop)
        if stop and index != -1:
            return text[:index]
    return text
