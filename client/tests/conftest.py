"""Fixtures of the spaces_client tests: the package from client/src, stub Spaces, the fault
proxy and the Hub stand-in, and the figures the fault tests measure (printed at the end)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for path in (HERE.parent / "src", HERE):  # the package, and the `fakes` helpers
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

# gradio_client's telemetry would call huggingface.co: never from tests.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from fakes.fake_hub import FakeHub  # noqa: E402
from fakes.servers import ServerThread, serve  # noqa: E402

FIGURES: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print what the fault tests measured (calls, lost, breaker latency, wake time)."""
    if FIGURES:
        terminalreporter.section("spaces_client figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture
def figure():
    """Record a figure for the end-of-run summary: ``figure("text")``."""
    return FIGURES.append


@pytest.fixture(autouse=True)
def _hub_reachable(monkeypatch):
    """HF_HUB_OFFLINE=1 would block huggingface_hub's requests, to the local Hub stand-in too;
    these tests never reach the real Hub (every HfApi they make points at the stand-in)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture(scope="module")
def fake_hub() -> Iterator[tuple[FakeHub, ServerThread]]:
    """The Hub stand-in, served on localhost."""
    hub = FakeHub()
    with serve(hub.app) as server:
        yield hub, server
