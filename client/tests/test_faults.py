"""The client against faults: a fast stub toxic-classifier (Gradio + REST, the README's
contract) behind the fault-injecting proxy, with the Hub stand-in for runtime stages.

Each fault the issue names: 503/404 for N seconds as a sleeping Space gives, 405 on
``/api/predict``, 429 with ``Retry-After``, a stall longer than the deadline, a connection dropped
mid-stream, and the Space coming back; the Hub walking SLEEPING -> APP_STARTING -> RUNNING on
restart, or staying PAUSED / RUNTIME_ERROR; the breaker; the fallbacks; and 1,000 calls with
faults injected at random, none lost.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fakes.fault_proxy import Fault, FaultProxy, sleeping_space
from fakes.random_faults import run_random_faults
from fakes.servers import serve, spawn
from fakes.stubs import inference_app, toxic_verdict
from spaces_client import (
    BreakerState,
    CircuitOpenError,
    DeadlineExceeded,
    SpaceContractError,
    SpaceInputError,
    SpaceOverloadedError,
    SpacesClient,
    SpacesError,
    SpaceStageError,
    Toxicity,
    ToxicityClient,
)

FAST = {"initial_s": 0.05, "max_s": 0.5, "jitter_s": 0.05}


@pytest.fixture(scope="module")
def stub():
    with spawn("toxic_app") as server:
        yield server


@pytest.fixture
def proxy(stub):
    proxy = FaultProxy(stub.url)
    with serve(proxy) as server:
        proxy.url = server.url
        yield proxy


@pytest.fixture
def client(fake_hub):
    _, hub_server = fake_hub
    with SpacesClient(
        {"hub_endpoint": hub_server.url},
        environ={"HF_WRITE": "hf_write_token", "HF_TOKEN": "hf_test_token"},
    ) as client:
        yield client


def toxicity(client, proxy, **settings) -> ToxicityClient:
    settings.setdefault("retry", FAST)
    settings.setdefault("deadline_s", 5)
    return ToxicityClient(proxy.url, client=client, **settings)


def expected(text: str) -> Toxicity:
    return Toxicity.model_validate(toxic_verdict(text))


def right(verdict: Toxicity, text: str) -> bool:
    want = expected(text)
    return verdict.label == want.label and abs(verdict.score - want.score) < 1e-9


# ---- a Space that sleeps, builds, is paused or broken --------------------------------------------


def test_a_space_answering_503_for_seconds_is_waited_for(client, proxy, figure):
    proxy.add(Fault(status=503), seconds=1.5)
    tox = toxicity(client, proxy)
    start = time.monotonic()
    verdict = tox.classify("مرحبا")
    took = time.monotonic() - start
    assert right(verdict, "مرحبا")
    assert took >= 1.4
    assert proxy.injected["503"] >= 2
    figure(f"503 for 1.5 s (no Hub): the call succeeded after {took:.2f} s")


def test_a_sleeping_space_is_restarted_with_a_write_token_and_waited_for(
    client, proxy, fake_hub, figure
):
    hub, _ = fake_hub
    hub.set("org/toxic-sleepy", "SLEEPING")
    hub.restart_starting_s = 1.0
    sleeping_space(proxy, hub, "org/toxic-sleepy", starting_s=1.0, wake_on_visit=False)
    tox = toxicity(client, proxy, repo_id="org/toxic-sleepy", write_token_env="HF_WRITE")
    start = time.monotonic()
    verdict = tox.classify("نص")
    took = time.monotonic() - start
    assert right(verdict, "نص")
    assert hub.restarts["org/toxic-sleepy"] == 1
    assert hub.stage("org/toxic-sleepy") == "RUNNING"
    assert took >= 0.9
    figure(f"sleeping Space (restart_space, 1 s APP_STARTING): answered after {took:.2f} s")


def test_a_sleeping_space_is_woken_by_a_visit_without_a_token(client, proxy, fake_hub, figure):
    hub, _ = fake_hub
    hub.set("org/toxic-nap", "SLEEPING")
    sleeping_space(proxy, hub, "org/toxic-nap", starting_s=0.8, wake_on_visit=True)
    tox = toxicity(client, proxy, repo_id="org/toxic-nap")
    start = time.monotonic()
    verdict = tox.classify("hello")
    took = time.monotonic() - start
    assert right(verdict, "hello")
    assert hub.restarts.get("org/toxic-nap", 0) == 0
    figure(f"sleeping Space (woken by a visit, 0.8 s APP_STARTING): answered after {took:.2f} s")


def test_a_building_space_is_waited_for(client, proxy, fake_hub):
    hub, _ = fake_hub
    hub.set("org/toxic-build", "BUILDING")
    hub.walk("org/toxic-build", [(0.6, "APP_STARTING"), (0.5, "RUNNING")])
    sleeping_space(proxy, hub, "org/toxic-build", starting_s=0)
    tox = toxicity(client, proxy, repo_id="org/toxic-build")
    assert right(tox.classify("build"), "build")


@pytest.mark.parametrize(
    "stage", ["PAUSED", "RUNTIME_ERROR", "BUILD_ERROR", "CONFIG_ERROR", "NO_APP_FILE"]
)
def test_a_paused_or_broken_space_fails_at_once_with_what_to_do(client, proxy, fake_hub, stage):
    hub, _ = fake_hub
    repo = f"org/toxic-{stage.lower().replace('_', '-')}"
    hub.set(repo, stage)
    sleeping_space(proxy, hub, repo, starting_s=0)
    tox = toxicity(client, proxy, repo_id=repo, deadline_s=30)
    start = time.monotonic()
    with pytest.raises(SpaceStageError) as caught:
        tox.classify("x")
    assert time.monotonic() - start < 5  # not the 30 s deadline
    assert caught.value.stage == stage
    assert stage in str(caught.value)
    advice = {
        "PAUSED": "restart",
        "RUNTIME_ERROR": "logs",
        "BUILD_ERROR": "build logs",
        "CONFIG_ERROR": "front matter",
        "NO_APP_FILE": "app.py",
    }[stage]
    assert advice in str(caught.value)


def test_an_unknown_space_on_the_hub_is_a_typed_error(client, proxy):
    proxy.add(Fault(status=404))
    tox = toxicity(client, proxy, repo_id="org/never-existed")
    from spaces_client import SpaceNotFoundError

    with pytest.raises(SpaceNotFoundError, match="no such Space"):
        tox.classify("x")


# ---- transports ---------------------------------------------------------------------------------

NO_ROUTE = {"error": "no route", "error_type": "not_found"}


def test_a_405_on_api_predict_is_a_transport_fact(client, proxy):
    proxy.add(
        # An old Gradio's /api/predict (the REST route only).
        Fault(
            status=405,
            json={"error": "Method Not Allowed", "error_type": "method_not_allowed"},
            only_path="/api/predict",
        ),
        path="/api/predict",
    )
    tox = toxicity(client, proxy)
    tox.state.preferred = "rest"  # as after REST answered before
    assert right(tox.classify("old"), "old")
    assert tox.state.preferred == "gradio"
    assert tox.state.breaker.failures == 0


def test_rest_answers_when_gradio_is_broken(client, proxy):
    proxy.add(
        Fault(status=404, json={"error": "no route /gradio_api", "error_type": "not_found"}),
        path="/gradio_api",
    )
    proxy.add(
        Fault(status=404, json={"error": "no route /config", "error_type": "not_found"}),
        path="/config",
    )
    tox = toxicity(client, proxy)
    assert right(tox.classify("rest"), "rest")
    assert tox.state.preferred == "rest"


def test_every_transport_broken_is_a_contract_error_and_the_fallback_answers(client, proxy):
    proxy.add(Fault(status=405, json={"error": "no", "error_type": "method_not_allowed"}))
    tox = toxicity(client, proxy)
    with pytest.raises(SpaceContractError):
        tox.classify("x")

    def local(text: str) -> dict:
        return toxic_verdict(text)

    tox = ToxicityClient(
        proxy.url + "/",
        client=SpacesClient(),
        retry=FAST,
        deadline_s=5,
        fallbacks=[{"function": local}],
    )
    try:
        assert right(tox.classify("local"), "local")
    finally:
        tox.client.close()


def test_input_errors_are_raised_as_they_are(client, proxy):
    tox = toxicity(client, proxy)
    with pytest.raises(SpaceInputError, match="text is empty"):
        tox.classify("   ")
    tox.state.preferred = "rest"
    with pytest.raises(SpaceInputError, match="text is empty") as caught:
        tox.classify("")
    assert caught.value.status == 422
    assert tox.state.breaker.failures == 0


def test_429_retry_after_is_honoured(client, proxy):
    tox = toxicity(client, proxy)
    tox.classify("warm")  # gradio Client made
    proxy.add(
        Fault(
            status=429,
            retry_after=1,
            json={"error": "Model is overloaded", "error_type": "overloaded"},
        ),
        times=2,
    )
    start = time.monotonic()
    assert right(tox.classify("busy"), "busy")
    assert time.monotonic() - start >= 0.95


def test_a_retry_after_beyond_the_deadline_ends_the_call_at_once(client, proxy):
    proxy.add(
        Fault(
            status=429,
            retry_after=60,
            json={"error": "Model is overloaded", "error_type": "overloaded"},
        )
    )
    tox = toxicity(client, proxy, deadline_s=5)
    start = time.monotonic()
    with pytest.raises(SpaceOverloadedError) as caught:
        tox.classify("busy")
    assert time.monotonic() - start < 2
    assert caught.value.retry_after == 60


def test_a_stall_longer_than_the_deadline_ends_within_it_and_the_space_comes_back(client, proxy):
    tox = toxicity(client, proxy, deadline_s=1.0)
    tox.classify("warm")
    proxy.add(Fault(kind="stall", seconds=5))
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded) as caught:
        tox.classify("stuck")
    took = time.monotonic() - start
    assert 0.9 <= took < 1.5
    assert caught.value.deadline_s == 1.0
    proxy.clear()
    assert right(tox.classify("back", timeout=5), "back")


def test_a_connection_dropped_mid_response_is_retried(client, proxy):
    tox = toxicity(client, proxy)
    tox.state.preferred = "rest"
    proxy.add(Fault(kind="drop"), path="/api/predict", times=2)
    proxy.add(Fault(status=503), path="/gradio_api", times=1)
    assert right(tox.classify("dropped"), "dropped")
    assert proxy.injected["drop"] >= 1


def test_sync_and_async_callers_share_one_client(client, proxy):
    tox = toxicity(client, proxy)
    texts = [f"نص رقم {i}" for i in range(40)]

    async def many():
        return await asyncio.gather(*(tox.aclassify(t) for t in texts[:20]))

    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(tox.classify, texts[20:]))
    done = asyncio.run(many())
    assert all(right(v, t) for v, t in zip(done + threaded, texts, strict=True))
    assert [right(v, t) for v, t in zip(tox.classify_many(texts), texts, strict=True)] == [
        True
    ] * 40


# ---- the circuit breaker ------------------------------------------------------------------------


def test_an_open_breaker_fails_fast_until_a_half_open_probe_succeeds(client, proxy, figure):
    proxy.add(Fault(status=502))
    tox = toxicity(
        client, proxy, deadline_s=0.3, breaker={"failure_threshold": 3, "reset_timeout_s": 0.5}
    )
    for _ in range(3):
        with pytest.raises(SpacesError):
            tox.classify("down")
    assert tox.state.breaker.state is BreakerState.OPEN
    seen = proxy.requests
    latencies = []
    for _ in range(200):
        start = time.perf_counter()
        with pytest.raises(CircuitOpenError):
            tox.classify("down")
        latencies.append((time.perf_counter() - start) * 1000)
    assert proxy.requests == seen  # the Space was not contacted
    p50, worst = statistics.median(latencies), max(latencies)
    # The bound is 10 ms; the fast path is a lock and a clock read.
    assert p50 < 10
    figure(
        f"open breaker: {len(latencies)} calls failed fast, p50 {p50:.3f} ms, max {worst:.2f} ms"
    )
    proxy.clear()
    time.sleep(0.55)
    assert right(tox.classify("up"), "up")  # the half-open probe
    assert tox.state.breaker.state is BreakerState.CLOSED


def test_an_open_breaker_sends_calls_to_the_fallback(proxy, figure):
    proxy.add(Fault(status=502))
    with SpacesClient() as client:
        tox = ToxicityClient(
            proxy.url,
            client=client,
            deadline_s=2,
            failover_after_s=0.2,
            retry=FAST,
            breaker={"failure_threshold": 2, "reset_timeout_s": 60},
            fallbacks=[{"function": toxic_verdict}],
        )
        for text in ("a", "b"):
            assert right(tox.classify(text), text)  # the Space failed, the fallback answered
        assert tox.state.breaker.state is BreakerState.OPEN
        start = time.perf_counter()
        for i in range(100):
            assert right(tox.classify(f"t{i}"), f"t{i}")
        per_call = (time.perf_counter() - start) * 10
    figure(f"open breaker -> local fallback: {per_call:.3f} ms per call")


# ---- fallbacks ----------------------------------------------------------------------------------


def test_another_space_and_the_inference_api_are_fallbacks_parsed_alike(stub, proxy):
    proxy.add(Fault(status=502))
    with serve(inference_app()) as api, SpacesClient(environ={"HF_TOKEN": "hf_test_token"}) as c:
        via_space = ToxicityClient(
            proxy.url,
            client=c,
            retry=FAST,
            deadline_s=3,
            failover_after_s=0.3,
            fallbacks=[{"space": stub.url}],
        )
        assert via_space.classify("كلام") == expected("كلام")
        broken = FaultProxy(stub.url)
        broken.add(Fault(status=502))
        with serve(broken) as broken_server:
            via_api = ToxicityClient(
                broken_server.url,
                client=c,
                retry=FAST,
                deadline_s=3,
                failover_after_s=0.3,
                fallbacks=[
                    {
                        "inference_api": "org/toxic-model",
                        "inference_url": f"{api.url}/models/org/toxic-model",
                    }
                ],
            )
            verdict = via_api.classify("كلام")
            want = expected("كلام")
            assert (verdict.label, verdict.score, verdict.scores) == (
                want.label,
                want.score,
                want.scores,
            )
            many = via_api.classify_many(["a", "b"])
            assert [v.label for v in many] == [expected("a").label, expected("b").label]


def test_when_every_fallback_fails_the_error_names_them(proxy):
    proxy.add(Fault(status=502))

    def failing(text: str) -> dict:
        raise RuntimeError("local model missing")

    with SpacesClient() as client:
        tox = ToxicityClient(
            proxy.url,
            client=client,
            retry=FAST,
            deadline_s=2,
            failover_after_s=0.2,
            fallbacks=[{"function": failing}],
        )
        with pytest.raises(SpacesError) as caught:
            tox.classify("x")
    assert "local model missing" in str(caught.value)
    assert len(caught.value.fallback_errors) == 1


# ---- 1,000 calls, faults at random --------------------------------------------------------------


def test_1000_calls_with_random_faults_lose_none(stub, proxy, figure):
    out = run_random_faults(
        proxy.url, expected, calls=1000, rate=0.08, deadline=6.0, proxy=proxy, seed=16
    )
    figure(
        f"1000 calls, stub Space behind the fault proxy ({out['faults']} faults injected: "
        f"{dict(proxy.injected)}): {out['right']} right, {out['typed_error']} typed errors, "
        f"{out['lost']} lost; slowest {out['slowest_s']} s (deadline 6 s); {out['seconds']} s"
    )
    assert out["lost"] == 0, out["lost_examples"]
    assert out["right"] >= 950, out["errors"]
