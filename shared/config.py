"""One configuration loader for every Space: ``config.yaml`` defaults, environment overrides.

Each Space declares a pydantic model of its settings. :func:`load_config` reads the Space's YAML
file, applies the overrides its ``app.py`` collected from named environment variables, and
validates the result. Any bad value is a :class:`ConfigError` whose one-line message names the
variable (or the file and key), the value and what is allowed, so ``app.py`` can stop the Space
at start with :func:`load_or_exit` instead of a traceback::

    HARMFUL_THRESHOLD='1.5': threshold: Input should be less than or equal to 1

Library modules never read ``os.environ``; only the edge does, and passes the values here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration value that is wrong; the message names where it came from."""


@dataclass(frozen=True)
class Override:
    """One value that wins over the config file."""

    # Where the value came from, shown in errors: an environment variable's name.
    source: str
    # The key it sets, outer first: ``("limits", "max_new_tokens")``.
    path: tuple[str, ...]
    # The value as given (strings from the environment; pydantic converts them).
    value: Any


def env_overrides(env: Mapping[str, str], variables: Mapping[str, str]) -> list[Override]:
    """The overrides named by ``variables`` that are set (and not empty) in ``env``.

    Args:
        env: The environment (``os.environ`` at the edge, a dict in tests).
        variables: Environment variable -> dotted config key, e.g.
            ``{"HARMFUL_THRESHOLD": "threshold"}``.

    Returns:
        One :class:`Override` per variable that is set, in ``variables`` order.
    """
    return [
        Override(name, tuple(key.split(".")), env[name])
        for name, key in variables.items()
        if env.get(name, "").strip() != ""
    ]


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from ``path`` (an empty file is ``{}``).

    Raises:
        ConfigError: the file is missing, not UTF-8, not YAML, or not a mapping; the message
            names the file (and the line of a syntax error).
    """
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: no such config file") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text ({e.reason})") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path} is not valid YAML ({problem}{where})") from e
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must be a YAML mapping of keys to values")
    return raw


def load_config(
    schema: type[M],
    path: Path | None = None,
    overrides: Iterable[Override] = (),
    *,
    data: Mapping[str, Any] | None = None,
) -> M:
    """Validate a Space's settings: the file, then the overrides on top.

    Args:
        schema: The Space's pydantic settings model.
        path: Its ``config.yaml``; None for defaults only.
        overrides: Values that win over the file (from :func:`env_overrides`).
        data: Settings to start from instead of reading ``path`` (already parsed YAML).

    Returns:
        The validated settings.

    Raises:
        ConfigError: one line naming the variable or key, the value and what is allowed.
    """
    if data is not None:
        raw: dict[str, Any] = dict(data)
    else:
        raw = read_yaml(path) if path is not None else {}
    applied = list(overrides)
    for override in applied:
        target = raw
        for part in override.path[:-1]:
            child = target.get(part)
            target[part] = child = dict(child) if isinstance(child, Mapping) else {}
            target = child
        target[override.path[-1]] = override.value
    try:
        return schema.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_describe(e, applied, path, sorted(schema.model_fields))) from None


def load_or_exit(space: str, load: Any) -> Any:
    """Call ``load()``; a :class:`ConfigError` stops the process with one line and status 1.

    Args:
        space: The Space's name, leading the message.
        load: A callable returning the settings.

    Returns:
        What ``load`` returned.
    """
    try:
        return load()
    except ConfigError as e:
        raise SystemExit(f"{space}: bad configuration: {e}") from None


def _describe(
    error: ValidationError, overrides: Sequence[Override], path: Path | None, keys: list[str]
) -> str:
    """The first problem, where it came from: ``VAR='x': key: message`` or ``file: key: ...``."""
    problems = []
    for err in error.errors(include_url=False):
        loc = tuple(str(p) for p in err.get("loc", ()))
        key = ".".join(loc) or "(top level)"
        msg = err.get("msg", "invalid value")
        # The override that set this key, or the one that set a mapping around it.
        source = next(
            (o for o in reversed(overrides) if loc[: len(o.path)] == o.path and o.path), None
        )
        if source is not None:
            problems.append(f"{source.source}={source.value!r}: {key}: {msg}")
        elif err.get("type") == "extra_forbidden":
            valid = f"; valid keys: {keys}" if len(loc) == 1 else ""
            problems.append(f"{path or 'config'}: unknown key {key!r}{valid}")
        elif "input" in err and err.get("type") != "missing":
            problems.append(f"{path or 'config'}: {key}={err['input']!r}: {msg}")
        else:
            problems.append(f"{path or 'config'}: {key}: {msg}")
    return "; ".join(problems)
