"""A fault-injecting reverse proxy (ASGI) in front of a Space.

It forwards every request (Gradio's config, queue and SSE streams included) and, when a rule or
the random schedule says so, answers instead as a sleeping, starting or overloaded Space would:
a status (503/404/502 with a bare body, 429 with ``Retry-After``, 405 on a route), a stall
longer than any deadline, or a connection dropped in the middle of the response.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

# Not forwarded (the body is forwarded as raw bytes, so its length and encoding stay).
HOP_HEADERS = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "upgrade",
    "host",
    "proxy-connection",
}
REQUEST_SKIP = HOP_HEADERS | {"content-length"}


@dataclass(frozen=True)
class Fault:
    """What the proxy does instead of (or to) forwarding."""

    # "status": answer `status`; "stall": wait `seconds`, then forward; "drop": forward the
    # response head and part of its body, then close the connection.
    kind: str = "status"
    status: int = 503
    retry_after: float | None = None
    # Body of a "status" answer; None: a bare text body, as the Hub's proxy gives.
    json: Any = None
    seconds: float = 0.0
    # "drop": bytes of the body forwarded before the connection is closed.
    after_bytes: int = 8
    # Only on requests whose path starts with this (a random fault elsewhere forwards).
    only_path: str | None = None

    @property
    def name(self) -> str:
        if self.kind != "status":
            return self.kind
        return f"{self.status}" + (" retry-after" if self.retry_after is not None else "")


Match = Callable[[str, str], bool]


def on(path: str | None = None, method: str | None = None) -> Match:
    """A rule matcher: path prefix and/or method."""
    return lambda m, p: (path is None or p.startswith(path)) and (method is None or m == method)


@dataclass
class _Rule:
    fault: Fault
    match: Match
    until: float | None
    times: int | None


class FaultProxy:
    """The proxy's state and its ASGI app.

    Args:
        upstream: The Space's URL.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.rules: list[_Rule] = []
        self.hook: Callable[[str, str], Fault | None] | None = None
        self.random_rate = 0.0
        self.random_faults: list[Fault] = []
        self.random_match: Match = on()
        self.rng = random.Random(0)
        self.injected: Counter[str] = Counter()
        self.requests = 0
        self.forwarded = 0
        self._lock = threading.Lock()
        self._clients: dict[int, httpx.AsyncClient] = {}

    # -- control --------------------------------------------------------------------------------

    def add(
        self,
        fault: Fault,
        *,
        path: str | None = None,
        method: str | None = None,
        seconds: float | None = None,
        times: int | None = None,
    ) -> None:
        """Inject ``fault`` on matching requests, for ``seconds`` or ``times`` (else until
        :meth:`clear`)."""
        until = time.monotonic() + seconds if seconds is not None else None
        with self._lock:
            self.rules.append(_Rule(fault, on(path, method), until, times))

    def randomly(
        self, rate: float, faults: list[Fault], *, seed: int = 0, match: Match | None = None
    ) -> None:
        """Inject one of ``faults`` (uniformly) into a ``rate`` share of matching requests."""
        self.random_rate, self.random_faults = rate, faults
        self.rng = random.Random(seed)
        self.random_match = match or on()

    def clear(self) -> None:
        """Forward everything again."""
        with self._lock:
            self.rules.clear()
            self.hook = None
            self.random_rate = 0.0

    def _decide(self, method: str, path: str) -> Fault | None:
        now = time.monotonic()
        with self._lock:
            self.rules = [
                r
                for r in self.rules
                if (r.until is None or r.until > now) and (r.times is None or r.times > 0)
            ]
            for rule in self.rules:
                if rule.match(method, path):
                    if rule.times is not None:
                        rule.times -= 1
                    return rule.fault
            if self.hook is not None:
                fault = self.hook(method, path)
                if fault is not None:
                    return fault
            hit = self.random_rate and self.random_match(method, path)
            if hit and self.rng.random() < self.random_rate:
                fault = self.rng.choice(self.random_faults)
                if fault.only_path is None or path.startswith(fault.only_path):
                    return fault
        return None

    # -- ASGI -----------------------------------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        loop_id = id(asyncio.get_running_loop())
        client = self._clients.get(loop_id)
        if client is None:
            client = self._clients[loop_id] = httpx.AsyncClient(
                timeout=httpx.Timeout(None), limits=httpx.Limits(max_connections=512)
            )
        return client

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        self.requests += 1
        fault = self._decide(method, path)
        if fault is not None:
            self.injected[fault.name] += 1
        if fault is not None and fault.kind == "status":
            await self._answer(send, fault)
            return
        if fault is not None and fault.kind == "stall":
            await asyncio.sleep(fault.seconds)
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [
            (k.decode(), v.decode())
            for k, v in scope["headers"]
            if k.decode().lower() not in REQUEST_SKIP
        ]
        query = scope.get("query_string", b"").decode()
        url = self.upstream + path + (f"?{query}" if query else "")
        client = self._client()
        request = client.build_request(method, url, headers=headers, content=body)
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError:
            await self._answer(send, Fault(status=502))
            return
        self.forwarded += 1
        try:
            out = [
                (k.encode(), v.encode())
                for k, v in response.headers.items()
                if k.lower() not in HOP_HEADERS
            ]
            await send(
                {"type": "http.response.start", "status": response.status_code, "headers": out}
            )
            sent = 0
            async for chunk in response.aiter_raw():
                if (
                    fault is not None
                    and fault.kind == "drop"
                    and sent + len(chunk) > fault.after_bytes
                ):
                    part = chunk[: max(1, fault.after_bytes - sent)]
                    await send({"type": "http.response.body", "body": part, "more_body": True})
                    raise ConnectionAbortedError("fault: connection dropped mid-stream")
                sent += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if fault is not None and fault.kind == "drop":
                raise ConnectionAbortedError("fault: connection dropped mid-stream")
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()

    @staticmethod
    async def _answer(send: Any, fault: Fault) -> None:
        import json

        if fault.json is not None:
            body = json.dumps(fault.json).encode()
            kind = b"application/json"
        else:
            body = f"<html><body>{fault.status}</body></html>".encode()
            kind = b"text/html"
        headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
        if fault.retry_after is not None:
            headers.append((b"retry-after", f"{fault.retry_after:g}".encode()))
        await send({"type": "http.response.start", "status": fault.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def sleeping_space(
    proxy: FaultProxy, hub: Any, repo_id: str, *, starting_s: float, wake_on_visit: bool = True
) -> None:
    """Make the proxy answer as the Hub's proxy does for a Space in ``hub``'s stage: a bare 404
    while SLEEPING/STOPPED, a bare 503 while starting or broken; forward once RUNNING. With
    ``wake_on_visit``, a visit (``GET /``) while asleep wakes it (``starting_s`` to start)."""

    def decide(method: str, path: str) -> Fault | None:
        stage = hub.stage(repo_id)
        if stage == "RUNNING":
            return None
        if stage in ("SLEEPING", "STOPPED"):
            if wake_on_visit and method == "GET" and path == "/":
                hub.wake(repo_id, starting_s)
            return Fault(status=404)
        return Fault(status=503)

    proxy.hook = decide
