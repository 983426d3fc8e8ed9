"""The request guard: body size, strict JSON, in-flight limit, errors that keep the connection."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from shared.guard import BodyRejected, check_json
from shared.serving import ModelInfo, Service, install_routes
from tests.harness import free_port

INFO = ModelInfo(id="owner/model", revision=None, device="cpu", precision="fp32", demo=True)


class Model:
    info = INFO


class Body(BaseModel):
    text: str
    temperature: float = 1.0


def make_app(**limits: int) -> tuple[FastAPI, asyncio.Event]:
    service = Service("demo", Model)
    service.start_loading(background=False)
    app = FastAPI()
    install_routes(app, service, **limits)
    release = asyncio.Event()

    @app.post("/echo")
    def echo(body: Body) -> dict:
        return body.model_dump()

    @app.post("/hold")
    async def hold() -> dict:
        await release.wait()
        return {"held": True}

    @app.post("/boom")
    def boom() -> None:
        raise KeyError("internals")

    @app.get("/port")
    def port(request: Request) -> dict:
        return {"port": request.client.port if request.client else None}

    return app, release


def test_a_body_over_the_limit_is_413_whether_declared_or_streamed():
    app, _ = make_app(max_body_bytes=1000)
    client = TestClient(app)
    small = client.post("/echo", json={"text": "x" * 500})
    assert small.status_code == 200
    declared = client.post("/echo", json={"text": "x" * 2000})
    assert declared.status_code == 413
    assert declared.json()["error_type"] == "payload_too_large"
    assert "1,000 bytes" in declared.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"text": "'
        for _ in range(10):
            yield b"y" * 200
        yield b'"}'

    streamed = client.post("/echo", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ('{"text": "hi", "temperature": NaN}', "NaN is not a JSON number"),
        ('{"text": "hi", "temperature": Infinity}', "Infinity is not a JSON number"),
        ('{"text": "hi", "temperature": -Infinity}', "-Infinity is not a JSON number"),
        ('{"text": "\\ud800 hi"}', "lone UTF-16 surrogate"),
        ('{"text": "hi", "\\udfff": 1}', "lone UTF-16 surrogate"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"text": "hi", "temperature": 1e999}', "out of range"),
    ],
)
def test_what_python_parses_and_json_forbids_is_422(body, says):
    app, _ = make_app()
    response = TestClient(app).post(
        "/echo", content=body.encode(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["error_type"] == "validation"
    assert says in response.json()["error"]


def test_a_surrogate_pair_and_other_bodies_pass_to_the_route():
    app, _ = make_app()
    client = TestClient(app)
    emoji = client.post(
        "/echo", content=b'{"text": "\\ud83d\\ude00"}', headers={"content-type": "application/json"}
    )
    assert (emoji.status_code, emoji.json()["text"]) == (200, "😀")
    truncated = client.post(
        "/echo", content=b'{"text": "hi', headers={"content-type": "application/json"}
    )
    assert truncated.status_code == 422  # FastAPI's own answer to a body that is not JSON


@pytest.mark.parametrize(
    "body",
    [
        b'{"text": "\xff\xfe"}',  # not UTF-8
        b'{"text": "\xed\xa0\x80"}',  # a surrogate encoded in UTF-8, which Python would decode
        '{"text": "hi"}'.encode("utf-16"),  # Python's json would guess UTF-16
    ],
)
def test_a_body_that_is_not_utf8_is_422(body):
    app, _ = make_app()
    response = TestClient(app).post("/echo", content=body,
                                    headers={"content-type": "application/json"})  # fmt: skip
    assert response.status_code == 422
    assert "not valid UTF-8" in response.json()["error"]


finite = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)  # fmt: skip


@given(finite)
def test_check_json_passes_every_json_value(value):
    check_json(json.dumps(value, ensure_ascii=True).encode())
    check_json(json.dumps(value, ensure_ascii=False).encode())


@given(finite, st.sampled_from([math.nan, math.inf, -math.inf]))
def test_check_json_refuses_any_non_finite_number(value, bad):
    with pytest.raises(BodyRejected, match="not a JSON number"):
        check_json(json.dumps([value, {"x": bad}]).encode())


def test_more_requests_in_flight_than_allowed_answer_429_at_once():
    app, release = make_app(max_concurrent=1)

    async def scenario() -> tuple[int, httpx.Response, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://space") as client:
            held = asyncio.create_task(client.post("/hold"))
            await asyncio.sleep(0.2)
            extra = await client.post("/hold")
            health = await client.get("/health")  # GETs are not counted
            release.set()
            return (await held).status_code, extra, health.status_code

    held, extra, health = asyncio.run(scenario())
    assert (held, extra.status_code, health) == (200, 429, 200)
    assert extra.json()["error_type"] == "overloaded"
    assert extra.headers["retry-after"] == "1"


@pytest.fixture
def served() -> Iterator[str]:
    """The guarded app behind a real uvicorn server, where keep-alive is observable."""
    app, _ = make_app()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_an_unexpected_error_is_a_500_body_and_the_connection_stays_open(served):
    with httpx.Client(base_url=served) as client:
        before = client.get("/port").json()["port"]
        boom = client.post("/boom")
        assert boom.status_code == 500
        assert boom.json() == {"error": "internal error: KeyError", "error_type": "internal"}
        after = client.get("/port").json()["port"]
    assert after == before  # the same keep-alive connection served all three
