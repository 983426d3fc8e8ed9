"""The call engine: one :class:`SpacesClient` per process, shared by threads and tasks.

A call goes: circuit breaker -> attempts with backoff (tenacity) until the call's deadline ->
each attempt tries the Space's transports in turn (gradio_client ``predict`` first, the REST
route next; the one that last answered goes first) -> a failure that a sleeping, starting or
broken Space gives makes it ask the Hub for the stage and act on it -> when the Space fails,
the configured fallbacks in order (another Space, the Inference API, a local function). Every
answer is parsed into the same typed model whichever path gave it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import httpx
from pydantic import SecretStr, ValidationError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

from spaces_client import hub as stages
from spaces_client._loop import LoopRunner
from spaces_client.breaker import CircuitBreaker
from spaces_client.config import ClientSettings, FallbackSettings, SpaceSettings
from spaces_client.errors import (
    CircuitOpenError,
    DeadlineExceeded,
    GenerationError,
    SpaceContractError,
    SpaceInputError,
    SpacesError,
    SpaceStageError,
    SpaceUnavailableError,
    SpaceWakingError,
    StreamInterrupted,
    most_telling,
)
from spaces_client.hub import HubRuntime
from spaces_client.refs import SpaceRef, resolve_space
from spaces_client.transport import (
    gradio_error,
    parse_json,
    rest_error,
    sse_data,
    transport_error,
)

if TYPE_CHECKING:
    from spaces_client.answer_sheet import AnswerSheetClient
    from spaces_client.spam import SpamClient
    from spaces_client.tiers import TiersClient
    from spaces_client.toxicity import ToxicityClient
    from spaces_client.twi_speech import TwiSpeechClient

logger = logging.getLogger(__name__)
T = TypeVar("T")

INFERENCE_API = "https://router.huggingface.co/hf-inference/models/{model}"
#: Seconds a Hub stage answer is reused (many calls failing at once ask once).
STAGE_TTL_S = 1.0
#: Seconds the REST route goes alone after no Gradio app answered at a Space's URL.
GRADIO_RETRY_S = 10.0
#: Seconds between two wake requests to the same Space.
WAKE_INTERVAL_S = 10.0


# ---- what to ask ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GradioCall:
    """A gradio_client ``predict`` call."""

    # Endpoint name with its leading slash ("/predict").
    api_name: str
    # Positional inputs.
    args: tuple[Any, ...] = ()
    # Named inputs.
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RestCall:
    """A REST request to the Space."""

    # HTTP method.
    method: str
    # Path below the Space URL ("/api/predict").
    path: str
    # JSON body.
    json: Any = None
    # Query parameters.
    params: Mapping[str, Any] | None = None
    # Multipart files: [(field, (filename, bytes, content type)), ...].
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    # Multipart form fields.
    data: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class InferenceCall(Generic[T]):
    """A call to the Inference API for a model id (a fallback)."""

    # JSON body.
    payload: Mapping[str, Any]
    # Answer -> typed result.
    parse: Callable[[Any], T]


@dataclass(frozen=True)
class Request(Generic[T]):
    """One typed operation and how each path performs it."""

    # Operation name for logs and errors ("classify").
    name: str
    # Gradio path and its parser (None: the Space has no Gradio endpoint for it).
    gradio: GradioCall | None
    parse_gradio: Callable[[Any], T] | None
    # REST path and its parser; several requests (sent at once) give the parser a list.
    rest: RestCall | tuple[RestCall, ...] | None
    parse_rest: Callable[[Any], T] | None
    # Arguments a local-function fallback gets, and how its return value becomes T.
    local_args: tuple[Any, ...] = ()
    local_kwargs: Mapping[str, Any] = field(default_factory=dict)
    parse_local: Callable[[Any], T] | None = None
    # The Inference API form, given the Space's options and the fallback's model id.
    inference: Callable[[Mapping[str, Any], str], InferenceCall[T]] | None = None


@dataclass(frozen=True)
class StreamRequest:
    """A streamed text generation: TGI server-sent events from a REST route."""

    # Operation name.
    name: str
    # The streaming REST request (body with "stream": true).
    rest: RestCall
    # Arguments a local-function fallback gets (it returns text or an iterable of chunks).
    local_args: tuple[Any, ...] = ()
    local_kwargs: Mapping[str, Any] = field(default_factory=dict)
    # The Inference API form (whole text, as one chunk).
    inference: Callable[[Mapping[str, Any], str], InferenceCall[str]] | None = None


# ---- per-Space state --------------------------------------------------------------------------


class SpaceState:
    """What the process knows about one Space: breaker, gradio Client, preferred transport,
    Hub stage, tokens. Made once per Space by :meth:`SpacesClient.space`."""

    def __init__(
        self,
        key: str,
        settings: SpaceSettings,
        ref: SpaceRef,
        *,
        token: SecretStr | None,
        write_token: SecretStr | None,
        api_key: SecretStr | None,
    ) -> None:
        self.key = key
        self.settings = settings
        self.ref = ref
        self.repo_id = ref.repo_id
        self.token = token
        self.write_token = write_token
        self.api_key = api_key
        self.breaker = CircuitBreaker(
            ref.label,
            failure_threshold=settings.breaker.failure_threshold,
            reset_timeout_s=settings.breaker.reset_timeout_s,
        )
        self.semaphore = asyncio.Semaphore(settings.max_concurrency)
        self.gradio: Any = None
        self.gradio_future: asyncio.Future[Any] | None = None
        self.gradio_skip_until = 0.0
        self.gradio_answered_at = 0.0
        # The transport tried first: the last one that answered. llm-tiers is a Docker Space
        # whose TGI routes are its main API (with details); the Gradio Spaces start on Gradio.
        self.preferred = "rest" if settings.kind == "tiers" else "gradio"
        self.stage: tuple[float, str | None] | None = None
        self.stage_lock = asyncio.Lock()
        self.woken_at = float("-inf")
        self.restarted = False
        self.fallbacks: dict[int, SpaceState] = {}

    @property
    def label(self) -> str:
        """The Space's name in messages."""
        return self.repo_id or self.ref.url

    def transports(self, request: Request[Any]) -> list[str]:
        """The transports to try, the one that last answered first."""
        order = [n for n in ("gradio", "rest") if getattr(request, n) is not None]
        if len(order) > 1 and time.monotonic() < self.gradio_skip_until:
            order.remove("gradio")  # no Gradio app answered there a moment ago
        if self.preferred in order:
            order.remove(self.preferred)
            order.insert(0, self.preferred)
        return order

    def rest_headers(self) -> dict[str, str]:
        """Authorization for REST routes: the Space's API key, else the Hub token."""
        secret = self.api_key or self.token
        return {"Authorization": f"Bearer {secret.get_secret_value()}"} if secret else {}

    def __repr__(self) -> str:
        return f"SpaceState({self.key!r}, {self.ref.url!r}, breaker={self.breaker.state.value})"


class _Tracker:
    """The last failure seen by a call's attempts (for DeadlineExceeded's message)."""

    def __init__(self) -> None:
        self.last: SpacesError | None = None
        self.attempts = 0
        self.last_transport = ""


class _WaitRetryAfter:
    """Exponential backoff with jitter, or the Space's ``Retry-After`` when it is longer."""

    def __init__(self, base: Callable[[RetryCallState], float]) -> None:
        self.base = base

    def __call__(self, state: RetryCallState) -> float:
        wait = self.base(state)
        error = state.outcome.exception() if state.outcome else None
        asked = getattr(error, "retry_after", None)
        return max(wait, asked) if asked is not None else wait


# ---- the client -------------------------------------------------------------------------------


class SpacesClient:
    """The one client of a process: make it once, share it with every thread and task.

    Args:
        settings: The Spaces and their settings (``ClientSettings``, or a dict of its fields);
            empty by default (typed clients can add Spaces given by URL).
        environ: Where the token env vars named in the settings are read; ``os.environ`` when
            None. Tokens are read once, here, and kept as ``SecretStr``.
        hub: The Hub API to ask about Space runtimes (tests pass a stand-in's endpoint through
            ``settings.hub_endpoint`` instead).
    """

    def __init__(
        self,
        settings: ClientSettings | Mapping[str, Any] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        hub: HubRuntime | None = None,
    ) -> None:
        if settings is None:
            settings = ClientSettings()
        elif not isinstance(settings, ClientSettings):
            settings = ClientSettings.model_validate(settings)
        self.settings = settings
        self._environ = dict(os.environ if environ is None else environ)
        self.hub = hub or HubRuntime(settings.hub_endpoint)
        self._runner = LoopRunner()
        self._lock = threading.Lock()
        self._states: dict[str, SpaceState] = {}
        self._http: httpx.AsyncClient | None = None
        self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="spaces-client-io")
        self._closed = False
        self._background: set[asyncio.Task[None]] = set()

    # -- construction helpers -------------------------------------------------------------------

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SpacesClient:
        """A client configured by environment variables (see ``ClientSettings.from_env``)."""
        env = os.environ if environ is None else environ
        return cls(ClientSettings.from_env(env), environ=env)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], **kwargs: Any) -> SpacesClient:
        """A client configured by a YAML file (see ``ClientSettings.from_yaml``)."""
        return cls(ClientSettings.from_yaml(path), **kwargs)

    def __enter__(self) -> SpacesClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> SpacesClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Close connections and stop the loop thread; the client is unusable afterwards."""
        if self._closed:
            return
        self._closed = True
        if self._http is not None and not self._runner.forked:
            with contextlib.suppress(RuntimeError, SpacesError):
                self._runner.run(self._http.aclose())
        for state in list(self._states.values()):
            self._drop_gradio(state)
        self._runner.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- typed clients --------------------------------------------------------------------------

    def toxicity(self, key: str = "toxicity") -> ToxicityClient:
        """The typed client of the configured toxic-classifier Space."""
        from spaces_client.toxicity import ToxicityClient

        return ToxicityClient(key, client=self)

    def spam(self, key: str = "spam") -> SpamClient:
        """The typed client of the configured spam-mistral Space."""
        from spaces_client.spam import SpamClient

        return SpamClient(key, client=self)

    def tiers(self, key: str = "tiers") -> TiersClient:
        """The typed client of the configured llm-tiers Space (and the Spaces per tier)."""
        from spaces_client.tiers import TiersClient

        return TiersClient(key, client=self)

    def answer_sheet(self, key: str = "answer_sheet") -> AnswerSheetClient:
        """The typed client of the configured answer-sheet-ml Space."""
        from spaces_client.answer_sheet import AnswerSheetClient

        return AnswerSheetClient(key, client=self)

    def twi_speech(self, key: str = "twi_speech") -> TwiSpeechClient:
        """The typed client of the configured twi-speech Space."""
        from spaces_client.twi_speech import TwiSpeechClient

        return TwiSpeechClient(key, client=self)

    # -- Spaces ---------------------------------------------------------------------------------

    def _secret(self, env: str | None) -> SecretStr | None:
        value = self._environ.get(env) if env else None
        return SecretStr(value) if value else None

    def space(self, key_or_settings: str | SpaceSettings) -> SpaceState:
        """The state of a configured Space (by key) or of a Space given by its settings (made
        on first use, then shared: one breaker and one gradio Client per Space).

        Raises:
            KeyError: No Space of that key in the settings.
        """
        if self._runner.forked:  # a forked worker: the parent's loop and connections are gone
            self._states.clear()
            self._http = None
        if isinstance(key_or_settings, str):
            if key_or_settings not in self.settings.spaces:
                known = ", ".join(self.settings.spaces) or "none"
                raise KeyError(
                    f"no Space {key_or_settings!r} in the settings (configured: {known}); set "
                    f"SPACES_{key_or_settings.upper()} or add it to `spaces`"
                )
            key, settings = key_or_settings, self.settings.spaces[key_or_settings]
        else:
            settings = key_or_settings
            key = settings.kind or settings.space
        ref = resolve_space(settings.space, settings.repo_id)
        with self._lock:
            state = self._states.get(ref.url)
            if state is None:
                state = SpaceState(
                    key,
                    settings,
                    ref,
                    token=self._secret(settings.token_env),
                    write_token=self._secret(settings.write_token_env),
                    api_key=self._secret(settings.api_key_env),
                )
                self._states[ref.url] = state
            return state

    def _fallback_state(self, parent: SpaceState, index: int, fb: FallbackSettings) -> SpaceState:
        state = parent.fallbacks.get(index)
        if state is None:
            assert fb.space is not None
            settings = parent.settings.model_copy(
                update={
                    "space": fb.space,
                    "repo_id": fb.repo_id,
                    "fallbacks": [],
                    "token_env": fb.token_env or parent.settings.token_env,
                },
            )
            state = parent.fallbacks[index] = self.space(settings)
        return state

    @property
    def http(self) -> httpx.AsyncClient:
        """The shared HTTP connection pool (lives on the client's loop)."""
        if self._http is None:
            self._http = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
                timeout=httpx.Timeout(30.0, connect=10.0),
                follow_redirects=True,
            )
        return self._http

    # -- running calls --------------------------------------------------------------------------

    def call(self, state: SpaceState, request: Request[T], timeout: float | None = None) -> T:
        """Run ``request`` on ``state``'s Space and wait (sync). See :meth:`acall`."""
        return self._runner.run(self._call(state, request, timeout))

    async def acall(
        self, state: SpaceState, request: Request[T], timeout: float | None = None
    ) -> T:
        """Run ``request`` on ``state``'s Space, its retries and fallbacks, within the deadline.

        Args:
            state: The Space (from :meth:`space`).
            request: The operation.
            timeout: This call's deadline in seconds; the Space's ``deadline_s`` when None.

        Returns:
            The typed result.

        Raises:
            SpacesError: One of its subclasses, saying which Space and what to do.
        """
        return await self._runner.arun(self._call(state, request, timeout))

    async def _call(self, state: SpaceState, request: Request[T], timeout: float | None) -> T:
        budget = timeout if timeout is not None else state.settings.deadline_s
        loop = asyncio.get_running_loop()
        end = loop.time() + budget
        guard = asyncio.timeout_at(end)
        tracker = _Tracker()
        try:
            async with guard:
                try:
                    return await self._primary(state, request, end, tracker=tracker)
                except SpaceInputError:
                    raise
                except SpacesError as error:
                    if not state.settings.fallbacks:
                        raise
                    return await self._fallbacks(state, request, end, error)
        except TimeoutError as e:
            if not guard.expired():
                raise
            last = tracker.last
            why = f" ({tracker.attempts} attempt(s); " + (
                f"last: {last.message})" if last else f"still in {tracker.last_transport})"
            )
            raise DeadlineExceeded(
                f"{request.name} did not finish within its deadline of {budget:g} s{why}",
                space=state.label,
                deadline_s=budget,
                last_error=last,
            ) from e
        except asyncio.CancelledError as e:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # the caller cancelled the call
            # A library cancelled one of its own futures: not the caller's doing.
            raise SpaceUnavailableError(
                f"{request.name}: cancelled by a transport", space=state.label
            ) from e

    async def _primary(
        self,
        state: SpaceState,
        request: Request[T],
        end: float,
        *,
        own: bool = True,
        tracker: _Tracker | None = None,
    ) -> T:
        """The Space itself: breaker, retries until ``end`` (or the failover point)."""
        has_fallbacks = own and bool(state.settings.fallbacks)
        if not state.breaker.allow():
            raise CircuitOpenError(
                f"circuit open after {state.breaker.failures} consecutive failures; next probe "
                f"in {state.breaker.retry_in():.1f} s",
                space=state.label,
                retry_in=state.breaker.retry_in(),
            )
        loop = asyncio.get_running_loop()
        if has_fallbacks:
            end = min(end, loop.time() + state.settings.failover_after_s)
        tracker = tracker or _Tracker()
        guard = asyncio.timeout_at(end)
        try:
            async with guard:
                result = await self._with_retries(
                    lambda: self._attempt(state, request, end, tracker),
                    state,
                    end,
                    has_fallbacks,
                )
        except SpaceInputError:
            state.breaker.record_success()
            raise
        except asyncio.CancelledError:
            _cancelled(state, end)
            raise
        except TimeoutError as e:
            state.breaker.record_failure()
            if not guard.expired():
                raise
            last = tracker.last
            why = f" (last: {last.message})" if last else ""
            raise DeadlineExceeded(
                f"{request.name}: no answer before the deadline after {tracker.attempts} "
                f"attempt(s){why}",
                space=state.label,
                deadline_s=state.settings.deadline_s,
                last_error=last,
            ) from e
        except SpacesError:
            state.breaker.record_failure()
            raise
        except Exception as e:  # never let an untyped error out
            state.breaker.record_failure()
            raise SpaceUnavailableError(
                f"{request.name}: unexpected {type(e).__name__}: {e}", space=state.label
            ) from e
        state.breaker.record_success()
        state.restarted = False
        return result

    async def _with_retries(
        self,
        attempt: Callable[[], Awaitable[T]],
        state: SpaceState,
        end: float,
        has_fallbacks: bool,
    ) -> T:
        retry = state.settings.retry
        loop = asyncio.get_running_loop()

        def worth_retrying(error: BaseException) -> bool:
            if not isinstance(error, SpaceUnavailableError):
                return False
            waking = isinstance(error, SpaceWakingError)
            return not (waking and has_fallbacks and state.settings.fallback_while_waking)

        def before_sleep(rs: RetryCallState) -> None:
            error = rs.outcome.exception() if rs.outcome else None
            logger.info(
                "%s: attempt %d failed (%s); retrying in %.2f s",
                state.label,
                rs.attempt_number,
                error,
                rs.upcoming_sleep,
            )

        retrying = AsyncRetrying(
            retry=retry_if_exception(worth_retrying),
            wait=_WaitRetryAfter(
                wait_exponential_jitter(
                    multiplier=retry.initial_s, max=retry.max_s, jitter=retry.jitter_s
                )
            ),
            # Stop before a sleep that would end past the deadline: no retry passes it.
            stop=lambda rs: loop.time() + rs.upcoming_sleep >= end,
            before_sleep=before_sleep,
            reraise=True,
        )
        async for try_ in retrying:
            with try_:
                return await attempt()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(
        self, state: SpaceState, request: Request[T], end: float, tracker: _Tracker
    ) -> T:
        tracker.attempts += 1
        errors: list[SpacesError] = []
        tracker.last_transport = "waiting for a slot"
        async with state.semaphore:
            for name in state.transports(request):
                tracker.last_transport = name
                try:
                    if name == "gradio":
                        assert request.gradio is not None and request.parse_gradio is not None
                        raw = await self._gradio_call(state, request.gradio, end)
                        result = _parse(request.parse_gradio, raw, state, f"gradio {name}")
                    else:
                        assert request.rest is not None and request.parse_rest is not None
                        raw = await self._rest_calls(state, request.rest, end)
                        result = _parse(request.parse_rest, raw, state, f"{request.name} (REST)")
                except SpaceInputError:
                    raise
                except SpacesError as e:
                    logger.debug("%s: %s via %s failed: %s", state.label, request.name, name, e)
                    errors.append(e)
                    continue
                if state.preferred != name:
                    logger.info("%s: %s answered; it goes first now", state.label, name)
                    state.preferred = name
                return result
        error = most_telling(errors)
        tracker.last = error
        if isinstance(error, SpaceUnavailableError) and error.check_hub:
            await self._consult_hub(state, end)
        raise error

    def _remaining(self, state: SpaceState, end: float) -> float:
        left = end - asyncio.get_running_loop().time()
        per_attempt = state.settings.attempt_timeout_s
        return max(0.001, min(left, per_attempt) if per_attempt else left)

    # -- transports -----------------------------------------------------------------------------

    async def _rest_calls(
        self, state: SpaceState, calls: RestCall | tuple[RestCall, ...], end: float
    ) -> Any:
        if isinstance(calls, RestCall):
            return await self._rest_call(state, calls, end)
        answers = await asyncio.gather(
            *(self._rest_call(state, c, end) for c in calls), return_exceptions=True
        )
        failed = [a for a in answers if isinstance(a, BaseException)]
        if failed:
            typed = [a for a in failed if isinstance(a, SpacesError)]
            if len(typed) < len(failed):
                raise next(a for a in failed if not isinstance(a, SpacesError))
            raise most_telling(typed)
        return answers

    async def _rest_call(self, state: SpaceState, call: RestCall, end: float) -> Any:
        timeout = self._remaining(state, end)
        guard = asyncio.timeout(timeout)
        try:
            async with guard:
                response = await self.http.request(
                    call.method,
                    state.ref.url + call.path,
                    json=call.json,
                    params=call.params,
                    files=call.files,
                    data=call.data,
                    headers=state.rest_headers(),
                    timeout=httpx.Timeout(timeout),
                )
        except TimeoutError as e:
            if not guard.expired():
                raise
            raise transport_error(e, state.label) from e
        except httpx.TransportError as e:
            raise transport_error(e, state.label) from e
        if response.is_success:
            return parse_json(response, state.label)
        raise rest_error(response, state.label)

    async def _gradio_client(self, state: SpaceState, end: float) -> Any:
        """The Space's gradio Client, made once (concurrent callers wait for the same one, each
        within its own attempt's time)."""
        if state.gradio is not None:
            return state.gradio
        future = state.gradio_future
        if future is None:
            future = asyncio.get_running_loop().run_in_executor(
                self._pool, self._make_gradio, state
            )
            state.gradio_future = future

            def settle(done: asyncio.Future[Any]) -> None:
                if state.gradio_future is not done:  # dropped meanwhile: nobody wants it
                    if not done.cancelled() and done.exception() is None:
                        self._pool.submit(self._close_gradio, done.result())
                    return
                state.gradio_future = None
                if not done.cancelled() and done.exception() is None:
                    state.gradio = done.result()

            future.add_done_callback(settle)
        try:
            async with asyncio.timeout(self._remaining(state, end)):
                return await asyncio.shield(future)
        except TimeoutError as e:
            raise SpaceUnavailableError("gradio: no config in time", space=state.label) from e
        except asyncio.CancelledError:
            raise
        except Exception as e:
            error = gradio_error(e, state.label)
            if isinstance(error, SpaceContractError):
                state.gradio_skip_until = time.monotonic() + GRADIO_RETRY_S
            raise error from e

    def _make_gradio(self, state: SpaceState) -> Any:
        from gradio_client import Client

        token = state.token.get_secret_value() if state.token else None
        # The URL, never the repo id: gradio_client would ask the Hub for the host and stage
        # itself, and it only knows BUILDING.
        return Client(
            state.ref.url,
            token=token,
            verbose=False,
            max_workers=state.settings.max_concurrency,
            download_files=False,
            analytics_enabled=False,
        )

    @staticmethod
    def _close_gradio(client: Any) -> None:
        with contextlib.suppress(Exception):  # a broken client may fail to close: dropped anyway
            client.close()

    def _drop_gradio(self, state: SpaceState, client: Any = None) -> None:
        """Forget a gradio Client whose stream may be stuck (it is rebuilt on next use)."""
        current = state.gradio
        if current is None or (client is not None and current is not client):
            return
        state.gradio = None
        state.gradio_future = None
        self._pool.submit(self._close_gradio, current)  # close() joins a thread: not on the loop

    async def _gradio_call(self, state: SpaceState, call: GradioCall, end: float) -> Any:
        client = await self._gradio_client(state, end)
        try:
            job = client.submit(*call.args, api_name=call.api_name, **call.kwargs)
        except Exception as e:
            raise gradio_error(e, state.label) from e
        # Wait on a future of our own: cancelling one chained to the Job would run Job.cancel(),
        # a blocking HTTP request, on the event loop.
        submitted = time.monotonic()
        done: Future[Any] = Future()

        def finished(j: Any) -> None:
            if not j.cancelled() and j.exception() is None:
                state.gradio_answered_at = time.monotonic()
            _copy_outcome(j, done)

        job.add_done_callback(finished)
        guard = asyncio.timeout(self._remaining(state, end))
        try:
            async with guard:
                return await asyncio.wrap_future(done)
        except TimeoutError as e:
            if not guard.expired():
                raise
            # No answer in the attempt's time. If no other job of this Client has finished since,
            # its shared stream is stuck (not merely slow): make a new Client next time.
            stuck = state.gradio_answered_at < submitted
            self._cancel_job(state, client, job, drop=stuck)
            raise SpaceUnavailableError("gradio: no answer in time", space=state.label) from e
        except asyncio.CancelledError:
            self._cancel_job(state, client, job, drop=False)
            raise
        except Exception as e:
            raise gradio_error(e, state.label) from e

    def _cancel_job(self, state: SpaceState, client: Any, job: Any, *, drop: bool) -> None:
        """Give up a job: tell the Space (in a worker thread), and with ``drop`` forget the
        Client, whose shared stream may be stuck (the next call makes a new one)."""
        self._pool.submit(_quietly, job.cancel)
        if drop:
            self._drop_gradio(state, client)

    # -- the Hub --------------------------------------------------------------------------------

    async def _hub(self, fn: Callable[..., T], *args: Any, timeout: float = 10.0) -> T:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            return await asyncio.shield(loop.run_in_executor(self._pool, fn, *args))

    async def stage(self, state: SpaceState, *, fresh: bool = False) -> str | None:
        """The Space's runtime stage on the Hub (cached for a second), None when unknown."""
        if not state.ref.on_hub:
            return None
        loop = asyncio.get_running_loop()
        async with state.stage_lock:
            cached = state.stage
            if cached is not None and not fresh and loop.time() - cached[0] < STAGE_TTL_S:
                return cached[1]
            stage = None
            try:
                if state.repo_id is None:
                    state.repo_id = await self._find_repo(state)
                stage = await self._hub(self.hub.stage, state.repo_id, state.token, timeout=10)
            except TimeoutError:
                stage = None
            state.stage = (loop.time(), stage)
            return stage

    async def _find_repo(self, state: SpaceState) -> str:
        from spaces_client.errors import SpaceNotFoundError

        for candidate in state.ref.candidates:
            try:
                await self._hub(self.hub.stage, candidate, state.token)
            except SpaceNotFoundError:
                continue
            return candidate
        raise SpaceNotFoundError(
            f"the Hub has none of {', '.join(state.ref.candidates)}: give `repo_id`",
            space=state.ref.url,
        )

    async def _consult_hub(self, state: SpaceState, end: float) -> None:
        """Act on the Space's stage; returns when the stage gives no reason to stop or wait."""
        stage = await self.stage(state)
        if stage is None or stage in stages.RUNNING:
            return
        if stage in stages.BROKEN:
            raise SpaceStageError(
                f"the Space is {stage}: {stages.BROKEN[stage]}", space=state.label, stage=stage
            )
        if stage in stages.ASLEEP:
            self._wake(state, stage)
            raise SpaceWakingError(
                f"the Space is {stage}; woken, waiting for it to start",
                space=state.label,
                stage=stage,
            )
        if stage in stages.STARTING:
            raise SpaceWakingError(
                f"the Space is {stage}; waiting for it", space=state.label, stage=stage
            )

    def _wake(self, state: SpaceState, stage: str) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now - state.woken_at < WAKE_INTERVAL_S:
            return
        state.woken_at = now
        logger.info("%s is %s: waking it", state.label, stage)

        async def visit() -> None:
            with contextlib.suppress(httpx.HTTPError):  # a visit is what wakes a sleeping Space
                await self.http.get(state.ref.url + "/", timeout=10)

        task = loop.create_task(visit())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        if state.write_token is not None and not state.restarted and state.repo_id:
            state.restarted = True
            loop.run_in_executor(self._pool, self.hub.restart, state.repo_id, state.write_token)

    # -- fallbacks ------------------------------------------------------------------------------

    async def _fallbacks(
        self, state: SpaceState, request: Request[T], end: float, primary: SpacesError
    ) -> T:
        errors: list[SpacesError] = []
        for index, fb in enumerate(state.settings.fallbacks):
            try:
                result = await self._fallback(state, index, fb, request, end)
            except SpaceInputError:
                raise
            except SpacesError as e:
                errors.append(e)
                continue
            except Exception as e:
                errors.append(SpacesError(f"{fb.label}: {type(e).__name__}: {e}"))
                continue
            logger.info("%s failed (%s); %s answered", state.label, primary.message, fb.label)
            return result
        primary.fallback_errors = errors
        raise primary

    async def _fallback(
        self, state: SpaceState, index: int, fb: FallbackSettings, request: Request[T], end: float
    ) -> T:
        if fb.space:
            other = self._fallback_state(state, index, fb)
            return await self._primary(other, request, end, own=False)
        if fb.inference_api:
            if request.inference is None:
                raise SpaceContractError(
                    f"{request.name} has no Inference API form", space=fb.label
                )
            call = request.inference(state.settings.options, fb.inference_api)
            url = fb.inference_url or INFERENCE_API.format(model=fb.inference_api)
            return await self._inference(state, fb, call, url, end)
        assert fb.function is not None
        value = await self._local(fb.function, request.local_args, request.local_kwargs)
        if request.parse_local is None:
            return value  # type: ignore[no-any-return]
        return _parse(request.parse_local, value, state, fb.label)

    async def _local(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> Any:
        if inspect.iscoroutinefunction(fn):
            return await fn(*args, **kwargs)
        loop = asyncio.get_running_loop()
        value = await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))
        if inspect.isawaitable(value):
            value = await value
        return value

    async def _inference(
        self, state: SpaceState, fb: FallbackSettings, call: InferenceCall[T], url: str, end: float
    ) -> T:
        token = self._secret(fb.token_env)
        headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
        label = f"inference API {fb.inference_api}"

        async def attempt() -> T:
            timeout = max(0.001, end - asyncio.get_running_loop().time())
            try:
                response = await self.http.post(
                    url, json=dict(call.payload), headers=headers, timeout=httpx.Timeout(timeout)
                )
            except httpx.TransportError as e:
                raise transport_error(e, label) from e
            if not response.is_success:
                error = rest_error(response, label)
                if isinstance(error, SpaceUnavailableError):
                    error.check_hub = False
                raise error
            return _parse(call.parse, parse_json(response, label), state, label)

        return await self._with_retries(attempt, state, end, has_fallbacks=False)

    # -- streams --------------------------------------------------------------------------------

    def stream(
        self, state: SpaceState, request: StreamRequest, timeout: float | None = None
    ) -> Iterator[str]:
        """Stream text chunks (sync). See :meth:`astream`."""
        if self._runner.in_loop():
            raise RuntimeError("use astream() inside the client's event loop")
        chunks: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        future = self._runner.submit(
            self._produce(state, request, timeout, lambda kind, v: chunks.put((kind, v)))
        )
        try:
            while True:
                kind, value = chunks.get()
                if kind == "chunk":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return
        finally:
            future.cancel()

    async def astream(
        self, state: SpaceState, request: StreamRequest, timeout: float | None = None
    ) -> AsyncIterator[str]:
        """Stream text chunks as they are generated, within the call's deadline.

        Failures before the first chunk are retried (and fall back) like any call; a break
        after it raises ``StreamInterrupted`` with the text so far.
        """
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def emit(kind: str, value: Any) -> None:
            loop.call_soon_threadsafe(chunks.put_nowait, (kind, value))

        future = self._runner.submit(self._produce(state, request, timeout, emit))
        try:
            while True:
                kind, value = await chunks.get()
                if kind == "chunk":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return
        finally:
            future.cancel()

    async def _produce(
        self,
        state: SpaceState,
        request: StreamRequest,
        timeout: float | None,
        emit: Callable[[str, Any], None],
    ) -> None:
        budget = timeout if timeout is not None else state.settings.deadline_s
        end = asyncio.get_running_loop().time() + budget
        sent: list[str] = []
        guard = asyncio.timeout_at(end)
        try:
            async with guard:
                await self._stream_with_fallbacks(state, request, end, sent, emit)
        except TimeoutError:
            if guard.expired():
                message = f"{request.name} did not finish within its deadline of {budget:g} s"
                error: SpacesError = (
                    StreamInterrupted(message, space=state.label, partial="".join(sent))
                    if sent
                    else DeadlineExceeded(message, space=state.label, deadline_s=budget)
                )
                emit("error", error)
                return
            emit("error", SpaceUnavailableError("stream timed out", space=state.label))
            return
        except SpacesError as e:
            emit("error", e)
            return
        except asyncio.CancelledError:
            raise
        except Exception as e:
            emit(
                "error",
                SpaceUnavailableError(f"stream: {type(e).__name__}: {e}", space=state.label),
            )
            return
        emit("end", None)

    async def _stream_with_fallbacks(
        self,
        state: SpaceState,
        request: StreamRequest,
        end: float,
        sent: list[str],
        emit: Callable[[str, Any], None],
    ) -> None:
        def send(chunk: str) -> None:
            sent.append(chunk)
            emit("chunk", chunk)

        try:
            await self._stream_space(state, request, end, sent, send, own=True)
            return
        except (SpaceInputError, StreamInterrupted):
            raise
        except SpacesError as error:
            if not state.settings.fallbacks or sent:
                raise
            primary = error
        errors: list[SpacesError] = []
        for index, fb in enumerate(state.settings.fallbacks):
            try:
                if fb.space:
                    other = self._fallback_state(state, index, fb)
                    await self._stream_space(other, request, end, sent, send, own=False)
                elif fb.inference_api:
                    if request.inference is None:
                        raise SpaceContractError("no Inference API form", space=fb.label)
                    call = request.inference(state.settings.options, fb.inference_api)
                    url = fb.inference_url or INFERENCE_API.format(model=fb.inference_api)
                    send(await self._inference(state, fb, call, url, end))
                else:
                    assert fb.function is not None
                    value = await self._local(fb.function, request.local_args, request.local_kwargs)
                    if isinstance(value, str):
                        send(value)
                    elif hasattr(value, "__aiter__"):
                        async for chunk in value:
                            send(str(chunk))
                    else:
                        for chunk in value:
                            send(str(chunk))
                return
            except (SpaceInputError, StreamInterrupted):
                raise
            except SpacesError as e:
                if sent:
                    raise StreamInterrupted(str(e), space=fb.label, partial="".join(sent)) from e
                errors.append(e)
            except Exception as e:
                if sent:
                    raise StreamInterrupted(str(e), space=fb.label, partial="".join(sent)) from e
                errors.append(SpacesError(f"{fb.label}: {type(e).__name__}: {e}"))
        primary.fallback_errors = errors
        raise primary

    async def _stream_space(
        self,
        state: SpaceState,
        request: StreamRequest,
        end: float,
        sent: list[str],
        send: Callable[[str], None],
        *,
        own: bool,
    ) -> None:
        has_fallbacks = own and bool(state.settings.fallbacks)
        if not state.breaker.allow():
            raise CircuitOpenError(
                f"circuit open; next probe in {state.breaker.retry_in():.1f} s",
                space=state.label,
                retry_in=state.breaker.retry_in(),
            )
        tracker = _Tracker()
        opened_end = end
        if has_fallbacks:
            opened_end = min(
                end, asyncio.get_running_loop().time() + state.settings.failover_after_s
            )

        async def open_stream() -> httpx.Response:
            tracker.attempts += 1
            call = request.rest
            async with state.semaphore:
                try:
                    async with asyncio.timeout(self._remaining(state, opened_end)):
                        req = self.http.build_request(
                            call.method,
                            state.ref.url + call.path,
                            json=call.json,
                            params=call.params,
                            headers=state.rest_headers(),
                        )
                        response = await self.http.send(req, stream=True)
                except TimeoutError as e:
                    raise transport_error(e, state.label) from e
                except httpx.TransportError as e:
                    raise transport_error(e, state.label) from e
            if not response.is_success:
                await response.aread()
                await response.aclose()
                error = rest_error(response, state.label)
                tracker.last = error
                if isinstance(error, SpaceUnavailableError) and error.check_hub:
                    await self._consult_hub(state, end)
                raise error
            return response

        async def attempt() -> None:
            response = await open_stream()
            try:
                finished = await self._read_events(state, response, send)
            except httpx.HTTPError as e:
                if sent:
                    raise StreamInterrupted(
                        f"the stream broke ({type(e).__name__})",
                        space=state.label,
                        partial="".join(sent),
                    ) from e
                raise transport_error(e, state.label) from e  # nothing sent yet: retried
            except SpacesError as e:
                if sent and not isinstance(e, StreamInterrupted):
                    raise StreamInterrupted(str(e), space=state.label, partial="".join(sent)) from e
                raise
            finally:
                await response.aclose()
            if not finished:
                if sent:
                    raise StreamInterrupted(
                        "the stream ended before its last event",
                        space=state.label,
                        partial="".join(sent),
                    )
                raise SpaceUnavailableError(
                    "the stream ended before its first event", space=state.label
                )

        try:
            await self._with_retries(attempt, state, opened_end, has_fallbacks)
        except SpaceInputError:
            state.breaker.record_success()
            raise
        except asyncio.CancelledError:
            _cancelled(state, end)
            raise
        except SpacesError:
            state.breaker.record_failure()
            raise
        state.breaker.record_success()

    async def _read_events(
        self, state: SpaceState, response: httpx.Response, send: Callable[[str], None]
    ) -> bool:
        async for line in response.aiter_lines():
            try:
                event = sse_data(line)
            except ValueError as e:
                raise SpaceContractError(
                    f"bad stream event {line[:100]!r}", space=state.label
                ) from e
            if event is None:
                continue
            if not isinstance(event, dict):
                raise SpaceContractError(f"bad stream event {line[:100]!r}", space=state.label)
            if "error" in event and event.get("error"):
                raise GenerationError(str(event["error"]), space=state.label)
            token = event.get("token") or {}
            if token.get("text") and not token.get("special"):
                send(token["text"])
            if event.get("generated_text") is not None:
                return True
        return False

    # -- health ---------------------------------------------------------------------------------

    async def ahealth(self, state: SpaceState, timeout: float = 10.0) -> httpx.Response:
        """``GET /health`` of the Space, as it answers (no retries)."""
        return await self._runner.arun(self._health(state, timeout))

    async def _health(self, state: SpaceState, timeout: float) -> httpx.Response:
        return await self.http.get(
            state.ref.url + "/health", headers=state.rest_headers(), timeout=timeout
        )

    def run(self, coro: Any) -> Any:
        """Run a coroutine on the client's loop and wait (sync)."""
        return self._runner.run(coro)

    async def arun(self, coro: Any) -> Any:
        """Await a coroutine on the client's loop."""
        return await self._runner.arun(coro)


def _copy_outcome(source: Future[Any], target: Future[Any]) -> None:
    if target.done():
        return
    if source.cancelled():
        target.set_exception(ConnectionError("the gradio job was cancelled"))
    elif (error := source.exception()) is not None:
        if isinstance(error, CancelledError) or not isinstance(error, Exception):
            # gradio_client raises concurrent.futures.CancelledError in a job whose stream
            # broke (asyncio would turn it into a cancellation): a transport fault.
            error = ConnectionError("the gradio stream broke")
        target.set_exception(error)
    else:
        target.set_result(source.result())


def _quietly(fn: Callable[[], Any]) -> None:
    with contextlib.suppress(Exception):
        fn()


def _parse(parse: Callable[[Any], T], raw: Any, state: SpaceState, where: str) -> T:
    try:
        return parse(raw)
    except SpacesError:
        raise
    except (ValidationError, KeyError, TypeError, ValueError, IndexError) as e:
        raise SpaceContractError(
            f"{where}: the answer is not the documented body ({type(e).__name__}: {str(e)[:200]})",
            space=state.label,
        ) from e


def _cancelled(state: SpaceState, end: float) -> None:
    """Tell the breaker how a cancelled call ended. A call cut by its own deadline failed: when
    the caller's deadline and this call's fall on the same instant, asyncio delivers the inner
    one as a plain CancelledError, and the failure must still count. Any other cancellation
    (the caller gave up) says nothing about the Space."""
    if asyncio.get_running_loop().time() >= end:
        state.breaker.record_failure()
    else:
        state.breaker.release()
