"""The pure parts: Space resolution, settings, the breaker's state machine, answer parsing,
error classification, the schema check."""

from __future__ import annotations

import logging

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel
from spaces_client import (
    AnswerSheet,
    BreakerState,
    CircuitBreaker,
    ClientSettings,
    ScamReply,
    SpaceContractError,
    SpaceInputError,
    SpaceLoadingError,
    SpaceModelError,
    SpaceOverloadedError,
    SpacesClient,
    SpaceUnavailableError,
    SpamClassification,
    SpeechIntent,
    Toxicity,
    resolve_space,
)
from spaces_client.errors import most_telling
from spaces_client.tiers import check_schema
from spaces_client.toxicity import from_scores
from spaces_client.transport import rest_error, retry_after

# ---- resolution ---------------------------------------------------------------------------------


def test_the_three_ways_of_naming_a_space_resolve_alike():
    refs = {
        resolve_space("org/toxic"),
        resolve_space("https://huggingface.co/spaces/org/toxic"),
        resolve_space("https://huggingface.co/spaces/org/toxic/tree/main"),
        resolve_space("https://org-toxic.hf.space"),
        resolve_space("https://org-toxic.hf.space/"),
    }
    assert len(refs) == 1
    ref = refs.pop()
    assert (ref.url, ref.repo_id) == ("https://org-toxic.hf.space", "org/toxic")


def test_host_rules_and_ambiguous_hosts():
    assert resolve_space("My_Org/toxic.v2").url == "https://my-org-toxic-v2.hf.space"
    ambiguous = resolve_space("https://my-org-toxic-classifier.hf.space")
    assert ambiguous.repo_id is None
    assert "my-org/toxic-classifier" in ambiguous.candidates
    assert resolve_space("https://my-org-x.hf.space", "my-org/x").repo_id == "my-org/x"
    local = resolve_space("http://127.0.0.1:7861")
    assert (local.url, local.repo_id, local.on_hub) == ("http://127.0.0.1:7861", None, False)
    with pytest.raises(ValueError, match="owner/name"):
        resolve_space("toxic-classifier")


@given(
    st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True),
    st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True),
)
def test_repo_ids_and_their_urls_agree(owner, name):
    by_id = resolve_space(f"{owner}/{name}")
    assert resolve_space(f"https://huggingface.co/spaces/{owner}/{name}") == by_id
    assert resolve_space(by_id.url) == by_id


# ---- settings -----------------------------------------------------------------------------------


def test_settings_from_yaml_and_env(tmp_path):
    path = tmp_path / "spaces.yaml"
    path.write_text(
        "spaces:\n"
        "  toxicity:\n"
        "    space: org/toxic-classifier\n"
        "    deadline_s: 30\n"
        "    fallbacks:\n"
        "      - inference_api: org/toxic-model\n"
        "  tiers: {space: org/llm-tiers, api_key_env: TIERS_KEY}\n"
        "  tiers-gpu: {space: org/llm-tiers-gpu, kind: tiers}\n"
        "tiers: {abstraction: tiers-gpu}\n"
    )
    settings = ClientSettings.from_env(
        {
            "SPACES_CLIENT_CONFIG": str(path),
            "SPACES_SPAM": "http://127.0.0.1:7864",
            "SPACES_DEADLINE_S": "45",
        }
    )
    assert settings.spaces["toxicity"].space == "org/toxic-classifier"
    assert settings.spaces["toxicity"].fallbacks[0].inference_api == "org/toxic-model"
    assert settings.spaces["spam"].kind == "spam"
    assert {s.deadline_s for s in settings.spaces.values()} == {45}
    assert settings.tiers == {"abstraction": "tiers-gpu"}


def test_bad_settings_say_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        ClientSettings.model_validate({"spaces": {"other": {"space": "o/n"}}})
    with pytest.raises(ValueError, match=r"no Space 'nope'"):
        ClientSettings.model_validate(
            {"spaces": {"tiers": {"space": "o/n"}}, "tiers": {"user": "nope"}}
        )
    with pytest.raises(ValueError, match="exactly one of"):
        ClientSettings.model_validate(
            {
                "spaces": {
                    "toxicity": {
                        "space": "o/n",
                        "fallbacks": [{"space": "a/b", "inference_api": "m"}],
                    }
                }
            }
        )
    bad = tmp_path / "bad.yaml"
    bad.write_text("spaces: {toxicity: {space: o/n, deadline_s: -1}}")
    with pytest.raises(ValueError, match=r"bad\.yaml"):
        ClientSettings.from_yaml(bad)


def test_tokens_are_read_by_env_name_and_never_shown(caplog):
    settings = {
        "spaces": {
            "toxicity": {
                "space": "http://127.0.0.1:9",
                "token_env": "MY_TOKEN",
                "write_token_env": "MY_WRITE",
            }
        }
    }
    with (
        caplog.at_level(logging.DEBUG),
        SpacesClient(
            settings, environ={"MY_TOKEN": "hf_secret_read", "MY_WRITE": "hf_secret_write"}
        ) as client,
    ):
        state = client.space("toxicity")
        assert state.token.get_secret_value() == "hf_secret_read"
        shown = repr(state.token) + repr(state.write_token) + repr(client.settings)
        with pytest.raises(SpaceUnavailableError):
            client.toxicity().classify("x", timeout=0.3)
    assert "hf_secret" not in shown
    assert "hf_secret" not in caplog.text


# ---- the breaker --------------------------------------------------------------------------------


def test_breaker_state_machine():
    now = [0.0]
    breaker = CircuitBreaker("s", failure_threshold=3, reset_timeout_s=10, clock=lambda: now[0])
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_success()  # a success resets the count
    for _ in range(3):
        breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    assert breaker.retry_in() == 10
    now[0] = 10.0
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one
    breaker.record_failure()  # the probe failed: open again
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    now[0] = 20.0
    assert breaker.allow()
    breaker.release()  # a cancelled probe lets another try
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()


# ---- answers ------------------------------------------------------------------------------------

README_VERDICT = {
    "label": "harmful",
    "score": 0.91,
    "scores": {"harmful": 0.91, "safe": 0.09},
    "threshold": 0.5,
    "raw": [{"label": "LABEL_0", "score": 0.09}, {"label": "LABEL_1", "score": 0.91}],
    "truncated": False,
    "model": "Bisharababish/arabert-toxic-classifier@main",
}


def test_the_readme_answers_parse():
    assert Toxicity.model_validate(README_VERDICT).harmful
    spam = SpamClassification.model_validate(
        {
            "classification": "spam",
            "confidence": 0.93,
            "probabilities": {"spam": 0.93, "not_spam": 0.07},
            "model": "mistralai/Mistral-7B-Instruct-v0.3",
            "truncated": False,
        }
    )
    assert spam.spam
    reply = ScamReply.model_validate(
        {
            "reply": "Pay at [LINK].",
            "persona": "scammer",
            "style": "urgent",
            "finish_reason": "eos_token",
            "simulated": True,
            "redacted": {"[LINK]": 1},
            "notice": "Simulated",
        }
    )
    assert reply.redacted == {"[LINK]": 1}
    sheet = AnswerSheet.model_validate(
        {
            "register_number": {
                "value": "12345678",
                "confidence": 0.9,
                "characters": [],
                "box": [0, 0, 1, 1],
                "valid": True,
            },
            "subject_code": {
                "value": None,
                "confidence": 0.1,
                "characters": [],
                "box": None,
                "valid": False,
            },
            "needs_review": True,
            "rotation": 90,
            "page": 1,
            "pages": 3,
            "processing_ms": 88,
            "models": {},
        }
    )
    assert sheet.needs_review and sheet.subject_code.value is None
    intent = SpeechIntent.model_validate(
        {
            "filename": "a.wav",
            "intent": "balance",
            "confidence": 0.8,
            "transcription": "...",
            "processing_time_ms": 5,
            "top_predictions": [{"intent": "balance", "confidence": 0.8, "index": 3}],
            "model_type": "x",
            "whisper_info": {
                "model_size": "small",
                "language": None,
                "transcription_confidence": 0.7,
            },
            "no_speech": False,
        }
    )
    assert intent.top_predictions[0].index == 3


def test_inference_api_scores_become_the_same_verdict():
    verdict = from_scores(
        [{"label": "LABEL_1", "score": 0.91}, {"label": "LABEL_0", "score": 0.09}]
    )
    assert (verdict.label, verdict.score, verdict.scores) == (
        "harmful",
        0.91,
        {"harmful": 0.91, "safe": 0.09},
    )
    assert (
        from_scores(
            [{"label": "toxic", "score": 0.6}, {"label": "non-toxic", "score": 0.4}], threshold=0.7
        ).label
        == "safe"
    )
    with pytest.raises(ValueError, match="label_map"):
        from_scores([{"label": "weird", "score": 1.0}])


# ---- errors -------------------------------------------------------------------------------------


def response(status: int, body: object = None, headers: dict | None = None) -> httpx.Response:
    request = httpx.Request("POST", "http://space/api/predict")
    if body is None:
        return httpx.Response(
            status, text="<html>sleeping</html>", headers=headers, request=request
        )
    return httpx.Response(status, json=body, headers=headers, request=request)


def test_rest_answers_map_onto_typed_errors():
    def err(status, body=None, **headers):
        return rest_error(response(status, body, headers), "s")

    assert isinstance(
        err(422, {"error": "text is empty", "error_type": "validation"}), SpaceInputError
    )
    assert isinstance(
        err(404, {"error": "unknown tier 'x'", "error_type": "not_found"}), SpaceInputError
    )
    assert isinstance(
        err(404, {"error": "no route /api/x", "error_type": "not_found"}), SpaceContractError
    )
    assert isinstance(
        err(405, {"error": "Method Not Allowed", "error_type": "x"}), SpaceContractError
    )
    loading = err(
        503,
        {"error": "the model is still loading", "error_type": "unavailable"},
        **{"Retry-After": "5"},
    )
    assert isinstance(loading, SpaceLoadingError) and loading.retry_after == 5
    assert isinstance(
        err(503, {"error": "the model failed to load: x", "error_type": "unavailable"}),
        SpaceModelError,
    )
    busy = err(
        429, {"error": "Model is overloaded", "error_type": "overloaded"}, **{"Retry-After": "2"}
    )
    assert isinstance(busy, SpaceOverloadedError) and busy.retry_after == 2
    for status in (404, 502, 503):
        bare = err(status)
        assert type(bare) is SpaceUnavailableError and bare.check_hub
    cold = err(503, {"error": "Model x is currently loading", "estimated_time": 20.0})
    assert cold.retry_after == 20.0 and not cold.check_hub
    assert retry_after(httpx.Headers({"Retry-After": "soon"})) is None


def test_the_most_telling_error_decides_an_attempt():
    contract = SpaceContractError("405")
    down = SpaceUnavailableError("502", check_hub=True)
    bad = SpaceInputError("empty")
    assert most_telling([contract, down]) is down
    assert most_telling([down, bad]) is bad
    assert most_telling([contract, SpaceModelError("x")]).message == "x"
    assert most_telling([contract]) is contract


# ---- schema -------------------------------------------------------------------------------------


class Person(BaseModel):
    name: str
    age: int
    tags: list[str] = []


def test_check_schema_covers_what_grammars_use():
    schema = Person.model_json_schema()
    check_schema({"name": "Ada", "age": 36}, schema)
    for bad, where in (
        ({"name": "Ada"}, "age"),
        ({"name": "Ada", "age": "x"}, "age"),
        ({"name": "Ada", "age": True}, "age"),
        ({"name": "Ada", "age": 1, "tags": [1]}, "tags"),
    ):
        with pytest.raises(ValueError, match=where):
            check_schema(bad, schema)
    check_schema("b", {"enum": ["a", "b"]})
    with pytest.raises(ValueError):
        check_schema({"x": 1}, {"type": "object", "additionalProperties": False})
