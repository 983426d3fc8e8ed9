"""Start every Space under ``spaces/`` on localhost with its demo models; Ctrl-C stops them all.

Each Space gets the same port every time (:data:`DEMO_PORTS`), so the port in its README's
examples is the one ``make demo`` serves it on, whatever other Spaces exist; a Space not in the
table gets the next port after the table's. ``--base-port`` shifts them all.

Usage:
    python scripts/demo.py [--base-port 7860] [--host 127.0.0.1] [--only NAME ...]

Stop it with Ctrl-C in its terminal, or ``kill <pid>`` (SIGTERM) of this process or of
``make demo`` (make passes SIGTERM on to its recipe, but not SIGINT).
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from scripts.launcher import (
    ROOT,
    RunningSpace,
    demo_env,
    space_names,
    start_space,
    stop_spaces_on_sigterm,
)

LOG_DIR = ROOT / "build" / "logs"

# Port offset from --base-port of each Space under `make demo`; add a Space here when it lands.
DEMO_PORTS = {
    "llm-tiers": 0,
    "toxic-classifier": 1,
    "answer-sheet-ml": 2,
    "twi-speech": 3,
    "spam-mistral": 4,
}


def demo_ports(names: list[str], base: int) -> dict[str, int]:
    """Each Space's port: its :data:`DEMO_PORTS` offset, or the next one after the table."""
    offsets = dict(DEMO_PORTS)
    for name in names:
        offsets.setdefault(name, max(offsets.values()) + 1)
    return {name: base + offsets[name] for name in names}


def main(argv: list[str] | None = None) -> int:
    """Start the Spaces, print their URLs, and wait for Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-port", type=int, default=7860, help="port of the first Space")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 for all)")
    parser.add_argument("--only", nargs="*", default=None, help="start only these Spaces")
    args = parser.parse_args(argv)
    stop_spaces_on_sigterm()

    names = args.only or space_names()
    ports = demo_ports(space_names(), args.base_port)
    env = demo_env()
    print(f"Starting {len(names)} Space(s) on demo models (logs in {LOG_DIR.relative_to(ROOT)}/)")
    started: list[tuple[RunningSpace, Path]] = []
    with ExitStack() as stack:
        try:
            for name in names:
                log = LOG_DIR / f"{name}.log"
                print(f"  {name}: starting ...", flush=True)
                space = stack.enter_context(
                    start_space(
                        name,
                        env.get(name, {}),
                        port=ports[name],
                        host=args.host,
                        log_path=log,
                    )
                )
                started.append((space, log))
                print(f"  {name}: ready at {space.url}", flush=True)
            print("\nSpaces running (Gradio UI at the URL, health at /health, stats at /stats):")
            for space, log in started:
                print(f"  {space.name:<20} {space.url:<28} log: {log.relative_to(ROOT)}")
            print("\nPress Ctrl-C to stop them all.", flush=True)
            while True:
                for space, log in started:
                    if space.process.poll() is not None:
                        print(f"\n{space.name} exited ({space.process.returncode}); see {log}")
                        return 1
                time.sleep(1)
        except KeyboardInterrupt:
            print("\nStopping ...", flush=True)
        except RuntimeError as e:
            print(f"\nA Space failed to start: {e}", file=sys.stderr)
            return 1
    print("All Spaces stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
