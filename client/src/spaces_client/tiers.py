"""``TiersClient``: the llm-tiers Space (four LLM tiers behind TGI, OpenAI and Gradio APIs).

Paths: REST ``POST /api/generate`` first (the Space's main API: chat template, tier, context,
details), Gradio ``/predict`` and ``/variations`` next; the fallbacks. Structured output uses
TGI's ``parameters.grammar`` (``{"type": "json", "value": schema}``) and is validated here.
Streams read TGI's server-sent events from ``/api/generate`` with ``"stream": true``.

Tiers can live on different Spaces: ``ClientSettings.tiers`` maps a tier to the key of the
Space that serves it.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, TypeVar, overload

from pydantic import BaseModel, ValidationError

from spaces_client._base import SpaceClient
from spaces_client.engine import (
    GradioCall,
    InferenceCall,
    Request,
    RestCall,
    SpaceState,
    StreamRequest,
)
from spaces_client.errors import StructureError
from spaces_client.models import Generation

M = TypeVar("M", bound=BaseModel)


def _generation(tier: str) -> Any:
    def parse(body: Any) -> Generation:
        if isinstance(body, Generation):
            return body
        if isinstance(body, str):
            return Generation(text=body, tier=tier)
        if isinstance(body, list):  # TGI's POST / and the Inference API answer a list
            body = body[0]
        details = body.get("details") or {}
        return Generation(
            text=body["generated_text"],
            tier=tier,
            finish_reason=details.get("finish_reason"),
            generated_tokens=details.get("generated_tokens"),
        )

    return parse


def check_schema(value: Any, schema: Mapping[str, Any], path: str = "$") -> None:
    """Check ``value`` against the common subset of JSON Schema that grammars use (type,
    properties, required, items, enum, const, additionalProperties=false, anyOf, $ref to $defs).

    Raises:
        ValueError: Where and how the value does not match.
    """
    _check(value, schema, path, schema)


_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def _check(value: Any, schema: Mapping[str, Any], path: str, root: Mapping[str, Any]) -> None:
    if "$ref" in schema:
        ref = str(schema["$ref"])
        target: Any = root
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        _check(value, target, path, root)
        return
    if "anyOf" in schema or "oneOf" in schema:
        options = schema.get("anyOf") or schema.get("oneOf") or []
        errors = []
        for option in options:
            try:
                _check(value, option, path, root)
                return
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(f"{path}: matches none of the options ({'; '.join(errors)})")
    if "const" in schema and value != schema["const"]:
        raise ValueError(f"{path}: expected {schema['const']!r}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        raise ValueError(f"{path}: {value!r} is not one of {schema['enum']}")
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind else []
    if kinds:
        ok = any(
            isinstance(value, _TYPES[k])
            and not (k in ("integer", "number") and isinstance(value, bool))
            for k in kinds
            if k in _TYPES
        )
        if not ok:
            raise ValueError(f"{path}: expected {' or '.join(kinds)}, got {type(value).__name__}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                raise ValueError(f"{path}: missing required {key!r}")
        for key, item in value.items():
            if key in props:
                _check(item, props[key], f"{path}.{key}", root)
            elif schema.get("additionalProperties") is False:
                raise ValueError(f"{path}: unexpected key {key!r}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            _check(item, schema["items"], f"{path}[{i}]", root)


class TiersClient(SpaceClient):
    """Typed client of the llm-tiers Space: ``generate``, ``generate_structure``,
    ``generate_variations`` and ``stream`` on any tier (and their ``a``-prefixed async twins)."""

    kind = "tiers"

    # -- routing --------------------------------------------------------------------------------

    def _state(self, tier: str) -> SpaceState:
        key = self.client.settings.tiers.get(tier)
        return self.client.space(key) if key else self.state

    def _params(self, state: SpaceState, given: Mapping[str, Any]) -> dict[str, Any]:
        defaults = {
            k: v
            for k, v in state.settings.options.items()
            if k in ("max_new_tokens", "temperature", "top_p", "top_k")
        }
        return {**defaults, **{k: v for k, v in given.items() if v is not None}}

    # -- requests -------------------------------------------------------------------------------

    def _generate(
        self,
        state: SpaceState,
        prompt: str,
        tier: str,
        context: Mapping[str, Any] | None,
        params: dict[str, Any],
    ) -> Request[Generation]:
        body: dict[str, Any] = {
            "inputs": prompt,
            "parameters": {**params, "details": True},
            "tier": tier,
        }
        if context is not None:
            body["context"] = dict(context)
        # Gradio's predict takes only these; a request with other parameters goes by REST.
        gradio = None
        if set(params) <= {"max_new_tokens", "temperature"}:
            kwargs: dict[str, Any] = {"tier": tier, **params}
            if context is not None:
                kwargs["context"] = json.dumps(context)
            gradio = GradioCall("/predict", (prompt,), kwargs)
        parse = _generation(tier)

        def inference(options: Mapping[str, Any], model: str) -> InferenceCall[Generation]:
            return InferenceCall({"inputs": prompt, "parameters": params}, parse)

        return Request(
            name=f"generate ({tier})",
            gradio=gradio,
            parse_gradio=parse,
            rest=RestCall("POST", "/api/generate", json=body),
            parse_rest=parse,
            local_args=(prompt,),
            local_kwargs={"tier": tier, "context": context, **params},
            parse_local=parse,
            inference=inference,
        )

    def probe(self) -> Request[Generation]:
        """A four-token generation on the default tier."""
        return self._generate(self.state, "Hello", "base", None, {"max_new_tokens": 4})

    # -- generate -------------------------------------------------------------------------------

    def generate(
        self,
        prompt: str,
        tier: str = "base",
        context: Mapping[str, Any] | None = None,
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: list[str] | None = None,
        timeout: float | None = None,
    ) -> Generation:
        """Complete a prompt on a tier (its chat template and system prompt apply).

        Args:
            prompt: The user message.
            tier: ``base``, ``company``, ``abstraction``, ``user`` (or any configured tier).
            context: A JSON object rendered into the tier's system prompt.
            max_new_tokens: Most tokens to generate (the tier's default when None).
            temperature: Sampling temperature (the tier's default when None).
            top_p: Nucleus sampling mass.
            seed: Random seed.
            stop: Stop sequences.
            timeout: This call's deadline in seconds.

        Returns:
            The generation: text, tier, finish_reason, generated_tokens.

        Raises:
            SpaceInputError: Bad parameters or an unknown tier (the message lists the tiers).
            SpacesError: The Space and its fallbacks failed.
        """
        state = self._state(tier)
        params = self._params(
            state,
            {
                "max_new_tokens": max_new_tokens,
                "temperature": temperature,
                "top_p": top_p,
                "seed": seed,
                "stop": stop,
            },
        )
        return self._run(self._generate(state, prompt, tier, context, params), timeout, state)

    async def agenerate(
        self,
        prompt: str,
        tier: str = "base",
        context: Mapping[str, Any] | None = None,
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: list[str] | None = None,
        timeout: float | None = None,
    ) -> Generation:
        """Async :meth:`generate`."""
        state = self._state(tier)
        params = self._params(
            state,
            {
                "max_new_tokens": max_new_tokens,
                "temperature": temperature,
                "top_p": top_p,
                "seed": seed,
                "stop": stop,
            },
        )
        return await self._arun(
            self._generate(state, prompt, tier, context, params), timeout, state
        )

    # -- structure ------------------------------------------------------------------------------

    def _structure(
        self,
        state: SpaceState,
        prompt: str,
        schema: Mapping[str, Any] | type[BaseModel],
        tier: str,
        context: Mapping[str, Any] | None,
        params: dict[str, Any],
    ) -> Request[Any]:
        model = schema if isinstance(schema, type) and issubclass(schema, BaseModel) else None
        json_schema = model.model_json_schema() if model else dict(schema)  # type: ignore[arg-type]
        params = {**params, "grammar": {"type": "json", "value": json_schema}}
        base = self._generate(state, prompt, tier, context, params)
        label = state.label

        def validate(text: str) -> Any:
            try:
                if model is not None:
                    return model.model_validate_json(text)
                value = json.loads(text)
                check_schema(value, json_schema)
                return value
            except (ValidationError, ValueError) as e:
                raise StructureError(
                    f"the output does not validate against the schema: {str(e)[:300]}",
                    space=label,
                    text=text,
                ) from e

        def parse(body: Any) -> Any:
            if model is not None and isinstance(body, model):
                return body
            if not isinstance(body, str | list) and not (
                isinstance(body, dict) and "generated_text" in body
            ):
                return validate(json.dumps(body))  # a local function returned the object
            return validate(_generation(tier)(body).text)

        return Request(
            name=f"generate_structure ({tier})",
            gradio=None,  # Gradio's predict has no grammar
            parse_gradio=None,
            rest=base.rest,
            parse_rest=parse,
            local_args=(prompt, json_schema),
            local_kwargs={"tier": tier, "context": context},
            parse_local=parse,
            inference=lambda options, m: InferenceCall(
                {"inputs": prompt, "parameters": params}, parse
            ),
        )

    @overload
    def generate_structure(
        self,
        prompt: str,
        schema: type[M],
        tier: str = ...,
        context: Mapping[str, Any] | None = ...,
        *,
        max_new_tokens: int | None = ...,
        temperature: float | None = ...,
        timeout: float | None = ...,
    ) -> M: ...
    @overload
    def generate_structure(
        self,
        prompt: str,
        schema: Mapping[str, Any],
        tier: str = ...,
        context: Mapping[str, Any] | None = ...,
        *,
        max_new_tokens: int | None = ...,
        temperature: float | None = ...,
        timeout: float | None = ...,
    ) -> Any: ...

    def generate_structure(
        self,
        prompt: str,
        schema: Mapping[str, Any] | type[BaseModel],
        tier: str = "base",
        context: Mapping[str, Any] | None = None,
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Generate JSON constrained to a schema (TGI grammar) and validate it.

        Args:
            prompt: The user message.
            schema: A pydantic model class (the result is an instance of it) or a JSON schema
                (the result is the parsed JSON, checked against it).
            tier: The tier.
            context: A JSON object rendered into the tier's system prompt.
            max_new_tokens: Most tokens (the Space refuses a budget below the schema's
                shortest output, naming the minimum).
            temperature: Sampling temperature.
            timeout: This call's deadline in seconds.

        Returns:
            The model instance, or the parsed JSON.

        Raises:
            StructureError: The output did not validate (it keeps the text).
        """
        state = self._state(tier)
        params = self._params(state, {"max_new_tokens": max_new_tokens, "temperature": temperature})
        return self._run(
            self._structure(state, prompt, schema, tier, context, params), timeout, state
        )

    async def agenerate_structure(
        self,
        prompt: str,
        schema: Mapping[str, Any] | type[BaseModel],
        tier: str = "base",
        context: Mapping[str, Any] | None = None,
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Async :meth:`generate_structure`."""
        state = self._state(tier)
        params = self._params(state, {"max_new_tokens": max_new_tokens, "temperature": temperature})
        return await self._arun(
            self._structure(state, prompt, schema, tier, context, params), timeout, state
        )

    # -- variations -----------------------------------------------------------------------------

    def _variations(
        self, state: SpaceState, prompt: str, n: int, tier: str, params: dict[str, Any]
    ) -> Request[list[str]]:
        if not 1 <= n <= 8:
            raise ValueError(f"n must be between 1 and 8, got {n}")
        seed = random.getrandbits(31)
        calls = tuple(
            RestCall(
                "POST",
                "/api/generate",
                json={
                    "inputs": prompt,
                    "tier": tier,
                    "parameters": {**params, "do_sample": True, "seed": seed + i},
                },
            )
            for i in range(n)
        )

        def texts(values: Any) -> list[str]:
            out = [v if isinstance(v, str) else _generation(tier)(v).text for v in values]
            if len(out) != n:
                raise ValueError(f"{len(out)} variations, asked for {n}")
            return out

        return Request(
            name=f"generate_variations ({tier})",
            gradio=GradioCall("/variations", (prompt,), {"n": n, "tier": tier})
            if not params
            else None,
            parse_gradio=texts,
            rest=calls,
            parse_rest=texts,
            local_args=(prompt, n),
            local_kwargs={"tier": tier},
            parse_local=texts,
        )

    def generate_variations(
        self,
        prompt: str,
        n: int = 3,
        tier: str = "base",
        *,
        max_new_tokens: int | None = None,
        timeout: float | None = None,
    ) -> list[str]:
        """``n`` different completions of one prompt (distinct seeds, decoded as one batch).

        Args:
            prompt: The user message.
            n: How many, 1 to 8.
            tier: The tier.
            max_new_tokens: Most tokens per completion.
            timeout: This call's deadline in seconds.

        Returns:
            The completions.
        """
        state = self._state(tier)
        params = self._params(state, {"max_new_tokens": max_new_tokens})
        return self._run(self._variations(state, prompt, n, tier, params), timeout, state)

    async def agenerate_variations(
        self,
        prompt: str,
        n: int = 3,
        tier: str = "base",
        *,
        max_new_tokens: int | None = None,
        timeout: float | None = None,
    ) -> list[str]:
        """Async :meth:`generate_variations`."""
        state = self._state(tier)
        params = self._params(state, {"max_new_tokens": max_new_tokens})
        return await self._arun(self._variations(state, prompt, n, tier, params), timeout, state)

    # -- streams --------------------------------------------------------------------------------

    def _stream(
        self,
        state: SpaceState,
        prompt: str,
        tier: str,
        context: Mapping[str, Any] | None,
        params: dict[str, Any],
    ) -> StreamRequest:
        body: dict[str, Any] = {
            "inputs": prompt,
            "parameters": params,
            "tier": tier,
            "stream": True,
        }
        if context is not None:
            body["context"] = dict(context)

        def inference(options: Mapping[str, Any], model: str) -> InferenceCall[str]:
            return InferenceCall(
                {"inputs": prompt, "parameters": params}, lambda b: _generation(tier)(b).text
            )

        return StreamRequest(
            name=f"stream ({tier})",
            rest=RestCall("POST", "/api/generate", json=body),
            local_args=(prompt,),
            local_kwargs={"tier": tier, "context": context, **params},
            inference=inference,
        )

    def stream(
        self,
        prompt: str,
        tier: str = "base",
        context: Mapping[str, Any] | None = None,
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        timeout: float | None = None,
    ) -> Iterator[str]:
        """Stream a completion's text as it is generated.

        Failures before the first chunk are retried and fall back like any call; a break
        after it raises ``StreamInterrupted`` (with the text so far), since the rest cannot be
        resumed elsewhere. The deadline covers the whole stream.

        Yields:
            Text chunks (one per token).
        """
        state = self._state(tier)
        params = self._params(
            state, {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed}
        )
        return self.client.stream(
            state, self._stream(state, prompt, tier, context, params), timeout
        )

    def astream(
        self,
        prompt: str,
        tier: str = "base",
        context: Mapping[str, Any] | None = None,
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[str]:
        """Async :meth:`stream`: ``async for chunk in tiers.astream(...)``."""
        state = self._state(tier)
        params = self._params(
            state, {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed}
        )
        return self.client.astream(
            state, self._stream(state, prompt, tier, context, params), timeout
        )
