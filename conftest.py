"""Fixtures for every test in the tree: the demo models and the Space launcher."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack

import pytest

from tests.harness import RunningSpace, demo_env, start_space


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
