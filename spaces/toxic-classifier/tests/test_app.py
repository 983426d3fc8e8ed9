"""The toxic-classifier Space as backends and people use it: gradio_client and plain HTTP."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from tests.harness import RunningSpace

SPACE = "toxic-classifier"
TOXIC = "أكره هذا الشخص وأتمنى أن يختفي"
KEYS = {"label", "score", "scores", "threshold", "raw", "truncated", "model"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def space(launch_space) -> RunningSpace:
    return launch_space(SPACE)


def check_verdict(verdict: dict, threshold: float = 0.5) -> None:
    assert set(verdict) == KEYS
    assert verdict["label"] in ("harmful", "safe")
    p = verdict["scores"]["harmful"]
    assert verdict["scores"]["safe"] == pytest.approx(1 - p)
    assert verdict["label"] == ("harmful" if p >= verdict["threshold"] else "safe")
    assert verdict["score"] == pytest.approx(verdict["scores"][verdict["label"]])
    assert verdict["threshold"] == threshold
    assert [r["label"] for r in verdict["raw"]] == ["LABEL_0", "LABEL_1"]
    # The demo model's label_map.json says LABEL_1 is harmful.
    assert verdict["raw"][1]["score"] == pytest.approx(p, abs=1e-6)
    assert verdict["model"].endswith("arabert-tiny")


def test_health_reports_model_and_demo_weights(space):
    body = space.http.get("/health").json()
    assert body["status"] == "ok"
    assert body["space"] == "toxic-classifier"
    model = body["models"]["model"]
    assert model["id"].endswith("arabert-tiny")
    assert model["demo"] is True
    assert model["device"] == "cpu"
    assert model["precision"] == "int8"
    assert model["runtime"] == "onnxruntime"
    # config.yaml's 2 batcher workers share the cores this process may run on.
    assert model["workers"] == 2
    assert model["threads_per_worker"] == max(1, len(os.sched_getaffinity(0)) // 2)
    assert model["label_map"] == {"LABEL_0": "safe", "LABEL_1": "harmful"}
    assert model["labels"] == ["LABEL_0", "LABEL_1"]
    assert (model["threshold"], model["max_chars"], model["max_batch"]) == (0.5, 20_000, 64)
    assert model["max_length"] > 0 and model["load_s"] > 0


def test_predict_with_gradio_client(space):
    verdict = space.client.predict(TOXIC, api_name="/predict")
    check_verdict(verdict)
    assert verdict["truncated"] is False


def test_same_verdict_with_tashkeel_and_tatweel(space):
    plain = space.client.predict(TOXIC, api_name="/predict")
    decorated = space.client.predict("أَكْرَهُ هـــذا الشَّخْصَ وأتمنّى أن يختفـــي", api_name="/predict")
    assert decorated["scores"] == plain["scores"]


@pytest.mark.parametrize(
    "text", ["😡😡😡", "you are stupid", "enta 7mar w ma bt3ref shi", "يا ghabi اسكت"]
)
def test_other_scripts_get_a_verdict(space, text):
    check_verdict(space.client.predict(text, api_name="/predict"))


def test_long_text_is_truncated_and_flagged(space):
    verdict = space.client.predict("كلمة " * 3000, api_name="/predict")
    check_verdict(verdict)
    assert verdict["truncated"] is True


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   \n\t ", "empty"),
        ("ـــــ", "empty after normalisation"),  # tatweel only
        ("\u064e\u064f\u0650\u0651", "empty after normalisation"),  # tashkeel only
        ("ا" * 20_001, "20,000"),
        (5, "text must be a string, got int"),
        (["a"], "text must be a string, got list"),
    ],
)
def test_bad_text_is_a_clear_error_and_server_keeps_serving(space, text, message):
    with pytest.raises(AppError, match=message):
        space.client.predict(text, api_name="/predict")
    check_verdict(space.client.predict(TOXIC, api_name="/predict"))


def test_predict_batch_keeps_order(space):
    texts = [TOXIC, "شكرا جزيلا", "كلمة " * 3000]
    verdicts = space.client.predict(texts, api_name="/predict_batch")
    assert len(verdicts) == 3
    singles = [space.client.predict(t, api_name="/predict") for t in texts]
    for batched, single in zip(verdicts, singles, strict=True):
        check_verdict(batched)
        # The Space runs dynamic int8, which scales activations per forward pass: a text's
        # score moves by ~1e-4 with the company it is batched with.
        assert batched["scores"]["harmful"] == pytest.approx(single["scores"]["harmful"], abs=2e-3)
    assert [v["truncated"] for v in verdicts] == [False, False, True]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (["ok"] * 65, "65 texts in one batch; the limit is 64"),
        ([], "empty"),
        (["ok", ""], "text 2 of 2: text is empty"),
        (["ok", 5], "text 2 of 2: text must be a string"),
        ("not a list", "must be a list"),
    ],
)
def test_predict_batch_limits(space, payload, message):
    with pytest.raises(AppError, match=message):
        space.client.predict(payload, api_name="/predict_batch")


def test_concurrent_requests_all_answered(space):
    texts = [f"{TOXIC} {i}" for i in range(24)]
    local = threading.local()

    def call(text: str) -> dict:
        # One client per thread, as concurrent backends have.
        if not hasattr(local, "client"):
            local.client = Client(space.url, verbose=False)
        return local.client.predict(text, api_name="/predict")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        verdicts = list(pool.map(call, texts))
    for verdict in verdicts:
        check_verdict(verdict)


def test_rest_old_gradio_shape(space):
    response = space.http.post("/api/predict", json={"data": [TOXIC]})
    assert response.status_code == 200
    (verdict,) = response.json()["data"]
    check_verdict(verdict)


def test_rest_inference_api_shape(space):
    one = space.http.post("/api/predict", json={"inputs": TOXIC})
    assert one.status_code == 200
    (ranked,) = one.json()
    assert {r["label"] for r in ranked} == {"harmful", "safe"}
    assert ranked[0]["score"] >= ranked[1]["score"]
    assert sum(r["score"] for r in ranked) == pytest.approx(1.0)

    many = space.http.post("/api/predict", json={"inputs": [TOXIC, "شكرا"]}).json()
    assert len(many) == 2
    verdict = space.http.post("/api/predict", json={"data": [TOXIC]}).json()["data"][0]
    harmful = {r["label"]: r["score"] for r in many[0]}["harmful"]
    assert harmful == pytest.approx(verdict["scores"]["harmful"], abs=2e-3)


def test_rest_inference_api_parameters(space):
    full = space.http.post("/api/predict", json={"inputs": TOXIC}).json()[0]
    body = {"inputs": [TOXIC], "parameters": {"top_k": 1, "function_to_apply": "none"}}
    (top,) = space.http.post("/api/predict", json=body).json()
    assert [r["label"] for r in top] == [full[0]["label"]]
    assert top[0]["score"] == pytest.approx(full[0]["score"], abs=2e-3)
    both = {"inputs": TOXIC, "parameters": {"top_k": 5}, "options": {"wait_for_model": True}}
    assert len(space.http.post("/api/predict", json=both).json()[0]) == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"data": [""]}, "empty"),
        ({"data": [123]}, "must be a string"),
        ({"data": []}, "exactly one text"),
        ({"inputs": ["x"] * 65}, "limit is 64"),
        ({"inputs": "x" * 20_001}, "20,000"),
        ({"inputs": 5}, "text must be a string, got int"),
        ({"inputs": {"text": "a"}}, "text must be a string, got dict"),
        ({"inputs": ["a", 5]}, "text 2 of 2: text must be a string, got int"),
        ({}, "either"),
        ({"data": ["a"], "inputs": "b"}, "either"),
        ({"text": "a"}, "text"),
        ({"inputs": "a", "parameters": {"top_k": 0}}, "parameters.top_k"),
    ],
)
def test_rest_bad_input_is_422(space, body, message):
    response = space.http.post("/api/predict", json=body)
    assert response.status_code == 422, response.text
    assert message in response.json()["error"]
    assert response.json()["error_type"] == "validation"


def test_rest_malformed_json_is_422(space):
    response = space.http.post(
        "/api/predict", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert space.http.get("/health").status_code == 200


def test_stats_count_requests_and_errors(space):
    before = space.http.get("/stats").json()
    space.client.predict(TOXIC, api_name="/predict")
    with pytest.raises(AppError):
        space.client.predict("", api_name="/predict")
    after = space.http.get("/stats").json()
    predict_before = before["endpoints"].get("predict", {"count": 0, "errors": 0})
    assert after["endpoints"]["predict"]["count"] == predict_before["count"] + 2
    assert after["endpoints"]["predict"]["errors"] == predict_before["errors"] + 1
    assert after["endpoints"]["predict"]["latency_ms"]["p50"] > 0


def test_stats_count_rest_bodies_refused_before_the_handler(space):
    def api_predict() -> dict:
        stats = space.http.get("/stats").json()["endpoints"]
        return stats.get("api_predict", {"count": 0, "errors": 0})

    before = api_predict()
    assert space.http.post("/api/predict", json={"data": [TOXIC]}).status_code == 200
    for body in ({"inputs": 5}, {}, {"foo": 1}):
        assert space.http.post("/api/predict", json=body).status_code == 422
    malformed = space.http.post(
        "/api/predict", content="not json", headers={"content-type": "application/json"}
    )
    assert malformed.status_code == 422
    after = api_predict()
    assert after["count"] == before["count"] + 5
    assert after["errors"] == before["errors"] + 4


def test_api_lists_named_endpoints(space):
    info = space.client.view_api(print_info=False, return_format="dict")
    assert {"/predict", "/predict_batch"} <= set(info["named_endpoints"])


def test_ui_page_is_served(space):
    page = space.http.get("/")
    assert page.status_code == 200
    assert "gradio" in page.text.lower()
    config = space.http.get("/config").json()
    assert "Arabic toxicity classifier" in json.dumps(config, ensure_ascii=False)


def test_ui_clears_the_verdict_before_classifying(space):
    """A refused text (empty, too long) must not leave the previous text's verdict on screen:
    the UI clears the bars first, runs ``predict``, and draws the bars only if it succeeded."""
    config = space.http.get("/config").json()
    types = {c["id"]: c["type"] for c in config["components"]}
    events = {d["id"]: d for d in config["dependencies"]}
    predict = next(d for d in events.values() if d.get("api_name") == "predict")
    cleared = events[predict["trigger_after"]]
    assert {trigger for _, trigger in cleared["targets"]} == {"click", "submit"}
    assert {types[i] for i in cleared["outputs"]} == {"label", "markdown", "json"}
    drawn = [d for d in events.values() if d.get("trigger_after") == predict["id"]]
    assert len(drawn) == 1 and drawn[0]["trigger_only_on_success"] is True
    assert {types[i] for i in drawn[0]["outputs"]} == {"label", "markdown"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HARMFUL_THRESHOLD": "1.5"}, "HARMFUL_THRESHOLD='1.5': threshold: Input should be "
         "less than or equal to 1"),
        ({"HARMFUL_THRESHOLD": "abc"}, "HARMFUL_THRESHOLD='abc': threshold: Input should be a "
         "valid number, unable to parse string as a number"),
        ({"PRECISION": "int4"}, "PRECISION='int4': precision: Input should be 'fp32', 'bf16' "
         "or 'int8'"),
        ({"BATCH_WORKERS": "0"}, "BATCH_WORKERS='0': workers: Input should be greater than or "
         "equal to 1"),
    ],
)  # fmt: skip
def test_bad_configuration_stops_the_space_with_one_line(env, message):
    app = Path(__file__).resolve().parent.parent / "app.py"
    done = subprocess.run(
        [sys.executable, str(app)],
        env={**os.environ, "PORT": "7899", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"toxic-classifier: bad configuration: {message}"]


def test_threshold_from_environment(launch_space):
    strict = launch_space(SPACE, HARMFUL_THRESHOLD="0.0")
    verdict = strict.client.predict("شكرا", api_name="/predict")
    check_verdict(verdict, threshold=0.0)
    assert verdict["label"] == "harmful"
    assert strict.http.get("/health").json()["models"]["model"]["threshold"] == 0.0
