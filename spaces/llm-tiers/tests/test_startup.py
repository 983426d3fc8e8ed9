"""A bad configuration stops ``python app.py`` at start: one line naming the variable, the value
and what is allowed, exit status 1, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SPACE_DIR = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        ("MEMORY_BUDGET_GB", "lots", "valid number"),
        ("TIER_BASE_DTYPE", "float8", "'auto', 'float32', 'bfloat16' or 'float16'"),
        ("DEFAULT_TIER", "nope", "one of base, company, abstraction, user"),
    ],
)
def test_bad_value_stops_the_space_with_one_line(demo_models, variable, value, allowed):
    env = {**os.environ, **demo_models["llm-tiers"], "PORT": "1", variable: value}
    result = subprocess.run(
        [sys.executable, "app.py"], cwd=SPACE_DIR, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("llm-tiers: bad configuration: ")
    assert f"{variable}={value!r}" in lines[0] and allowed in lines[0]
