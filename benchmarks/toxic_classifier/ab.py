"""Compare toxic-classifier Space configurations side by side, in interleaved bursts.

``bench.py`` measures each server in its own block of minutes, and this shared VM's speed drifts
by 10-40% over minutes, so a 10% difference between two configurations drowns in it. Here every
configuration is served at once (an idle server costs next to nothing), and short bursts of
requests at concurrency 16 alternate between them, round after round: each round compares the
configurations within the same minute, and the medians over the rounds are comparable.

Usage (from the monorepo root):
    python -m benchmarks.toxic_classifier.ab [--rounds 5] [--requests 96] [--length short]
        [--noop] --config NAME [VAR=VALUE ...] --config NAME [VAR=VALUE ...]

Two keys in a configuration are not environment variables: ``CHECKOUT=DIR`` serves that
configuration's Space from another checkout of this repository (its ``shared`` too), to compare
code; ``CLIENT=shared`` drives it with one gradio_client ``Client`` shared by the 16 threads
(a backend's one client per process) instead of one ``Client`` per thread (the default,
``CLIENT=per-thread``, what ``bench.py`` does).

Prints the table and adds it, with the machine, the date and the command, to the ``ab``
section of ``benchmarks/results/toxic-classifier.md``.

Examples:
    # two batches on one thread each (config.yaml) against one batch on every core
    python -m benchmarks.toxic_classifier.ab --config two-workers --config one BATCH_WORKERS=1
    # Gradio's analytics summary after every request (its default) against every 1,000
    python -m benchmarks.toxic_classifier.ab --noop --config every-1000 \
        --config every-1 GRADIO_ANALYTICS_CACHE_FREQUENCY=1
    # this tree against an earlier commit, on long texts
    git worktree add /tmp/base HEAD~1
    python -m benchmarks.toxic_classifier.ab --length long --requests 48 --rounds 4 \
        --config new --config base CHECKOUT=/tmp/base
    # one Client per thread against one Client shared by all threads, same server settings
    python -m benchmarks.toxic_classifier.ab --requests 160 --config per-thread \
        --config shared CLIENT=shared
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import shlex
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from benchmarks.toxic_classifier.bench import HIGH_CONCURRENCY, CpuMeter, server
from benchmarks.toxic_classifier.results import stamp, write_section
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


class Burst(NamedTuple):
    """One burst's requests/s and CPU ms per request of the server tree and of this process."""

    rps: float
    server_ms: float
    client_ms: float


def measured_burst(clients: Sequence, text: str, requests: int, pid: int) -> Burst:
    """``burst`` with the CPU time the server (process ``pid`` and its children) and this
    process (the load generator, without the servers it started) spent on it."""
    cpu = CpuMeter(pid)
    rps = burst(clients, text, requests)
    return Burst(rps, *cpu.per_request(requests))


CLIENT_MODES = ("per-thread", "shared")


@dataclass(frozen=True)
class Config:
    """One served configuration, as given by ``--config NAME [VAR=VALUE ...]``."""

    name: str
    # Environment overrides for the Space.
    env: dict[str, str]
    # Serve the Space from this checkout instead of this tree (``CHECKOUT=DIR``).
    checkout: Path | None = None
    # Drive it with one Client shared by all threads (``CLIENT=shared``).
    shared_client: bool = False


def _config(values: list[str]) -> Config:
    """``NAME [VAR=VALUE ...]`` -> the configuration, with ``CHECKOUT`` and ``CLIENT`` taken out."""
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
    client = env.pop("CLIENT", "per-thread")
    if client not in CLIENT_MODES:
        choices = ", ".join(CLIENT_MODES)
        raise argparse.ArgumentTypeError(f"CLIENT={client}: choose one of {choices}")
    return Config(name, env, checkout, shared_client=client == "shared")


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
    if len({config.name for config in configs}) != len(configs):
        parser.error("configuration names must differ")

    from gradio_client import Client

    model_dir = build_model()
    short, long = make_texts()
    text = (short if args.length == "short" else long).texts[0]
    servers = [("space", config) for config in configs]
    if args.noop:
        servers.append(("noop", Config("no-op model", {})))
    bursts: dict[str, list[Burst]] = {config.name: [] for _, config in servers}
    with contextlib.ExitStack() as stack:
        clients, pids = {}, {}
        for kind, config in servers:
            env = dict(config.env)
            logger.info("starting %s (%s%s%s)", config.name, env or "defaults",
                        f", from {config.checkout}" if config.checkout else "",
                        ", one shared client" if config.shared_client else "")  # fmt: skip
            running = stack.enter_context(
                server(kind, model_dir, env.pop("PRECISION", "int8"), env, config.checkout)
            )
            pids[config.name] = running.process.pid

            def connect(url: str = running.url) -> Client:
                return Client(url, verbose=False, ssl_verify=False)

            if config.shared_client:
                clients[config.name] = [connect()] * HIGH_CONCURRENCY
            else:
                clients[config.name] = [connect() for _ in range(HIGH_CONCURRENCY)]
        for group in clients.values():  # warm-up: every client's session set up
            burst(group, text, 3 * HIGH_CONCURRENCY)
        for round_ in range(args.rounds):
            for name, group in clients.items():
                bursts[name].append(measured_burst(group, text, args.requests, pids[name]))
            logger.info("round %d: %s", round_ + 1,
                        "  ".join(f"{n} {b[-1].rps:.1f}" for n, b in bursts.items()))  # fmt: skip
    baseline = servers[0][1].name
    first = statistics.median(b.rps for b in bursts[baseline])
    lines = [
        f"{args.length.capitalize()} texts, concurrency {HIGH_CONCURRENCY}, {args.rounds} "
        f"interleaved bursts of {args.requests} requests each; CPU in ms per request, medians.",
        "",
        f"| configuration | median req/s | range | vs {baseline} | server CPU | client CPU |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, values in bursts.items():
        rates = [b.rps for b in values]
        median = statistics.median(rates)
        server_ms = statistics.median(b.server_ms for b in values)
        client_ms = statistics.median(b.client_ms for b in values)
        lines.append(f"| {name} | {median:.1f} | {min(rates):.1f}-{max(rates):.1f} | "
                     f"{median / first:.2f}x | {server_ms:.1f} | {client_ms:.1f} |")  # fmt: skip
    table = "\n".join(lines) + "\n"
    print(f"\n{table}")
    command = shlex.join(
        ["python", "-m", "benchmarks.toxic_classifier.ab", *(argv or sys.argv[1:])]
    )
    entry = f"{stamp(command)}\n{table}"
    path = write_section("ab", entry, heading="ab.py: interleaved comparisons", append=True)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
