"""The predictor behind every route: tier -> prompt -> validated request -> tokens.

``TierGenerator.chat_prompt`` builds chat prompts (the tier's system prompt, the caller's
context, the model's chat template); ``prepare`` does what TGI's validation does (same rules,
same messages) and builds the engine request; ``stream`` / ``generate`` run it on the tier's
``shared.llm.BatchEngine``. The HTTP routes, the Gradio UI, unit tests and the benchmark all call
this module; it knows nothing about HTTP or Gradio.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

from protocol import GenerateParameters, Grammar
from shared.errors import InputError
from shared.llm import (
    Constraint,
    GenerationRequest,
    GenerationResult,
    LoadedModel,
    SamplingOptions,
    TokenStream,
)
from shared.serving import ModelInfo
from tiers import TierConfig, TierRegistry

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """A validated request, ready for the tier's engine."""

    # Tier name.
    tier: str
    # The tier's configuration.
    config: TierConfig
    # The loaded model serving it.
    model: LoadedModel
    # The prompt as text (after chat templating).
    prompt: str
    # The engine request.
    request: GenerationRequest
    # Prepend the prompt to the output.
    return_full_text: bool


class TierGenerator:
    """Generates text for any configured tier.

    Args:
        registry: The tier registry (lazy model loading).
    """

    def __init__(self, registry: TierRegistry) -> None:
        self.registry = registry

    @property
    def default_tier(self) -> str:
        """The tier used when a request names none."""
        return self.registry.config.default_tier

    def preload(self, tiers: list[str]) -> TierGenerator:
        """Load ``tiers`` now (what must be ready before the Space reports healthy).

        Raises:
            ModelLoadError: when one of them cannot be loaded.
        """
        for name in tiers:
            self.registry.get(name)
        return self

    def model_infos(self) -> dict[str, ModelInfo]:
        """Each loaded tier's model, for /health."""
        infos = {}
        for name in self.registry.names:
            loaded = self.registry.loaded(name)
            if loaded is None:
                continue
            infos[name] = ModelInfo(
                id=loaded.model_id,
                revision=loaded.revision,
                device=loaded.device,
                precision=loaded.precision,
                demo=loaded.demo is not None,
                load_s=loaded.load_seconds,
                extra={
                    "adapter": loaded.adapter,
                    "shares_weights_with": self.registry.sharing(name),
                },
            )
        return infos

    def describe_tiers(self) -> list[dict[str, Any]]:
        """Each tier's weights, as ``GET /tiers`` and the UI's table show them."""
        registry = self.registry
        rows = []
        for name in registry.names:
            config = registry.config.resolved(name)
            spec = registry.spec(name)
            loaded = registry.loaded(name)
            rows.append(
                {
                    "tier": name,
                    "description": config.description,
                    "model": spec.model,
                    "revision": spec.revision,
                    "adapter": spec.adapter,
                    "dtype": loaded.dtype if loaded else config.dtype,
                    "loaded": loaded is not None,
                    "demo_weights": bool(registry.demo_marker(name)),
                    "shares_weights_with": registry.sharing(name),
                    "error": registry.error(name),
                    "max_new_tokens": config.limits.max_new_tokens,
                }
            )
        return rows

    def engine_stats(self) -> dict[str, Any]:
        """Per loaded model (``id`` or ``id+adapter``): its batch, queue and counters."""
        return {
            f"{m.model_id}{'+' + m.adapter if m.adapter else ''}": asdict(m.engine.stats())
            for m in self.registry.models.models()
        }

    def not_loaded(self) -> list[str]:
        """Configured tiers whose model is not in memory (they load on first request)."""
        return [name for name in self.registry.names if self.registry.loaded(name) is None]

    def max_total_tokens(self, tier: str, model: LoadedModel | None = None) -> int | None:
        """Prompt + output tokens a request to ``tier`` may use (None until its model is
        loaded, unless the tier sets a limit)."""
        limit = self.registry.config.tier(tier).limits.max_total_tokens
        model = model or self.registry.loaded(tier)
        if model is None:
            return limit
        return min(limit or model.engine.max_total_tokens, model.engine.max_total_tokens)

    def chat_prompt(
        self,
        tier: str,
        messages: list[dict[str, str]],
        *,
        context: dict[str, Any] | None = None,
    ) -> str:
        """Render chat messages with the tier's system prompt and the model's chat template.

        Args:
            tier: Tier name.
            messages: ``{"role", "content"}`` dicts; a system message replaces the tier's.
            context: A JSON object appended to the system prompt.

        Returns:
            The prompt text, special tokens included.
        """
        config = self.registry.config.tier(tier)
        tokenizer = self.registry.get(tier).tokenizer
        system = config.system_prompt
        if messages and messages[0]["role"] in ("system", "developer"):
            system, messages = messages[0]["content"], messages[1:]
        if context:
            rendered = json.dumps(context, ensure_ascii=False, indent=2, sort_keys=True)
            system = f"{system}\n\nContext:\n{rendered}".strip()
        full = ([{"role": "system", "content": system}] if system else []) + list(messages)
        if not full:
            raise InputError(
                "Input validation error: `messages` has nothing to answer (only an empty system "
                "message); send at least one user message"
            )
        if getattr(tokenizer, "chat_template", None) is None:
            lines = [f"{m['role']}: {m['content']}" for m in full]
            return "\n".join([*lines, "assistant:"])
        try:
            return tokenizer.apply_chat_template(full, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # templates that reject a system role (e.g. some Mistral ones)
            if not system or not messages:
                raise _template_error(tier, e) from e
            first = {**messages[0], "content": f"{system}\n\n{messages[0]['content']}"}
            try:
                return tokenizer.apply_chat_template(
                    [first, *messages[1:]], tokenize=False, add_generation_prompt=True
                )
            except Exception as again:
                raise _template_error(tier, again) from again

    def prepare(
        self,
        tier: str,
        prompt: str,
        parameters: GenerateParameters | None = None,
        *,
        templated: bool = False,
        greedy: bool = False,
        sampling_defaults: bool = True,
    ) -> Prepared:
        """Validate a request as TGI does and build the engine request.

        Args:
            tier: Tier name.
            prompt: Raw prompt (TGI) or an already templated chat prompt.
            parameters: TGI parameters; None uses the tier's defaults.
            templated: The prompt came from :meth:`chat_prompt` (its special tokens are in the
                text, so the tokenizer must not add a second BOS).
            greedy: Force greedy decoding (OpenAI's ``temperature: 0``), ignoring defaults.
            sampling_defaults: Fill in the tier's temperature / top_p / repetition penalty when
                the request gives none. TGI routes pass False: there, no parameters means
                greedy decoding, as in TGI.

        Raises:
            TierNotFound: for an unknown tier.
            InputError: for anything TGI answers 422 to.
        """
        config = self.registry.config.tier(tier)
        p = parameters or GenerateParameters()
        if not prompt:
            raise InputError("Input validation error: `inputs` cannot be empty")
        _check_ranges(p)
        limits = config.limits
        if len(p.stop) > limits.max_stop_sequences:
            raise InputError(
                f"Input validation error: `stop` supports up to {limits.max_stop_sequences} "
                f"stop sequences. Given: {len(p.stop)}"
            )
        max_new = (
            p.max_new_tokens if p.max_new_tokens is not None else config.defaults.max_new_tokens
        )
        if max_new < 1:
            raise InputError("Input validation error: `max_new_tokens` must be strictly positive")
        if max_new > limits.max_new_tokens:
            raise InputError(
                f"Input validation error: `max_new_tokens` must be <= {limits.max_new_tokens} "
                f"for tier {tier!r}. Given: {max_new}"
            )
        model = self.registry.get(tier)
        max_total = self.max_total_tokens(tier, model) or model.engine.max_total_tokens
        # Measured in characters first: tokenizing a 2 MB prompt takes seconds, only to refuse it.
        per_token = model.max_chars_per_token
        text = prompt
        if p.truncate is not None:
            if p.truncate < 1:
                raise InputError("Input validation error: `truncate` must be strictly positive")
            text = prompt[-p.truncate * per_token :]  # holds the last `truncate` tokens
        elif len(prompt) > max_total * per_token:
            raise InputError(
                f"Input validation error: `inputs` tokens + `max_new_tokens` must be <= "
                f"{max_total}. Given: {len(prompt):,} characters, more than {max_total} tokens"
            )
        ids = model.tokenizer(text, add_special_tokens=not templated)["input_ids"]
        if p.truncate is not None:
            ids = ids[-p.truncate :]
        if len(ids) + max_new > max_total:
            raise InputError(
                f"Input validation error: `inputs` tokens + `max_new_tokens` must be <= "
                f"{max_total}. Given: {len(ids)} `inputs` tokens and {max_new} `max_new_tokens`"
            )
        grammar = None
        if p.grammar is not None:
            grammar = _compile(model, p.grammar)
            _check_grammar_budget(grammar, max_new)
        defaults = sampling_defaults and not greedy
        temperature = p.temperature
        if temperature is None and p.top_k is None and p.top_p is None and not p.do_sample:
            temperature = config.defaults.temperature if defaults else None
        top_p = p.top_p if p.top_p is not None or not defaults else config.defaults.top_p
        do_sample = not greedy and (
            p.do_sample
            or (temperature is not None and temperature != 1.0)
            or bool(p.top_k)
            or (top_p is not None and top_p < 1.0)
            or (p.typical_p is not None and p.typical_p < 1.0)
        )
        sampling = SamplingOptions(
            do_sample=do_sample,
            temperature=temperature,
            top_k=p.top_k,
            top_p=top_p,
            typical_p=p.typical_p,
            repetition_penalty=p.repetition_penalty
            or (config.defaults.repetition_penalty if defaults else None),
            frequency_penalty=p.frequency_penalty,
            seed=p.seed,
        )
        request = GenerationRequest(
            input_ids=tuple(ids),
            max_new_tokens=max_new,
            sampling=sampling,
            stop=tuple(s for s in p.stop if s),
            grammar=grammar,
        )
        return Prepared(tier, config, model, prompt, request, bool(p.return_full_text))

    def stream(self, prepared: Prepared, *, loop: Any = None) -> TokenStream:
        """Start generating; iterate the stream for tokens (``async for`` when ``loop`` given).

        Raises:
            EngineOverloaded: when the tier's queue is full.
        """
        return prepared.model.engine.submit(
            prepared.request,
            loop=loop,
            group=prepared.tier,
            group_limit=prepared.config.limits.max_concurrent_requests,
        )

    def generate(
        self, tier: str, prompt: str, parameters: GenerateParameters | None = None
    ) -> GenerationResult:
        """Validate, generate to the end and return the result (blocking)."""
        prepared = self.prepare(tier, prompt, parameters)
        return self.stream(prepared).collect()


def _template_error(tier: str, error: Exception) -> InputError:
    """A chat template that refuses the messages (roles out of order, ...): the caller's 422."""
    return InputError(
        f"Input validation error: the chat template of tier {tier!r} rejects these messages: "
        f"{error}"
    )


def _check_ranges(p: GenerateParameters) -> None:
    """TGI's parameter range checks, with its messages."""
    if p.best_of is not None and p.best_of != 1:
        raise InputError("Input validation error: `best_of` != 1 is not supported by this server")
    if p.temperature is not None and p.temperature <= 0:
        raise InputError("Input validation error: `temperature` must be strictly positive")
    if p.repetition_penalty is not None and p.repetition_penalty <= 0:
        raise InputError("Input validation error: `repetition_penalty` must be strictly positive")
    if p.frequency_penalty is not None and not -2.0 <= p.frequency_penalty <= 2.0:
        raise InputError("Input validation error: `frequency_penalty` must be >= -2.0 and <= 2.0")
    if p.top_p is not None and not 0.0 < p.top_p < 1.0:
        raise InputError("Input validation error: `top_p` must be > 0.0 and < 1.0")
    if p.typical_p is not None and not 0.0 < p.typical_p < 1.0:
        raise InputError("Input validation error: `typical_p` must be > 0.0 and < 1.0")
    if p.top_k is not None and p.top_k <= 0:
        raise InputError("Input validation error: `top_k` must be strictly positive")


def _check_grammar_budget(grammar: Constraint, max_new: int) -> None:
    """A grammar output is forced to finish within the budget (``shared.llm``), which takes
    at least the grammar's shortest output: a smaller budget could only return invalid text."""
    shortest = grammar.min_new_tokens
    if shortest is not None and max_new < shortest:
        raise InputError(
            f"Input validation error: `max_new_tokens` must be at least {shortest} for this "
            f"grammar (its shortest valid output is {shortest} tokens). Given: {max_new}"
        )


def _compile(model: LoadedModel, grammar: Grammar) -> Constraint:
    if grammar.type == "json":
        value = grammar.value
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise InputError(
                    f"Grammar is not valid: the JSON schema does not parse: {e}"
                ) from e
        return model.grammars.json_schema(value)
    if grammar.type == "json_object":
        return model.grammars.any_json()
    if not isinstance(grammar.value, str) or not grammar.value:
        raise InputError("Grammar is not valid: a regex grammar needs a non-empty string value")
    return model.grammars.regex(grammar.value)
