"""Why the Space runs int8 in ONNX Runtime: model throughput while another thread wants the GIL.

In the Space, the model runs in a batcher thread while the web server's event loop runs Python
in the same process. This measures the bare model (``ToxicityClassifier.forward`` on 16 short
texts, tokenized beforehand) alone and beside a thread that runs pure Python for a given share
of every 2 ms, for both int8 runtimes, interleaved:

* ``torch``: eager dynamic int8 (built here; the Space does not serve it); the forward pass
  drops and retakes the GIL at every operator, so each retake can wait for the other thread's
  switch interval;
* ``onnxruntime``: the int8 ONNX export the Space serves; ``session.run`` drops the GIL once for
  the whole graph.

Usage (from the monorepo root):
    python -m benchmarks.toxic_classifier.gil [--seconds 3] [--rounds 2]

Prints the table and puts it in ``benchmarks/results/toxic-classifier.md`` between the ``gil``
markers, with the machine, the date and the command.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import shlex
import sys
import threading
import time

from benchmarks.toxic_classifier.bench import _load_classifier
from benchmarks.toxic_classifier.results import stamp, write_section
from benchmarks.toxic_classifier.workload import build_model, make_texts
from shared.serving import preprocess_all

DUTIES = (0.0, 0.2, 0.5)
PERIOD_S = 0.002


class Busy:
    """A daemon thread that runs Python for ``duty`` of every period and sleeps the rest."""

    def __init__(self) -> None:
        self.duty = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.duty == 0.0:
                time.sleep(0.01)
                continue
            until = time.perf_counter() + PERIOD_S * self.duty
            while time.perf_counter() < until:
                sum(range(200))  # holds the GIL, as request handling does
            time.sleep(PERIOD_S * (1.0 - self.duty))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    model_dir = build_model()
    short, _ = make_texts()
    engines = {"torch": "int8-torch", "onnxruntime": "int8"}
    classifiers = {name: _load_classifier(model_dir, key) for name, key in engines.items()}
    batch = {name: preprocess_all(clf, short.texts) for name, clf in classifiers.items()}
    results: dict[tuple[str, float], list[float]] = {}
    busy = Busy()
    try:
        for _, duty, (name, clf) in itertools.product(
            range(args.rounds), DUTIES, classifiers.items()
        ):
            busy.duty = duty
            clf.forward(batch[name])  # warm-up
            done, start = 0, time.perf_counter()
            while done == 0 or time.perf_counter() - start < args.seconds:
                clf.forward(batch[name])
                done += len(batch[name])
            rate = done / (time.perf_counter() - start)
            results.setdefault((name, duty), []).append(rate)
    finally:
        busy.close()

    lines = [
        f"Bare int8 model, 16 short texts per forward pass, best of {args.rounds} rounds "
        f"(req/s); the other thread holds the GIL for the given share of every "
        f"{PERIOD_S * 1000:.0f} ms.",
        "",
        "| runtime | " + " | ".join(f"other thread {d:.0%}" for d in DUTIES) + " |",
        "|---|" + "---:|" * len(DUTIES),
    ]
    for name in classifiers:
        row = [max(results[(name, duty)]) for duty in DUTIES]
        cells = [f"{row[0]:.1f}"] + [f"{r:.1f} ({r / row[0]:.0%})" for r in row[1:]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    print(f"\n{table}")
    command = shlex.join(
        ["python", "-m", "benchmarks.toxic_classifier.gil", *(argv or sys.argv[1:])]
    )
    entry = f"{stamp(command)}\n{table}"
    path = write_section("gil", entry, heading="gil.py: int8 runtimes and the GIL")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
