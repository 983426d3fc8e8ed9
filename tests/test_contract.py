"""The serving contract, checked on every Space under ``spaces/`` (discovered, not listed).

Each Space is started on its demo models, as ``make demo`` starts it, and must answer the same
``/health`` and ``/stats`` bodies, name its main Gradio endpoint ``predict``, give every Gradio
input that it does not require a default (so ``predict`` works with only the required inputs),
stop at start with one line and exit status 1 on a bad configuration value, and carry a valid
README front matter. A new Space passes this or fails CI.

A Space describes how to exercise it in ``tests/contract.json``:

- ``"predict"``: the required inputs of ``predict``, in order (strings default to ``"Hello"``);
  a value ``{"file": "relative/path"}`` is sent with ``gradio_client.handle_file``;
- ``"bad_env"``: one environment variable set to a bad value, e.g. ``{"PRECISION": "int4"}``;
- ``"ships_models"``: true when the Space's own trained models are committed with it and are
  what it serves everywhere (``/health`` then reports ``demo: false``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from gradio_client import handle_file

from scripts.check_space import check_front_matter
from tests.harness import SPACES_DIR, RunningSpace, space_names

SPACES = space_names()
HEALTH_KEYS = {"status", "space", "uptime_s", "models", "not_loaded"}
MODEL_KEYS = {"id", "revision", "device", "precision", "demo", "load_s"}


def contract(name: str) -> dict[str, Any]:
    path = SPACES_DIR / name / "tests" / "contract.json"
    assert path.is_file(), f"{name}: add tests/contract.json (see tests/test_contract.py)"
    return json.loads(path.read_text(encoding="utf-8"))


def required_inputs(name: str, api: dict[str, Any]) -> list[Any]:
    """Values for the parameters of ``predict`` that have no default."""
    given = contract(name).get("predict", [])
    params = [p for p in api["named_endpoints"]["/predict"]["parameters"]]
    required = [p for p in params if not p.get("parameter_has_default")]
    values = []
    for i, param in enumerate(required):
        value = given[i] if i < len(given) else None
        if isinstance(value, dict) and "file" in value:
            value = handle_file(str(SPACES_DIR / name / value["file"]))
        elif value is None:
            assert param["python_type"]["type"] == "str", (
                f"{name}: predict's required input {param['parameter_name']!r} is not a string; "
                "give a value in tests/contract.json"
            )
            value = "Hello"
        values.append(value)
    return values


@pytest.mark.parametrize("name", SPACES)
def test_readme_front_matter_is_valid(name):
    assert check_front_matter(SPACES_DIR / name) == []


@pytest.mark.parametrize("name", SPACES)
def test_a_bad_configuration_value_stops_the_space_with_one_line(name):
    bad = contract(name).get("bad_env")
    assert bad, f"{name}: give a bad_env in tests/contract.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PORT": "1", **bad}
    result = subprocess.run(
        [sys.executable, "app.py"],
        cwd=SPACES_DIR / name,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr[-2000:]
    variable, value = next(iter(bad.items()))
    assert lines[0].startswith(f"{name}: bad configuration:")
    assert f"{variable}={value!r}" in lines[0]


@pytest.fixture(scope="module")
def spaces(launch_space) -> dict[str, RunningSpace]:
    return {}


def running(spaces: dict[str, RunningSpace], launch_space: Any, name: str) -> RunningSpace:
    if name not in spaces:
        spaces[name] = launch_space(name)
    return spaces[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", SPACES)
def test_health_has_the_shared_body(name, spaces, launch_space):
    space = running(spaces, launch_space, name)
    response = space.http.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert set(body) >= HEALTH_KEYS
    assert (body["status"], body["space"]) == ("ok", name)
    assert body["uptime_s"] >= 0
    assert body["models"], "a Space that answers 200 has a loaded model"
    for model in body["models"].values():
        assert set(model) >= MODEL_KEYS
        # make demo and the tests run the demo models, except in a Space whose shipped models
        # are the product (answer-sheet-ml's, trained by this project).
        assert model["demo"] is not contract(name).get("ships_models", False)
    assert isinstance(body["not_loaded"], list)


@pytest.mark.slow
@pytest.mark.parametrize("name", SPACES)
def test_predict_works_with_only_its_required_inputs_and_is_counted(name, spaces, launch_space):
    space = running(spaces, launch_space, name)
    api = space.client.view_api(print_info=False, return_format="dict")
    assert "/predict" in api["named_endpoints"]
    result = space.client.predict(*required_inputs(name, api), api_name="/predict")
    assert result not in (None, "", [], {})
    stats = space.http.get("/stats").json()
    assert (stats["space"], stats["ready"]) == (name, True)
    assert {"total", "endpoints"} <= set(stats)
    assert stats["endpoints"]["predict"]["count"] >= 1


@pytest.mark.slow
@pytest.mark.parametrize("name", SPACES)
def test_unknown_routes_answer_the_error_body(name, spaces, launch_space):
    space = running(spaces, launch_space, name)
    response = space.http.get("/no/such/route")
    assert response.status_code == 404
    assert set(response.json()) >= {"error", "error_type"}


def test_every_space_has_a_contract_file():
    missing = [n for n in SPACES if not (SPACES_DIR / n / "tests" / "contract.json").is_file()]
    assert missing == []


def test_the_layout_is_followed():
    """app.py, predictor.py, api.py, ui.py, config.yaml, README.md, requirements.txt."""
    for name in SPACES:
        files = {p.name for p in Path(SPACES_DIR / name).iterdir()}
        needed = {"app.py", "predictor.py", "api.py", "ui.py", "config.yaml", "README.md",
                  "requirements.txt"}  # fmt: skip
        assert needed <= files, f"{name} lacks {sorted(needed - files)}"
