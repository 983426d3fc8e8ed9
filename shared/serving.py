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
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Generic, ParamSpec, TypeVar

from shared.errors import InputError, ModelLoadError

logger = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")


# Gradio rebuilds its analytics summary (a pandas DataFrame over the last 10,000 queue events)
# after every request unless told otherwise: 5.6 ms of CPU per request once 500 events are
# recorded, 25 ms once 10,000 are (measured on the 2-core CPU these Spaces run on), taken from
# the cores the model needs. /stats covers the same ground; refresh the summary every 1,000.
GRADIO_ENV_DEFAULTS = {"GRADIO_ANALYTICS_CACHE_FREQUENCY": "1000"}


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
    """What ``/health`` reports about the loaded model."""

    # Hub repo id or local path the model came from.
    model_id: str
    # Hub revision, or None for a local directory.
    revision: str | None
    # torch device the model runs on.
    device: str
    # Precision the model runs in.
    dtype: str
    # True when the weights are the offline demo weights, not a trained model.
    demo: bool = False
    # Anything else worth showing (max length, labels, threshold, ...).
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        """``id@revision`` as clients see it in responses."""
        return f"{self.model_id}@{self.revision}" if self.revision else self.model_id


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
    """A model that loads in the background, with its health and request statistics.

    Args:
        name: The Space's name, shown in ``/health``.
        loader: Loads the model and describes it; runs once, in a background thread.
    """

    def __init__(self, name: str, loader: Callable[[], tuple[T, ModelInfo]]) -> None:
        self.name = name
        self.stats = RequestStats()
        self._loader = loader
        self._model: T | None = None
        self._info: ModelInfo | None = None
        self._error: str | None = None
        self._started = time.monotonic()
        self._load_seconds: float | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

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
            model, info = self._loader()
        except Exception as e:
            # A model that cannot load is reported on /health, not hidden in a dead thread.
            self._error = str(e) if isinstance(e, ModelLoadError) else f"{type(e).__name__}: {e}"
            logger.exception("loading the model for %s failed", self.name)
        else:
            self._model, self._info = model, info
            self._load_seconds = time.monotonic() - start
            logger.info("%s ready: %s on %s in %.1fs", self.name, info.ref, info.device,
                        self._load_seconds)  # fmt: skip
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
        """The loaded model; raises :class:`ModelNotReady` while loading or after a failure."""
        if self._model is None:
            if self._error:
                raise ModelNotReady(f"the model failed to load: {self._error}", failed=True)
            raise ModelNotReady("the model is still loading; retry in a few seconds")
        return self._model

    @property
    def info(self) -> ModelInfo | None:
        """The model's description once loaded."""
        return self._info

    def health(self) -> tuple[int, dict[str, Any]]:
        """The ``/health`` status code and body."""
        body: dict[str, Any] = {
            "space": self.name,
            "uptime_s": round(time.monotonic() - self._started, 1),
        }
        if self._info is not None:
            body |= {"status": "ok", "load_s": round(self._load_seconds or 0.0, 2)}
            body |= asdict(self._info)
            return 200, body
        if self._error is not None:
            return 503, body | {"status": "error", "error": self._error}
        return 503, body | {"status": "loading"}

    def endpoint(self, name: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorate a Gradio handler: see :func:`gradio_endpoint` (with this service's stats)."""
        return gradio_endpoint(self.stats, name)


def gradio_endpoint(
    stats: RequestStats,
    name: str,
    *,
    user_errors: tuple[type[Exception], ...] = (InputError, ModelNotReady),
    message: Callable[[Exception], str] = str,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a Gradio handler: count it in ``/stats`` and turn errors into ``gr.Error``.

    ``user_errors`` keep their message (through ``message``); anything else is logged with its
    traceback and answered with a short generic message, so the server keeps serving. Generator
    handlers (streaming) are wrapped as generators.

    Args:
        stats: Where the request is counted.
        name: The endpoint's name in ``/stats`` and in error messages.
        user_errors: Exception types whose message is shown to the caller.
        message: Turns a user error into the text shown.

    Returns:
        The decorator.
    """

    def convert(e: Exception) -> Exception:
        import gradio as gr

        if isinstance(e, gr.Error):
            return e
        if isinstance(e, user_errors):
            return gr.Error(message(e))
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
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self._fn = fn
        self.max_batch_size = max_batch_size
        self.max_batch_cost = max_batch_cost
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
        """
        costs = [self._cost(item) for item in items]  # a failing cost fails this caller only
        futures: list[Future[R]] = [Future() for _ in items]
        with self._ready:
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


def install_routes(app: Any, service: Service[Any]) -> None:
    """Add ``GET /health``, ``GET /stats`` and the JSON error boundary to a FastAPI app.

    Args:
        app: The FastAPI application (routes must be added before Gradio is mounted at "/").
        service: The Space's service.
    """
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    @app.get("/health", tags=["service"])
    def health() -> JSONResponse:
        code, body = service.health()
        return JSONResponse(body, status_code=code)

    @app.get("/stats", tags=["service"])
    def stats() -> dict[str, Any]:
        return {"space": service.name, "ready": service.ready, **service.stats.snapshot()}

    @app.exception_handler(InputError)
    async def input_error(_: Request, exc: InputError) -> JSONResponse:
        return JSONResponse({"error": str(exc), "error_type": "validation"}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def body_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The handler never ran, so its stats.track did not count this request: count it as
        # an error of the route (named after its function, as the Space's track names are).
        route = request.scope.get("route")
        service.stats.record(getattr(route, "name", request.url.path), None, ok=False)
        return JSONResponse(
            {"error": _describe_validation(exc), "error_type": "validation"}, status_code=422
        )

    @app.exception_handler(ModelNotReady)
    async def not_ready(_: Request, exc: ModelNotReady) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc), "error_type": "unavailable"},
            status_code=503,
            headers={} if exc.failed else {"Retry-After": "5"},
        )


def _describe_validation(exc: Any) -> str:
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
