"""Start a Space as its own process, the way the Hub does, and talk to it like a backend.

``start_space("toxic-classifier", env)`` runs ``python app.py`` in the Space folder (on a free
port unless one is given) with the demo-model environment, waits for ``/health`` to answer 200,
yields a ``gradio_client.Client`` and an ``httpx.Client``, and always stops the whole process
group. The test harness and ``make demo`` both start Spaces through it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from gradio_client import Client

from scripts.build_demo_models import build_all

ROOT = Path(__file__).resolve().parent.parent
SPACES_DIR = ROOT / "spaces"
DEMO_MODELS_DIR = ROOT / "build" / "demo-models"
# int8 ONNX exports of local models (shared.quantize): kept with the other build outputs.
ONNX_CACHE_DIR = ROOT / "build" / "onnx-cache"


def space_names() -> list[str]:
    """Every Space in the monorepo (a folder under ``spaces/`` with an ``app.py``)."""
    return sorted(p.name for p in SPACES_DIR.iterdir() if (p / "app.py").is_file())


def demo_env(models_dir: Path = DEMO_MODELS_DIR) -> dict[str, dict[str, str]]:
    """Build the demo models if needed and return ``env.json`` (Space -> env vars)."""
    return build_all(models_dir)


def free_port() -> int:
    """A TCP port that is free on localhost right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningSpace:
    """A Space process started by :func:`start_space`."""

    name: str
    url: str
    http: httpx.Client
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def client(self) -> Client:
        """A gradio_client connected to the Space (made on first use)."""
        if not hasattr(self, "_client"):
            self._client = Client(self.url, verbose=False)
        return self._client

    def log(self) -> str:
        """Everything the Space printed so far."""
        return self.log_path.read_text(errors="replace")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass


def stop_spaces_on_sigterm() -> None:
    """Make SIGTERM raise ``KeyboardInterrupt`` in the main thread, as Ctrl-C does.

    The Spaces run in their own sessions (``start_new_session``), so a signal to this process
    does not reach them; only the ``start_space`` blocks unwinding stops them. Without this, a
    ``kill`` of the demo or a benchmark leaves its Spaces running.
    """

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


@contextmanager
def start_space(
    name: str,
    env: Mapping[str, str] | None = None,
    *,
    space_dir: Path | None = None,
    port: int | None = None,
    host: str = "127.0.0.1",
    log_path: Path | None = None,
    timeout: float = 180.0,
) -> Iterator[RunningSpace]:
    """Run a Space's ``app.py`` on a free port until the block ends.

    Args:
        name: The Space's folder name under ``spaces/``.
        env: Extra environment (the demo-model variables, overrides).
        space_dir: Run from this folder instead of ``spaces/<name>`` (e.g. a deployed clone).
        port: Port to listen on; a free one when None.
        host: Interface to bind.
        log_path: Where the Space's output goes; a temp file when None.
        timeout: Seconds to wait for ``/health`` to answer 200.

    Yields:
        The running Space.
    """
    folder = space_dir or SPACES_DIR / name
    port = port or free_port()
    full_env = {**os.environ, **(env or {}), "PORT": str(port), "HOST": host}
    full_env.setdefault("HF_HUB_OFFLINE", "1")
    full_env.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    full_env.setdefault("ONNX_CACHE", str(ONNX_CACHE_DIR))
    if log_path is None:
        log_file = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)
    else:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "app.py"],
        cwd=folder,
        env=full_env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    http = httpx.Client(base_url=url, timeout=60)
    running = RunningSpace(name, url, http, process, Path(log_file.name))
    try:
        _wait_healthy(running, timeout)
        yield running
    finally:
        http.close()
        _stop(process)
        log_file.close()


def _wait_healthy(space: RunningSpace, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if space.process.poll() is not None:
            raise RuntimeError(
                f"{space.name} exited with {space.process.returncode}:\n{space.log()[-4000:]}"
            )
        try:
            response = space.http.get("/health", timeout=2)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:300]}"
            if response.status_code == 503 and json.loads(response.text).get("status") == "error":
                break
        except httpx.TransportError as e:
            last = type(e).__name__
        time.sleep(0.25)
    raise RuntimeError(
        f"{space.name} not healthy after {timeout}s ({last}):\n{space.log()[-4000:]}"
    )
