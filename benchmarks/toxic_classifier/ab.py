"""Compare toxic-classifier Space configurations side by side, in interleaved bursts.

``bench.py`` measures each server in its own block of minutes, and this shared VM's speed drifts
by 10-40% over minutes, so a 10% difference between two configurations drowns in it. Here every
configuration is served at once (an idle server costs next to nothing), and short bursts of
requests at concurrency 16 alternate between them, round after round: each round compares the
configurations within the same minute, and the medians over the rounds are comparable.

Usage (from the monorepo root):
    python -m benchmarks.toxic_classifier.ab [--rounds 5] [--requests 96] [--length short]
        [--noop] --config NAME [VAR=VALUE ...] --config NAME [VAR=VALUE ...]

``CHECKOUT=DIR`` in a configuration is not an environment variable: that configuration serves
the Space from another checkout of this repository (its ``shared`` too), to compare code.

Examples:
    # int8 in ONNX Runtime (the default) against torch's eager int8
    python -m benchmarks.toxic_classifier.ab --config onnxruntime --config torch RUNTIME=torch
    # Gradio's analytics summary after every request (its default) against every 1,000
    python -m benchmarks.toxic_classifier.ab --noop --config every-1000 \
        --config every-1 GRADIO_ANALYTICS_CACHE_FREQUENCY=1
    # this tree against an earlier commit, on long texts
    git worktree add /tmp/base HEAD~1
    python -m benchmarks.toxic_classifier.ab --length long --requests 48 --rounds 4 \
        --config new --config base CHECKOUT=/tmp/base
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import statistics
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.toxic_classifier.bench import HIGH_CONCURRENCY, server
from benchmarks.toxic_classifier.workload import build_model, make_texts
from scripts.launcher import stop_spaces_on_sigterm

logger = logging.getLogger("ab")


def burst(clients: Sequence, text: str, requests: int) -> float:
    """Send ``requests`` predictions from all ``clients`` at once; requests/s.

    Raises:
        RuntimeError: a request failed (a rate over fewer requests would read as a faster one).
    """
    counter = itertools.count()
    failures: list[Exception] = []

    def work(client) -> None:  # noqa: ANN001
        while not failures and next(counter) < requests:
            try:
                client.predict(text, api_name="/predict")
            except Exception as e:  # reported after the burst, with the others
                failures.append(e)

    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise RuntimeError(f"{len(failures)} request(s) failed, first: {failures[0]!r}")
    return requests / (time.perf_counter() - start)


def _config(values: list[str]) -> tuple[str, dict[str, str], Path | None]:
    """``NAME [VAR=VALUE ...]`` -> the name, the environment and the ``CHECKOUT`` folder."""
    name, *pairs = values
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"{pair!r} is not VAR=VALUE")
        env[key] = value
    checkout = Path(env.pop("CHECKOUT")).resolve() if "CHECKOUT" in env else None
    if checkout is not None and not (checkout / "spaces" / "toxic-classifier").is_dir():
        raise argparse.ArgumentTypeError(f"CHECKOUT={checkout}: no spaces/toxic-classifier there")
    return name, env, checkout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config",
        nargs="+",
        action="append",
        required=True,
        metavar="NAME [VAR=VALUE]",
        help="a Space configuration: a name, then environment overrides",
    )
    parser.add_argument("--noop", action="store_true", help="also serve the no-op model")
    parser.add_argument("--rounds", type=int, default=5, help="bursts per configuration")
    parser.add_argument("--requests", type=int, default=96, help="requests per burst")
    parser.add_argument("--length", choices=["short", "long"], default="short")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.requests < 1:
        parser.error("--rounds and --requests must be at least 1")
    stop_spaces_on_sigterm()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        configs = [_config(values) for values in args.config]
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    if len({name for name, _, _ in configs}) != len(configs):
        parser.error("configuration names must differ")

    from gradio_client import Client

    model_dir = build_model()
    short, long = make_texts()
    text = (short if args.length == "short" else long).texts[0]
    servers = [(name, "space", env, checkout) for name, env, checkout in configs]
    if args.noop:
        servers.append(("no-op model", "noop", {}, None))
    rates: dict[str, list[float]] = {name: [] for name, _, _, _ in servers}
    with contextlib.ExitStack() as stack:
        clients = {}
        for name, kind, env, checkout in servers:
            logger.info("starting %s (%s%s)", name, env or "defaults",
                        f", from {checkout}" if checkout else "")  # fmt: skip
            running = stack.enter_context(
                server(kind, model_dir, env.pop("PRECISION", "int8"), env, checkout)
            )
            clients[name] = [
                Client(running.url, verbose=False, ssl_verify=False)
                for _ in range(HIGH_CONCURRENCY)
            ]
        for group in clients.values():  # warm-up: every client's session set up
            burst(group, text, 3 * HIGH_CONCURRENCY)
        for round_ in range(args.rounds):
            for name, group in clients.items():
                rates[name].append(burst(group, text, args.requests))
            logger.info("round %d: %s", round_ + 1,
                        "  ".join(f"{n} {r[-1]:.1f}" for n, r in rates.items()))  # fmt: skip
    first = statistics.median(rates[servers[0][0]])
    print(f"\n{args.length} texts, concurrency {HIGH_CONCURRENCY}, {args.rounds} interleaved "
          f"bursts of {args.requests} requests each\n")  # fmt: skip
    print(f"| configuration | median req/s | range | vs {servers[0][0]} |")
    print("|---|---:|---:|---:|")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {min(values):.1f}-{max(values):.1f} | "
              f"{median / first:.2f}x |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
