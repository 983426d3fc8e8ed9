"""Fixtures for every test in the tree: the demo models and the Space launcher; and each
Space's tests import that Space's own modules (``predictor``, ``ui``, ...)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path

import pytest

from tests.harness import SPACES_DIR, RunningSpace, demo_env, isolate_space_modules, start_space


def _space_of(path: Path) -> Path | None:
    """The Space folder a test file belongs to (``spaces/<name>/tests/...``), if any."""
    try:
        parts = path.resolve().relative_to(SPACES_DIR).parts
    except ValueError:
        return None
    return SPACES_DIR / parts[0] if len(parts) > 2 and parts[1] == "tests" else None


def pytest_collectstart(collector: pytest.Collector) -> None:
    """Before a Space's test module is imported, its Space's modules are the importable ones."""
    path = getattr(collector, "path", None)
    space = _space_of(path) if isinstance(collector, pytest.Module) and path else None
    if space is not None:
        isolate_space_modules(space)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """The same before each of its tests runs (for imports made inside a test)."""
    space = _space_of(item.path)
    if space is not None:
        isolate_space_modules(space)


@pytest.fixture(scope="session")
def demo_models() -> dict[str, dict[str, str]]:
    """Space name -> the env vars that point it at its offline demo models (built once)."""
    return demo_env()


SpaceLauncher = Callable[..., RunningSpace]


@pytest.fixture(scope="module")
def launch_space(demo_models: dict[str, dict[str, str]]) -> Iterator[SpaceLauncher]:
    """Start Spaces for the module's tests: ``launch_space("toxic-classifier", **env)``.

    Each Space runs on its own port with its demo-model environment (plus overrides) and is
    stopped when the module's tests finish.
    """
    with ExitStack() as stack:

        def launch(name: str, **overrides: str) -> RunningSpace:
            env = {**demo_models.get(name, {}), **overrides}
            manager: AbstractContextManager[RunningSpace] = start_space(name, env)
            return stack.enter_context(manager)

        yield launch
