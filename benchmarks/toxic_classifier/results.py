"""Where the toxic-classifier benchmarks write: ``benchmarks/results/toxic-classifier.md``.

Each benchmark owns a section of that file between ``<!-- NAME:start -->`` and
``<!-- NAME:end -->`` markers: ``bench.py`` and ``gil.py`` replace theirs with the latest run,
``ab.py`` adds each comparison to its own. The text outside the markers (what the figures say,
with their dates) is written by people and left as it is.
"""

from __future__ import annotations

import datetime as dt
import platform
from pathlib import Path

import psutil

from benchmarks.toxic_classifier.workload import ROOT

RESULTS = ROOT / "benchmarks" / "results" / "toxic-classifier.md"
TITLE = "# toxic-classifier: benchmark results"


def cpu_model() -> str:
    """The CPU's model name, from ``/proc/cpuinfo`` where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_flags() -> str:
    """The CPU's AVX-512 and AMX flags, which decide the int8 and bf16 kernels."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return ", ".join(sorted({f for f in text.split() if f.startswith(("avx512", "amx"))}))


def machine() -> str:
    """``AMD EPYC ..., 2 logical cores (flags), 24 GB RAM, no GPU``."""
    return (
        f"{cpu_model()}, {psutil.cpu_count(logical=True)} logical cores ({cpu_flags()}), "
        f"{psutil.virtual_memory().total / 2**30:.0f} GB RAM, no GPU"
    )


def stamp(command: str) -> str:
    """The first lines of an entry: when, on what, and the command that measured it."""
    return (
        f"Measured {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} on {machine()}.\n\n"
        f"Command: `{command}`\n"
    )


def write_section(name: str, body: str, *, heading: str, append: bool = False,
                  path: Path = RESULTS) -> Path:  # fmt: skip
    """Put ``body`` in the ``name`` section of the results file.

    Args:
        name: The section's marker name (``bench``, ``gil``, ``ab``).
        body: Markdown, ending with a newline.
        heading: The ``##`` heading the section gets when the file has no such section yet.
        append: Add ``body`` after what the section holds instead of replacing it.
        path: The results file; made (with its title) if missing.

    Returns:
        ``path``.
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text(encoding="utf-8") if path.is_file() else f"{TITLE}\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        old, tail = rest.split(end, 1)
        kept = old.strip("\n") + "\n\n" if append and old.strip() else ""
        text = f"{head}{start}\n{kept}{body}{end}{tail}"
    else:
        text = f"{text.rstrip()}\n\n## {heading}\n\n{start}\n{body}{end}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
