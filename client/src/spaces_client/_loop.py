"""One event loop on a daemon thread runs every call of a :class:`SpacesClient`.

Sync callers (threads) and async callers (tasks on any loop) hand their coroutine to it, so a
process has one HTTP connection pool, one breaker and one concurrency limit per Space, and
every deadline is enforced by ``asyncio.timeout`` however the caller waits.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class LoopRunner:
    """Starts the loop thread on first use (again after a fork) and runs coroutines on it."""

    def __init__(self, name: str = "spaces-client") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop (started now if needed)."""
        loop = self._loop
        if loop is not None and self._pid == os.getpid() and not loop.is_closed():
            return loop
        with self._lock:
            if self._loop is None or self._pid != os.getpid() or self._loop.is_closed():
                ready = threading.Event()
                new_loop = asyncio.new_event_loop()

                def run() -> None:
                    asyncio.set_event_loop(new_loop)
                    new_loop.call_soon(ready.set)
                    new_loop.run_forever()

                self._thread = threading.Thread(target=run, name=self._name, daemon=True)
                self._thread.start()
                ready.wait()
                self._loop, self._pid = new_loop, os.getpid()
            return self._loop

    @property
    def forked(self) -> bool:
        """Whether the loop was started by another process (state made for it is stale)."""
        return self._loop is not None and self._pid != os.getpid()

    def in_loop(self) -> bool:
        """Whether the caller runs on the loop's own thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Schedule ``coro`` on the loop; returns a concurrent future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for it (from any thread but the loop's own)."""
        if self.in_loop():
            coro.close()
            raise RuntimeError(
                "a sync spaces_client call inside the client's own event loop would deadlock: "
                "use the async method (a-prefixed) there"
            )
        future = self.submit(coro)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # KeyboardInterrupt in the caller: stop the call too
            raise

    async def arun(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` on the loop from any event loop (cancelling the caller cancels it)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - only called from coroutines
            running = None
        if running is self._loop and self._pid == os.getpid():
            return await coro
        return await asyncio.wrap_future(self.submit(coro))

    def close(self) -> None:
        """Stop the loop thread (calls still running are cancelled)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or self._pid != os.getpid() or loop.is_closed():
            return

        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
            if not loop.is_running():
                loop.close()
