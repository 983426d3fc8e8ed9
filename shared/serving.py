"""Serving helpers: background model loading, ``/health``, ``/stats`` and the error boundary.

Every Space is a FastAPI app with its Gradio UI mounted on it. The server starts at once and the
model loads in a background thread: ``/health`` answers 503 until the model is ready (so a
platform probe or a backend can wait for it) and 200 with the model id, revision, device and
uptime afterwards. Bad input anywhere becomes a 4xx or a ``gr.Error`` with a message; nothing a
client sends takes the server down.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Generic, ParamSpec, Protocol, TypeVar

from shared.errors import InputError, ModelLoadError, Overloaded
from shared.guard import MAX_BODY_BYTES, MAX_CONCURRENT_REQUESTS, RequestGuard

logger = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")
I = TypeVar("I")  # noqa: E741 - a predictor's input
Prep = TypeVar("Prep")  # a preprocessed input
O = TypeVar("O")  # noqa: E741 - a predictor's result


# Gradio rebuilds its analytics summary (a pandas DataFrame over the last 10,000 queue events)
# after every request unless told otherwise: 5.6 ms of CPU per request once 500 events are
# recorded, 25 ms once 10,000 are (measured on the 2-core CPU these Spaces run on), taken from
# the cores the model needs. /stats covers the same ground; refresh the summary every 1,000.
# Gradio also asks matplotlib for its backend around every call; with matplotlib left to pick
# one, that first question imports pyplot (1.8 s here, on the event loop: /health waited 1.6-1.9
# s behind a Space's first Gradio call). A server draws headless, so name the backend: `agg`.
GRADIO_ENV_DEFAULTS = {"GRADIO_ANALYTICS_CACHE_FREQUENCY": "1000", "MPLBACKEND": "agg"}


def configure_gradio() -> None:
    """Set :data:`GRADIO_ENV_DEFAULTS`; call before the Gradio app is built and queued.

    Values already in the environment win, so an operator can still choose.
    """
    for name, value in GRADIO_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)


class ModelNotReady(RuntimeError):
    """The model is still loading (or failed to load); served as HTTP 503.

    ``failed``: the load failed, so retrying will not help until the Space is fixed and
    restarted (no ``Retry-After`` is sent then).
    """

    def __init__(self, message: str, *, failed: bool = False) -> None:
        super().__init__(message)
        self.failed = failed


@dataclass(frozen=True)
class ModelInfo:
    """What ``/health`` reports about one loaded model."""

    # Hub repo id or local path the model came from.
    id: str
    # Hub revision, or None for a local directory.
    revision: str | None
    # Device the model runs on ("cpu", "cuda").
    device: str
    # Precision the model runs in ("fp32", "bf16", "int8", ...).
    precision: str
    # True when the weights are the offline demo weights, not a trained model.
    demo: bool
    # Seconds the load took; the Service fills it in for a model it loaded itself.
    load_s: float | None = None
    # Anything else worth showing (max length, labels, threshold, ...).
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        """``id@revision`` as clients see it in responses."""
        return f"{self.id}@{self.revision}" if self.revision else self.id

    def to_json(self) -> dict[str, Any]:
        """The ``/health`` entry: the fields, then ``extra``'s keys beside them."""
        body = asdict(self)
        extra = body.pop("extra")
        body["load_s"] = None if self.load_s is None else round(self.load_s, 2)
        return body | {k: v for k, v in extra.items() if k not in body}


@dataclass(frozen=True)
class ErrorKind:
    """How one exception type is answered, over HTTP and in Gradio."""

    # HTTP status code.
    status: int
    # ``error_type`` of the JSON body (TGI's vocabulary: validation, unavailable, ...).
    error_type: str
    # Extra response headers (``Retry-After``, ``WWW-Authenticate``).
    headers: Mapping[str, str] = field(default_factory=dict)
    # The text shown to the caller.
    message: Callable[[BaseException], str] = str


#: Errors every Space answers the same way; a Space adds its own with ``Service(errors=...)``.
DEFAULT_ERRORS: Mapping[type[BaseException], ErrorKind] = {
    InputError: ErrorKind(422, "validation"),
    # A failed load will not fix itself: 503 without Retry-After (ModelNotReady is special-cased
    # in Service.error_kind: loading gets a Retry-After, failed does not).
    ModelNotReady: ErrorKind(503, "unavailable"),
    ModelLoadError: ErrorKind(503, "unavailable"),
    # A full queue answers at once (TGI's 429 "Model is overloaded"), not after a timeout.
    Overloaded: ErrorKind(429, "overloaded", headers={"Retry-After": "1"}),
}

#: Default largest file a Space's Gradio UI accepts in an upload.
MAX_FILE_BYTES = 10 * 1024 * 1024

# Seconds a client should wait before retrying a model that is still loading.
RETRY_AFTER_LOADING = 5


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


class RequestStats:
    """Thread-safe request counters and latency percentiles per endpoint.

    Latencies are kept in a bounded window per endpoint, so percentiles describe recent traffic
    and memory stays constant under load.
    """

    def __init__(self, window: int = 4096) -> None:
        self._window = window
        self._lock = threading.Lock()
        self._count: dict[str, int] = {}
        self._errors: dict[str, int] = {}
        self._latencies: dict[str, deque[float]] = {}

    def record(self, endpoint: str, seconds: float | None, *, ok: bool) -> None:
        """Record one finished request; ``seconds=None`` counts it without a latency sample
        (a request refused before its handler ran, whose time says nothing about the model)."""
        with self._lock:
            self._count[endpoint] = self._count.get(endpoint, 0) + 1
            if not ok:
                self._errors[endpoint] = self._errors.get(endpoint, 0) + 1
            window = self._latencies.setdefault(endpoint, deque(maxlen=self._window))
            if seconds is not None:
                window.append(seconds)

    @contextmanager
    def track(self, endpoint: str) -> Iterator[None]:
        """Time the body as one request to ``endpoint``; an exception counts as an error."""
        start = time.perf_counter()
        ok = False
        try:
            yield
            ok = True
        finally:
            self.record(endpoint, time.perf_counter() - start, ok=ok)

    def snapshot(self) -> dict[str, Any]:
        """Counts, errors and latency percentiles (ms), per endpoint and in total."""
        with self._lock:
            per = {name: sorted(values) for name, values in self._latencies.items()}
            counts, errors = dict(self._count), dict(self._errors)
        everything = sorted(v for values in per.values() for v in values)

        def summary(count: int, errs: int, lat: list[float]) -> dict[str, Any]:
            return {
                "count": count,
                "errors": errs,
                "latency_ms": {
                    "p50": round(1000 * _percentile(lat, 0.50), 2),
                    "p95": round(1000 * _percentile(lat, 0.95), 2),
                    "p99": round(1000 * _percentile(lat, 0.99), 2),
                    "max": round(1000 * (lat[-1] if lat else 0.0), 2),
                },
            }

        return {
            "total": summary(sum(counts.values()), sum(errors.values()), everything),
            "endpoints": {
                name: summary(counts[name], errors.get(name, 0), per[name]) for name in counts
            },
        }


class Service(Generic[T]):
    """What a Space serves: its predictor (loaded in the background), health, stats and errors.

    A Space with one model passes a ``loader`` returning the predictor, whose ``info``
    (a :class:`ModelInfo`) ``/health`` reports. A Space with a registry of lazily loaded
    models (llm-tiers' tiers) passes ``models`` and ``not_loaded``, which ``/health`` calls on
    the loaded object every time; its ``loader`` loads what must be ready before the Space
    answers 200 (the default tier) and returns the registry's front object.

    Args:
        name: The Space's name, shown in ``/health`` and ``/stats``.
        loader: Loads the predictor; runs once, in a background thread.
        models: Name -> :class:`ModelInfo` of every loaded model; by default
            ``{"model": predictor.info}``.
        not_loaded: Names of configured models that are not loaded (registries only).
        errors: The Space's own exception types and how they are answered, on top of
            :data:`DEFAULT_ERRORS` (a subclass's entry wins over its base class's).
        stats_extra: More ``/stats`` content (an engine's counters).
    """

    def __init__(
        self,
        name: str,
        loader: Callable[[], T],
        *,
        models: Callable[[T], Mapping[str, ModelInfo]] | None = None,
        not_loaded: Callable[[T], list[str]] | None = None,
        errors: Mapping[type[BaseException], ErrorKind] | None = None,
        stats_extra: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self.name = name
        self.stats = RequestStats()
        self.errors: dict[type[BaseException], ErrorKind] = {**DEFAULT_ERRORS, **(errors or {})}
        self._loader = loader
        self._models = models or (lambda predictor: {"model": predictor.info})  # type: ignore[attr-defined]
        self._not_loaded = not_loaded
        self._stats_extra = stats_extra
        self._model: T | None = None
        self._error: str | None = None
        self._started = time.monotonic()
        self._load_seconds: float | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    # -- loading ------------------------------------------------------------------------------

    def start_loading(self, *, background: bool = True) -> None:
        """Start loading the model (once); ``background=False`` loads before returning."""
        if self._thread is not None or self._ready.is_set():
            return
        if background:
            self._thread = threading.Thread(
                target=self._load, name=f"load-{self.name}", daemon=True
            )
            self._thread.start()
        else:
            self._load()

    def _load(self) -> None:
        start = time.monotonic()
        try:
            model = self._loader()
        except Exception as e:
            # A model that cannot load is reported on /health, not hidden in a dead thread.
            self._error = str(e) if isinstance(e, ModelLoadError) else f"{type(e).__name__}: {e}"
            logger.exception("loading the model for %s failed", self.name)
        else:
            self._load_seconds = time.monotonic() - start
            self._model = model
            logger.info("%s ready in %.1fs", self.name, self._load_seconds)
        finally:
            self._ready.set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until loading finished (successfully or not); False on timeout."""
        return self._ready.wait(timeout)

    @property
    def ready(self) -> bool:
        """True once the model is loaded and serving."""
        return self._model is not None

    @property
    def model(self) -> T:
        """The loaded predictor; raises :class:`ModelNotReady` while loading or after a failure."""
        if self._model is None:
            if self._error:
                raise ModelNotReady(f"the model failed to load: {self._error}", failed=True)
            raise ModelNotReady("the model is still loading; retry in a few seconds")
        return self._model

    def models(self) -> dict[str, ModelInfo]:
        """Every loaded model by name (empty until the predictor is loaded)."""
        if self._model is None:
            return {}
        infos = dict(self._models(self._model))
        return {
            name: info if info.load_s is not None else replace(info, load_s=self._load_seconds)
            for name, info in infos.items()
        }

    # -- /health and /stats -------------------------------------------------------------------

    def health(self) -> tuple[int, dict[str, Any]]:
        """The ``/health`` status code and body (the same keys in every Space).

        ``status`` is ``ok`` (200), ``loading`` or ``error`` (503, with ``error``); ``models``
        maps each loaded model to its id, revision, device, precision, demo flag and load time;
        ``not_loaded`` lists configured models that load on first use.
        """
        body: dict[str, Any] = {
            "status": "loading",
            "space": self.name,
            "uptime_s": round(time.monotonic() - self._started, 1),
            "models": {name: info.to_json() for name, info in self.models().items()},
            "not_loaded": self._not_loaded(self._model) if self._not_loaded and self._model else [],
        }
        if self._model is not None:
            return 200, body | {"status": "ok"}
        if self._error is not None:
            return 503, body | {"status": "error", "error": self._error}
        return 503, body

    def stats_body(self) -> dict[str, Any]:
        """The ``/stats`` body: readiness, request counts and latencies, and ``stats_extra``."""
        extra = dict(self._stats_extra()) if self._stats_extra and self.ready else {}
        return {"space": self.name, "ready": self.ready, **self.stats.snapshot(), **extra}

    # -- the error boundary -------------------------------------------------------------------

    def error_kind(self, exc: BaseException) -> tuple[ErrorKind, dict[str, str]] | None:
        """How ``exc`` is answered (its kind and headers), or None for an unexpected error."""
        for cls in type(exc).__mro__:
            kind = self.errors.get(cls)
            if kind is not None:
                headers = dict(kind.headers)
                if isinstance(exc, ModelNotReady) and not exc.failed:
                    headers.setdefault("Retry-After", str(RETRY_AFTER_LOADING))
                return kind, headers
        return None

    def error_response(self, exc: BaseException) -> Any:
        """The JSON response for ``exc``: ``{"error", "error_type"}`` with its status."""
        from fastapi.responses import JSONResponse

        found = self.error_kind(exc)
        if found is None:
            logger.error("unexpected error", exc_info=exc)
            return JSONResponse(
                {"error": f"internal error: {type(exc).__name__}", "error_type": "internal"}, 500
            )
        kind, headers = found
        body = {"error": kind.message(exc), "error_type": kind.error_type}
        return JSONResponse(body, kind.status, headers=headers)

    def endpoint(self, name: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorate a Gradio handler: count it in ``/stats`` as ``name``, and answer this
        service's user errors with ``gr.Error`` carrying their message (generators too).

        Anything else is logged with its traceback and answered with a short generic message,
        so the server keeps serving.
        """
        return gradio_endpoint(self.stats, name, message=self._user_message)

    def _user_message(self, exc: Exception) -> str | None:
        found = self.error_kind(exc)
        return None if found is None else found[0].message(exc)


def gradio_endpoint(
    stats: RequestStats,
    name: str,
    *,
    message: Callable[[Exception], str | None] | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a Gradio handler: count it in ``stats`` and turn errors into ``gr.Error``.

    Args:
        stats: Where the request is counted.
        name: The endpoint's name in ``/stats`` and in error messages.
        message: The text shown for a user error, or None for an unexpected one (logged with
            its traceback and answered with a short generic message). By default the
            :data:`DEFAULT_ERRORS` types are user errors; a :class:`Service` passes its own.

    Returns:
        The decorator.
    """
    if message is None:
        message = _default_message

    def convert(e: Exception) -> Exception:
        import gradio as gr

        if isinstance(e, gr.Error):
            return e
        text = message(e)
        if text is not None:
            return gr.Error(text)
        logger.exception("%s failed", name)
        return gr.Error(f"internal error in {name}: {type(e).__name__}")

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def stream(*args: P.args, **kwargs: P.kwargs) -> Any:
                with stats.track(name):
                    try:
                        yield from fn(*args, **kwargs)  # type: ignore[misc]
                    except Exception as e:
                        converted = convert(e)
                        if converted is e:
                            raise
                        raise converted from e

            return stream  # type: ignore[return-value]

        @functools.wraps(fn)
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            with stats.track(name):
                try:
                    return fn(*args, **kwargs)
                except Exception as e:
                    converted = convert(e)
                    if converted is e:
                        raise
                    raise converted from e

        return call

    return decorate


def _default_message(exc: Exception) -> str | None:
    return str(exc) if isinstance(exc, tuple(DEFAULT_ERRORS)) else None


# -- predictors ---------------------------------------------------------------------------------


class Predictor(Protocol[I, Prep, O]):
    """A model behind a Space: preprocess -> forward -> postprocess, each testable alone.

    ``preprocess`` checks and prepares one input (raising ``InputError`` for a bad one) and runs
    on the caller's thread; ``forward`` runs the model on a batch of prepared inputs;
    ``postprocess`` turns its outputs into one result per input.
    """

    def preprocess(self, item: I) -> Prep:
        """Validate and prepare one input."""
        ...

    def forward(self, batch: Sequence[Prep]) -> Any:
        """Run the model on a batch of prepared inputs."""
        ...

    def postprocess(self, outputs: Any, batch: Sequence[Prep]) -> list[O]:
        """One result per prepared input, in order."""
        ...


def preprocess_all(predictor: Predictor[I, Prep, O], items: Sequence[I], *, what: str = "input"
                   ) -> list[Prep]:  # fmt: skip
    """Preprocess several inputs; the error names which one was bad (``input 2 of 3: ...``)."""
    prepared = []
    for i, item in enumerate(items):
        try:
            prepared.append(predictor.preprocess(item))
        except InputError as e:
            if len(items) == 1:
                raise
            raise InputError(f"{what} {i + 1} of {len(items)}: {e}") from e
    return prepared


def run_batch(predictor: Predictor[I, Prep, O], batch: Sequence[Prep]) -> list[O]:
    """``postprocess(forward(batch), batch)``: the part that runs on a batcher worker."""
    if not batch:
        return []
    return predictor.postprocess(predictor.forward(batch), batch)


def predict(predictor: Predictor[I, Prep, O], items: Sequence[I], *, what: str = "input"
            ) -> list[O]:  # fmt: skip
    """Run the whole pipeline on ``items`` in the caller's thread, in order."""
    return run_batch(predictor, preprocess_all(predictor, items, what=what))


class BatchedPredictor(Generic[I, Prep, O]):
    """A :class:`Predictor` behind a :class:`DynamicBatcher`: what a Space serves.

    Concurrent callers preprocess on their own threads; their prepared inputs are batched
    into :func:`run_batch` calls on the batcher's workers. The composition is the same as
    :func:`predict`'s, so the served path is the tested one.

    Args:
        predictor: The model.
        what: How an input is named in errors ("text").
        **batcher: :class:`DynamicBatcher` options (``max_batch_size``, ``workers``, ``cost``,
            ``max_batch_cost``, ``name``).
    """

    def __init__(self, predictor: Predictor[I, Prep, O], *, what: str = "input",
                 **batcher: Any) -> None:  # fmt: skip
        self.predictor = predictor
        self.what = what
        self.batcher: DynamicBatcher[Prep, O] = DynamicBatcher(
            lambda batch: run_batch(predictor, batch), **batcher
        )

    @property
    def info(self) -> ModelInfo:
        """The predictor's :class:`ModelInfo` (for ``/health``)."""
        return self.predictor.info  # type: ignore[attr-defined]

    def predict(self, items: Sequence[I], timeout: float | None = None) -> list[O]:
        """Validate every input (the error names the bad one), then run them batched."""
        if not items:
            return []
        return self.batcher.submit_many(preprocess_all(self.predictor, items, what=self.what),
                                        timeout)  # fmt: skip


class DynamicBatcher(Generic[T, R]):
    """Run concurrent single requests through one batched function.

    Callers block in :meth:`submit` from any thread; a worker thread takes what is queued and
    calls ``fn`` once for all of it. It never waits for a batch to fill: a lone request runs at
    once, and requests that arrive while the model is busy form the next batch, so latency at
    low load is unchanged and throughput grows with load. With several ``workers``, that many
    batches run at once (``fn`` must be thread-safe).

    A worker takes at most ``max_batch_size`` items, at most ``max_batch_cost`` in total
    ``cost`` (a first item over the budget still runs, alone), and at most its share of the
    queue: the queue's length over the workers waiting for work, rounded up. Without the share,
    the first worker to wake takes the whole queue and runs it on its own cores while the
    others idle.

    Args:
        fn: Maps a list of items to a list of results of the same length and order.
        max_batch_size: Most items per call of ``fn``.
        name: Thread name prefix, for logs.
        workers: Worker threads, each running one batch at a time.
        cost: The work of one item (e.g. its tokens); 1 per item when None.
        max_batch_cost: Most total ``cost`` per call of ``fn``; unbounded when None.
        max_queued: Most items waiting for a worker; a submit that would pass it raises
            :class:`~shared.errors.Overloaded` at once (429 to the caller). Unbounded when None.
    """

    def __init__(
        self,
        fn: Callable[[list[T]], list[R]],
        *,
        max_batch_size: int = 16,
        name: str = "batcher",
        workers: int = 1,
        cost: Callable[[T], int] | None = None,
        max_batch_cost: int | None = None,
        max_queued: int | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self._fn = fn
        self.max_batch_size = max_batch_size
        self.max_batch_cost = max_batch_cost
        self.max_queued = max_queued
        self._cost = cost or (lambda _: 1)
        # (item, its future, its cost), oldest first.
        self._pending: deque[tuple[T, Future[R], int]] = deque()
        self._ready = threading.Condition()
        self._idle = 0
        self._workers = [
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        for worker in self._workers:
            worker.start()

    @property
    def queued(self) -> int:
        """Items waiting for a worker."""
        with self._ready:
            return len(self._pending)

    @property
    def idle_workers(self) -> int:
        """Workers waiting for work."""
        with self._ready:
            return self._idle

    def submit(self, item: T, timeout: float | None = None) -> R:
        """Queue one item and wait for its result (exceptions from ``fn`` are re-raised)."""
        return self.submit_many([item], timeout)[0]

    def submit_many(self, items: list[T], timeout: float | None = None) -> list[R]:
        """Queue several items and wait for all their results, in order.

        Raises:
            TimeoutError: a result did not come within ``timeout`` seconds; the items still
                queued are dropped, not run for nobody.
            Overloaded: the queue holds ``max_queued`` items already (nothing was queued).
        """
        costs = [self._cost(item) for item in items]  # a failing cost fails this caller only
        futures: list[Future[R]] = [Future() for _ in items]
        with self._ready:
            waiting = len(self._pending)
            if self.max_queued is not None and waiting and waiting + len(items) > self.max_queued:
                raise Overloaded(
                    f"{waiting} inputs are queued, the most this Space holds is "
                    f"{self.max_queued}; retry in a moment"
                )
            self._pending.extend(zip(items, futures, costs, strict=True))
            self._ready.notify(len(items))
        try:
            return [f.result(timeout) for f in futures]
        except TimeoutError:
            for future in futures:
                future.cancel()  # only the ones no worker has taken yet
            raise

    def _take(self) -> list[tuple[T, Future[R]]]:
        """Block until something is queued, then take this worker's batch of it."""
        with self._ready:
            while True:
                self._idle += 1
                while not self._pending:
                    self._ready.wait()
                # ceil: this worker and the other idle ones split the queue
                share = -(-len(self._pending) // self._idle)
                self._idle -= 1
                limit = min(self.max_batch_size, share)
                batch: list[tuple[T, Future[R]]] = []
                spent = 0
                while self._pending and len(batch) < limit:
                    item, future, cost = self._pending[0]
                    over = self.max_batch_cost is not None and spent + cost > self.max_batch_cost
                    if batch and over:
                        break
                    self._pending.popleft()
                    if future.set_running_or_notify_cancel():  # False: its caller gave up
                        batch.append((item, future))
                        spent += cost
                if self._pending:
                    self._ready.notify()  # another idle worker may take the rest
                if batch:
                    return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            items = [item for item, _ in batch]
            try:
                results = self._fn(items)
                if len(results) != len(items):
                    raise RuntimeError(f"batch fn returned {len(results)} results for {len(items)}")
            except Exception as e:
                for _, future in batch:
                    future.set_exception(e)
            else:
                for (_, future), result in zip(batch, results, strict=True):
                    future.set_result(result)


def plan_chunks(lengths: Sequence[int], budget: int) -> list[tuple[int, int]]:
    """Cut length-sorted texts into forward passes of at most ``budget`` padded tokens.

    A chunk is padded to its longest (last) text, so ``(end - start) * lengths[end - 1]`` must
    stay within the budget; a text longer than the budget runs alone. The fewest chunks that
    fit are found greedily, then the texts are spread evenly over that many chunks when the
    even split fits too: 16 similar texts with room for 10 run as 8 + 8, not 10 + 6.

    Args:
        lengths: Token counts, ascending.
        budget: Most padded tokens per chunk.

    Returns:
        ``(start, end)`` index ranges covering ``lengths`` in order.
    """

    def fits(start: int, end: int) -> bool:
        return (end - start) * lengths[end - 1] <= max(budget, lengths[start])

    greedy: list[tuple[int, int]] = []
    start = 0
    while start < len(lengths):
        end = start + 1
        while end < len(lengths) and fits(start, end + 1):
            end += 1
        greedy.append((start, end))
        start = end
    n, k = len(lengths), len(greedy)
    even = list(itertools.pairwise(round(i * n / k) for i in range(k + 1))) if k else []
    return even if all(fits(s, e) for s, e in even) else greedy


def install_routes(
    app: Any,
    service: Service[Any],
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_concurrent: int = MAX_CONCURRENT_REQUESTS,
) -> None:
    """Add ``GET /health``, ``GET /stats``, the request guard and the one JSON error boundary
    to a FastAPI app.

    Every error is ``{"error", "error_type"}`` with the status of its :class:`ErrorKind`:
    user errors keep their message, a model still loading is 503 with ``Retry-After``, a
    failed load 503 without it, a body that fails validation 422 (counted in ``/stats`` under
    its route), unknown routes 404 and wrong methods 405, anything unexpected 500. Before any
    of that, :class:`shared.guard.RequestGuard` answers a body over ``max_body_bytes`` 413,
    NaN/Infinity or a lone surrogate 422, and a REST call beyond ``max_concurrent`` in flight
    429; an unexpected error leaves the client's connection open.

    Args:
        app: The FastAPI application (routes must be added before Gradio is mounted at "/").
        service: The Space's service.
        max_body_bytes: Most bytes in a request body (Gradio's uploads excepted: see
            :func:`mount_gradio`'s ``max_file_size``).
        max_concurrent: Most REST requests (other than ``GET``) in flight at once.
    """
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    # response_model=None: the return annotation is a string here (postponed annotations) that
    # names a local import, which FastAPI cannot resolve when it builds /openapi.json.
    # Both answer on the event loop (they only read counters): as sync routes they waited for a
    # worker thread, and a soak on a loaded machine saw /health take 5 s behind busy handlers.
    @app.get("/health", tags=["service"], response_model=None)
    async def health() -> JSONResponse:
        code, body = service.health()
        return JSONResponse(body, status_code=code)

    @app.get("/stats", tags=["service"])
    async def stats() -> dict[str, Any]:
        return service.stats_body()

    async def known_error(_: Request, exc: Exception) -> JSONResponse:
        return service.error_response(exc)  # type: ignore[no-any-return]

    for exc_type in service.errors:
        app.add_exception_handler(exc_type, known_error)
    # Anything else: logged with its traceback, answered 500 with the same body shape.
    app.add_exception_handler(Exception, known_error)

    @app.exception_handler(RequestValidationError)
    async def body_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The handler never ran, so its stats.track did not count this request: count it as
        # an error of the route (named after its function, as the Space's track names are).
        route = request.scope.get("route")
        service.stats.record(getattr(route, "name", request.url.path), None, ok=False)
        return JSONResponse(
            {"error": describe_validation(exc), "error_type": "validation"}, status_code=422
        )

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        kinds = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        return JSONResponse(
            {"error": str(exc.detail), "error_type": kinds.get(exc.status_code, "http")},
            exc.status_code,
            headers=dict(exc.headers or {}),
        )

    app.add_middleware(
        RequestGuard,
        error_response=service.error_response,
        max_body_bytes=max_body_bytes,
        max_concurrent=max_concurrent,
    )


def mount_gradio(
    app: Any, blocks: Any, *, max_file_size: int | str | None = MAX_FILE_BYTES, **kwargs: Any
) -> Any:
    """Mount a Gradio app at "/" on the Space's FastAPI app, keeping the error contract.

    Gradio at "/" receives every path no route of ``app`` took, so an unknown path would get
    Gradio's ``{"detail": "Not Found"}`` and a wrong method on an API route (``POST /health``)
    a 404. Here the first answers ``{"error", "error_type": "not_found"}`` and the second 405
    with ``Allow``; Gradio's own errors are left as they are.

    Args:
        app: The FastAPI app, its routes (and ``install_routes``) already added.
        blocks: The Gradio Blocks, queued.
        max_file_size: Largest file Gradio accepts in an upload (bytes, or "10mb"); None for
            no limit.
        **kwargs: More ``gr.mount_gradio_app`` options.

    Returns:
        The app to serve.
    """
    import gradio as gr
    from fastapi.exception_handlers import http_exception_handler
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.routing import Match, Mount

    own_routes = list(app.routes)  # before the mount: the Space's routes and routers
    app = gr.mount_gradio_app(app, blocks, path="/", max_file_size=max_file_size, **kwargs)
    gradio_app = next(r.app for r in reversed(app.routes) if isinstance(r, Mount))

    def allowed_methods(scope: dict[str, Any]) -> list[str]:
        """The methods the Space's own routes answer on this path (asking each route, so
        routes of included routers count too)."""
        allowed = set()
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
            probe = {**scope, "method": method}
            if any(route.matches(probe)[0] == Match.FULL for route in own_routes):
                allowed.add(method)
        return sorted(allowed)

    async def unmatched(request: Request, exc: HTTPException) -> Any:
        routing = (exc.status_code, exc.detail) in ((404, "Not Found"), (405, "Method Not Allowed"))
        if not routing:  # one of Gradio's own answers
            return await http_exception_handler(request, exc)
        path = request.url.path
        scope = {**request.scope, "path": path, "root_path": ""}
        allowed = allowed_methods(scope)
        if exc.status_code == 405:  # a Gradio route (GET /) that is also one of ours (POST /)
            theirs = (exc.headers or {}).get("Allow", "")
            allowed = sorted(set(allowed) | {m.strip() for m in theirs.split(",") if m.strip()})
        if allowed:
            return JSONResponse(
                {"error": f"{request.method} is not allowed on {path}; use "
                 f"{' or '.join(allowed)}", "error_type": "method_not_allowed"},
                405,
                headers={"Allow": ", ".join(allowed)},
            )  # fmt: skip
        return JSONResponse({"error": f"no route {path}", "error_type": "not_found"}, 404)

    gradio_app.add_exception_handler(HTTPException, unmatched)
    return app


def loading_banner(demo: Any, note: Callable[[], tuple[str, bool]], *, every: float = 2.0) -> Any:
    """A Markdown note that follows the model's load, for a Space's UI.

    It is filled on page load, then refreshed every ``every`` seconds until ``note`` says the
    load is over (loaded or failed), when the timer stops: a page opened during the load would
    otherwise say "loading" until reloaded. Call it inside ``demo``'s ``with`` block, where the
    note should appear.

    Args:
        demo: The Blocks being built.
        note: Returns the note's text and whether the model is still loading.
        every: Seconds between refreshes while loading.

    Returns:
        The Markdown component.
    """
    import gradio as gr

    markdown = gr.Markdown()
    timer = gr.Timer(every)

    def refresh() -> tuple[str, Any]:
        text, loading = note()
        return text, gr.Timer(active=loading)

    gr.on([demo.load, timer.tick], refresh, outputs=[markdown, timer], api_visibility="private",
          queue=False, show_progress="hidden")  # fmt: skip
    return markdown


def launch(app: Any, service: Service[Any], *, host: str, port: int) -> None:
    """What a Space's ``if __name__ == "__main__":`` does: configure logging, start loading the
    model in the background, and serve ``app`` until interrupted."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    service.start_loading()
    warm_gradio()
    serve(app, host=host, port=port)


def warm_gradio() -> None:
    """Pay, before the server listens, for what Gradio imports lazily on its first call.

    Gradio enters ``MatplotlibBackendMananger`` around every event, which imports matplotlib
    the first time (0.6 s here even with ``MPLBACKEND=agg``) on the event loop, where
    ``/health`` and every other request wait for it.
    """
    from gradio.utils import MatplotlibBackendMananger

    with MatplotlibBackendMananger():
        pass


def describe_validation(exc: Any) -> str:
    """A pydantic/FastAPI validation error as one line: ``where: message; ...``."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request body"


def serve(app: Any, *, host: str, port: int, access_log: bool = False) -> None:
    """Run the app with uvicorn until interrupted.

    Args:
        app: The ASGI app.
        host: Interface to bind.
        port: Port to listen on.
        access_log: Log a line per HTTP request. Off by default: a Gradio call is two or more
            HTTP requests, and formatting their lines took ~6% of the event loop's time under
            load; ``/stats`` counts requests instead.
    """
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="info", access_log=access_log,
                timeout_graceful_shutdown=5)  # fmt: skip
