"""Tier configuration and the model registry.

``tiers.yaml`` maps each tier (``base``, ``company``, ``abstraction``, ``user``) to a model (Hub
id or local path, revision), or to a PEFT adapter on another tier's model, plus dtype, system
prompt, generation defaults and limits. ``TIER_<NAME>_<FIELD>`` environment variables override it
(``app.py`` reads them and passes them here).

Models load lazily on a tier's first request. Tiers that resolve to the same weights (same model,
revision, adapter, dtype) share one loaded model and one :class:`engine.BatchEngine`, so their
requests are batched together. When loading a model would exceed the memory budget, idle models
are unloaded least recently used first.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine import BatchEngine
from grammar import GrammarCache
from shared.errors import ModelLoadError
from shared.models import TRANSFORMERS_WEIGHTS, ModelSource, demo_info, resolve_model, select_device

logger = logging.getLogger(__name__)

TIER_NAMES = ("base", "company", "abstraction", "user")
Dtype = Literal["auto", "float32", "bfloat16", "float16"]


class TierNotFound(LookupError):
    """A tier that is not configured; served as HTTP 404 listing the configured tiers."""


class GenerationDefaults(BaseModel):
    """Parameters used when a request does not give them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Tokens to generate when the request does not say.
    max_new_tokens: int = Field(100, ge=1)
    # Sampling temperature; None means greedy unless the request asks for sampling.
    temperature: float | None = Field(None, gt=0)
    # Nucleus sampling mass.
    top_p: float | None = Field(None, gt=0, lt=1)
    # Repetition penalty.
    repetition_penalty: float | None = Field(None, gt=0)


class TierLimits(BaseModel):
    """What a request to the tier may ask for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Cap on max_new_tokens (larger asks are a 422).
    max_new_tokens: int = Field(1024, ge=1)
    # Prompt + output tokens; None uses the model's context length.
    max_total_tokens: int | None = Field(None, ge=2)
    # Requests running or queued before the tier answers 429.
    max_concurrent_requests: int = Field(32, ge=1)
    # Requests decoded together in one batch.
    max_batch_size: int = Field(8, ge=1)
    # Most stop sequences a request may give.
    max_stop_sequences: int = Field(4, ge=0)


class TierConfig(BaseModel):
    """One tier: which weights, how to prompt them, what requests may ask."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Tier name (the key in tiers.yaml).
    name: str
    # One line for the UI and /v1/models.
    description: str = ""
    # Hub repo id ("owner/name", optionally "@revision") or local directory.
    model: str | None = None
    # Hub branch, tag or commit of ``model``.
    revision: str | None = None
    # Use this other tier's model (and revision, dtype) as the base, e.g. for an adapter.
    base_tier: str | None = None
    # PEFT adapter (Hub id or local directory) merged into the base model, or None.
    adapter: str | None = None
    # Hub revision of the adapter.
    adapter_revision: str | None = None
    # Precision of the weights.
    dtype: Dtype = "auto"
    # System prompt for chat-style requests (/api/generate, Gradio, /v1/chat/completions).
    system_prompt: str = ""
    # Parameters used when a request leaves them out.
    defaults: GenerationDefaults = GenerationDefaults()
    # Request limits.
    limits: TierLimits = TierLimits()


class SpaceConfig(BaseModel):
    """The whole tiers.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Tier served at the root routes and when a request names none.
    default_tier: str = "base"
    # Loaded weights kept in memory, in GiB; None means no budget.
    memory_budget_gb: float | None = Field(None, gt=0)
    # Tiers by name.
    tiers: dict[str, TierConfig]

    @model_validator(mode="after")
    def _check(self) -> SpaceConfig:
        names = sorted(self.tiers)
        if self.default_tier not in self.tiers:
            raise ValueError(f"default_tier {self.default_tier!r} is not one of {names}")
        for tier in self.tiers.values():
            if tier.base_tier is not None:
                if tier.base_tier not in self.tiers or tier.base_tier == tier.name:
                    raise ValueError(
                        f"tier {tier.name!r}: base_tier {tier.base_tier!r} must be another "
                        f"configured tier ({names})"
                    )
                if self.tiers[tier.base_tier].base_tier is not None:
                    raise ValueError(f"tier {tier.name!r}: base_tier must name a tier with a model")
            elif not tier.model:
                raise ValueError(f"tier {tier.name!r} needs `model` or `base_tier`")
        return self

    def resolved(self, name: str) -> TierConfig:
        """The tier with ``base_tier`` replaced by that tier's model, revision and dtype."""
        tier = self.tier(name)
        if tier.base_tier is None:
            return tier
        base = self.tiers[tier.base_tier]
        return tier.model_copy(update={"model": base.model, "revision": base.revision,
                                       "dtype": base.dtype})  # fmt: skip

    def tier(self, name: str) -> TierConfig:
        """The tier called ``name``.

        Raises:
            TierNotFound: naming the configured tiers.
        """
        if name not in self.tiers:
            raise TierNotFound(
                f"tier {name!r} is not configured; configured tiers: {', '.join(self.tiers)}"
            )
        return self.tiers[name]


# Fields a TIER_<NAME>_<FIELD> variable may set, and where they go in the tier's config.
_ENV_FIELDS: dict[str, tuple[str, ...]] = {
    "MODEL": ("model",),
    "REVISION": ("revision",),
    "BASE_TIER": ("base_tier",),
    "ADAPTER": ("adapter",),
    "ADAPTER_REVISION": ("adapter_revision",),
    "DTYPE": ("dtype",),
    "SYSTEM_PROMPT": ("system_prompt",),
    "DESCRIPTION": ("description",),
    "MAX_NEW_TOKENS": ("limits", "max_new_tokens"),
    "MAX_TOTAL_TOKENS": ("limits", "max_total_tokens"),
    "MAX_CONCURRENT_REQUESTS": ("limits", "max_concurrent_requests"),
    "MAX_BATCH_SIZE": ("limits", "max_batch_size"),
    "DEFAULT_MAX_NEW_TOKENS": ("defaults", "max_new_tokens"),
    "DEFAULT_TEMPERATURE": ("defaults", "temperature"),
}


def load_config(
    path: Path,
    overrides: Mapping[str, str] | None = None,
    *,
    default_tier: str | None = None,
    memory_budget_gb: float | None = None,
) -> SpaceConfig:
    """Read tiers.yaml and apply ``TIER_<NAME>_<FIELD>`` overrides.

    Args:
        path: The YAML file.
        overrides: Environment-style variables, e.g. ``{"TIER_BASE_MODEL": "/models/x"}``;
            others are ignored. A ``TIER_<NAME>_MODEL`` for a tier not in the file adds it.
        default_tier: Overrides ``default_tier``.
        memory_budget_gb: Overrides ``memory_budget_gb``.

    Returns:
        The validated configuration.

    Raises:
        ModelLoadError: naming the file or variable that is wrong.
    """
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ModelLoadError(f"cannot read tier config {path}: {e}") from e
    tiers: dict[str, dict[str, Any]] = {
        name: dict(body or {}) for name, body in (raw.get("tiers") or {}).items()
    }
    for key, value in sorted((overrides or {}).items()):
        parsed = _parse_override(key, tiers)
        if parsed is None:
            continue
        name, where = parsed
        target = tiers.setdefault(name, {})
        for part in where[:-1]:
            target = target.setdefault(part, {})
        if where in (("adapter",), ("base_tier",), ("revision",)) and value.strip() == "":
            target[where[-1]] = None
        else:
            target[where[-1]] = value
    # A tier given its own model by the environment no longer borrows another tier's.
    for key in overrides or {}:
        parsed = _parse_override(key, tiers)
        if (
            parsed
            and parsed[1] == ("model",)
            and f"TIER_{parsed[0].upper()}_BASE_TIER" not in (overrides or {})
        ):
            tiers[parsed[0]]["base_tier"] = None
    if default_tier:
        raw["default_tier"] = default_tier
    if memory_budget_gb is not None:
        raw["memory_budget_gb"] = memory_budget_gb
    raw["tiers"] = {name: {"name": name, **body} for name, body in tiers.items()}
    try:
        return SpaceConfig.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
        )
        raise ModelLoadError(f"invalid tier config ({path} + TIER_* variables): {problems}") from e


def _parse_override(key: str, tiers: Mapping[str, Any]) -> tuple[str, tuple[str, ...]] | None:
    if not key.startswith("TIER_"):
        return None
    rest = key[len("TIER_") :]
    # Longest field suffix first, so TIER_X_ADAPTER_REVISION is not read as TIER_X_ADAPTER.
    for field_key in sorted(_ENV_FIELDS, key=len, reverse=True):
        if rest.endswith("_" + field_key):
            name = rest[: -len(field_key) - 1].lower()
            if name and (name in tiers or field_key in ("MODEL", "BASE_TIER")):
                return name, _ENV_FIELDS[field_key]
    return None


@dataclass
class LoadedModel:
    """Weights in memory, with the engine that serves them."""

    # Identity of the weights: tiers with the same key share this object.
    key: tuple[str | None, ...]
    # The tokenizer.
    tokenizer: Any
    # The decode loop over this model.
    engine: BatchEngine
    # Compiled-grammar cache for this tokenizer.
    grammars: GrammarCache
    # Where the weights came from.
    model_id: str
    # Hub revision (None for a local folder).
    revision: str | None
    # Adapter merged in, if any.
    adapter: str | None
    # Device and dtype.
    device: str
    dtype: str
    # Demo marker (random weights), or None for real weights.
    demo: dict[str, Any] | None
    # Context length of the model.
    max_position_embeddings: int
    # Bytes held by the parameters.
    nbytes: int
    # Seconds spent loading.
    load_seconds: float
    # time.monotonic() of the last use, for LRU eviction.
    last_used: float


class TierRegistry:
    """Loads tiers' models on demand, shares identical weights, evicts by memory budget.

    Args:
        config: The tier configuration.
        token: Hub token for private repos (never logged).
        device: "auto", "cpu" or "cuda".
    """

    def __init__(
        self, config: SpaceConfig, *, token: str | None = None, device: str = "auto"
    ) -> None:
        self.config = config
        self._token = token
        self._device = device
        self._models: dict[tuple[str | None, ...], LoadedModel] = {}
        self._errors: dict[tuple[str | None, ...], str] = {}
        self._lock = threading.Lock()
        self._load_locks: dict[tuple[str | None, ...], threading.Lock] = {}

    @property
    def names(self) -> list[str]:
        """Configured tier names, in config order."""
        return list(self.config.tiers)

    def key(self, name: str) -> tuple[str | None, ...]:
        """Identity of the weights a tier runs (equal keys share one loaded model)."""
        tier = self.config.resolved(name)
        return (tier.model, tier.revision, tier.adapter, tier.adapter_revision, tier.dtype)

    def loaded(self, name: str) -> LoadedModel | None:
        """The tier's model if it is in memory now."""
        return self._models.get(self.key(name))

    def error(self, name: str) -> str | None:
        """The last load error of the tier's model, if loading failed."""
        return self._errors.get(self.key(name))

    def demo_marker(self, name: str) -> dict[str, Any] | None:
        """The demo-weights marker of the tier's model (checked on disk for local models)."""
        loaded = self.loaded(name)
        if loaded is not None:
            return loaded.demo
        tier = self.config.resolved(name)
        for location in (tier.model, tier.adapter):
            if location and ModelSource.parse(location).is_local:
                marker = demo_info(Path(location).expanduser())
                if marker:
                    return marker
        return None

    def get(self, name: str) -> LoadedModel:
        """The tier's model, loading it (and evicting idle ones over budget) if needed.

        Raises:
            TierNotFound: for a tier that is not configured.
            ModelLoadError: when the model cannot be loaded.
        """
        tier = self.config.resolved(name)
        key = self.key(name)
        with self._lock:
            lock = self._load_locks.setdefault(key, threading.Lock())
        with lock:
            loaded = self._models.get(key)
            if loaded is None:
                try:
                    loaded = self._load(tier, key)
                except ModelLoadError as e:
                    self._errors[key] = str(e)
                    raise
                except Exception as e:
                    self._errors[key] = f"{type(e).__name__}: {e}"
                    raise ModelLoadError(
                        f"loading tier {name!r} ({tier.model}) failed: {type(e).__name__}: {e}"
                    ) from e
                with self._lock:
                    self._models[key] = loaded
                    self._errors.pop(key, None)
            loaded.last_used = time.monotonic()
            return loaded

    def models(self) -> list[LoadedModel]:
        """Models in memory now."""
        with self._lock:
            return list(self._models.values())

    def shutdown(self) -> None:
        """Stop every engine."""
        for loaded in self.models():
            loaded.engine.stop()

    def _load(self, tier: TierConfig, key: tuple[str | None, ...]) -> LoadedModel:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        start = time.monotonic()
        assert tier.model is not None
        source = ModelSource.parse(tier.model, tier.revision)
        folder = resolve_model(
            source, required=["config.json", TRANSFORMERS_WEIGHTS], token=self._token
        )
        choice = select_device(self._device, tier.dtype)  # type: ignore[arg-type]
        # Room is made before loading, from the checkpoint's size, so two models never overlap.
        self._make_room(_checkpoint_bytes(folder))
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=choice.torch_dtype())
        adapter_demo = None
        if tier.adapter:
            from peft import PeftModel

            adapter_source = ModelSource.parse(tier.adapter, tier.adapter_revision)
            adapter_folder = resolve_model(
                adapter_source,
                required=[
                    "adapter_config.json",
                    ("adapter_model.safetensors", "adapter_model.bin"),
                ],
                token=self._token,
            )
            # Merged into its own copy of the base weights: the base tier's model stays as is.
            model = PeftModel.from_pretrained(model, adapter_folder).merge_and_unload()
            adapter_demo = demo_info(adapter_folder)
        model = model.to(choice.device).eval()
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        text_config = model.config.get_text_config()
        context = int(getattr(text_config, "max_position_embeddings", 0) or 2048)
        max_total = min(tier.limits.max_total_tokens or context, context)
        engine = BatchEngine(
            model,
            tokenizer,
            max_batch_size=tier.limits.max_batch_size,
            max_concurrent_requests=tier.limits.max_concurrent_requests,
            max_total_tokens=max_total,
            name=source.location.rsplit("/", 1)[-1],
        )
        grammars = GrammarCache(tokenizer, int(text_config.vocab_size))
        torch.set_grad_enabled(False)
        seconds = time.monotonic() - start
        logger.info(
            "loaded %s (%s, %.0f MB) in %.1fs", source, choice.dtype, nbytes / 2**20, seconds
        )
        return LoadedModel(
            key=key,
            tokenizer=tokenizer,
            engine=engine,
            grammars=grammars,
            model_id=source.location,
            revision=source.revision,
            adapter=tier.adapter,
            device=choice.device,
            dtype=choice.dtype,
            demo=demo_info(folder) or adapter_demo,
            max_position_embeddings=context,
            nbytes=nbytes,
            load_seconds=seconds,
            last_used=time.monotonic(),
        )

    def _make_room(self, nbytes: int) -> None:
        """Unload idle models, least recently used first, until ``nbytes`` more fit the budget."""
        budget_gb = self.config.memory_budget_gb
        if budget_gb is None:
            return
        budget = int(budget_gb * 2**30)
        with self._lock:
            used = sum(m.nbytes for m in self._models.values())
            victims = sorted(self._models.values(), key=lambda m: m.last_used)
            evicted = []
            for victim in victims:
                if used + nbytes <= budget:
                    break
                if victim.engine.busy:
                    continue
                del self._models[victim.key]
                used -= victim.nbytes
                evicted.append(victim)
        for victim in evicted:
            logger.info("memory budget %.1f GiB: unloading %s", budget_gb, victim.model_id)
            victim.engine.stop()
        if evicted:
            gc.collect()
        if used + nbytes > budget:
            logger.warning(
                "memory budget %.1f GiB exceeded (%.2f GiB in use by busy models); loading anyway",
                budget_gb,
                (used + nbytes) / 2**30,
            )


def _checkpoint_bytes(folder: Path) -> int:
    """Size of the weight files in a model folder (what loading them will roughly take)."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
