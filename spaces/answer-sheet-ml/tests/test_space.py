"""The answer-sheet Space as the web app and backends use it: multipart /extract, /status,
and gradio_client's predict; bad uploads get a clear 4xx and the Space keeps serving."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from tests.harness import RunningSpace

SPACE = "answer-sheet-ml"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TRUTH = {
    json.loads(line)["file"]: json.loads(line)
    for line in (EXAMPLES / "truth.jsonl").read_text().splitlines()
}
FIELD_KEYS = {
    "value",
    "confidence",
    "characters",
    "box",
    "valid",
    "accepted",
    "detection_confidence",
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def space(launch_space) -> RunningSpace:
    return launch_space(SPACE)


def post(
    space: RunningSpace, name: str, data: bytes | None = None, **params: str
) -> httpx.Response:
    body = data if data is not None else (EXAMPLES / name).read_bytes()
    return httpx.post(
        f"{space.url}/extract", files={"file": (name, body)}, params=params, timeout=60
    )


def test_extract_reads_an_uploaded_image(space):
    response = post(space, "sheet-upright.jpg")
    assert response.status_code == 200, response.text
    body = response.json()
    truth = TRUTH["sheet-upright.jpg"]["fields"]
    for name in ("register_number", "subject_code"):
        assert set(body[name]) == FIELD_KEYS
        assert body[name]["value"] == truth[name]["text"]
    assert isinstance(body["needs_review"], bool) and body["processing_ms"] > 0
    assert {m["format"] for m in body["models"].values()} == {"onnx"}


def test_extract_reads_every_page_of_a_pdf_when_asked(space):
    first = post(space, "two-sheets.pdf").json()
    assert first["page_count"] == 2 and "pages" not in first
    every = post(space, "two-sheets.pdf", pages="all").json()
    assert [p["page"] for p in every["pages"]] == [1, 2]
    form = httpx.post(
        f"{space.url}/extract",
        files={"file": ("s.pdf", (EXAMPLES / "two-sheets.pdf").read_bytes())},
        data={"exam_type": "any", "pages": "all"},
        timeout=60,
    )
    assert form.status_code == 200 and form.json()["exam_type"] == "any"
    assert [p["page"] for p in form.json()["pages"]] == [1, 2]  # form fields work as the query
    wrong = post(space, "two-sheets.pdf", pages="some")
    assert wrong.status_code == 422


@pytest.mark.parametrize(
    ("name", "data", "params", "message"),
    [
        ("empty.png", b"", {}, "document is empty"),
        ("notes.txt", b"hello, not a sheet", {}, "unsupported document type"),
        ("broken.pdf", b"%PDF-1.7\n%broken", {}, "could not read the PDF"),
        ("sheet-upright.jpg", None, {"exam_type": "nope"}, "unknown exam_type"),
    ],
)
def test_bad_uploads_are_422_with_the_reason(space, name, data, params, message):
    response = post(space, name, data, **params)
    assert response.status_code == 422, response.text
    assert response.json()["error_type"] == "validation" and message in response.json()["error"]


def test_a_request_without_a_file_says_how_to_send_one(space):
    response = httpx.post(f"{space.url}/extract", json={"file": "x"}, timeout=30)
    assert response.status_code == 422
    assert "multipart/form-data" in response.json()["error"]
    response = httpx.post(
        f"{space.url}/extract",
        params={"pages": "some"},
        files={"file": ("a.png", b"x")},
        timeout=30,
    )
    assert response.status_code == 422


def test_status_names_the_models_and_limits(space):
    body = httpx.get(f"{space.url}/status", timeout=30).json()
    assert body["extraction_available"] is True and body["mode"] == "onnx"
    assert set(body["models"]) == {"detector", "register_reader", "subject_reader"}
    assert all(len(m["sha256"]) == 64 for m in body["models"].values())
    assert body["limits"]["max_pages"] == 20 and "default" in body["exam_types"]


def test_predict_through_gradio_client(space, tmp_path):
    client = space.client
    result = client.predict(
        handle_file(str(EXAMPLES / "sheet-upside-down.jpg")), api_name="/predict"
    )
    assert (result["rotation"] + TRUTH["sheet-upside-down.jpg"]["rotation"]) % 360 == 0
    every = client.predict(
        handle_file(str(EXAMPLES / "two-sheets.pdf")), "any", "all", api_name="/predict"
    )
    assert len(every["pages"]) == 2
    bad = tmp_path / "not-a-sheet.png"
    bad.write_text("a text file with an image's name")
    with pytest.raises(AppError, match="unsupported document type"):
        client.predict(handle_file(str(bad)), api_name="/predict")
    assert httpx.get(f"{space.url}/health", timeout=30).status_code == 200
