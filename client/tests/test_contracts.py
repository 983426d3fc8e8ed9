"""Typed clients against stub Spaces that follow the README / issue contracts: llm-tiers
(generate, structure, variations, streams, tiers on several Spaces), answer-sheet-ml and
twi-speech (not built yet: written against their issue's contract), and ``spaces-client check``.
"""

from __future__ import annotations

import asyncio

import pytest
from fakes.fault_proxy import Fault, FaultProxy
from fakes.servers import serve, spawn
from fakes.stubs import TIERS, tiers_app, tiers_text
from pydantic import BaseModel
from spaces_client import (
    AnswerSheet,
    AnswerSheetClient,
    Generation,
    SpaceInputError,
    SpacesClient,
    SpaceSettings,
    SpeechIntent,
    StreamInterrupted,
    StructureError,
    TiersClient,
    TwiSpeechClient,
)
from spaces_client.cli import main
from spaces_client.twi_speech import silence_wav

FAST = {"initial_s": 0.05, "max_s": 0.3, "jitter_s": 0.02}


@pytest.fixture(scope="module")
def tiers_server():
    with serve(tiers_app(stream_delay=0.01)) as server:
        yield server


@pytest.fixture(scope="module")
def client():
    with SpacesClient() as client:
        yield client


@pytest.fixture
def tiers(client, tiers_server):
    return TiersClient(tiers_server.url, client=client, deadline_s=5, retry=FAST)


# ---- llm-tiers ----------------------------------------------------------------------------------


def test_generate_on_each_tier_sync_and_async(tiers):
    for tier in TIERS:
        out = tiers.generate("Hello", tier, max_new_tokens=3)
        assert out == Generation(
            text=tiers_text("Hello", tier, {"max_new_tokens": 3}),
            tier=tier,
            finish_reason="length",
            generated_tokens=3,
        )

    async def both():
        return await asyncio.gather(
            tiers.agenerate("Hi", "user", {"name": "Ada"}), tiers.agenerate("Hi", "company")
        )

    user, company = asyncio.run(both())
    assert user.tier == "user" and company.text.startswith("company:")


def test_an_unknown_tier_is_an_input_error_listing_the_tiers(tiers):
    with pytest.raises(SpaceInputError, match="base, company"):
        tiers.generate("Hello", "premium")


class Person(BaseModel):
    name: str
    age: int


def test_generate_structure_returns_the_validated_model_or_json(tiers):
    person = tiers.generate_structure("A person:", Person)
    assert person == Person(name="x", age=1)
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    assert asyncio.run(tiers.agenerate_structure("A city:", schema)) == {"city": "x"}


def test_generate_structure_that_does_not_validate_is_a_structure_error(client, tiers_server):
    # A Space that ignores the grammar answers free text: the client refuses it.
    proxy = FaultProxy(tiers_server.url)
    proxy.add(Fault(status=200, json={"generated_text": "not json"}), path="/api/generate")
    with serve(proxy) as server:
        tiers = TiersClient(server.url, client=client, deadline_s=3, retry=FAST)
        with pytest.raises(StructureError) as caught:
            tiers.generate_structure("A person:", Person)
    assert caught.value.text == "not json"


def test_generate_variations_are_distinct(tiers):
    texts = tiers.generate_variations("Name a product", 3, "company")
    assert len(texts) == 3 and len(set(texts)) == 3
    assert len(asyncio.run(tiers.agenerate_variations("x", 2))) == 2


def test_stream_yields_the_text_as_it_is_generated(tiers):
    want = tiers_text("Hello", "base", {"max_new_tokens": 6})
    chunks = list(tiers.stream("Hello", max_new_tokens=6))
    assert len(chunks) == 6 and "".join(chunks) == want

    async def collect():
        return [c async for c in tiers.astream("Hello", max_new_tokens=6)]

    assert "".join(asyncio.run(collect())) == want


def test_a_stream_dropped_before_its_first_token_is_retried_after_is_interrupted(
    client, tiers_server
):
    proxy = FaultProxy(tiers_server.url)
    with serve(proxy) as server:
        tiers = TiersClient(server.url, client=client, deadline_s=5, retry=FAST)
        proxy.add(Fault(kind="drop", after_bytes=5), path="/api/generate", times=1)
        want = tiers_text("Hi", "base", {"max_new_tokens": 8})
        assert "".join(tiers.stream("Hi", max_new_tokens=8)) == want
        proxy.add(Fault(kind="drop", after_bytes=400), path="/api/generate", times=1)
        got = []
        with pytest.raises(StreamInterrupted) as caught:
            for chunk in tiers.stream("Hi", max_new_tokens=8):
                got.append(chunk)
        assert got and caught.value.partial == "".join(got)
        assert want.startswith(caught.value.partial)


def test_a_stream_within_its_deadline(client):
    with serve(tiers_app(stream_delay=0.5)) as slow:
        tiers = TiersClient(slow.url, client=client, retry=FAST)
        from spaces_client import SpacesError

        with pytest.raises(SpacesError):
            list(tiers.stream("Hi", max_new_tokens=20, timeout=1.0))


def test_tiers_can_live_on_different_spaces(tiers_server):
    with serve(tiers_app()) as gpu:
        settings = {
            "spaces": {
                "tiers": {"space": tiers_server.url},
                "tiers-gpu": {"space": gpu.url, "kind": "tiers"},
            },
            "tiers": {"abstraction": "tiers-gpu"},
        }
        with SpacesClient(settings) as client:
            tiers = client.tiers()
            assert tiers.generate("Plan", "abstraction").tier == "abstraction"
            assert client.space("tiers-gpu").breaker.failures == 0
            assert tiers._state("abstraction").ref.url == gpu.url
            assert tiers._state("base").ref.url == tiers_server.url


# ---- answer-sheet-ml and twi-speech (issue contracts) -------------------------------------------


@pytest.fixture(scope="module")
def sheet_server():
    with spawn("answer_sheet_app") as server:
        yield server


@pytest.fixture(scope="module")
def speech_server():
    with spawn("twi_speech_app") as server:
        yield server


def test_answer_sheet_extract_by_gradio_and_by_rest(client, sheet_server, tmp_path):
    sheets = AnswerSheetClient(sheet_server.url, client=client, deadline_s=20, retry=FAST)
    scan = tmp_path / "scan.png"
    scan.write_bytes(b"\x89PNG" + b"0" * 100)
    by_gradio = sheets.extract(scan)
    assert isinstance(by_gradio, AnswerSheet) and sheets.state.preferred == "gradio"
    assert by_gradio.register_number.value == f"{104:08d}"
    sheets.state.preferred = "rest"
    by_rest = sheets.extract(scan.read_bytes())
    assert by_rest.register_number == by_gradio.register_number
    with scan.open("rb") as f:
        checked = asyncio.run(sheets.aextract(f, "bad", pages="all"))
    assert checked.needs_review and checked.pages == 2 and not checked.subject_code.valid
    with pytest.raises(SpaceInputError, match="empty"):
        sheets.extract(b"")


def test_twi_speech_recognize_and_batch(client, speech_server):
    speech = TwiSpeechClient(speech_server.url, client=client, deadline_s=20, retry=FAST)
    audio = silence_wav(0.1)
    one = speech.recognize(audio, top_k=3)
    assert isinstance(one, SpeechIntent) and len(one.top_predictions) == 5  # gradio: its top_k
    speech.state.preferred = "rest"
    rest = speech.recognize(audio, top_k=3)
    assert rest.intent == one.intent and len(rest.top_predictions) == 3
    many = asyncio.run(speech.arecognize_many([audio, b"\0" * 50]))
    assert [r.no_speech for r in many] == [False, True]
    assert speech.recognize_many([audio])[0].whisper_info.model_size == "small"


# ---- spaces-client check ------------------------------------------------------------------------


def test_check_prints_a_table_and_exits_1_when_a_space_is_down(tiers_server, sheet_server, capsys):
    code = main(
        [
            "check",
            "--space",
            f"tiers={tiers_server.url}",
            "--space",
            f"answer_sheet={sheet_server.url}",
            "--timeout",
            "10",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "stub/mistral-tiny" in out and "round-trip" in out and "DOWN" not in out
    code = main(
        [
            "check",
            "--space",
            f"tiers={tiers_server.url}",
            "--space",
            "toxicity=http://127.0.0.1:9",
            "--timeout",
            "2",
        ]
    )
    captured = capsys.readouterr()
    assert code == 1
    assert "DOWN" in captured.out and "toxicity is down" in captured.err


def test_settings_given_in_code(tiers_server):
    with SpacesClient({"spaces": {"tiers": SpaceSettings(space=tiers_server.url)}}) as c:
        assert c.tiers().generate("x", max_new_tokens=1).text == "base:x"
