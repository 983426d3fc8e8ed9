"""Reliability runs on every Space under ``spaces/`` (or ``--space NAME``), long versions of
``tests/test_reliability.py``:

- ``fuzz``: ``--examples`` schemathesis-generated requests per REST route (500 by default,
  half fitting the schema, half not), the whole hostile corpus of ``tests/hostile.py`` on
  every route that takes a body, every wrong method, and ``--gradio-examples`` generated calls
  per named Gradio endpoint, all under a ``/health`` watchdog (a poll every 0.2 s);
- ``soak``: ``--clients`` concurrent clients (16) for ``--duration`` seconds (60), ``--rounds``
  times (2), half calling the Space's REST routes with valid bodies, half Gradio's
  ``/predict`` through gradio_client; the RSS of the Space's process tree before and after
  each round, and its growth across the last round.

Each writes its table (Space, route, requests, 2xx/4xx/5xx, hangs, crashes, slowest
``/health``, RSS before -> after, growth) to ``benchmarks/results/reliability.md``, in its own
section with the machine, date and command, followed by every request that broke the contract
with its exact input.

    python -m benchmarks.reliability.run fuzz [--space NAME] [--examples 500]
    python -m benchmarks.reliability.run soak [--space NAME] [--clients 16] [--duration 60]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.models import ROOT, machine
from scripts.launcher import (
    RunningSpace,
    demo_env,
    space_names,
    start_space,
    stop_spaces_on_sigterm,
)
from tests.hostile import (
    JSON,
    KNOWN_VALUES,
    Finding,
    HealthWatchdog,
    Route,
    RouteTally,
    contract_files,
    encode,
    excerpt,
    fuzz_gradio,
    fuzz_openapi,
    gradio_outcome,
    read_routes,
    route_cases,
    run_cases,
    samples,
    send,
    space_text,
    strict_json,
    tree_rss,
    wrong_method_cases,
)

RESULTS = ROOT / "benchmarks" / "results" / "reliability.md"
TITLE = "# Reliability: fuzzing and soak"
INTRO = """\
Written by [`benchmarks/reliability/run.py`](../reliability/run.py) (`make fuzz`, `make soak`),
each mode in its own section between `<!-- MODE:start -->` and `<!-- MODE:end -->`. The
contract: no 5xx, no hang (30 s per request), no crash, strict JSON in every answer, 413 over
the body limit, 422 for NaN/Infinity/lone surrogates, 405 for a wrong method. Gradio calls are
counted as 2xx (served), 4xx (a `gr.Error`: the user's mistake) and 5xx (an internal error).
"""
MB = 1024 * 1024


@dataclass
class Row:
    """One line of a results table."""

    space: str
    route: str
    requests: int
    ok: int
    client_errors: int
    server_errors: int
    hangs: int
    crashes: int
    # Slowest /health poll while the route ran (ms).
    health_ms: float | None = None
    seconds: float | None = None
    rss_before_mb: float | None = None
    rss_after_mb: float | None = None

    @property
    def growth(self) -> float | None:
        """RSS growth over the row's run, in %."""
        if not self.rss_before_mb or self.rss_after_mb is None:
            return None
        return (self.rss_after_mb - self.rss_before_mb) / self.rss_before_mb * 100


def row_of(space: str, tally: RouteTally) -> Row:
    ok, client, server = tally.by_class()
    health = None if tally.health_max_s is None else tally.health_max_s * 1000
    return Row(
        space,
        tally.route,
        tally.requests,
        ok,
        client,
        server,
        tally.hangs,
        tally.crashes,
        health,
        tally.seconds,
    )


def total_row(
    space: str, label: str, rows: list[Row], health_ms: float, seconds: float, rss: tuple[int, int]
) -> Row:
    return Row(
        space,
        label,
        sum(r.requests for r in rows),
        sum(r.ok for r in rows),
        sum(r.client_errors for r in rows),
        sum(r.server_errors for r in rows),
        sum(r.hangs for r in rows),
        sum(r.crashes for r in rows),
        health_ms,
        seconds,
        rss[0] / MB,
        rss[1] / MB,
    )


class Progress:
    """A status line on stderr: on a terminal one line rewritten at most twice a second, in a
    log one line per route."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.label = ""
        self.count = 0
        self.start = time.monotonic()
        self.tty = sys.stderr.isatty()
        self._shown = 0.0
        self._lock = threading.Lock()

    def route(self, label: str) -> None:
        """A new route starts."""
        with self._lock:
            self.label, self.count = label, 0
        self.show(force=True)

    def tick(self) -> None:
        """One more request."""
        with self._lock:
            self.count += 1
        self.show()

    def show(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and (not self.tty or now - self._shown < 0.5):
            return
        self._shown = now
        elapsed = int(now - self.start)
        line = f"[{self.mode} {elapsed // 60}m{elapsed % 60:02d}s] {self.label}: {self.count}"
        self._write(f"{line} requests")

    def done(self, message: str) -> None:
        self._write(message, end=True)

    def _write(self, line: str, *, end: bool = False) -> None:
        if self.tty:
            sys.stderr.write(f"\r{line[:150]:<150}" + ("\n" if end else ""))
        else:
            sys.stderr.write(f"{line}\n")
        sys.stderr.flush()


class HealthWindows:
    """Gives each route the slowest /health poll seen while it ran."""

    def __init__(self, watchdog: HealthWatchdog, progress: Progress) -> None:
        self.watchdog = watchdog
        self.progress = progress
        self.current: str | None = None
        self.slowest: dict[str, float] = {}

    def route(self, label: str) -> None:
        self.flush()
        self.current = label
        self.progress.route(label)

    def flush(self) -> None:
        slowest = self.watchdog.window_max()
        if self.current is not None and slowest is not None:
            self.slowest[self.current] = max(self.slowest.get(self.current, 0.0), slowest)

    def apply(self, tallies: list[RouteTally]) -> None:
        self.flush()
        self.current = None
        for tally in tallies:
            tally.health_max_s = self.slowest.get(tally.route, tally.health_max_s)


def body_routes(routes: list[Route]) -> list[Route]:
    return [r for r in routes if r.json_schema is not None or r.binary_fields()]


@contextmanager
def started(name: str, env: dict[str, str]) -> Iterator[RunningSpace]:
    sys.stderr.write(f"starting {name} ...\n")
    with start_space(name, env) as space:
        yield space


# ---- fuzz ------------------------------------------------------------------------------------


def fuzz_space(
    name: str, env: dict[str, str], args: argparse.Namespace
) -> tuple[list[Row], list[Finding]]:
    """The fuzz run on one Space: schemathesis, the hostile corpus, wrong methods, Gradio."""
    progress = Progress(f"fuzz {name}")
    with started(name, env) as space, HealthWatchdog(space.url) as watchdog:

        def alive() -> bool:
            return space.process.poll() is None

        windows = HealthWindows(watchdog, progress)
        start = time.perf_counter()
        rss_before = tree_rss(space.process.pid)
        tallies = fuzz_openapi(
            space.url,
            examples=args.examples,
            timeout=args.timeout,
            known=KNOWN_VALUES,
            seed=args.seed,
            alive=alive,
            on_route=windows.route,
            tick=progress.tick,
        )
        routes = read_routes(strict_json(space.http.get("/openapi.json").content), KNOWN_VALUES)
        text = space_text(name)
        for route in body_routes(routes):
            if not alive():
                break
            tally = RouteTally(f"hostile corpus: {route.label}")
            windows.route(tally.route)
            sample, extra = samples(route, text)
            run_cases(
                space.http,
                [*extra, *route_cases(route, sample, text=text)],
                tally,
                timeout=args.timeout,
                alive=alive,
                tick=progress.tick,
            )
            tallies.append(tally)
        if alive():
            tally = RouteTally("wrong methods, unknown path")
            windows.route(tally.route)
            run_cases(
                space.http,
                wrong_method_cases(routes),
                tally,
                timeout=args.timeout,
                alive=alive,
                tick=progress.tick,
            )
            tallies.append(tally)
        if alive() and args.gradio_examples > 0:
            api = space.client.view_api(print_info=False, return_format="dict")
            tallies += fuzz_gradio(
                space.client,
                fixed=contract_files(name, api),
                examples=args.gradio_examples,
                timeout=args.timeout,
                seed=args.seed,
                alive=alive,
                on_route=windows.route,
                tick=progress.tick,
            )
        windows.apply(tallies)
        rss_after = tree_rss(space.process.pid)
        seconds = time.perf_counter() - start
        health_ms = watchdog.max_latency_s * 1000
        health_failures = list(watchdog.failures)
    rows = [row_of(name, t) for t in tallies]
    findings = [f for t in tallies for f in t.findings]
    findings += [Finding("GET /health", "(watchdog)", failure, "") for failure in health_failures]
    for tally in tallies:
        if tally.failures > len(tally.findings):
            more = tally.failures - len(tally.findings)
            findings.append(Finding(tally.route, "", f"... and {more} more like these", ""))
    rows.append(
        total_row(name, "**all routes**", rows, health_ms, seconds, (rss_before, rss_after))
    )
    progress.done(
        f"fuzz {name}: {rows[-1].requests} requests in {seconds:.0f} s, "
        f"{sum(t.failures for t in tallies)} contract breaches"
    )
    return rows, findings


# ---- soak ------------------------------------------------------------------------------------


@dataclass
class SoakPlan:
    """What the soak clients call on one Space."""

    # REST routes that answered their sample body with a 2xx, with that body (typical
    # requests: the Space's default output lengths).
    rest: list[tuple[Route, bytes]] = field(default_factory=list)
    # Inputs of Gradio's /predict (None when it could not be called).
    gradio: list[Any] | None = None


def soak_plan(space: RunningSpace, timeout: float) -> SoakPlan:
    """Probe each body route with its sample, and Gradio's /predict with the contract's
    inputs; the soak uses those that answer."""
    from tests.test_contract import required_inputs

    plan = SoakPlan()
    routes = read_routes(strict_json(space.http.get("/openapi.json").content), KNOWN_VALUES)
    text = space_text(space.name)
    for route in body_routes(routes):
        if route.json_schema is None:
            continue
        sample, _ = samples(route, text, short=False)  # the Space's default output lengths
        body = encode(sample)
        outcome = send(
            space.http, route.method, route.path, body, content_type=JSON, timeout=timeout
        )
        if outcome.status is not None and 200 <= outcome.status < 300:
            plan.rest.append((route, body))
    try:
        api = space.client.view_api(print_info=False, return_format="dict")
        inputs = required_inputs(space.name, api)
        space.client.predict(*inputs, api_name="/predict")
        plan.gradio = inputs
    except Exception as e:
        sys.stderr.write(f"{space.name}: gradio /predict left out of the soak: {e}\n")
    return plan


def soak_round(
    space: RunningSpace, plan: SoakPlan, args: argparse.Namespace, progress: Progress
) -> tuple[list[RouteTally], float, list[str], tuple[int, int]]:
    """``args.clients`` clients for ``args.duration`` seconds.

    Returns:
        One tally per route, the slowest /health poll (s), the watchdog's failures, and the RSS
        of the process tree before and after.
    """
    from gradio_client import Client

    tallies = {route.label: RouteTally(route.label) for route, _ in plan.rest}
    if plan.gradio is not None:
        tallies["gradio /predict"] = RouteTally("gradio /predict")
    lock = threading.Lock()
    n_gradio = 0 if plan.gradio is None else (args.clients // 2 if plan.rest else args.clients)
    gradio_clients = []
    for _ in range(n_gradio):
        try:
            gradio_clients.append(Client(space.url, verbose=False))
        except Exception as e:  # a Space too busy to describe its API is a finding
            tallies["gradio /predict"].fail(
                f"gradio_client could not connect: {type(e).__name__}: {excerpt(str(e), 200)}"
            )
            break
    rss_before = tree_rss(space.process.pid)
    deadline = time.monotonic() + args.duration
    stop = threading.Event()

    def record(
        label: str, status: int | None, problems: list[str], case: str, answer: str, hang: bool
    ) -> None:
        with lock:
            tallies[label].add(status, problems, case, answer, hang=hang)
        progress.tick()

    def rest_client(offset: int) -> None:
        with httpx.Client(base_url=space.url, timeout=args.timeout) as http:
            i = offset
            while time.monotonic() < deadline and not stop.is_set():
                route, body = plan.rest[i % len(plan.rest)]
                i += 1
                outcome = send(
                    http, route.method, route.path, body, content_type=JSON, timeout=args.timeout
                )
                problems = list(outcome.problems)
                if outcome.error:
                    problems.insert(0, outcome.error)
                if outcome.status is not None and outcome.status >= 500:
                    problems.insert(0, f"{outcome.status}, a server error")
                hang = bool(outcome.error and outcome.error.startswith("hang"))
                record(
                    route.label,
                    outcome.status,
                    problems,
                    f"{route.label} {body[:200]!r}",
                    outcome.excerpt,
                    hang,
                )

    def gradio_client(client: Any) -> None:
        while time.monotonic() < deadline and not stop.is_set():
            job = client.submit(*(plan.gradio or []), api_name="/predict")
            error = None
            try:
                job.result(timeout=args.timeout)
            except Exception as e:
                error = e
            status, problems, hang = gradio_outcome(error)
            record(
                "gradio /predict",
                status,
                problems,
                f"/predict {plan.gradio!r}",
                "" if error is None else excerpt(str(error)),
                hang,
            )

    threads = [
        threading.Thread(target=gradio_client, args=(c,), daemon=True) for c in gradio_clients
    ]
    if plan.rest:
        threads += [
            threading.Thread(target=rest_client, args=(i,), daemon=True)
            for i in range(args.clients - n_gradio)
        ]
    crashed = False
    with HealthWatchdog(space.url) as watchdog:
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            time.sleep(0.2)
            if space.process.poll() is not None and not crashed:
                crashed = True
                stop.set()
        for thread in threads:
            thread.join()
    for client in gradio_clients:
        client.close()
    if crashed:
        for tally in tallies.values():
            tally.crashes = 1
            tally.fail("the Space's process died during the soak")
    rss_after = tree_rss(space.process.pid)
    for tally in tallies.values():
        tally.seconds = args.duration
    rss = (rss_before, rss_after)
    return list(tallies.values()), watchdog.max_latency_s, watchdog.failures, rss


def soak_space(
    name: str, env: dict[str, str], args: argparse.Namespace
) -> tuple[list[Row], list[Finding]]:
    """The soak rounds on one Space."""
    rows: list[Row] = []
    findings: list[Finding] = []
    with started(name, env) as space:
        plan = soak_plan(space, args.timeout)
        if not plan.rest and plan.gradio is None:
            findings.append(Finding(name, "(soak)", "nothing answered a valid request", ""))
            return rows, findings
        for n in range(1, args.rounds + 1):
            progress = Progress(f"soak {name} round {n}")
            progress.route(f"{args.clients} clients for {args.duration:g} s")
            tallies, health_s, failures, rss = soak_round(space, plan, args, progress)
            round_rows = [row_of(name, t) for t in tallies]
            for row in round_rows:
                row.route = f"round {n}: {row.route}"
            total = total_row(
                name, f"**round {n}: all**", round_rows, health_s * 1000, args.duration, rss
            )
            rows += [*round_rows, total]
            findings += [f for t in tallies for f in t.findings]
            findings += [Finding("GET /health", f"(watchdog, round {n})", f, "") for f in failures]
            progress.done(
                f"soak {name} round {n}: {total.requests} requests, RSS "
                f"{total.rss_before_mb:.0f} -> {total.rss_after_mb:.0f} MB"
            )
            if space.process.poll() is not None:
                break
    return rows, findings


# ---- results ---------------------------------------------------------------------------------


def _num(value: float | None, fmt: str = ".0f") -> str:
    return "-" if value is None else format(value, fmt)


def table(rows: list[Row]) -> str:
    lines = [
        "| Space | route | requests | 2xx | 4xx | 5xx | hangs | crashes | /health max ms | s "
        "| RSS MB before → after | growth % |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        rss = "-" if r.rss_before_mb is None else f"{r.rss_before_mb:.0f} → {r.rss_after_mb:.0f}"
        growth = "-" if r.growth is None else f"{r.growth:+.1f}"
        lines.append(
            f"| {r.space} | {r.route} | {r.requests} | {r.ok} | {r.client_errors} | "
            f"{r.server_errors} | {r.hangs} | {r.crashes} | {_num(r.health_ms)} | "
            f"{_num(r.seconds, '.1f')} | {rss} | {growth} |"
        )
    return "\n".join(lines) + "\n"


def findings_list(findings: list[Finding], limit: int = 200) -> str:
    """The findings as a markdown list, the same (route, problem, input) once with its count."""
    if not findings:
        return "No request broke the contract.\n"
    counts: Counter[tuple[str, str, str]] = Counter()
    first: dict[tuple[str, str, str], Finding] = {}
    for f in findings:
        key = (f.route, f.problem, f.case)
        counts[key] += 1
        first.setdefault(key, f)
    lines = ["Requests that broke the contract (up to 20 kept per route, repeats counted):", ""]
    for key, f in list(first.items())[:limit]:
        times = f" (×{counts[key]})" if counts[key] > 1 else ""
        answer = f" → `{excerpt(f.answer, 160)}`" if f.answer else ""
        shown = f"; input: `{excerpt(f.case, 400)}`" if f.case else ""
        text = f"- {f.route}: {f.problem}{times}{answer}{shown}"
        lines.append(text.replace("\n", " ").replace("|", "\\|"))
    if len(first) > limit:
        lines.append(f"- ... {len(first) - limit} more")
    return "\n".join(lines) + "\n"


def section(rows: list[Row], findings: list[Finding], command: str, notes: str) -> str:
    meta = machine()
    head = [
        f"- machine: {meta['cpu']}, {meta['cores']} cores, torch {meta['torch']}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- command: `{command}`",
        f"- {notes}",
        "",
    ]
    return "\n".join(head) + "\n" + table(rows) + "\n" + findings_list(findings)


def write_section(mode: str, body: str, heading: str, path: Path = RESULTS) -> None:
    """Replace the ``mode`` section of the results file (made with its title if missing)."""
    start, end = f"<!-- {mode}:start -->", f"<!-- {mode}:end -->"
    text = path.read_text(encoding="utf-8") if path.is_file() else f"{TITLE}\n\n{INTRO}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{start}\n{body}{end}{tail}"
    else:
        text = f"{text.rstrip()}\n\n## {heading}\n\n{start}\n{body}{end}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["fuzz", "soak"])
    parser.add_argument("--space", action="append", help="only this Space (repeatable)")
    parser.add_argument(
        "--examples", type=int, default=500, help="fuzz: generated requests per REST route"
    )
    parser.add_argument(
        "--gradio-examples", type=int, default=100, help="fuzz: generated calls per Gradio endpoint"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="fuzz: hypothesis seed (default: the same examples every run)",
    )
    parser.add_argument("--clients", type=int, default=16, help="soak: concurrent clients")
    parser.add_argument("--duration", type=float, default=60.0, help="soak: seconds per round")
    parser.add_argument("--rounds", type=int, default=2, help="soak: rounds")
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds per request before it counts as a hang"
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    stop_spaces_on_sigterm()

    names = args.space or space_names()
    unknown = sorted(set(names) - set(space_names()))
    if unknown:
        parser.error(f"no Space {unknown}; choose from {space_names()}")
    env = demo_env()
    rows: list[Row] = []
    findings: list[Finding] = []
    for name in names:
        run = fuzz_space if args.mode == "fuzz" else soak_space
        space_rows, space_findings = run(name, env.get(name, {}), args)
        rows += space_rows
        findings += space_findings
    command = "python -m benchmarks.reliability.run " + " ".join(argv or sys.argv[1:])
    if args.mode == "fuzz":
        notes = (
            f"{args.examples} schemathesis requests per REST route (half positive, half "
            f"negative; fewer where the schema admits fewer), the hostile corpus on each "
            f"route with a body, {args.gradio_examples} calls per Gradio endpoint; "
            f"timeout {args.timeout:g} s; `s` is the wall time per route"
        )
        heading = "Fuzz (`make fuzz`)"
    else:
        notes = (
            f"{args.clients} clients (half REST with valid bodies, half gradio_client "
            f"`/predict`) for {args.duration:g} s, {args.rounds} rounds; growth is the RSS "
            "growth of the Space's process tree over the round"
        )
        heading = "Soak (`make soak`)"
    body = section(rows, findings, command, notes)
    print(body)
    if not args.no_write:
        write_section(args.mode, body, heading)
        print(f"written to {RESULTS.relative_to(ROOT)}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
