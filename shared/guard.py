"""The request guard: limits that hold before a Space starts any work on a request.

One ASGI middleware in front of every Space (added by ``shared.serving.install_routes``):

- **Body size.** A body over ``max_body_bytes`` (2 MB by default, TGI's figure) is answered
  413 before it is read in full: at once when ``Content-Length`` says so, else as soon as the
  received bytes pass the limit. Gradio's file upload route is left to Gradio's own
  ``max_file_size``.
- **Strict JSON.** Python's ``json`` accepts ``NaN``, ``Infinity``, ``1e999`` (as infinity),
  lone surrogates (``"\\ud800"``, or encoded in UTF-8) and UTF-16 bodies, which no JSON peer
  writes and which reach a model as NaN temperatures or strings a tokenizer cannot encode;
  such bodies are answered 422 here, for every route, Gradio's included. Nesting too deep to
  parse is 422 too.
- **In-flight requests.** At most ``max_concurrent`` REST calls (TGI's
  ``max_concurrent_requests``) run at once; one more is answered 429 ``overloaded`` with
  ``Retry-After`` at once, instead of waiting unseen for a worker thread until the caller times
  out. ``GET`` routes (``/health``, ``/stats``) and Gradio's queue (which has its own
  ``max_size``) are not counted.
- **Unexpected errors keep the connection.** An exception that escapes a route is answered
  with the Space's 500 body here; raised further, the server would log it again and close the
  client's keep-alive connection, so the caller's next request failed with a reset.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Default most bytes in a request body (TGI refuses bodies over 2 MB).
MAX_BODY_BYTES = 2 * 1024 * 1024
#: Default most REST requests in flight at once (TGI's ``max_concurrent_requests``).
MAX_CONCURRENT_REQUESTS = 128
#: Gradio's upload route: capped by Gradio's ``max_file_size`` instead.
UPLOAD_PATHS = ("/gradio_api/upload",)
#: Gradio's own API: queued by Gradio (``max_size``), not counted as in-flight REST calls.
GRADIO_PREFIX = "/gradio_api/"

# A \u escape of a UTF-16 surrogate; only a body that has one is searched for a lone one.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class BodyRejected(Exception):
    """A request body the guard answers itself."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type


def _reject_constant(name: str) -> Any:
    raise BodyRejected(
        422, "validation", f"{name} is not a JSON number; send a finite number or null"
    )


def _lone_surrogate(value: Any) -> str | None:
    """The first string in ``value`` (keys too) that is not valid Unicode, or None."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return item
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
    return None


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as inf
        raise BodyRejected(
            422, "validation", f"{text[:40]} is out of range for a number; send a finite one"
        )
    return value


def check_json(body: bytes) -> None:
    """Refuse what Python's parser accepts and JSON does not.

    Raises:
        BodyRejected: 422 for a body that is not UTF-8 (Python would decode surrogates encoded
            in UTF-8, or guess UTF-16), NaN/Infinity or a number that overflows to infinity, a
            lone surrogate, or nesting too deep to parse. A body that is not JSON at all passes:
            the route's own parser answers it.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BodyRejected(
            422, "validation", f"the body is not valid UTF-8 (byte {e.start}); JSON is UTF-8"
        ) from None
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise BodyRejected(422, "validation", "the JSON body is nested too deeply") from None
    except ValueError:  # not JSON (or not UTF-8): left to the route, which answers 422
        return
    if _SURROGATE_ESCAPE.search(body) and (bad := _lone_surrogate(value)) is not None:
        raise BodyRejected(
            422,
            "validation",
            f"a string holds a lone UTF-16 surrogate, which is not Unicode: {bad[:40]!r}",
        )


def _is_json(scope: Scope) -> bool:
    """FastAPI parses a body as JSON when it says so, or says nothing."""
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            kind = value.split(b";", 1)[0].strip().lower()
            return kind == b"application/json" or kind.endswith(b"+json")
    return True


def _header(scope: Scope, wanted: bytes) -> bytes | None:
    for name, value in scope.get("headers", ()):
        if name == wanted:
            return value
    return None


class RequestGuard:
    """The ASGI middleware described in the module docstring.

    Args:
        app: The application it guards.
        error_response: Builds the response for an unexpected exception (the Space's 500 body,
            logged with its traceback): ``Service.error_response``.
        max_body_bytes: Most bytes in a request body.
        max_concurrent: Most non-GET REST requests in flight at once.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        error_response: Callable[[BaseException], Any],
        max_body_bytes: int = MAX_BODY_BYTES,
        max_concurrent: int = MAX_CONCURRENT_REQUESTS,
    ) -> None:
        if max_body_bytes < 1 or max_concurrent < 1:
            raise ValueError("max_body_bytes and max_concurrent must be at least 1")
        self.app = app
        self.error_response = error_response
        self.max_body_bytes = max_body_bytes
        self.max_concurrent = max_concurrent
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        method: str = scope["method"]
        if path.startswith(UPLOAD_PATHS) or method in ("GET", "HEAD", "OPTIONS"):
            await self._run(scope, receive, send)
            return
        try:
            body = await self._read_body(scope, receive)
            if body and _is_json(scope):
                check_json(body)
        except BodyRejected as e:
            await _answer(send, e.status, e.error_type, str(e))
            return
        replay = _replay(body, receive)
        if path.startswith(GRADIO_PREFIX):
            await self._run(scope, replay, send)
            return
        if self.in_flight >= self.max_concurrent:
            message = f"{self.in_flight} requests are in flight, the most this Space takes"
            await _answer(send, 429, "overloaded", message, {"Retry-After": "1"})
            return
        self.in_flight += 1
        try:
            await self._run(scope, replay, send)
        finally:
            self.in_flight -= 1

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.max_body_bytes
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise BodyRejected(413, "payload_too_large", _too_large(limit))
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyRejected(413, "payload_too_large", _too_large(limit))
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _run(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app; answer an escaped exception with the 500 body, or, when the response
        was already complete, only log it, so the connection stays open."""
        started = finished = False

        async def tracked(message: Message) -> None:
            nonlocal started, finished
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                finished = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if finished:
                logger.error("error after the response was sent", exc_info=exc)
                return
            if started:
                raise  # half a response: only closing the connection tells the client
            response = self.error_response(exc)
            await response(scope, receive, send)


def _too_large(limit: int) -> str:
    return f"the request body is over {limit:,} bytes, the most this Space takes"


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body already read, then the client's messages."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _answer(
    send: Send, status: int, error_type: str, message: str, headers: dict[str, str] | None = None
) -> None:
    body = json.dumps({"error": message, "error_type": error_type}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
