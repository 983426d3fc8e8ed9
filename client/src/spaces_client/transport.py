"""How each transport's answers and failures map onto the typed errors.

The serving contract of this repo's Spaces (root README): errors are ``{"error", "error_type"}``;
422 ``validation`` is bad input; 503 ``unavailable`` with ``Retry-After`` is a model still
loading and without it a failed load; 404 ``not_found`` "no route ..." and 405 are routes this
Space does not have. A bare 404/502/503 (no such body) is the Hub's proxy in front of a
sleeping, starting or broken Space: ask the Hub.
"""

from __future__ import annotations

import json
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from spaces_client.errors import (
    GenerationError,
    SpaceAuthError,
    SpaceContractError,
    SpaceInputError,
    SpaceLoadingError,
    SpaceModelError,
    SpaceOverloadedError,
    SpacesError,
    SpaceUnavailableError,
)


def retry_after(headers: httpx.Headers) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), None when absent or bad."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from datetime import UTC, datetime

        when = parsedate_to_datetime(value)
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def contract_body(response: httpx.Response) -> dict[str, Any] | None:
    """The serving contract's error body ``{"error", "error_type"}``, None for anything else
    (HTML of the Hub's proxy, an empty body)."""
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body
    return None


def rest_error(response: httpx.Response, space: str) -> SpacesError:
    """The typed error for a non-2xx answer of a REST route."""
    status = response.status_code
    body = contract_body(response)
    message = body["error"] if body else f"HTTP {status}"
    error_type = body.get("error_type") if body else None
    wait = retry_after(response.headers)
    if wait is None and body and isinstance(body.get("estimated_time"), int | float):
        wait = float(body["estimated_time"])  # the Inference API's cold-model answer
    if status in (400, 409, 413, 422) or (status == 404 and body and not _no_route(body)):
        # A 404 with the contract's body and a message other than "no route" is an input
        # error: llm-tiers answers an unknown tier so (the message lists the tiers).
        return SpaceInputError(message, space=space, status=status, error_type=error_type)
    if status in (404, 405) and body:
        return SpaceContractError(
            f"{response.request.method} {response.request.url.path}: {message} (HTTP {status})",
            space=space,
        )
    if status == 405:
        return SpaceContractError(
            f"{response.request.method} {response.request.url.path}: HTTP 405", space=space
        )
    if status in (401, 403):
        return SpaceAuthError(
            f"{message} (HTTP {status}): set the token named by `token_env`/`api_key_env`",
            space=space,
        )
    if status == 429:
        return SpaceOverloadedError(
            f"overloaded: {message} (HTTP 429)", space=space, status=429, retry_after=wait
        )
    if status == 424:
        return GenerationError(message, space=space)
    if status == 503 and body and error_type == "unavailable":
        if wait is None and "loading" not in message.split(";")[0]:
            return SpaceModelError(f"{message} (HTTP 503)", space=space)
        return SpaceLoadingError(message, space=space, status=503, retry_after=wait)
    if status == 503 and body and error_type == "overloaded":
        return SpaceOverloadedError(message, space=space, status=503, retry_after=wait)
    # A bare 404, 502, 503, 504, other 5xx: the Space is not (yet) there. Ask the Hub on the
    # ones a sleeping or starting Space gives.
    return SpaceUnavailableError(
        f"{message}" if body else f"HTTP {status}",
        space=space,
        status=status,
        retry_after=wait,
        check_hub=status in (404, 502, 503) and body is None,
    )


def _no_route(body: dict[str, Any]) -> bool:
    return body.get("error_type") == "not_found" and str(body["error"]).startswith("no route")


def transport_error(exc: BaseException, space: str) -> SpaceUnavailableError:
    """A connection-level failure (refused, reset, dropped mid-body, timed out)."""
    what = type(exc).__name__
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return SpaceUnavailableError(f"no answer in time ({what})", space=space)
    return SpaceUnavailableError(f"connection failed ({what})", space=space, check_hub=True)


def gradio_error(exc: BaseException, space: str) -> SpacesError:
    """The typed error for whatever gradio_client raised."""
    from gradio_client import exceptions as gexc
    from gradio_client import utils as gutils

    text = str(exc)
    if isinstance(exc, gexc.AppError):
        lowered = text.lower()
        if "still loading" in lowered:
            return SpaceLoadingError(text, space=space, retry_after=None)
        if "failed to load" in lowered:
            return SpaceModelError(text, space=space)
        if "overloaded" in lowered or "queue is full" in lowered:
            return SpaceOverloadedError(text, space=space)
        if lowered.startswith("internal error") or "upstream gradio app has raised" in lowered:
            return SpaceUnavailableError(text, space=space)
        return SpaceInputError(text, space=space)
    if isinstance(exc, gexc.ValidationError):
        return SpaceInputError(text, space=space)
    if isinstance(exc, gexc.AuthenticationError):
        return SpaceAuthError(text, space=space)
    if isinstance(exc, gutils.TooManyRequestsError | gutils.QueueError):
        return SpaceOverloadedError(f"gradio: {text}", space=space)
    if isinstance(exc, httpx.HTTPStatusError):
        return rest_error(exc.response, space)
    if isinstance(exc, httpx.TransportError | TimeoutError | ConnectionError):
        return transport_error(exc, space)
    # "Could not fetch config": no Gradio app answers at that URL. A Space that is down or
    # asleep fails the REST route too, which then decides the attempt.
    # No endpoint of that name, a changed signature, an unexpected reply: a transport fact.
    return SpaceContractError(f"gradio: {type(exc).__name__}: {text[:300]}", space=space)


def parse_json(response: httpx.Response, space: str) -> Any:
    """The JSON body of a 2xx answer."""
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError) as e:
        raise SpaceContractError(
            f"{response.request.url.path} answered {response.status_code} with a body that is "
            f"not JSON ({response.headers.get('content-type', 'no content-type')})",
            space=space,
        ) from e


def sse_data(line: str) -> Any | None:
    """The JSON payload of one server-sent-events ``data:`` line, None for other lines."""
    if not line.startswith("data:"):
        return None
    payload = line[5:].strip()
    if not payload or payload == "[DONE]":
        return None
    return json.loads(payload)
