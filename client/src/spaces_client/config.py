"""Configuration: which Spaces to call, their tokens (by env var name), deadlines and fallbacks.

From code (``ClientSettings(spaces={...})``), a YAML file (:meth:`ClientSettings.from_yaml`) or
environment variables (:meth:`ClientSettings.from_env`). Tokens are never stored here, only the
names of the variables that hold them; they are read when the client is built and kept as
``SecretStr``, so no repr or log line shows them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: The Spaces this package has a typed client for.
Kind = Literal["toxicity", "spam", "tiers", "answer_sheet", "twi_speech"]
KINDS: tuple[str, ...] = ("toxicity", "spam", "tiers", "answer_sheet", "twi_speech")

#: Environment variables read by :meth:`ClientSettings.from_env`.
ENV_CONFIG = "SPACES_CLIENT_CONFIG"
ENV_HUB = "SPACES_HUB_ENDPOINT"
ENV_DEADLINE = "SPACES_DEADLINE_S"
_STRICT = ConfigDict(extra="forbid")


class RetrySettings(BaseModel):
    """Backoff between attempts: exponential with jitter, never past the call's deadline."""

    model_config = _STRICT

    # First wait, in seconds (doubles each attempt).
    initial_s: float = Field(0.25, gt=0)
    # Longest single wait, in seconds.
    max_s: float = Field(8.0, gt=0)
    # Random extra wait of up to this many seconds, so clients do not retry in step.
    jitter_s: float = Field(0.25, ge=0)


class BreakerSettings(BaseModel):
    """The per-Space circuit breaker."""

    model_config = _STRICT

    # Consecutive failed calls that open the breaker.
    failure_threshold: int = Field(5, ge=1)
    # Seconds an open breaker fails fast before one probe call is let through.
    reset_timeout_s: float = Field(30.0, gt=0)


class FallbackSettings(BaseModel):
    """One fallback, tried in order after the Space itself fails: another Space, the Inference
    API for a model id, or (from code only) a local function."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    # Another Space of the same kind: owner/name or URL.
    space: str | None = None
    # Its repo id when `space` is a URL that does not say it.
    repo_id: str | None = None
    # A model id on the Inference API (text classification for toxicity, text generation for
    # tiers).
    inference_api: str | None = None
    # The Inference API URL for that model; default
    # https://router.huggingface.co/hf-inference/models/<inference_api>.
    inference_url: str | None = None
    # Env var holding the token for this fallback (the Inference API needs one).
    token_env: str | None = "HF_TOKEN"
    # A local function taking the same arguments as the client method (sync or async),
    # returning the typed result or a dict of its fields. Code only.
    function: Callable[..., Any] | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _exactly_one(self) -> FallbackSettings:
        given = [k for k in ("space", "inference_api", "function") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                "a fallback is exactly one of `space`, `inference_api` or `function`, "
                f"got {given or 'none'}"
            )
        return self

    @property
    def label(self) -> str:
        """How the fallback is named in errors and logs."""
        if self.space:
            return f"space {self.space}"
        if self.inference_api:
            return f"inference API {self.inference_api}"
        name = getattr(self.function, "__qualname__", repr(self.function))
        return f"function {name}"


class SpaceSettings(BaseModel):
    """One Space: where it is, its tokens, how long a call may take, what to fall back to."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    # owner/name, https://huggingface.co/spaces/owner/name, https://owner-name.hf.space, or
    # any URL of the app (http://127.0.0.1:7861).
    space: str
    # Which typed client it serves; by default the key it is configured under.
    kind: Kind | None = None
    # The Hub repo id when `space` is a local or custom URL (lets the client ask the Hub).
    repo_id: str | None = None
    # Env var holding a Hub token with read access (private Spaces); never logged.
    token_env: str | None = "HF_TOKEN"
    # Env var holding a write token: lets the client restart_space() a sleeping or stopped
    # Space it owns. Without it, a request to the Space is what wakes it.
    write_token_env: str | None = None
    # Env var holding the Space's own API key (llm-tiers' API_KEY), sent as a bearer token on
    # REST routes.
    api_key_env: str | None = None
    # Seconds a call may take in all, retries and fallbacks included (cold starts take long).
    deadline_s: float = Field(120.0, gt=0)
    # Seconds one attempt on one transport may take; None: what is left of the deadline.
    attempt_timeout_s: float | None = Field(None, gt=0)
    # With fallbacks configured: seconds the Space itself may take (its retries included)
    # before the call goes to them; the rest of the deadline is theirs.
    failover_after_s: float = Field(30.0, gt=0)
    # With fallbacks configured: serve from them at once while the Space sleeps or starts
    # (it is woken meanwhile) instead of waiting for it.
    fallback_while_waking: bool = True
    # Calls in flight to this Space at once; more wait their turn (within their deadline).
    max_concurrency: int = Field(32, ge=1)
    # Backoff between attempts.
    retry: RetrySettings = RetrySettings()
    # The circuit breaker.
    breaker: BreakerSettings = BreakerSettings()
    # Tried in order when the Space fails (not when it refuses the input).
    fallbacks: list[FallbackSettings] = []
    # Options of the typed client: toxicity's `threshold` and `label_map` for answers of the
    # Inference API, tiers' generation defaults (`max_new_tokens`, `temperature`).
    options: dict[str, Any] = {}


class ClientSettings(BaseModel):
    """Every Space a backend calls, by key (``toxicity``, ``spam``, ``tiers``, ...)."""

    model_config = _STRICT

    # The Hub API (the default: huggingface.co; tests point it at a local stand-in).
    hub_endpoint: str | None = None
    # Key -> Space. Keys that are kinds (toxicity, spam, tiers, answer_sheet, twi_speech) are
    # what `SpacesClient.toxicity()` etc. use.
    spaces: dict[str, SpaceSettings] = {}
    # Tier -> key of the Space that serves it (Spaces per tier); others go to `spaces.tiers`.
    tiers: dict[str, str] = {}

    @model_validator(mode="after")
    def _check(self) -> ClientSettings:
        for key, space in self.spaces.items():
            if space.kind is None:
                if key not in KINDS:
                    raise ValueError(
                        f"spaces.{key}: give `kind` (one of {', '.join(KINDS)}) for a key that "
                        "is not a kind"
                    )
                space.kind = key  # type: ignore[assignment]
        for tier, key in self.tiers.items():
            if key not in self.spaces:
                raise ValueError(f"tiers.{tier}: no Space {key!r} in `spaces`")
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> ClientSettings:
        """Read settings from a YAML file (the same fields as this model).

        Raises:
            ValueError: The file is not valid YAML or not valid settings (the message names
                the file and the field).
        """
        import yaml  # a dependency of huggingface_hub

        file = Path(path)
        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"{file}: cannot read settings: {e}") from e
        try:
            return cls.model_validate(data)
        except ValueError as e:
            raise ValueError(f"{file}: {e}") from e

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ClientSettings:
        """Settings from environment variables.

        ``SPACES_CLIENT_CONFIG`` names a YAML file to start from; ``SPACES_<KIND>`` (e.g.
        ``SPACES_TOXICITY=org/toxic-classifier``, ``SPACES_TIERS``, ``SPACES_SPAM``,
        ``SPACES_ANSWER_SHEET``, ``SPACES_TWI_SPEECH``) sets or overrides a Space;
        ``SPACES_DEADLINE_S`` every Space's deadline; ``SPACES_HUB_ENDPOINT`` the Hub API.

        Args:
            environ: The environment (``os.environ`` at the application's edge).
        """
        path = environ.get(ENV_CONFIG)
        data = cls.from_yaml(path).model_dump(exclude_unset=True) if path else {}
        spaces: dict[str, Any] = dict(data.get("spaces", {}))
        for kind in KINDS:
            ref = environ.get(f"SPACES_{kind.upper()}")
            if ref:
                spaces[kind] = {**spaces.get(kind, {}), "space": ref}
        if environ.get(ENV_DEADLINE):
            deadline = float(environ[ENV_DEADLINE])
            spaces = {k: {**v, "deadline_s": deadline} for k, v in spaces.items()}
        data["spaces"] = spaces
        if environ.get(ENV_HUB):
            data["hub_endpoint"] = environ[ENV_HUB]
        return cls.model_validate(data)
