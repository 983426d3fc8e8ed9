"""The typed errors of every call: each says which Space, what happened and what to do.

A call ends with its typed result or one of these. ``SpaceUnavailableError`` and its subclasses
are what the client retries (within the call's deadline); the others end the call at once (or
send it to the configured fallbacks), except ``SpaceInputError``, which means the request itself
is wrong and is raised as it is, with no fallback.
"""

from __future__ import annotations

from collections.abc import Sequence


class SpacesError(Exception):
    """Base class of every error raised by ``spaces_client``.

    Attributes:
        space: The Space (URL or ``owner/name``) the error is about, when there is one.
        fallback_errors: What each configured fallback answered, when the call fell back and
            none of them succeeded either.
    """

    def __init__(self, message: str, *, space: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.space = space
        self.fallback_errors: list[SpacesError] = []

    def __str__(self) -> str:
        text = f"{self.space}: {self.message}" if self.space else self.message
        if self.fallback_errors:
            text += "; fallbacks failed too: " + "; ".join(str(e) for e in self.fallback_errors)
        return text


class SpaceInputError(SpacesError, ValueError):
    """The Space refused the request itself (HTTP 4xx ``validation``, ``gr.Error``): fix the
    input; retrying or falling back would get the same answer.

    Attributes:
        status: The HTTP status (422, 404 for an unknown tier, 409, 413), None from Gradio.
        error_type: The Space's ``error_type`` (``validation``, ``not_found``, ...).
    """

    def __init__(
        self,
        message: str,
        *,
        space: str | None = None,
        status: int | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message, space=space)
        self.status = status
        self.error_type = error_type


class SpaceUnavailableError(SpacesError):
    """The Space did not answer, or answered that it cannot yet (connection refused or dropped,
    502/503/504, a bare 404 of a sleeping Space, no answer in time). Retried with backoff until
    the call's deadline.

    Attributes:
        status: The HTTP status, None for a connection error.
        retry_after: Seconds the Space asked to wait (``Retry-After``), when it said.
        check_hub: Whether the Hub should be asked for the Space's stage (404/502/503 without
            the serving contract's body, or a connection error).
    """

    def __init__(
        self,
        message: str,
        *,
        space: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        check_hub: bool = False,
    ) -> None:
        super().__init__(message, space=space)
        self.status = status
        self.retry_after = retry_after
        self.check_hub = check_hub


class SpaceLoadingError(SpaceUnavailableError):
    """The Space is up and its model is still loading (503 ``unavailable`` with ``Retry-After``,
    or Gradio's "the model is still loading")."""


class SpaceOverloadedError(SpaceUnavailableError):
    """The Space is busy: 429 ``overloaded`` or Gradio's "queue is full". Retried after its
    ``Retry-After``; a ``Retry-After`` beyond the call's deadline ends the call at once."""


class SpaceWakingError(SpaceUnavailableError):
    """The Hub says the Space is asleep or starting (``SLEEPING``, ``STOPPED``, ``BUILDING``,
    ``APP_STARTING``, ``RUNNING_BUILDING``); the client has woken it where needed and waits.

    Attributes:
        stage: The Space's runtime stage on the Hub.
    """

    def __init__(self, message: str, *, space: str | None = None, stage: str) -> None:
        super().__init__(message, space=space, check_hub=False)
        self.stage = stage


class SpaceStageError(SpacesError):
    """The Hub says the Space cannot serve until someone acts: ``PAUSED``, ``BUILD_ERROR``,
    ``RUNTIME_ERROR``, ``CONFIG_ERROR``, ``NO_APP_FILE`` or ``DELETING``. The message says what
    to do; waiting will not help.

    Attributes:
        stage: The Space's runtime stage on the Hub.
    """

    def __init__(self, message: str, *, space: str | None = None, stage: str) -> None:
        super().__init__(message, space=space)
        self.stage = stage


class SpaceNotFoundError(SpacesError):
    """The Hub has no such Space (or it is private and no token with access was given)."""


class SpaceModelError(SpacesError):
    """The Space runs but its model failed to load (503 without ``Retry-After``, ``status:
    error``): it will not heal by itself; restart the Space after fixing its configuration."""


class SpaceAuthError(SpacesError):
    """The Space (or the Inference API) refused the credentials: 401/403. Set the token named
    by the configuration's ``token_env`` / ``api_key_env``."""


class SpaceContractError(SpacesError):
    """The Space answered, but not as its README documents, on every transport tried (e.g.
    405 on an old ``/api/predict`` and no Gradio endpoint of that name, or a body that does not
    parse). Usually the Space and this package are of different versions."""


class GenerationError(SpacesError):
    """The Space failed to generate (TGI's 424 ``generation``, or an error event in a stream)."""


class StructureError(SpacesError, ValueError):
    """``generate_structure``'s output did not parse or validate against the schema.

    Attributes:
        text: The generated text.
    """

    def __init__(self, message: str, *, space: str | None = None, text: str = "") -> None:
        super().__init__(message, space=space)
        self.text = text


class StreamInterrupted(SpacesError):
    """A stream broke after it had delivered text, so it cannot be retried transparently.

    Attributes:
        partial: The text delivered before the break.
    """

    def __init__(self, message: str, *, space: str | None = None, partial: str = "") -> None:
        super().__init__(message, space=space)
        self.partial = partial


class CircuitOpenError(SpacesError):
    """The Space's circuit breaker is open after repeated failures: the call failed fast without
    contacting it (and no fallback answered).

    Attributes:
        retry_in: Seconds until the breaker lets a probe call through.
    """

    def __init__(self, message: str, *, space: str | None = None, retry_in: float) -> None:
        super().__init__(message, space=space)
        self.retry_in = retry_in


class DeadlineExceeded(SpacesError, TimeoutError):
    """The call did not finish within its deadline (no retry passes it).

    Attributes:
        deadline_s: The call's deadline in seconds.
        last_error: The last failure before the deadline, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        space: str | None = None,
        deadline_s: float,
        last_error: SpacesError | None = None,
    ) -> None:
        super().__init__(message, space=space)
        self.deadline_s = deadline_s
        self.last_error = last_error


def most_telling(errors: Sequence[SpacesError]) -> SpacesError:
    """The error that decides an attempt over several transports.

    An input error wins (the request is wrong everywhere); then one that is worth retrying
    (the Space is coming back), preferring one that asks the Hub or names a ``Retry-After``;
    then a lasting failure of the Space; a contract mismatch only when every transport had one.
    """
    if not errors:
        raise ValueError("no errors to choose from")
    for kind in (SpaceInputError, SpaceUnavailableError):
        found = [e for e in errors if isinstance(e, kind)]
        if found:
            if kind is SpaceUnavailableError:
                found.sort(
                    key=lambda e: (e.retry_after is not None, e.check_hub),  # type: ignore[attr-defined]
                    reverse=True,
                )
            return found[0]
    lasting = [e for e in errors if not isinstance(e, SpaceContractError)]
    return lasting[0] if lasting else errors[-1]
