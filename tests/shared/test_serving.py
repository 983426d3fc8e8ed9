"""Serving helpers: background loading, /health, /stats, error boundary, dynamic batching."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import gradio as gr
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from shared.errors import InputError, ModelLoadError
from shared.errors import Overloaded as QueueFull
from shared.serving import (
    BatchedPredictor,
    DynamicBatcher,
    ErrorKind,
    ModelInfo,
    ModelNotReady,
    RequestStats,
    Service,
    configure_gradio,
    gradio_endpoint,
    install_routes,
    loading_banner,
    mount_gradio,
    plan_chunks,
    predict,
)

INFO = ModelInfo(id="owner/model", revision="abc", device="cpu", precision="fp32", demo=False)


class Model(str):
    """A stand-in predictor: a string with the ``info`` a Service reports."""

    info = INFO


class Body(BaseModel):
    text: str


def make_app(service: Service) -> TestClient:
    app = FastAPI()
    install_routes(app, service)

    @app.post("/echo")
    def echo(body: Body) -> dict:
        if not body.text:
            raise InputError("text is empty")
        return {"model": service.model, "text": body.text}

    return TestClient(app)


def test_health_is_503_while_loading_then_200():
    release = threading.Event()

    def loader():
        release.wait(5)
        return Model("the-model")

    service = Service("demo", loader)
    client = make_app(service)
    service.start_loading()
    response = client.get("/health")
    assert response.status_code == 503
    assert response.json()["status"] == "loading"
    blocked = client.post("/echo", json={"text": "hi"})
    assert blocked.status_code == 503
    assert blocked.headers["retry-after"] == "5"
    release.set()
    assert service.wait_ready(5)
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["space"] == "demo"
    entry = body["models"]["model"]
    assert (entry["id"], entry["revision"], entry["device"]) == ("owner/model", "abc", "cpu")
    assert (entry["precision"], entry["demo"]) == ("fp32", False)
    assert entry["load_s"] >= 0  # filled in by the Service, which timed the load
    assert body["uptime_s"] >= 0
    assert body["not_loaded"] == []
    assert client.post("/echo", json={"text": "hi"}).json()["model"] == "the-model"


def test_failed_load_is_reported_not_hidden():
    def loader():
        raise ModelLoadError("model.safetensors is a Git LFS pointer (134 bytes), not weights")

    service = Service("demo", loader)
    service.start_loading(background=False)
    code, body = service.health()
    assert code == 503
    assert body["status"] == "error"
    assert "Git LFS pointer" in body["error"]
    with pytest.raises(ModelNotReady, match=r"failed to load: model\.safetensors"):
        _ = service.model
    # Over HTTP: 503 naming the failure, and no Retry-After, since retrying will not help.
    response = make_app(service).post("/echo", json={"text": "hi"})
    assert response.status_code == 503
    assert "failed to load: model.safetensors is a Git LFS pointer" in response.json()["error"]
    assert "retry-after" not in response.headers


def test_input_errors_are_422_with_message():
    service = Service("demo", lambda: Model("m"))
    service.start_loading(background=False)
    client = make_app(service)
    response = client.post("/echo", json={"text": ""})
    assert response.status_code == 422
    assert response.json() == {"error": "text is empty", "error_type": "validation"}
    wrong_type = client.post("/echo", json={"text": 5})
    assert wrong_type.status_code == 422
    assert "text" in wrong_type.json()["error"]


def test_stats_percentiles():
    stats = RequestStats()
    for ms in range(1, 101):
        stats.record("predict", ms / 1000, ok=ms % 10 != 0)
    snapshot = stats.snapshot()
    predict = snapshot["endpoints"]["predict"]
    assert (predict["count"], predict["errors"]) == (100, 10)
    assert predict["latency_ms"]["p50"] == pytest.approx(50, abs=1)
    assert predict["latency_ms"]["p95"] == pytest.approx(95, abs=1)
    assert predict["latency_ms"]["max"] == 100
    assert snapshot["total"]["count"] == 100


def test_stats_count_a_request_without_latency():
    stats = RequestStats()
    stats.record("refused", None, ok=False)
    assert stats.snapshot()["endpoints"]["refused"] == {
        "count": 1,
        "errors": 1,
        "latency_ms": {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0},
    }
    stats.record("refused", 0.010, ok=True)
    assert stats.snapshot()["endpoints"]["refused"]["latency_ms"]["p50"] == 10.0


def test_stats_track_counts_exceptions():
    stats = RequestStats()
    with stats.track("a"):
        pass
    with pytest.raises(ValueError), stats.track("a"):
        raise ValueError
    assert stats.snapshot()["endpoints"]["a"] == {
        "count": 2,
        "errors": 1,
        "latency_ms": stats.snapshot()["endpoints"]["a"]["latency_ms"],
    }


def test_endpoint_decorator_turns_errors_into_gr_error():
    service = Service("demo", lambda: Model("m"))

    @service.endpoint("predict")
    def predict(text: str) -> str:
        if text == "bad":
            raise InputError("text is bad")
        if text == "boom":
            raise KeyError("secret internals")
        return service.model + text

    with pytest.raises(gr.Error, match="still loading"):
        predict("x")
    service.start_loading(background=False)
    assert predict("x") == "mx"
    with pytest.raises(gr.Error, match="text is bad"):
        predict("bad")
    with pytest.raises(gr.Error, match="internal error in predict: KeyError") as err:
        predict("boom")
    assert "secret" not in str(err.value)
    counts = service.stats.snapshot()["endpoints"]["predict"]
    assert (counts["count"], counts["errors"]) == (4, 3)


def test_batcher_groups_concurrent_requests_and_keeps_order():
    calls: list[list[int]] = []
    gate = threading.Event()

    def fn(items: list[int]) -> list[int]:
        gate.wait(5)
        calls.append(items)
        return [i * 10 for i in items]

    batcher = DynamicBatcher(fn, max_batch_size=8)
    results: dict[int, int] = {}

    def call(i: int) -> None:
        results[i] = batcher.submit(i)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    time.sleep(0.2)  # let every request queue up behind the first batch
    gate.set()
    for t in threads:
        t.join(5)
    assert results == {i: i * 10 for i in range(12)}
    assert max(len(c) for c in calls) <= 8
    assert len(calls) < 12  # requests were grouped
    assert batcher.submit_many([1, 2, 3]) == [10, 20, 30]


def test_batcher_workers_run_batches_at_once():
    """Two workers: the first batch blocks until a second one runs beside it."""
    both = threading.Barrier(2, timeout=5)
    running: list[str] = []

    def fn(items: list[int]) -> list[int]:
        running.append(threading.current_thread().name)
        both.wait()  # raises BrokenBarrierError with a single worker
        return [i + 1 for i in items]

    batcher = DynamicBatcher(fn, max_batch_size=1, name="pair", workers=2)
    results: dict[int, int] = {}
    threads = [
        threading.Thread(target=lambda i=i: results.update({i: batcher.submit(i, timeout=5)}))
        for i in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(6)
    assert results == {0: 1, 1: 2}
    assert sorted(running) == ["pair-0", "pair-1"]
    with pytest.raises(ValueError, match="workers must be at least 1, got 0"):
        DynamicBatcher(fn, workers=0)


def _wait_for(condition, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


class _Gated:
    """A batch function that records its batches and holds each until ``gate`` is set."""

    def __init__(self) -> None:
        self.entered, self.gate = threading.Event(), threading.Event()
        self.calls: list[list] = []

    def __call__(self, items: list) -> list:
        self.entered.set()
        self.gate.wait(5)
        self.calls.append(items)
        return items

    def hold(self, batcher: DynamicBatcher, item: object) -> threading.Thread:
        """Submit ``item`` from a thread and wait until the worker is held inside it."""
        thread = threading.Thread(target=batcher.submit, args=(item,))
        thread.start()
        assert self.entered.wait(5), "the worker never took the first item"
        return thread


def test_batcher_batches_stay_within_the_cost_budget():
    """Items are taken in order while their cost fits; one over the budget runs alone."""
    fn = _Gated()
    batcher = DynamicBatcher(fn, max_batch_size=16, cost=lambda x: x, max_batch_cost=512)
    blocker = fn.hold(batcher, 1)
    results: list[int] = []
    later = threading.Thread(
        target=lambda: results.extend(batcher.submit_many([300, 200, 100, 600, 50], timeout=5))
    )
    later.start()
    _wait_for(lambda: batcher.queued == 5, "five queued items")
    fn.gate.set()
    blocker.join(5)
    later.join(5)
    assert results == [300, 200, 100, 600, 50]
    assert fn.calls == [[1], [300, 200], [100], [600], [50]]


def test_batcher_idle_workers_share_the_queue():
    """Two idle workers split 16 waiting items 8 + 8: neither takes it all."""
    sizes: list[int] = []
    both = threading.Barrier(2, timeout=5)

    def fn(items: list[int]) -> list[int]:
        sizes.append(len(items))
        both.wait()  # the two batches run at the same time
        return items

    batcher = DynamicBatcher(fn, max_batch_size=16, workers=2)
    _wait_for(lambda: batcher.idle_workers == 2, "both workers to wait for work")
    assert batcher.submit_many(list(range(16)), timeout=5) == list(range(16))
    assert sizes == [8, 8]


def test_batcher_drops_items_whose_caller_timed_out():
    fn = _Gated()
    batcher = DynamicBatcher(fn)
    first = fn.hold(batcher, "first")
    with pytest.raises(TimeoutError):
        batcher.submit("late", timeout=0.05)
    fn.gate.set()
    first.join(5)
    assert batcher.submit("next", timeout=5) == "next"
    assert fn.calls == [["first"], ["next"]]


def test_batcher_cost_errors_reach_the_caller_only():
    batcher = DynamicBatcher(lambda items: items, cost=lambda x: 10 // x, max_batch_cost=10)
    with pytest.raises(ZeroDivisionError):
        batcher.submit(0)
    assert batcher.submit_many([1, 2], timeout=5) == [1, 2]


def test_batcher_rejects_bad_sizes():
    with pytest.raises(ValueError, match="max_batch_size must be at least 1, got 0"):
        DynamicBatcher(lambda items: items, max_batch_size=0)


def test_batcher_propagates_errors_and_keeps_working():
    def fn(items: list[int]) -> list[int]:
        if 0 in items:
            raise ZeroDivisionError("zero")
        return [1 // i for i in items]

    batcher = DynamicBatcher(fn)
    with pytest.raises(ZeroDivisionError):
        batcher.submit(0)
    assert batcher.submit(1) == 1


def test_gradio_endpoint_wraps_streaming_handlers():
    stats = RequestStats()

    @gradio_endpoint(stats, "stream")
    def stream(n: int):
        yield from range(n)
        if n == 2:
            raise InputError("two is too many")

    assert list(stream(1)) == [0]
    with pytest.raises(gr.Error, match="two is too many"):
        list(stream(2))
    counts = stats.snapshot()["endpoints"]["stream"]
    assert (counts["count"], counts["errors"]) == (2, 1)


def test_configure_gradio_makes_the_queue_refresh_analytics_rarely(monkeypatch):
    monkeypatch.delenv("GRADIO_ANALYTICS_CACHE_FREQUENCY", raising=False)
    configure_gradio()
    with gr.Blocks() as demo:
        gr.Textbox()
    # The installed Gradio reads the variable when the queue is built (the attribute's spelling
    # is Gradio's); if it stops doing so, every request pays for a pandas summary again.
    assert demo.queue()._queue.ANAYLTICS_CACHE_FREQUENCY == 1000
    monkeypatch.setenv("GRADIO_ANALYTICS_CACHE_FREQUENCY", "7")
    configure_gradio()
    assert os.environ["GRADIO_ANALYTICS_CACHE_FREQUENCY"] == "7"


def test_warm_gradio_leaves_nothing_for_the_first_call_to_import():
    # Gradio enters MatplotlibBackendMananger around every call on the event loop; its first
    # entry imported matplotlib and pyplot there (1.8 s, /health waiting behind it). After the
    # Space's startup (configure_gradio, then warm_gradio in launch) it must import nothing.
    script = """
import sys
from shared.serving import configure_gradio, warm_gradio
configure_gradio()
from gradio.utils import MatplotlibBackendMananger
warm_gradio()
before = set(sys.modules)
with MatplotlibBackendMananger():
    pass
print(sorted(set(sys.modules) - before))
print("matplotlib.pyplot" in sys.modules)
"""
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env,
        cwd=Path(__file__).resolve().parents[2], check=True, timeout=120,
    ).stdout.splitlines()  # fmt: skip
    assert out == ["[]", "False"]


class Overloaded(RuntimeError):
    pass


class Unknown(LookupError):
    pass


class StrictInput(InputError):
    pass


def test_registry_health_lists_loaded_models_and_the_ones_not_loaded():
    registry = {"base": INFO, "user": None}  # "user" is configured, loads on first use

    service: Service[dict] = Service(
        "tiers",
        lambda: registry,
        models=lambda r: {name: info for name, info in r.items() if info is not None},
        not_loaded=lambda r: [name for name, info in r.items() if info is None],
    )
    code, body = service.health()
    assert (code, body["status"], body["models"], body["not_loaded"]) == (503, "loading", {}, [])
    service.start_loading(background=False)
    code, body = service.health()
    assert (code, body["status"]) == (200, "ok")
    assert list(body["models"]) == ["base"]
    assert body["not_loaded"] == ["user"]
    registry["user"] = ModelInfo("o/m", None, "cpu", "bf16", True, load_s=1.234, extra={"a": 1})
    entry = service.health()[1]["models"]["user"]
    # A registry's own load time is kept; extra keys sit beside the fixed ones.
    assert entry == {"id": "o/m", "revision": None, "device": "cpu", "precision": "bf16",
                     "demo": True, "load_s": 1.23, "a": 1}  # fmt: skip


def test_space_errors_share_one_boundary_over_http_and_gradio():
    service = Service(
        "demo",
        lambda: Model("m"),
        errors={
            Overloaded: ErrorKind(429, "overloaded", message=lambda e: "Model is overloaded"),
            Unknown: ErrorKind(404, "not_found", message=lambda e: str(e.args[0])),
            StrictInput: ErrorKind(409, "conflict", headers={"X-Why": "revision"}),
        },
    )
    service.start_loading(background=False)
    app = FastAPI()
    install_routes(app, service)
    raised = {"overloaded": Overloaded("queue"), "unknown": Unknown("tier 'x'"),
              "strict": StrictInput("revision b, not a"), "input": InputError("bad"),
              "load": ModelLoadError("weights missing"), "boom": KeyError("internals")}  # fmt: skip

    @app.get("/raise/{what}")
    def fail(what: str) -> None:
        raise raised[what]

    client = TestClient(app, raise_server_exceptions=False)
    answers = {what: client.get(f"/raise/{what}") for what in raised}
    assert {w: (r.status_code, r.json()["error_type"]) for w, r in answers.items()} == {
        "overloaded": (429, "overloaded"),
        "unknown": (404, "not_found"),
        "strict": (409, "conflict"),  # the subclass's kind wins over InputError's
        "input": (422, "validation"),
        "load": (503, "unavailable"),
        "boom": (500, "internal"),
    }
    assert answers["overloaded"].json()["error"] == "Model is overloaded"
    assert answers["unknown"].json()["error"] == "tier 'x'"
    assert answers["strict"].headers["x-why"] == "revision"
    assert "retry-after" not in answers["load"].headers  # a failed load: no point retrying
    assert "internals" not in answers["boom"].text

    @service.endpoint("gen")
    def gen(what: str):
        yield 1
        raise raised[what]

    for what, text in [("overloaded", "Model is overloaded"), ("unknown", "tier 'x'"),
                       ("boom", "internal error in gen: KeyError")]:  # fmt: skip
        with pytest.raises(gr.Error, match=text):
            list(gen(what))


def test_unknown_routes_and_wrong_methods_answer_the_error_body():
    service = Service("demo", lambda: Model("m"))
    client = make_app(service)
    missing = client.get("/nowhere")
    assert missing.status_code == 404
    assert missing.json() == {"error": "Not Found", "error_type": "not_found"}
    wrong = client.get("/echo")
    assert wrong.status_code == 405
    assert wrong.json()["error_type"] == "method_not_allowed"
    assert wrong.headers["allow"] == "POST"


class Doubler:
    """A predictor: preprocess checks and parses, forward doubles a batch, postprocess labels."""

    info = INFO

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def preprocess(self, item: object) -> int:
        if not isinstance(item, int):
            raise InputError(f"must be an int, got {type(item).__name__}")
        return item

    def forward(self, batch):
        self.batches.append(list(batch))
        return [2 * x for x in batch]

    def postprocess(self, outputs, batch):
        return [f"{x}->{y}" for x, y in zip(batch, outputs, strict=True)]


def test_predict_runs_the_pipeline_and_names_the_bad_input():
    model = Doubler()
    assert predict(model, [1, 2]) == ["1->2", "2->4"]
    assert model.batches == [[1, 2]]
    assert predict(model, []) == []
    with pytest.raises(InputError, match=r"^must be an int, got str$"):
        predict(model, ["x"])
    with pytest.raises(InputError, match=r"^text 2 of 3: must be an int, got str$"):
        predict(model, [1, "x", 3], what="text")


def test_batched_predictor_serves_the_same_pipeline_batched():
    model = Doubler()
    entered, gate = threading.Event(), threading.Event()
    forward = model.forward

    def slow_forward(batch):
        entered.set()
        gate.wait(5)
        return forward(batch)

    model.forward = slow_forward  # type: ignore[method-assign]
    served = BatchedPredictor(model, what="text", max_batch_size=8)
    assert served.info is INFO
    results: dict[int, list[str]] = {}

    def call(i: int) -> threading.Thread:
        thread = threading.Thread(target=lambda: results.update({i: served.predict([i], 5)}))
        thread.start()
        return thread

    threads = [call(0)]
    assert entered.wait(5), "the first request never reached forward"
    threads += [call(i) for i in range(1, 6)]
    _wait_for(lambda: served.batcher.queued == 5, "five requests behind the first")
    gate.set()
    for t in threads:
        t.join(5)
    assert results == {i: [f"{i}->{2 * i}"] for i in range(6)}
    assert len(model.batches) == 2  # the first alone, then the five waiting ones together
    with pytest.raises(InputError, match="text 2 of 2: must be an int"):
        served.predict([1, "x"])  # refused on the caller's thread, before any batch
    assert len(model.batches) == 2


def test_gradio_at_the_root_keeps_the_error_contract():
    """Unknown paths and wrong methods reach the mounted Gradio app: same bodies, 404 and 405."""
    service = Service("demo", lambda: Model("m"))
    app = FastAPI()
    install_routes(app, service)

    @app.post("/api/predict")
    def api_predict() -> int:
        return 1

    @app.post("/")
    def root() -> int:  # beside Gradio's GET /, as llm-tiers' TGI route is
        return 1

    router = APIRouter()

    @router.post("/tiers/{tier}/generate")
    def generate(tier: str) -> str:
        return tier

    app.include_router(router)
    with gr.Blocks() as demo:
        gr.Textbox()
    client = TestClient(mount_gradio(app, demo))
    missing = client.get("/no/such/route")
    assert (missing.status_code, missing.json()["error_type"]) == (404, "not_found")
    for method, path, allow in [
        ("post", "/health", "GET"),
        ("get", "/api/predict", "POST"),
        ("get", "/tiers/base/generate", "POST"),  # a route of an included router
        ("delete", "/", "GET, POST"),  # Gradio's GET and the Space's POST
    ]:
        wrong = getattr(client, method)(path)
        assert (wrong.status_code, wrong.headers["allow"]) == (405, allow)
        assert wrong.json()["error_type"] == "method_not_allowed"
    assert client.get("/gradio_api/info").status_code == 200  # Gradio itself is untouched
    assert "detail" in client.get("/gradio_api/file=/etc/passwd").json()


def test_loading_banner_refreshes_until_the_load_is_over():
    state = {"loading": True}
    with gr.Blocks() as demo:
        markdown = loading_banner(demo, lambda: (f"loading={state['loading']}", state["loading"]))
    refresh = next(f for f in demo.fns.values() if markdown in f.outputs)
    assert refresh.api_visibility == "private"
    assert len(refresh.targets) == 2  # the page load and the timer's tick
    text, timer = refresh.fn()
    assert (text, timer.active) == ("loading=True", True)
    state["loading"] = False
    text, timer = refresh.fn()
    assert (text, timer.active) == ("loading=False", False)  # the timer stops


@given(
    lengths=st.lists(st.integers(min_value=1, max_value=600), max_size=80).map(sorted),
    budget=st.integers(min_value=1, max_value=4096),
)
def test_plan_chunks_covers_in_order_within_budget(lengths, budget):
    chunks = plan_chunks(lengths, budget)
    assert [i for s, e in chunks for i in range(s, e)] == list(range(len(lengths)))
    for s, e in chunks:
        assert e > s
        assert (e - s) * lengths[e - 1] <= budget or e - s == 1


def test_plan_chunks_splits_evenly():
    assert plan_chunks([40] * 16, 400) == [(0, 8), (8, 16)]
    assert plan_chunks([30, 30, 300, 300], 512) == [(0, 2), (2, 3), (3, 4)]


def test_the_openapi_document_is_served():
    """``/health``'s return annotation once broke ``/openapi.json`` for every Space (500)."""
    service = Service("demo", lambda: Model("m"))
    response = make_app(service).get("/openapi.json")
    assert response.status_code == 200
    assert {"/health", "/stats", "/echo"} <= set(response.json()["paths"])


def test_a_full_batcher_queue_answers_overloaded_at_once():
    fn = _Gated()
    batcher = DynamicBatcher(fn, max_queued=2)
    first = fn.hold(batcher, "running")  # taken by the worker: not queued
    waiting = [threading.Thread(target=batcher.submit, args=(i,)) for i in range(2)]
    for thread in waiting:
        thread.start()
    deadline = time.monotonic() + 5
    while batcher.queued < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(QueueFull, match="2 inputs are queued"):
        batcher.submit("one too many", timeout=5)
    fn.gate.set()
    for thread in [first, *waiting]:
        thread.join(5)
    assert batcher.submit("later", timeout=5) == "later"  # the queue drained: accepted again
