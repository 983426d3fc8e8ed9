"""Run an ASGI app on a free localhost port in a thread (stub Spaces, the fault proxy, the Hub
stand-in), with uvicorn as the Spaces themselves run."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """A uvicorn server for ``app`` on 127.0.0.1 in a daemon thread."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="critical",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@contextmanager
def serve(app: Any, port: int | None = None) -> Iterator[ServerThread]:
    """Serve ``app`` until the block ends."""
    server = ServerThread(app, port).start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def spawn(factory: str, port: int | None = None, **kwargs: Any) -> Iterator[ServerThread]:
    """Serve ``fakes.stubs.<factory>(**kwargs)`` in a process of its own (its own GIL, as a
    Space has), until the block ends. Yields an object with ``url`` and ``port``."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import httpx

    port = port or free_port()
    here = Path(__file__).resolve().parent.parent
    code = (
        "import json, sys, uvicorn\n"
        f"sys.path.insert(0, {str(here)!r})\n"
        "from fakes import stubs\n"
        f"app = getattr(stubs, {factory!r})(**json.loads({json.dumps(kwargs)!r}))\n"
        f"uvicorn.run(app, host='127.0.0.1', port={port}, log_level='critical')\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    server = ServerThread.__new__(ServerThread)
    server.port, server.url = port, f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"stub {factory} exited with {process.returncode}")
            try:
                if httpx.get(server.url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"stub {factory} did not start")
            time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
