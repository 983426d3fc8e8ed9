"""Tier configuration and the tier registry.

``config.yaml`` maps each tier (``base``, ``company``, ``abstraction``, ``user``) to a model (Hub
id or local path, revision), or to a PEFT adapter on another tier's model, plus dtype, system
prompt, generation defaults and limits. ``app.py`` hands the environment to
:func:`load_space_config`, where ``TIER_<NAME>_<FIELD>`` variables and the Space-wide ones
(``DEFAULT_TIER``, ``PRELOAD_TIERS``, ``MEMORY_BUDGET_GB``, ``DEVICE``) override the file
through ``shared.config``: a bad value is one line naming the variable, its value and what is
allowed.

:class:`TierRegistry` maps tier names onto ``shared.llm.CausalLMRegistry``: tiers that resolve to
the same weights (model, revision, adapter, dtype) share one loaded model and one batch engine,
models load on a tier's first request, and idle ones are unloaded beyond the memory budget.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from shared.config import ConfigError, Override, env_overrides, load_config, read_yaml
from shared.llm import CausalLMRegistry, Dtype, EngineLimits, LoadedModel, ModelSpec
from shared.models import ModelSource, demo_info


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

    # Tier name (the key in config.yaml).
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
    """The Space's settings: config.yaml with the environment's overrides."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Tiers by name (declared first: the checks below read it).
    tiers: dict[str, TierConfig]
    # Tier served at the root routes and when a request names none.
    default_tier: str = Field("base", validate_default=True)
    # Tiers loaded at start, before /health answers 200; None means the default tier.
    preload_tiers: tuple[str, ...] | None = None
    # Loaded weights kept in memory, in GiB; None means no budget.
    memory_budget_gb: float | None = Field(None, gt=0)
    # Where the models run.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Most bytes in a request body; a bigger one is answered 413 before it is read in full.
    max_request_bytes: int = Field(2 * 1024 * 1024, ge=1024)

    @model_validator(mode="before")
    @classmethod
    def _name_tiers(cls, data: Any) -> Any:
        tiers = data.get("tiers") if isinstance(data, dict) else None
        if isinstance(tiers, dict):
            named = {k: {**(v or {}), "name": k} if isinstance(v, dict | None) else v
                     for k, v in tiers.items()}  # fmt: skip
            data = {**data, "tiers": named}
        return data

    @field_validator("preload_tiers", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):  # PRELOAD_TIERS=base,company
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @field_validator("default_tier")
    @classmethod
    def _default_is_a_tier(cls, value: str, info: ValidationInfo) -> str:
        _check_names([value], info.data.get("tiers"))
        return value

    @field_validator("preload_tiers")
    @classmethod
    def _preload_are_tiers(cls, value: tuple[str, ...] | None,
                           info: ValidationInfo) -> tuple[str, ...] | None:  # fmt: skip
        if value is not None:
            _check_names(value, info.data.get("tiers"))
        return value

    @property
    def preload(self) -> list[str]:
        """Tiers to load at start."""
        return list(self.preload_tiers) if self.preload_tiers else [self.default_tier]

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


def _check_names(names: Iterable[str], tiers: Mapping[str, Any] | None) -> None:
    if tiers is None:  # the tiers themselves failed validation; that error is reported
        return
    for name in names:
        if name not in tiers:
            raise ValueError(f"{name!r} is not a configured tier (one of {', '.join(tiers)})")


# Space-wide settings and the variables that override them.
SETTINGS_ENV = {
    "DEFAULT_TIER": "default_tier",
    "PRELOAD_TIERS": "preload_tiers",
    "MEMORY_BUDGET_GB": "memory_budget_gb",
    "DEVICE": "device",
    "MAX_REQUEST_BYTES": "max_request_bytes",
}

# Fields a TIER_<NAME>_<FIELD> variable may set, and where they go in the tier's config.
TIER_ENV_FIELDS: dict[str, tuple[str, ...]] = {
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
# An empty value of these unsets the field; of the text fields, sets it to ""; of the others,
# is ignored (as an unset variable).
_NULLABLE = {("revision",), ("base_tier",), ("adapter",), ("adapter_revision",)}
_TEXT = {("system_prompt",), ("description",)}


def tier_overrides(env: Mapping[str, str], file_tiers: Iterable[str]) -> list[Override]:
    """The ``TIER_<NAME>_<FIELD>`` variables of ``env`` as config overrides.

    ``TIER_<NAME>_MODEL`` (or ``_BASE_TIER``) for a tier not in the file adds the tier; a tier
    given its own model this way stops borrowing another tier's (unless ``_BASE_TIER`` is set
    too).

    Args:
        env: The environment.
        file_tiers: Tier names in config.yaml.

    Returns:
        The overrides, in variable-name order.
    """
    known = {name.lower() for name in file_tiers}
    # Tiers the environment adds, first, so their other variables are recognised too.
    for variable in env:
        parsed = _parse_variable(variable, known, adding=True)
        if parsed is not None and parsed[1] in (("model",), ("base_tier",)):
            known.add(parsed[0])
    overrides = []
    for variable, value in sorted(env.items()):
        parsed = _parse_variable(variable, known)
        if parsed is None:
            continue
        name, where = parsed
        path = ("tiers", name, *where)
        if value.strip() == "":
            if where in _NULLABLE:
                overrides.append(Override(variable, path, None))
            elif where in _TEXT:
                overrides.append(Override(variable, path, ""))
            continue
        overrides.append(Override(variable, path, value))
        if where == ("model",) and f"TIER_{name.upper()}_BASE_TIER" not in env:
            overrides.append(Override(variable, ("tiers", name, "base_tier"), None))
    return overrides


def _parse_variable(variable: str, known: set[str], *, adding: bool = False
                    ) -> tuple[str, tuple[str, ...]] | None:  # fmt: skip
    if not variable.startswith("TIER_"):
        return None
    rest = variable[len("TIER_") :]
    # Longest field suffix first, so TIER_X_ADAPTER_REVISION is not read as TIER_X_ADAPTER.
    for field_key in sorted(TIER_ENV_FIELDS, key=len, reverse=True):
        if rest.endswith("_" + field_key):
            name = rest[: -len(field_key) - 1].lower()
            if name and (name in known or adding):
                return name, TIER_ENV_FIELDS[field_key]
    return None


def load_space_config(path: Path, env: Mapping[str, str]) -> SpaceConfig:
    """Read config.yaml and apply the environment's overrides.

    Args:
        path: The YAML file (``TIERS_CONFIG``, else the Space's ``config.yaml``).
        env: The environment (``os.environ`` in ``app.py``, a dict in tests).

    Returns:
        The validated settings.

    Raises:
        ConfigError: one line naming the variable (or the file and key), the value and what
            is allowed.
    """
    raw = read_yaml(path)
    file_tiers = raw.get("tiers") if isinstance(raw.get("tiers"), dict) else {}
    overrides = [*env_overrides(env, SETTINGS_ENV), *tier_overrides(env, file_tiers)]
    config = load_config(SpaceConfig, path, overrides, data=raw)
    _check_tiers(config, overrides, path)
    return config


def _check_tiers(config: SpaceConfig, overrides: Sequence[Override], path: Path) -> None:
    """Every tier has a model, directly or through a base tier that has one."""
    names = ", ".join(config.tiers)

    def fail(tier: str, key: str, value: Any, problem: str) -> NoReturn:
        where = ("tiers", tier, key)
        source = next((o for o in reversed(overrides) if o.path == where), None)
        if source is None and key == "base_tier":  # TIER_X_MODEL="" leaves the tier empty
            source = next((o for o in reversed(overrides) if o.path[:2] == where[:2]), None)
        origin = f"{source.source}={source.value!r}" if source else f"{path}: {'.'.join(where)}"
        suffix = "" if source else f"={value!r}"
        raise ConfigError(f"{origin}{suffix}: tiers.{tier}.{key}: {problem}")

    for tier in config.tiers.values():
        if tier.base_tier is not None:
            if tier.base_tier not in config.tiers or tier.base_tier == tier.name:
                fail(tier.name, "base_tier", tier.base_tier,
                     f"must be another configured tier ({names})")  # fmt: skip
            if config.tiers[tier.base_tier].base_tier is not None:
                fail(tier.name, "base_tier", tier.base_tier,
                     "must name a tier with its own model, not another base_tier")  # fmt: skip
        elif not tier.model:
            fail(tier.name, "model", tier.model, "set `model` (a Hub id or a local directory) "
                 "or `base_tier` (another tier's weights)")  # fmt: skip


class TierRegistry:
    """The tiers' models, loaded on demand through one :class:`CausalLMRegistry`.

    Args:
        config: The Space's settings.
        models: Loads, shares and evicts the weights.
    """

    def __init__(self, config: SpaceConfig, models: CausalLMRegistry) -> None:
        self.config = config
        self.models = models

    @property
    def names(self) -> list[str]:
        """Configured tier names, in config order."""
        return list(self.config.tiers)

    def spec(self, name: str) -> ModelSpec:
        """The weights a tier runs (equal specs share one loaded model).

        Raises:
            TierNotFound: for a tier that is not configured.
        """
        tier = self.config.resolved(name)
        assert tier.model is not None  # _check_tiers saw to it
        return ModelSpec.parse(
            tier.model,
            tier.revision,
            adapter=tier.adapter,
            adapter_revision=tier.adapter_revision,
            dtype=tier.dtype,
        )

    def sharing(self, name: str) -> list[str]:
        """The other tiers that run the same weights as ``name``."""
        spec = self.spec(name)
        return [other for other in self.names if other != name and self.spec(other) == spec]

    def limits(self, name: str) -> EngineLimits:
        """The engine of a tier's model, sized for every tier it serves: the largest batch
        and queue among them (each tier keeps its own queue limit, see ``TierGenerator``)."""
        tiers = [self.config.tier(t).limits for t in [name, *self.sharing(name)]]
        totals = [t.max_total_tokens for t in tiers]
        return EngineLimits(
            max_batch_size=max(t.max_batch_size for t in tiers),
            max_concurrent_requests=max(t.max_concurrent_requests for t in tiers),
            max_total_tokens=None if None in totals else max(t for t in totals if t),
        )

    def get(self, name: str) -> LoadedModel:
        """The tier's model, loading it (and unloading idle ones over budget) if needed.

        Raises:
            TierNotFound: for a tier that is not configured.
            ModelLoadError: when the model cannot be loaded.
        """
        return self.models.get(self.spec(name), self.limits(name))

    def loaded(self, name: str) -> LoadedModel | None:
        """The tier's model if it is in memory now."""
        return self.models.loaded(self.spec(name))

    def error(self, name: str) -> str | None:
        """The last load error of the tier's model, if loading failed."""
        return self.models.error(self.spec(name))

    def demo_marker(self, name: str) -> dict[str, Any] | None:
        """The demo-weights marker of the tier's model (checked on disk for local models)."""
        loaded = self.loaded(name)
        if loaded is not None:
            return loaded.demo
        spec = self.spec(name)
        for location in (spec.model, spec.adapter):
            if location and ModelSource.parse(location).is_local:
                marker = demo_info(Path(location).expanduser())
                if marker:
                    return marker
        return None

    def shutdown(self) -> None:
        """Stop every engine."""
        self.models.shutdown()
