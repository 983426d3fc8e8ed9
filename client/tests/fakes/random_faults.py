"""The random-fault run: many classifications from async tasks and threads at once, through the
fault proxy, each checked to end with the right verdict or a typed error within its deadline."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from spaces_client import SpacesClient, SpacesError, Toxicity, ToxicityClient

from fakes.fault_proxy import Fault, FaultProxy

RANDOM_FAULTS = [
    Fault(status=503),
    Fault(
        status=503,
        retry_after=1,
        json={
            "error": "the model is still loading; retry in a few seconds",
            "error_type": "unavailable",
        },
    ),
    Fault(status=502),
    Fault(status=404),
    Fault(
        status=429, retry_after=1, json={"error": "Model is overloaded", "error_type": "overloaded"}
    ),
    # An old Gradio's /api/predict (the REST route only).
    Fault(
        status=405,
        json={"error": "Method Not Allowed", "error_type": "method_not_allowed"},
        only_path="/api/predict",
    ),
    Fault(kind="drop"),
    Fault(kind="stall", seconds=4),
]


def run_random_faults(
    url: str,
    verdict_of,
    *,
    calls: int,
    rate: float,
    deadline: float,
    proxy: FaultProxy,
    seed: int,
    tolerance: float = 1e-9,
) -> dict:
    """``calls`` classifications (3/4 async from 8 tasks, 1/4 from 3 threads), faults at random;
    returns the outcome counts. A call is right when its p(harmful) is within ``tolerance`` of
    the true one (and its label agrees, away from the threshold)."""
    proxy.randomly(rate, RANDOM_FAULTS, seed=seed)
    rng = random.Random(seed)
    texts = [f"رسالة {rng.randrange(10**6)}" for _ in range(calls)]
    outcomes: dict[str, int] = {"right": 0, "typed_error": 0, "lost": 0}
    slowest = [0.0]
    lost: list[str] = []
    lock = threading.Lock()
    errors: Counter[str] = Counter()
    with SpacesClient() as client:
        tox = ToxicityClient(
            url,
            client=client,
            deadline_s=deadline,
            attempt_timeout_s=2.0,
            retry={"initial_s": 0.05, "max_s": 0.4, "jitter_s": 0.1},
            breaker={"failure_threshold": 10**6},
        )

        def record(text: str, took: float, result: object) -> None:
            with lock:
                slowest[0] = max(slowest[0], took)
                if took > deadline + 0.5:
                    outcomes["lost"] += 1
                    lost.append(
                        f"{text}: {took:.2f} s > deadline ({type(result).__name__}: {result})"
                    )
                elif isinstance(result, Toxicity):
                    want = verdict_of(text).scores["harmful"]
                    got = result.scores["harmful"]
                    ok = abs(got - want) <= tolerance and (
                        result.label == verdict_of(text).label or abs(want - 0.5) <= tolerance
                    )
                    outcomes["right" if ok else "lost"] += 1
                    if not ok:
                        lost.append(f"{text}: wrong answer {result}")
                elif isinstance(result, SpacesError):
                    outcomes["typed_error"] += 1
                    errors[f"{type(result).__name__}: {result}"[:160]] += 1
                else:
                    outcomes["lost"] += 1
                    lost.append(f"{text}: {type(result).__name__}: {result}")

        def sync_call(text: str) -> None:
            start = time.monotonic()
            try:
                result: object = tox.classify(text)
            except Exception as e:  # everything is recorded: an untyped error is "lost"
                result = e
            record(text, time.monotonic() - start, result)

        async def async_calls(batch: list[str]) -> None:
            gate = asyncio.Semaphore(8)

            async def one(text: str) -> None:
                async with gate:
                    start = time.monotonic()
                    try:
                        result: object = await tox.aclassify(text)
                    except Exception as e:
                        result = e
                    record(text, time.monotonic() - start, result)

            await asyncio.gather(*(one(t) for t in batch))

        split = calls * 3 // 4
        start = time.monotonic()
        with ThreadPoolExecutor(3) as pool:
            threaded = pool.map(sync_call, texts[split:])
            asyncio.run(async_calls(texts[:split]))
            list(threaded)
        outcomes["seconds"] = round(time.monotonic() - start, 1)
    proxy.clear()
    outcomes["slowest_s"] = round(slowest[0], 2)
    outcomes["faults"] = sum(proxy.injected.values())
    outcomes["lost_examples"] = lost[:5]
    outcomes["errors"] = errors.most_common(5)
    return outcomes
