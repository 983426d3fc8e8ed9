"""HTTP routes: TGI (root and ``/tiers/{tier}``), ``/api/generate``, OpenAI ``/v1``, ``/tiers``.

Errors go through the Space's one boundary (``shared.serving.Service``, see :data:`ERRORS`):
TGI's body ``{"error", "error_type"}`` with 422 validation, 401 authentication, 404 unknown tier
(and unknown route: ``shared.serving.mount_gradio``), 409 revision mismatch, 424 generation, 429
overloaded, 499 cancelled, 503 model not loadable. Streams are server-sent events; a client that
goes away cancels its generation. Every generation route is counted in ``/stats`` as
``{tier}/{route}``, requests refused by validation included.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from predictor import Prepared, TierGenerator
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
from shared.errors import InputError
from shared.llm import EngineOverloaded, GenerationCancelled, GenerationFailed, TokenStream
from shared.serving import ErrorKind, Service, describe_validation
from tiers import TierNotFound

logger = logging.getLogger(__name__)

VERSION = "1.0.0"


class AuthError(PermissionError):
    """Missing or wrong bearer token; served as HTTP 401."""


class RevisionMismatch(InputError):
    """The caller expects another revision than the tier serves; served as HTTP 409."""


#: The Space's errors on top of shared.serving's (InputError 422, ModelLoadError 503 without
#: Retry-After); a subclass's entry wins over its base class's (RevisionMismatch over InputError).
ERRORS: dict[type[BaseException], ErrorKind] = {
    TierNotFound: ErrorKind(404, "not_found"),
    EngineOverloaded: ErrorKind(429, "overloaded", message=lambda _: "Model is overloaded"),
    GenerationFailed: ErrorKind(424, "generation"),
    AuthError: ErrorKind(401, "authentication", headers={"WWW-Authenticate": "Bearer"}),
    RevisionMismatch: ErrorKind(409, "revision_mismatch"),
    # Nobody reads this answer: the client went away (nginx's "client closed request").
    GenerationCancelled: ErrorKind(499, "cancelled"),
}

# Route path -> the endpoint's name in /stats (after the tier).
_ENDPOINTS = {
    "/generate": "generate",
    "/": "generate",
    "/generate_stream": "generate_stream",
    "/tiers/{tier}/generate": "generate",
    "/tiers/{tier}": "generate",
    "/tiers/{tier}/": "generate",
    "/tiers/{tier}/generate_stream": "generate_stream",
    "/api/generate": "api/generate",
    "/v1/chat/completions": "v1/chat/completions",
}
# Server-sent events must reach the client as they are written, not when a proxy's buffer fills.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


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


def _sse_response(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)


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
    """The HTTP routes around one :class:`TierGenerator`.

    Args:
        generator: The predictor.
        service: The Space's service: request stats and the error boundary.
        api_key: Bearer token required on generation routes, or None for open routes.
    """

    def __init__(self, generator: TierGenerator, service: Service[Any],
                 api_key: str | None) -> None:  # fmt: skip
        self.generator = generator
        self.stats = service.stats
        self.guard = bearer_guard(api_key)

    def install(self, app: FastAPI) -> None:
        """Add the routes to ``app``, after ``shared.serving.install_routes``."""
        # TGI's wording for a body that fails validation, counted under its tier's endpoint
        # (install_routes counts it under the route function's name).
        app.add_exception_handler(RequestValidationError, self._invalid_body)  # type: ignore[arg-type]
        self.add_routes(app)

    @contextmanager
    def _counted_if_refused(self, name: str, start: float) -> Iterator[None]:
        """Count a streaming request that fails before its stream starts (a 4xx) in /stats;
        the stream counts itself when it ends."""
        try:
            yield
        except Exception:
            self.stats.record(name, time.perf_counter() - start, ok=False)
            raise

    async def _invalid_body(self, request: Request, exc: RequestValidationError) -> JSONResponse:
        route = request.scope.get("route")
        endpoint = _ENDPOINTS.get(getattr(route, "path", ""))
        if endpoint is None:
            self.stats.record(getattr(route, "name", request.url.path), None, ok=False)
        else:
            tier = request.path_params.get("tier")
            body = exc.body if isinstance(exc.body, dict) else {}
            named = body.get({"api/generate": "tier", "v1/chat/completions": "model"}
                             .get(endpoint, ""))  # fmt: skip
            tier = (
                tier or (named if isinstance(named, str) else None) or self.generator.default_tier
            )
            if tier in self.generator.registry.config.tiers:  # unknown names make no entries
                self.stats.record(f"{tier}/{endpoint}", None, ok=False)
        message = "Input validation error: " + describe_validation(exc)
        return JSONResponse({"error": message, "error_type": "validation"}, status_code=422)

    # ---- TGI ----------------------------------------------------------------------------------

    def _prepare(self, tier: str, body: GenerateRequest) -> Prepared:
        return self.generator.prepare(tier, body.inputs, body.parameters, sampling_defaults=False)

    async def generate(self, tier: str, body: GenerateRequest, request: Request) -> dict[str, Any]:
        """``POST /generate``: the whole output as one object (``details`` only when asked)."""
        with self.stats.track(f"{tier}/generate"):
            prepared = await run_in_threadpool(self._prepare, tier, body)
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

    async def generate_stream(self, tier: str, body: GenerateRequest) -> StreamingResponse:
        """``POST /generate_stream``: TGI's server-sent events."""
        name, start = f"{tier}/generate_stream", time.perf_counter()
        with self._counted_if_refused(name, start):
            prepared = await run_in_threadpool(self._prepare, tier, body)
            stream = self.generator.stream(prepared, loop=asyncio.get_running_loop())
        return _sse_response(self._tgi_events(name, start, prepared, stream, body.parameters))

    async def _tgi_events(self, name: str, start: float, prepared: Prepared, stream: TokenStream,
                          params: GenerateParameters) -> AsyncIterator[str]:  # fmt: skip
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
            self.stats.record(name, time.perf_counter() - start, ok=ok)

    async def compat(self, tier: str, body: GenerateRequest, request: Request) -> Any:
        """``POST /``: a list of one object, or server-sent events with ``"stream": true``."""
        if body.stream:
            return await self.generate_stream(tier, body)
        return [await self.generate(tier, body, request)]

    def info(self, tier: str) -> Info:
        """``GET /info`` for a tier (from its config until the model is loaded)."""
        registry = self.generator.registry
        config = registry.config.resolved(tier)
        spec = registry.spec(tier)
        loaded = registry.loaded(tier)
        max_total = self.generator.max_total_tokens(tier) or 0
        return Info(
            model_id=spec.model,
            model_sha=spec.revision,
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
            return JSONResponse({"error": error, "error_type": "unavailable"}, 503)
        status = "ok" if registry.loaded(tier) else "not_loaded"
        return JSONResponse({"status": status, "tier": tier})

    # ---- the users' /api/generate ---------------------------------------------------------------

    async def product_generate(self, body: ProductGenerateRequest, request: Request) -> Any:
        """``POST /api/generate``: chat-templated with the tier's system prompt."""
        tier = body.tier or self.generator.default_tier
        self.generator.registry.config.tier(tier)
        name, start = f"{tier}/api/generate", time.perf_counter()
        if body.stream:
            with self._counted_if_refused(name, start):
                prepared = await run_in_threadpool(self._product_prepare, tier, body)
                stream = self.generator.stream(prepared, loop=asyncio.get_running_loop())
            return _sse_response(self._tgi_events(name, start, prepared, stream, body.parameters))
        with self.stats.track(name):
            prepared = await run_in_threadpool(self._product_prepare, tier, body)
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

    def _product_prepare(self, tier: str, body: ProductGenerateRequest) -> Prepared:
        serves = self.generator.registry.spec(tier).revision or "main"
        if body.revision and body.revision != serves:
            raise RevisionMismatch(
                f"tier {tier!r} serves {self.generator.registry.spec(tier).model} at revision "
                f"{serves}, not {body.revision!r}; update the revision configured for this tier"
            )
        if not body.inputs:
            raise InputError("Input validation error: `inputs` cannot be empty")
        prompt = self.generator.chat_prompt(
            tier, [{"role": "user", "content": body.inputs}], context=body.context
        )
        return self.generator.prepare(tier, prompt, body.parameters, templated=True)

    # ---- OpenAI -------------------------------------------------------------------------------

    async def chat_completions(self, body: ChatCompletionRequest, request: Request) -> Any:
        """``POST /v1/chat/completions`` with ``model`` = tier name."""
        tier = body.model
        self.generator.registry.config.tier(tier)
        name, start = f"{tier}/v1/chat/completions", time.perf_counter()
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if body.stream:
            with self._counted_if_refused(name, start):
                prepared = await run_in_threadpool(self._chat_prepare, tier, body, stop)
                stream = self.generator.stream(prepared, loop=asyncio.get_running_loop())
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _sse_response(
                self._openai_events(name, start, tier, prepared, stream, include_usage)
            )
        with self.stats.track(name):
            prepared = await run_in_threadpool(self._chat_prepare, tier, body, stop)
            stream = self.generator.stream(prepared, loop=asyncio.get_running_loop())
            result = await _collect(stream, request)
        text = result.text
        if result.finish_reason == "stop_sequence":
            text = _strip_stop(text, stop)
        return ChatCompletion(
            id=completion_id(),
            created=now(),
            model=tier,
            system_fingerprint=_fingerprint(prepared),
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

    def _chat_prepare(self, tier: str, body: ChatCompletionRequest, stop: list[str]) -> Prepared:
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        prompt = self.generator.chat_prompt(tier, messages)
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
        return self.generator.prepare(tier, prompt, params, templated=True, greedy=greedy)

    async def _openai_events(
        self,
        name: str,
        start: float,
        tier: str,
        prepared: Prepared,
        stream: TokenStream,
        include_usage: bool,
    ) -> AsyncIterator[str]:
        cid, created, fingerprint = completion_id(), now(), _fingerprint(prepared)

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
            self.stats.record(name, time.perf_counter() - start, ok=ok)
        yield _sse("[DONE]", space=True)

    def models(self) -> ModelList:
        """``GET /v1/models``: one entry per tier."""
        registry = self.generator.registry
        created = now()
        return ModelList(
            data=[
                ModelCard(id=name, created=created, owned_by=registry.spec(name).model)
                for name in registry.names
            ]
        )

    # ---- service ------------------------------------------------------------------------------

    def tiers(self) -> dict[str, Any]:
        """``GET /tiers``: every tier, its weights, and whether they are loaded / shared."""
        return {
            "default_tier": self.generator.default_tier,
            "tiers": self.generator.describe_tiers(),
            "loaded_models": len(self.generator.registry.models.models()),
        }

    def add_routes(self, r: FastAPI | APIRouter) -> None:
        """Add all the Space's own routes (``install_routes`` adds ``/health`` and ``/stats``)."""
        guard = [Depends(self.guard)]
        default = self.generator.default_tier
        check = self.generator.registry.config.tier  # raises TierNotFound (404)

        async def generate_default(body: GenerateRequest, request: Request) -> dict[str, Any]:
            return await self.generate(default, body, request)

        async def generate_tier(
            tier: str, body: GenerateRequest, request: Request
        ) -> dict[str, Any]:
            check(tier)
            return await self.generate(tier, body, request)

        async def stream_default(body: GenerateRequest) -> StreamingResponse:
            return await self.generate_stream(default, body)

        async def stream_tier(tier: str, body: GenerateRequest) -> StreamingResponse:
            check(tier)
            return await self.generate_stream(tier, body)

        async def compat_default(body: GenerateRequest, request: Request) -> Any:
            return await self.compat(default, body, request)

        async def compat_tier(tier: str, body: GenerateRequest, request: Request) -> Any:
            check(tier)
            return await self.compat(tier, body, request)

        def info_default() -> Info:
            return self.info(default)

        def info_tier(tier: str) -> Info:
            check(tier)
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


def _fingerprint(prepared: Prepared) -> str:
    return f"{prepared.model.model_id}@{prepared.model.revision or 'local'}"


def _strip_stop(text: str, stops: list[str]) -> str:
    """OpenAI leaves the matched stop sequence out of the content."""
    for stop in stops:
        index = text.find(stop)
        if stop and index != -1:
            return text[:index]
    return text
