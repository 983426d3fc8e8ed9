"""Benchmark the toxic-classifier Space against the naive Space it replaced, in one run.

Serves a BERT-base-sized model (AraBERT v02 dimensions, random weights) and drives it with
gradio_client at concurrency 1 and 16 with short (~20 words) and long (~200 words) Arabic texts:

* baseline: the naive Space (``naive_app.py``: fp32 ``pipeline`` per request, no batching);
* candidates: the real Space (``spaces/toxic-classifier/app.py``) at each precision asked for
  (``int8`` is the Space's default, an int8 ONNX export in ONNX Runtime);
* ceilings: the bare model in this process (``ToxicityClassifier`` preprocessing and forward
  pass on batches, best batch size and thread layout) and the real server with a no-op model
  (``noop_app.py``).

``int8-torch`` (torch's eager dynamic int8) is a measured alternative, not a Space setting: it
is measured in this process only (bare model and precision drift), never served.

Also checks that int8/bf16 keep p(harmful) within 0.02 of fp32 on the evaluation set.

Usage (from the monorepo root; ``make bench-toxic`` runs the first line):
    python -m benchmarks.toxic_classifier.bench [--quick] [--precisions int8,int8-torch,fp32,bf16]
        [--rounds 2]

Prints a markdown report and puts it in ``benchmarks/results/toxic-classifier.md`` between the
``bench`` markers, with the machine, the date and the command.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import itertools
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from benchmarks.toxic_classifier.results import machine, write_section
from benchmarks.toxic_classifier.workload import (
    ROOT,
    SPACE_DIR,
    Texts,
    build_model,
    eval_texts,
    make_texts,
    token_counts,
)
from scripts.launcher import ONNX_CACHE_DIR, RunningSpace, start_space, stop_spaces_on_sigterm
from shared.serving import preprocess_all

logger = logging.getLogger("bench")

HERE = Path(__file__).resolve().parent
TOLERANCE = 0.02
HIGH_CONCURRENCY = 16
# --precisions choices the Space serves (its PRECISION), and those measured in process only.
SERVED = ("fp32", "bf16", "int8")
IN_PROCESS = ("int8-torch",)


@dataclass(frozen=True)
class Plan:
    """How much work each measurement does."""

    # Requests per cell at concurrency 1 and at concurrency 16.
    requests_c1: int
    requests_c16: int
    # Stop issuing new requests after this many seconds (in-flight ones finish).
    cap_c1_s: float
    cap_c16_s: float
    # Seconds spent per batch size in the bare-model ceiling.
    bare_s: float


FULL = Plan(requests_c1=32, requests_c16=16 * 8, cap_c1_s=10, cap_c16_s=15, bare_s=3)
QUICK = Plan(requests_c1=4, requests_c16=16, cap_c1_s=3, cap_c16_s=4, bare_s=0.5)


@dataclass
class Cell:
    """One measured row: a server configuration, a text length, a concurrency."""

    config: str
    length: str
    concurrency: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p95_ms: float
    rss_mb: float
    # CPU time (user + system) per completed request during the cell, in ms: the server's
    # process tree, and this process (the gradio_client load generator).
    server_cpu_ms: float = 0.0
    client_cpu_ms: float = 0.0


@dataclass
class Results:
    """Everything one run measured."""

    cells: list[Cell] = field(default_factory=list)
    # (precision, length) -> (best requests/s, batch size, intra-op threads as reported)
    bare: dict[tuple[str, str], tuple[float, int, str]] = field(default_factory=dict)
    # (precision, length) -> least CPU ms per text of the bare model over the settings tried
    bare_cpu_ms: dict[tuple[str, str], float] = field(default_factory=dict)
    # length -> CPU ms per text of preprocessing alone (the no-op server does it too)
    prep_ms: dict[str, float] = field(default_factory=dict)
    # precision -> (max |Δp(harmful)|, max |Δ logit margin|) against fp32
    drift: dict[str, tuple[float, float]] = field(default_factory=dict)
    # spread (std) of the fp32 logit margin over the eval set, for scale
    margin_std: float = 0.0
    tokens: dict[str, tuple[int, int, float]] = field(default_factory=dict)
    # candidate label -> its precision, in the order served
    candidates: dict[str, str] = field(default_factory=dict)
    rounds: int = 1
    # best fp32 and int8 matrix-product rates (GOP/s), see matmul_rates
    matmul: tuple[float, float] = (0.0, 0.0)

    def add(self, cell: Cell) -> None:
        """Keep ``cell``, or the earlier round's cell of the same row if that one was faster."""
        old = self.cell(cell.config, cell.length, cell.concurrency)
        if old is None:
            self.cells.append(cell)
        elif cell.rps > old.rps:
            self.cells[self.cells.index(old)] = cell

    def cell(self, config: str, length: str, concurrency: int) -> Cell | None:
        for c in self.cells:
            if (c.config, c.length, c.concurrency) == (config, length, concurrency):
                return c
        return None


# -- in-process: precision drift and the bare-model ceiling ------------------------------------


def _load_classifier(model_dir: Path, precision: str, threads: int | None = None):
    """The Space's predictor on ``model_dir`` at ``precision`` (a ``--precisions`` choice).

    ``int8-torch`` is the fp32 model with torch's eager dynamic int8 Linear layers, built here:
    the Space itself runs int8 only as its ONNX export in ONNX Runtime.
    """
    if str(SPACE_DIR) not in sys.path:
        sys.path.insert(0, str(SPACE_DIR))
    from predictor import ToxicityClassifier, load_settings
    from shared.labels import LABEL_MAP_FILENAME

    dtype = "fp32" if precision == "int8-torch" else precision
    settings = load_settings().model_copy(update={"model_id": str(model_dir), "precision": dtype})
    clf = ToxicityClassifier.load(settings, threads=threads, cache_dir=ONNX_CACHE_DIR)
    if precision != "int8-torch":
        return clf
    import warnings

    import torch
    from torch.ao.quantization import quantize_dynamic

    # torch deprecates eager-mode quantization in favour of torchao, which has no CPU int8
    # dynamic path on this torch build; the eager one is still shipped and measured here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
        model = quantize_dynamic(clf.model, {torch.nn.Linear}, dtype=torch.qint8)
    return ToxicityClassifier(
        model,
        clf.tokenizer,
        settings.model_copy(update={"precision": "int8"}),
        clf.model_ref,
        demo=clf.demo,
        label_map_file=model_dir / LABEL_MAP_FILENAME,
        threads=threads,
    )


def _margins(clf, texts: list[str]):  # noqa: ANN001
    """p(harmful) and the logit margin log p(harmful)/p(safe) for every text."""
    import numpy as np

    probs = []
    for i in range(0, len(texts), 16):
        p = clf.forward(preprocess_all(clf, texts[i : i + 16], what="text"))
        probs.append(p.double().numpy())
    p = np.concatenate(probs)
    harmful = clf.raw_labels.index("LABEL_1")
    return p[:, harmful], np.log(p[:, harmful]) - np.log(p[:, 1 - harmful])


def _set_threads(clf, threads: int, spin: bool = False) -> str:  # noqa: ANN001
    """Run ``clf``'s forward pass on ``threads`` intra-op threads, whichever runtime it uses.

    ``spin`` lets ONNX Runtime's idle threads spin between operators (the Space turns that off,
    since it shares the cores with its web server; a model alone on the CPU may gain from it).
    Returns how the setting reads in the report.
    """
    import torch

    torch.set_num_threads(threads)
    if not clf.onnx:
        return str(threads)
    # An ONNX Runtime session fixes its threads when it is created.
    from shared.quantize import OnnxModel

    clf.model = OnnxModel(clf.model.path, clf.model.config, threads=threads, spin=spin)
    return f"{threads}{', spinning' if spin else ''}"


def _forward_rate(clf, texts: list[str], workers: int, seconds: float) -> tuple[float, float]:  # noqa: ANN001
    """Texts/s of ``workers`` threads each classifying ``texts`` for ``seconds``, and the
    process's CPU ms per text meanwhile (no server runs during this part of the benchmark).

    One batch is ``clf.forward(preprocess_all(clf, texts))``: normalisation, tokenizer and model,
    the work the Space does per batch, with none of the server's.
    """
    done = [0] * workers
    cpu = time.process_time()
    start = time.perf_counter()

    def work(i: int) -> None:
        while done[i] == 0 or time.perf_counter() - start < seconds:
            clf.forward(preprocess_all(clf, texts))
            done[i] += len(texts)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return sum(done) / wall, 1000 * cpu / sum(done)


def _preprocess_ms(clf, texts: list[str], seconds: float) -> float:  # noqa: ANN001
    """CPU ms per text of ``clf.preprocess`` alone (limits, normalisation, tokenizer)."""
    done, cpu, start = 0, time.process_time(), time.perf_counter()
    while done == 0 or time.perf_counter() - start < seconds:
        preprocess_all(clf, texts)
        done += len(texts)
    return 1000 * (time.process_time() - cpu) / done


def bare_model(
    model_dir: Path,
    precisions: Sequence[str],
    texts: Sequence[Texts],
    plan: Plan,
    out: Results,
    drift: bool = True,
) -> None:
    """The bare model's best requests/s per precision (and, with ``drift``, precision drift).

    Called once per round; the best figure over the rounds is kept (``Results.bare``).
    """
    import numpy as np

    evaluation = eval_texts()
    reference = None
    for precision in precisions:
        clf = _load_classifier(model_dir, precision)
        if drift:
            p, margin = _margins(clf, evaluation)
            if reference is None and precision == "fp32":
                reference = (p, margin)
                out.margin_std = float(np.std(margin))
            if reference is not None and precision != "fp32":
                out.drift[precision] = (
                    float(np.max(np.abs(p - reference[0]))),
                    float(np.max(np.abs(margin - reference[1]))),
                )
        import torch

        default_threads = torch.get_num_threads()
        for batch in texts:
            sizes = (1, 8, 16) if batch.name == "short" else (1, 4)
            best = (0.0, 0, "")
            spins = (False, True) if clf.onnx else (False,)
            # (workers, threads each): the Space's batcher can run 2 batches at once, 1 thread
            # each (config.yaml workers), so that is a setting of the bare model's too.
            layouts = sorted({(1, default_threads), (1, 1), (2, max(1, default_threads // 2))})
            for (workers, threads), spin, size in itertools.product(layouts, spins, sizes):
                setting = _set_threads(clf, threads, spin)
                if workers > 1:
                    setting = f"{workers} x {setting}"
                sample = list(itertools.islice(itertools.cycle(batch.texts), size))
                clf.forward(preprocess_all(clf, sample))  # warm-up
                rps, cpu_ms = _forward_rate(clf, sample, workers, plan.bare_s)
                logger.info("bare %s %s batch %d, threads %s: %.1f req/s, %.1f CPU ms/text",
                            precision, batch.name, size, setting, rps, cpu_ms)  # fmt: skip
                best = max(best, (rps, size, setting))
                key = (precision, batch.name)
                out.bare_cpu_ms[key] = min(cpu_ms, out.bare_cpu_ms.get(key, cpu_ms))
            _set_threads(clf, default_threads)
            out.bare[key] = max(best, out.bare.get(key, best))
            prep = _preprocess_ms(clf, batch.texts, plan.bare_s)
            out.prep_ms[batch.name] = min(prep, out.prep_ms.get(batch.name, prep))
        del clf
        gc.collect()


def matmul_rates(seconds: float, rows: int = 1344) -> tuple[float, float]:
    """This CPU's fp32 and int8 matrix-product rates in GOP/s, on the model's FFN shape.

    fp32 is ``torch.matmul`` (what the naive Space's Linear layers run); int8 is ONNX Runtime's
    ``DynamicQuantizeLinear`` + ``MatMulInteger`` (what the Space's int8 export runs), both on a
    ``(rows, 768) x (768, 3072)`` product (``rows`` = 4 texts of 336 tokens) with default threads.
    """
    import numpy as np
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper, numpy_helper

    hidden, inner = 768, 3072
    ops = 2 * rows * hidden * inner

    def rate(fn) -> float:  # noqa: ANN001
        fn()
        done, start = 0, time.perf_counter()
        while done == 0 or time.perf_counter() - start < seconds:
            fn()
            done += 1
        return ops * done / (time.perf_counter() - start) / 1e9

    x, w = torch.randn(rows, hidden), torch.randn(hidden, inner)
    fp32 = rate(lambda: torch.matmul(x, w))
    weight = np.random.default_rng(0).integers(-127, 128, (hidden, inner), dtype=np.int8)
    graph = helper.make_graph(
        [
            helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
            helper.make_node("MatMulInteger", ["xq", "w", "xz"], ["y"]),
        ],
        "int8_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, hidden])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [rows, inner])],
        [numpy_helper.from_array(weight, "w")],
    )
    # IR version 10: what ONNX Runtime reads (onnx 1.23 would stamp a newer one by default).
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy()}
    return fp32, rate(lambda: session.run(None, feed))


def text_gops(tokens: float, layers: int = 12, hidden: int = 768, inner: int = 3072) -> float:
    """Matrix-product work of one BERT-base forward pass over ``tokens`` tokens, in GOP."""
    linear = 2 * tokens * (4 * hidden * hidden + 2 * hidden * inner)  # Q, K, V, out; FFN in, out
    attention = 2 * 2 * tokens * tokens * hidden  # scores and the weighted sum
    return layers * (linear + attention) / 1e9


# -- servers ------------------------------------------------------------------------------------


def _tree(process: psutil.Process) -> list[psutil.Process]:
    """``process`` and its living children."""
    try:
        return [process, *process.children(recursive=True)]
    except psutil.Error:
        return [process]


def _tree_sum(processes: list[psutil.Process], read) -> float:  # noqa: ANN001
    """Sum of ``read(p)`` over ``processes``, skipping any that have exited."""
    total = 0.0
    for p in processes:
        with contextlib.suppress(psutil.Error):
            total += read(p)
    return total


def _cpu_seconds(process: psutil.Process, children: bool = True) -> float:
    """User + system CPU seconds of ``process`` (and, with ``children``, its children) so far."""
    processes = _tree(process) if children else [process]
    return _tree_sum(processes, lambda p: sum(p.cpu_times()[:2]))  # user + system


class CpuMeter:
    """CPU time of a server's process tree and of this process (the load generator, without
    the servers it started as children), from one ``reset`` to ``per_request``."""

    def __init__(self, server_pid: int) -> None:
        self._served, self._generator = psutil.Process(server_pid), psutil.Process()
        self.reset()

    def _now(self) -> tuple[float, float]:
        return _cpu_seconds(self._served), _cpu_seconds(self._generator, children=False)

    def reset(self) -> None:
        """Start counting from now."""
        self._start = self._now()

    def per_request(self, requests: int) -> tuple[float, float]:
        """CPU ms per request since ``reset``: (server, load generator)."""
        (server, generator), requests = self._now(), max(1, requests)
        return (
            (server - self._start[0]) * 1000 / requests,
            (generator - self._start[1]) * 1000 / requests,
        )


class PeakRSS:
    """Samples a process tree's resident memory in a thread; ``reset`` starts a new peak."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self._process = psutil.Process(pid)
        self._interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _rss(self) -> int:
        return int(_tree_sum(_tree(self._process), lambda p: p.memory_info().rss))

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self._rss())

    def reset(self) -> None:
        self.peak = self._rss()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _shim(name: str, script: Path) -> Path:
    """A folder whose ``app.py`` runs ``script``: ``start_space`` runs ``app.py`` in a folder."""
    folder = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    (folder / "app.py").write_text(
        "import runpy, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        f"runpy.run_path({str(script)!r}, run_name='__main__')\n",
        encoding="utf-8",
    )
    return folder


@contextmanager
def server(
    kind: str,
    model_dir: Path,
    precision: str,
    extra_env: dict[str, str] | None = None,
    checkout: Path | None = None,
) -> Iterator[RunningSpace]:
    """Start ``naive``, ``space`` or ``noop`` on the benchmark model.

    ``checkout``: serve the Space (and its ``shared``) from another checkout of this repository,
    e.g. a ``git worktree`` of an earlier commit, to compare two versions of the code.
    """
    if precision not in SERVED:
        raise ValueError(f"the Space serves {', '.join(SERVED)}, not {precision!r}")
    env = {"MODEL_ID": str(model_dir), "PRECISION": precision}
    env["TRANSFORMERS_VERBOSITY"] = "error"
    env |= extra_env or {}
    if kind == "space":
        folder = None
        if checkout is not None:
            env["PYTHONPATH"] = str(checkout)  # its shared/, ahead of this tree's
            folder = checkout / "spaces" / "toxic-classifier"
        manager = start_space("toxic-classifier", env, space_dir=folder, timeout=300)
    else:
        script = HERE / ("naive_app.py" if kind == "naive" else "noop_app.py")
        manager = start_space(f"bench-{kind}", env, space_dir=_shim(kind, script), timeout=300)
    with manager as running:
        yield running


def drive(clients: list, texts: list[str], concurrency: int, requests: int, cap_s: float):  # noqa: ANN201
    """Send ``requests`` (or until ``cap_s``) from ``concurrency`` threads; latencies and wall."""
    lock = threading.Lock()
    counter = itertools.count()
    latencies: list[float] = []
    errors = [0]
    start = time.perf_counter()
    deadline = start + cap_s
    finished = [start]

    def worker(client) -> None:  # noqa: ANN001
        while True:
            with lock:
                i = next(counter)
            if i >= requests or time.perf_counter() > deadline:
                return
            t0 = time.perf_counter()
            try:
                client.predict(texts[i % len(texts)], api_name="/predict")
            except Exception as e:  # a failed request is counted, not fatal
                logger.warning("request failed: %s", e)
                with lock:
                    errors[0] += 1
                continue
            t1 = time.perf_counter()
            with lock:
                latencies.append(t1 - t0)
                finished[0] = max(finished[0], t1)

    threads = [threading.Thread(target=worker, args=(c,)) for c in clients[:concurrency]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors[0], finished[0] - start


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def measure_server(
    label: str, kind: str, model_dir: Path, precision: str, texts: Sequence[Texts], plan: Plan,
    out: Results, concurrencies: Sequence[int] = (1, HIGH_CONCURRENCY),
    extra_env: dict[str, str] | None = None,
) -> None:  # fmt: skip
    """Start one server and measure every (length, concurrency) cell on it."""
    from gradio_client import Client

    logger.info("starting %s", label)
    with server(kind, model_dir, precision, extra_env) as running:
        rss = PeakRSS(running.process.pid)
        cpu = CpuMeter(running.process.pid)
        # ssl_verify=False: the servers are plain http on localhost, so it changes nothing on
        # the wire, but gradio_client makes a new httpx client per request, and loading the CA
        # bundle for each cost ~180 ms of CPU per request, on the cores the server needs.
        clients = [
            Client(running.url, verbose=False, ssl_verify=False) for _ in range(max(concurrencies))
        ]
        try:
            for batch in texts:
                # Warm-up: a few requests alone, then two requests from every client, so that
                # no client's first request (session set-up) falls in a measured cell.
                drive(clients, batch.texts, 1, 2, 30)
                drive(clients, batch.texts, len(clients), 2 * len(clients), 60)
                for concurrency in concurrencies:
                    low = concurrency == 1
                    rss.reset()
                    cpu.reset()
                    latencies, errors, wall = drive(
                        clients,
                        batch.texts,
                        concurrency,
                        plan.requests_c1 if low else plan.requests_c16,
                        plan.cap_c1_s if low else plan.cap_c16_s,
                    )
                    server_cpu, client_cpu = cpu.per_request(len(latencies))
                    cell = Cell(
                        config=label,
                        length=batch.name,
                        concurrency=concurrency,
                        requests=len(latencies),
                        errors=errors,
                        rps=len(latencies) / wall if wall > 0 else 0.0,
                        p50_ms=1000 * _percentile(latencies, 0.50),
                        p95_ms=1000 * _percentile(latencies, 0.95),
                        rss_mb=rss.peak / 2**20,
                        server_cpu_ms=server_cpu,
                        client_cpu_ms=client_cpu,
                    )
                    logger.info("%s", cell)
                    out.add(cell)
        finally:
            rss.close()
            for client in clients:
                with contextlib.suppress(Exception):  # closing is best effort
                    client.close()


# -- report -------------------------------------------------------------------------------------


BASELINE = "naive (fp32 pipeline, no batching)"


def _space_label(precision: str) -> str:
    return f"Space {precision}"


def lower_ceiling(res: Results, precision: str, length: str) -> float | None:
    """min(bare model at this precision, no-op server at concurrency 16)."""
    bare = res.bare.get((precision, length))
    noop = res.cell("no-op model (server ceiling)", length, HIGH_CONCURRENCY)
    values = [v for v in (bare[0] if bare else None, noop.rps if noop else None) if v]
    return min(values) if values else None


def _cores() -> int:
    return len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class CpuBound:
    """What the cores allow a served model, from CPU time per request."""

    # CPU ms per text of the bare model (preprocessing included), the least measured.
    model_ms: float
    # CPU ms per request of the no-op server, less the preprocessing counted in model_ms.
    server_ms: float
    # CPU ms per request of the load generator during the no-op row.
    client_ms: float

    @property
    def rps(self) -> float:
        """cores / (model + server + load generator), in requests/s."""
        return _cores() * 1000 / (self.model_ms + self.server_ms + self.client_ms)


def cpu_bound(res: Results, precision: str, length: str) -> CpuBound | None:
    """The CPU-time bound on the served model at concurrency 16, or None if not measured."""
    model_ms = res.bare_cpu_ms.get((precision, length))
    noop = res.cell("no-op model (server ceiling)", length, HIGH_CONCURRENCY)
    if not model_ms or not noop or not noop.server_cpu_ms:
        return None
    server_ms = max(0.0, noop.server_cpu_ms - res.prep_ms.get(length, 0.0))
    return CpuBound(model_ms, server_ms, noop.client_cpu_ms)


def report(res: Results, precisions: Sequence[str], command: str, loads: list[str]) -> str:
    """The markdown report."""
    import onnxruntime
    import torch

    lines = [
        f"Measured {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} on {machine()}; "
        f"torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, "
        f"{torch.get_num_threads()} intra-op threads. Load average (1 min) before/after: "
        f"{' / '.join(loads)}.",
        "",
        f"Command: `{command}`",
        "",
        f"Rounds: {res.rounds}. Every row below, the baseline and both ceilings included, was "
        "measured once per round, in the same order, and each row shows its best round (this "
        "shared VM's speed drifts by 10-40% over minutes).",
        "",
        "Model: BertForSequenceClassification with AraBERT v02 dimensions (768 hidden, 12 layers, "
        "12 heads, 3072 intermediate, 64,000-token vocabulary), random weights; `int8` is the "
        "Space's int8, the model exported to int8 ONNX and run by ONNX Runtime, and "
        "`int8-torch` is torch's eager dynamic int8, measured in process only (the Space does "
        "not serve it). Texts cut from "
        "`data/eval.jsonl`: "
        + ", ".join(
            f"{name} = {lo}-{hi} tokens (mean {mean:.0f})"
            for name, (lo, hi, mean) in res.tokens.items()
        )
        + ". The load generator (gradio_client, one `Client` per thread) runs on the same "
        f"{_cores()} cores as the server, for the baseline and the candidates alike.",
        "",
        "| configuration | text | concurrency | req/s | p50 ms | p95 ms | peak RSS MB "
        "| server CPU ms/req | load generator CPU ms/req | x baseline | % of lower ceiling |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in res.cells:
        base = res.cell(BASELINE, c.length, c.concurrency)
        ratio = f"{c.rps / base.rps:.2f}x" if base and base.rps else "-"
        precision = "fp32" if c.config == BASELINE else res.candidates.get(c.config)
        ceiling = lower_ceiling(res, precision, c.length) if precision else None
        share = (
            f"{100 * c.rps / ceiling:.0f}%"
            if ceiling and c.concurrency == HIGH_CONCURRENCY
            else "-"
        )
        errors = f" ({c.errors} errors)" if c.errors else ""
        lines.append(
            f"| {c.config} | {c.length} | {c.concurrency} | {c.rps:.1f}{errors} | "
            f"{c.p50_ms:.0f} | {c.p95_ms:.0f} | {c.rss_mb:.0f} | {c.server_cpu_ms:.1f} | "
            f"{c.client_cpu_ms:.1f} | {ratio} | {share} |"
        )
    lines += [
        "",
        "Ceilings (what no served configuration can pass): the bare model in-process "
        "(`ToxicityClassifier` preprocessing and forward pass on batches: normalisation, "
        "tokenizer and model; best batch size and thread setting, ONNX Runtime's with and "
        "without spinning) and the no-op "
        "server row above at concurrency 16.",
        "",
        "| precision | text | bare model req/s (batch, threads) | no-op server req/s "
        "| lower ceiling |",
        "|---|---|---:|---:|---:|",
    ]
    for (precision, length), (rps, size, threads) in res.bare.items():
        noop = res.cell("no-op model (server ceiling)", length, HIGH_CONCURRENCY)
        ceiling = lower_ceiling(res, precision, length)
        lines.append(
            f"| {precision} | {length} | {rps:.1f} ({size}, {threads}) | "
            f"{f'{noop.rps:.1f}' if noop else '-'} | {f'{ceiling:.1f}' if ceiling else '-'} |"
        )
    bounds = [
        (precision, length, bound)
        for precision in dict.fromkeys(res.candidates.values())
        for length in res.tokens
        if (bound := cpu_bound(res, precision, length)) is not None
    ]
    if bounds:
        lines += [
            "",
            "The model, the server and the load generator share the same "
            f"{_cores()} cores, so their CPU time per request adds up. Per request at "
            "concurrency 16: the bare model's CPU time per text (the least over the settings "
            "tried, preprocessing included), and what the no-op row's server (less that "
            "preprocessing) and load generator spent per request around a model that costs "
            "nothing. No server that spends what the no-op one does per request can pass "
            "cores / (model + server + load generator):",
            "",
            "| precision | text | model CPU ms/text | no-op server + load generator CPU ms/req "
            "| at most req/s | % of lower ceiling |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for precision, length, bound in bounds:
            ceiling = lower_ceiling(res, precision, length)
            share = f"{100 * bound.rps / ceiling:.0f}%" if ceiling else "-"
            lines.append(
                f"| {precision} | {length} | {bound.model_ms:.1f} | "
                f"{bound.server_ms:.1f} + {bound.client_ms:.1f} | {bound.rps:.1f} | {share} |"
            )
    if res.matmul[0] and "long" in res.tokens:
        fp32, int8 = res.matmul
        gops = text_gops(res.tokens["long"][2])
        lines += [
            "",
            f"Long texts are compute-bound: a {res.tokens['long'][2]:.0f}-token text is "
            f"{gops:.0f} GOP of matrix products, which batching does not shrink. This CPU's "
            f"matrix-product rate on the model's FFN shape (4 texts x 336 tokens by 768 x 3072): "
            f"fp32 {fp32:.0f} GFLOP/s (torch), int8 {int8:.0f} GOP/s (ONNX Runtime). Even at "
            f"those rates throughout, the whole model could do at most {fp32 / gops:.1f} "
            f"long texts/s in fp32 and {int8 / gops:.1f} in int8: int8 buys at most "
            f"{int8 / fp32:.1f}x over fp32 here, whatever the serving does.",
        ]
    if res.drift:
        lines += [
            "",
            f"Precision against fp32 on the 240 eval texts (tolerance {TOLERANCE} on "
            "p(harmful)). Random weights put every p(harmful) near 0.5, where a logit error "
            "moves p by only a quarter of itself, so the logit margin log(p/(1-p)) is shown too, "
            f"with the fp32 margins' spread (std {res.margin_std:.3f}) for scale.",
            "",
            "| precision | max abs Δp(harmful) | max abs Δ logit margin | within 0.02 |",
            "|---|---:|---:|---|",
        ]
        for precision, (dp, dm) in res.drift.items():
            # A trained model's p can sit where the softmax is steepest (p = 0.5): 0.25 * dm
            # bounds Δp there, so require that too, not just the observed Δp.
            ok = dp <= TOLERANCE and 0.25 * dm <= TOLERANCE
            lines.append(f"| {precision} | {dp:.4f} | {dm:.4f} | {'yes' if ok else 'no'} |")
    lines += ["", "Targets:", ""]
    lines += targets(res)
    return "\n".join(lines) + "\n"


def targets(res: Results) -> list[str]:
    """One line per (candidate, target), saying plainly whether it is met."""
    out = []
    for label, precision in res.candidates.items():
        for length in ("short", "long"):
            cand = res.cell(label, length, HIGH_CONCURRENCY)
            base = res.cell(BASELINE, length, HIGH_CONCURRENCY)
            ceiling = lower_ceiling(res, precision, length)
            if cand and base and base.rps:
                ratio = cand.rps / base.rps
                out.append(
                    f"- {label}, {length}, concurrency 16: {ratio:.2f}x the baseline's throughput "
                    f"(target >= 4x): **{'met' if ratio >= 4 else 'NOT met'}**"
                )
            if cand and ceiling:
                share = cand.rps / ceiling
                out.append(
                    f"- {label}, {length}, concurrency 16: {100 * share:.0f}% of the lower ceiling "
                    f"(target >= 80%): **{'met' if share >= 0.8 else 'NOT met'}**"
                )
            cand1 = res.cell(label, length, 1)
            base1 = res.cell(BASELINE, length, 1)
            if cand1 and base1:
                ok = cand1.p50_ms <= base1.p50_ms
                out.append(
                    f"- {label}, {length}, concurrency 1: p50 {cand1.p50_ms:.0f} ms vs baseline "
                    f"{base1.p50_ms:.0f} ms (target: no worse): **{'met' if ok else 'NOT met'}**"
                )
        if precision in res.drift:
            dp, dm = res.drift[precision]
            ok = dp <= TOLERANCE and 0.25 * dm <= TOLERANCE
            out.append(
                f"- {label}: scores within {TOLERANCE} of fp32 (max abs Δp {dp:.4f}, "
                f"max abs Δ margin {dm:.4f}): **{'met' if ok else 'NOT met'}**"
            )
    return out


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few requests: a smoke run")
    parser.add_argument(
        "--precisions",
        default="int8",
        help="precisions to measure (fp32,int8,bf16 served by the Space, int8 in ONNX Runtime; "
        "int8-torch in this process only)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="measure everything this many times, alternating, and keep each row's best "
        "(this VM's speed drifts by 10-40%% over minutes)",
    )
    args = parser.parse_args(argv)
    stop_spaces_on_sigterm()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    bad = sorted(set(precisions) - {*SERVED, *IN_PROCESS})
    if bad:
        parser.error(f"unknown precision(s) {bad}; choose from {', '.join(SERVED + IN_PROCESS)}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    plan = QUICK if args.quick else FULL
    command = "python -m benchmarks.toxic_classifier.bench " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    loads = [f"{os.getloadavg()[0]:.2f}"]
    started = time.monotonic()
    model_dir = build_model()
    short, long = make_texts()
    res = Results(rounds=args.rounds)
    res.tokens = {t.name: token_counts(model_dir, t) for t in (short, long)}
    texts = (short, long)

    # Every figure (baseline, candidates, both ceilings) is measured once per round, in the
    # same order, and each row keeps its best round: no row is judged against a figure that
    # happened to fall in a fast or slow minute of this shared VM.
    for round_ in range(args.rounds):
        logger.info("round %d of %d", round_ + 1, args.rounds)
        # fp32 first: it is the reference for the drift check and the baseline's ceiling.
        bare_model(model_dir, ["fp32", *[p for p in precisions if p != "fp32"]], texts, plan,
                   res, drift=round_ == 0)  # fmt: skip
        rates = matmul_rates(plan.bare_s)
        res.matmul = (max(res.matmul[0], rates[0]), max(res.matmul[1], rates[1]))
        logger.info("matmul: fp32 %.0f GFLOP/s, int8 %.0f GOP/s", *rates)
        measure_server(BASELINE, "naive", model_dir, "fp32", texts, plan, res)
        for precision in (p for p in precisions if p in SERVED):
            label = _space_label(precision)
            res.candidates[label] = precision
            measure_server(label, "space", model_dir, precision, texts, plan, res)
        measure_server(
            "no-op model (server ceiling)", "noop", model_dir, "fp32", texts, plan, res,
            concurrencies=(HIGH_CONCURRENCY,),
        )  # fmt: skip
    loads.append(f"{os.getloadavg()[0]:.2f}")

    section = report(res, precisions, command.strip(), loads)
    section += f"\nWhole run: {statistics.fmean([time.monotonic() - started]) / 60:.1f} min.\n"
    print(section)
    path = write_section("bench", section, heading="bench.py: the Space against the naive Space")
    logger.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
