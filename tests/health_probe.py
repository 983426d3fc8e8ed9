"""Poll a Space's ``GET /health`` from a process of its own: ``python -m tests.health_probe URL
EVERY TIMEOUT``.

:class:`tests.hostile.HealthWatchdog` runs this, so that the latency it reports is the
Space's, as a separate monitor (the Hub's health check, a status page) sees it, and not the
time the poll waited for the load generator's interpreter lock. Each poll prints one
tab-separated line, ``<seconds>\\t<failure or empty>``; the probe stops when its standard
input closes (or its parent kills it).
"""

from __future__ import annotations

import sys
import threading
import time

import httpx

from tests.hostile import excerpt


def poll(http: httpx.Client) -> tuple[float, str]:
    """One ``GET /health``: its latency (s), and what went wrong ("" when it answered 200)."""
    start = time.perf_counter()
    failure = ""
    try:
        response = http.get("/health")
        if response.status_code != 200:
            failure = f"{response.status_code}: {excerpt(response.text, 120)}"
    except httpx.HTTPError as e:
        failure = f"{type(e).__name__}: {e}"
    return time.perf_counter() - start, failure


def main(argv: list[str]) -> int:
    """Poll until standard input closes (see the module docstring)."""
    base_url, every, timeout = argv[0], float(argv[1]), float(argv[2])
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    with httpx.Client(base_url=base_url, timeout=timeout) as http:
        while not stop.is_set():
            latency, failure = poll(http)
            print(f"{latency:.6f}\t{failure.replace(chr(9), ' ')}", flush=True)
            stop.wait(every)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
