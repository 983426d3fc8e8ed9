"""The launched Space, through the clients its users run: InferenceClient, openai, gradio_client,
httpx (curl). One Space for the module: demo weights for every tier, a LoRA adapter on the
company tier, an API key, and a user tier that takes one request at a time (for 429)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
from gradio_client.exceptions import AppError
from huggingface_hub import InferenceClient
from huggingface_hub.errors import ValidationError
from openai import AuthenticationError, NotFoundError, OpenAI
from pydantic import BaseModel, Field

from shared.models import cpu_supports_bf16

KEY = "test-secret"
AUTH = {"Authorization": f"Bearer {KEY}"}
TIERS = ["base", "company", "abstraction", "user"]
# What dtype "auto" serves on this machine.
AUTO_PRECISION = "bf16" if cpu_supports_bf16() else "fp32"


@pytest.fixture(scope="module")
def adapter(demo_models, tmp_path_factory) -> Path:
    """A LoRA adapter (non-zero, so it changes the output) on the demo Mistral."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(demo_models["llm-tiers"]["TIER_BASE_MODEL"])
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    out = tmp_path_factory.mktemp("company-lora")
    get_peft_model(base, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def space(launch_space, adapter):
    return launch_space(
        "llm-tiers",
        API_KEY=KEY,
        TIER_COMPANY_ADAPTER=str(adapter),
        TIER_USER_MAX_CONCURRENT_REQUESTS="1",
        TIER_ABSTRACTION_MAX_NEW_TOKENS="64",
    )


def post(space, path, body, **kw):
    return space.http.post(path, json=body, headers=AUTH, **kw)


def tgi(space, tier=None) -> InferenceClient:
    return InferenceClient(space.url + (f"/tiers/{tier}" if tier else ""), token=KEY)


class Person(BaseModel):
    name: str = Field(max_length=12)
    age: int = Field(ge=0, le=120)
    member: bool


# ---- service routes -----------------------------------------------------------------------------


def test_health_and_info_are_open(space):
    assert space.http.get("/health").json()["status"] == "ok"
    info = space.http.get("/info").json()
    assert info["tier"] == "base" and info["max_total_tokens"] > 0 and info["version"]
    company = space.http.get("/tiers/company/info").json()
    assert company["adapter"] and company["tier"] == "company"
    assert space.http.get("/tiers/user/health").status_code == 200


def test_health_lists_each_loaded_tier(space):
    health = space.http.get("/health").json()
    assert set(health) == {"status", "space", "uptime_s", "models", "not_loaded"}
    assert health["space"] == "llm-tiers"
    loaded = {t["tier"] for t in space.http.get("/tiers").json()["tiers"] if t["loaded"]}
    assert "base" in loaded and set(health["models"]) == loaded
    assert sorted(health["not_loaded"]) == sorted(set(TIERS) - loaded)
    base = health["models"]["base"]
    assert base["demo"] is True and base["precision"] == AUTO_PRECISION and base["load_s"] > 0
    assert {"id", "revision", "device", "adapter", "shares_weights_with"} <= set(base)


def test_unknown_routes_answer_the_tgi_body(space):
    for response in (
        space.http.get("/nope"),
        space.http.post("/v2/generate", json={}),
        space.http.get("/tiers/base/nope"),
    ):
        assert response.status_code == 404, response.text
        body = response.json()
        assert set(body) == {"error", "error_type"} and body["error_type"] == "not_found"
        assert response.request.url.path in body["error"]
    wrong = space.http.get("/generate")
    assert wrong.status_code == 405 and wrong.json()["error_type"] == "method_not_allowed"
    assert wrong.headers["allow"] == "POST"
    # Gradio's own routes are untouched.
    assert space.http.get("/gradio_api/info").status_code == 200
    assert space.http.get("/").status_code == 200


def test_unknown_tier_is_404_listing_tiers(space):
    for response in (
        space.http.get("/tiers/gold/info"),
        post(space, "/tiers/gold/generate", {"inputs": "hi"}),
        post(space, "/api/generate", {"inputs": "hi", "tier": "gold"}),
    ):
        assert response.status_code == 404
        body = response.json()
        assert body["error_type"] == "not_found"
        assert all(t in body["error"] for t in TIERS)


def test_auth_required_on_generation_routes(space):
    body = {"inputs": "hi", "parameters": {"max_new_tokens": 2}}
    assert space.http.post("/generate", json=body).status_code == 401
    wrong = space.http.post("/generate", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error_type"] == "authentication"
    assert space.http.post("/api/generate", json=body).status_code == 401
    with pytest.raises(Exception, match="bearer token"):
        InferenceClient(space.url).text_generation("hi", max_new_tokens=2)
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=space.url + "/v1", api_key="nope").models.list()


# ---- TGI with InferenceClient -------------------------------------------------------------------


def test_inference_client_text_generation(space):
    for client in (tgi(space), tgi(space, "base"), tgi(space, "user")):
        text = client.text_generation("Hello", max_new_tokens=8)
        assert isinstance(text, str)
    out = tgi(space, "base").text_generation("Hello", max_new_tokens=8, details=True)
    assert out.details.finish_reason in ("length", "eos_token")
    assert 1 <= out.details.generated_tokens <= 8
    assert len(out.details.tokens) == out.details.generated_tokens


def test_inference_client_streaming(space):
    client = tgi(space, "abstraction")
    tokens = list(client.text_generation("Hello", max_new_tokens=6, stream=True))
    assert 1 <= len(tokens) <= 6 and all(isinstance(t, str) for t in tokens)
    events = list(client.text_generation("Hello", max_new_tokens=6, stream=True, details=True))
    assert all(e.generated_text is None for e in events[:-1])
    last = events[-1]
    assert last.generated_text is not None and last.details.generated_tokens == len(events)
    assert last.details.finish_reason in ("length", "eos_token")


def test_seed_is_reproducible_and_reported(space):
    client = tgi(space, "base")
    kwargs = {"max_new_tokens": 12, "do_sample": True, "temperature": 0.9}
    a = client.text_generation("Once", seed=11, details=True, **kwargs)
    b = client.text_generation("Once", seed=11, details=True, **kwargs)
    others = {client.text_generation("Once", seed=s, **kwargs) for s in range(12, 16)}
    assert a.generated_text == b.generated_text and a.details.seed == 11
    assert len(others | {a.generated_text}) > 1


def test_stop_sequences_and_return_full_text(space):
    client = tgi(space, "base")
    full = client.text_generation("Story", max_new_tokens=30, seed=2, do_sample=True)
    stop = full[6:8]
    cut = client.text_generation(
        "Story", max_new_tokens=30, seed=2, do_sample=True, stop=[stop], details=True
    )
    assert cut.details.finish_reason == "stop_sequence"
    assert cut.generated_text.endswith(stop) and full.startswith(cut.generated_text)
    with_prompt = client.text_generation("Story", max_new_tokens=4, return_full_text=True)
    assert with_prompt.startswith("Story")


def test_root_route_list_and_stream(space):
    body = {"inputs": "Hi", "parameters": {"max_new_tokens": 4}}
    listed = post(space, "/", body)
    assert listed.status_code == 200 and isinstance(listed.json()[0]["generated_text"], str)
    lines = post(space, "/tiers/company", {**body, "stream": True}).text.strip().splitlines()
    events = [json.loads(line[len("data:") :]) for line in lines if line.startswith("data:")]
    assert events and events[-1]["generated_text"] is not None
    assert [e["index"] for e in events] == list(range(1, len(events) + 1))


def test_grammar_json_schema(space):
    client = tgi(space, "base")
    grammar = {"type": "json", "value": Person.model_json_schema()}
    for seed in range(3):
        text = client.text_generation(
            "Describe a person as JSON", max_new_tokens=300, seed=seed, do_sample=True,
            grammar=grammar,
        )  # fmt: skip
        Person.model_validate(json.loads(text))


NOTE = {"type": "object", "properties": {"note": {"type": "string"}}, "required": ["note"]}


@pytest.mark.parametrize("max_new_tokens", [9, 12, 20])
def test_grammar_output_parses_whatever_the_budget(space, max_new_tokens):
    """An unbounded string the demo model never closes on its own: the Space closes it."""
    client = tgi(space, "base")
    for seed in range(3):
        out = client.text_generation(
            "Write a note", max_new_tokens=max_new_tokens, seed=seed, do_sample=True,
            temperature=1.5, grammar={"type": "json", "value": NOTE}, details=True,
        )  # fmt: skip
        assert isinstance(json.loads(out.generated_text)["note"], str), out.generated_text
        assert out.details.generated_tokens <= max_new_tokens
        if out.details.finish_reason == "length":
            assert out.details.generated_tokens == max_new_tokens


def test_regex_grammar_output_matches_whatever_the_budget(space):
    pattern = "[A-Z][a-z]{2,40}, [0-9]{3}"
    for budget in (12, 20):
        text = tgi(space).text_generation(
            "x", max_new_tokens=budget, seed=1, do_sample=True,
            grammar={"type": "regex", "value": pattern},
        )  # fmt: skip
        assert re.fullmatch(pattern, text), text


def test_grammar_budget_too_small_is_422_naming_the_minimum(space):
    body = {"inputs": "x", "parameters": {"max_new_tokens": 1,
                                          "grammar": {"type": "json", "value": NOTE}}}  # fmt: skip
    response = post(space, "/generate", body)
    assert response.status_code == 422 and response.json()["error_type"] == "validation"
    assert re.search(
        r"`max_new_tokens` must be at least \d+ for this grammar", response.json()["error"]
    )
    chat = openai_client(space).chat.completions.create(
        model="base",
        messages=[{"role": "user", "content": "Note?"}],
        max_tokens=12,
        response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": NOTE}},
    )
    assert isinstance(json.loads(chat.choices[0].message.content)["note"], str)


def test_bad_grammar_is_422(space):
    with pytest.raises(ValidationError, match="Grammar is not valid"):
        tgi(space).text_generation(
            "x", max_new_tokens=4, grammar={"type": "json", "value": {"type": "nonsense"}}
        )


# ---- the users' /api/generate --------------------------------------------------------------------


def test_api_generate_users_shape(space):
    body = {"inputs": "What is our refund policy?",
            "parameters": {"max_new_tokens": 10, "temperature": 0.7}}  # fmt: skip
    for tier in (None, *TIERS):
        answer = post(space, "/api/generate", {**body, **({"tier": tier} if tier else {})})
        assert answer.status_code == 200, answer.text
        assert set(answer.json()) == {"generated_text"}
    mismatch = post(space, "/api/generate", {**body, "revision": "v2"})
    assert mismatch.status_code == 409 and "revision" in mismatch.json()["error"]
    assert mismatch.json()["error_type"] == "revision_mismatch"


def _endpoint_stats(space, name):
    return space.http.get("/stats").json()["endpoints"].get(name, {"count": 0, "errors": 0})


def test_api_generate_stream_is_counted_as_api_generate(space):
    before = _endpoint_stats(space, "company/api/generate")
    streams_before = _endpoint_stats(space, "company/generate_stream")
    body = {"inputs": "Hi", "parameters": {"max_new_tokens": 4}, "tier": "company", "stream": True}
    with space.http.stream("POST", "/api/generate", json=body, headers=AUTH) as response:
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        events = [line for line in response.iter_lines() if line.startswith("data:")]
    assert json.loads(events[-1][len("data:") :])["generated_text"] is not None
    refused = post(space, "/api/generate", {**body, "parameters": {"max_new_tokens": 5000}})
    assert refused.status_code == 422
    malformed = post(space, "/api/generate", {**body, "parameters": {"max_new_tokens": "x"}})
    assert malformed.status_code == 422
    assert malformed.json()["error"].startswith("Input validation error: ")
    after = _endpoint_stats(space, "company/api/generate")
    assert after["count"] == before["count"] + 3 and after["errors"] == before["errors"] + 2
    assert _endpoint_stats(space, "company/generate_stream") == streams_before


# ---- OpenAI -------------------------------------------------------------------------------------


def openai_client(space) -> OpenAI:
    return OpenAI(base_url=space.url + "/v1", api_key=KEY)


def test_openai_models_and_chat(space):
    client = openai_client(space)
    assert [m.id for m in client.models.list()] == TIERS
    done = client.chat.completions.create(
        model="company",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=8,
        temperature=0,
    )
    choice = done.choices[0]
    assert isinstance(choice.message.content, str) and choice.finish_reason in ("length", "stop")
    assert 1 <= done.usage.completion_tokens <= 8 and done.usage.prompt_tokens > 0
    with pytest.raises(NotFoundError):
        client.chat.completions.create(model="gold", messages=[{"role": "user", "content": "x"}])


def test_openai_streaming(space):
    chunks = list(
        openai_client(space).chat.completions.create(
            model="base",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
            ],
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("length", "stop")
    assert chunks[-1].usage is not None and 1 <= chunks[-1].usage.completion_tokens <= 6


def test_openai_response_format(space):
    client = openai_client(space)
    done = client.chat.completions.create(
        model="user",
        messages=[{"role": "user", "content": "Who?"}],
        max_tokens=300,
        seed=4,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": Person.model_json_schema()},
        },
    )
    Person.model_validate_json(done.choices[0].message.content)


# ---- bad input, limits, 429, disconnect ---------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"inputs": ""}, "`inputs` cannot be empty"),
        ({"inputs": "x", "parameters": {"max_new_tokens": 5000}}, "`max_new_tokens` must be <="),
        ({"inputs": "word " * 3000, "parameters": {"max_new_tokens": 4}}, "`inputs` tokens"),
        ({"inputs": "x", "parameters": {"max_new_tokens": "ten"}}, "max_new_tokens"),
        ({"inputs": "x", "parameters": {"temperature": 0}}, "`temperature` must be strictly"),
        ({"inputs": "x", "parameters": {"top_p": 1.0}}, "`top_p` must be > 0.0 and < 1.0"),
        ({"inputs": "x", "parameters": {"stop": ["a", "b", "c", "d", "e"]}}, "stop sequences"),
        ({"inputs": 3}, "inputs"),
        ({"parameters": {}}, "inputs"),
    ],
)
def test_bad_input_is_422_with_tgi_body(space, body, needle):
    response = post(space, "/generate", body)
    assert response.status_code == 422, response.text
    assert response.json()["error_type"] == "validation"
    assert needle in response.json()["error"]


# Each of these once answered 500 or 424 (issue 18): now a 422 naming the problem.
@pytest.mark.parametrize(
    ("path", "raw", "needle"),
    [
        ("/v1/chat/completions",
         {"model": "base", "messages": [{"role": "system", "content": ""}]}, "nothing to answer"),
        ("/v1/chat/completions",
         {"model": "base", "stream": True, "messages": [{"role": "system", "content": None}]},
         "nothing to answer"),
        ("/generate", '{"inputs": "\\ud800 hi", "parameters": {"max_new_tokens": 4}}',
         "lone UTF-16 surrogate"),
        ("/v1/chat/completions",
         '{"model": "base", "messages": [{"role": "user", "content": "\\udc00"}]}',
         "lone UTF-16 surrogate"),
        ("/generate", '{"inputs": "x", "parameters": {"temperature": NaN}}', "NaN is not"),
        ("/generate_stream", '{"inputs": "x", "parameters": {"repetition_penalty": NaN}}',
         "NaN is not"),
        ("/api/generate", '{"inputs": "x", "parameters": {"seed": 18446744073709551616}}',
         "less than or equal to 18446744073709551615"),
        ("/v1/chat/completions",
         '{"model": "base", "seed": 18446744073709551616, "messages": [{"role": "user", '
         '"content": "hi"}]}', "less than or equal to 18446744073709551615"),
    ],
)  # fmt: skip
def test_hostile_input_is_422_not_a_server_error(space, path, raw, needle):
    content = raw.encode() if isinstance(raw, str) else json.dumps(raw).encode()
    headers = {**AUTH, "content-type": "application/json"}
    response = space.http.post(path, content=content, headers=headers)
    assert response.status_code == 422, response.text
    assert needle in response.json()["error"]


def test_extreme_but_valid_parameters_generate(space):
    """TGI takes any temperature > 0 and any u64 seed; the engine once failed on 1e-300."""
    for parameters in [{"temperature": 1e-300, "do_sample": True}, {"seed": 2**64 - 1}]:
        response = post(
            space, "/generate", {"inputs": "hi", "parameters": {"max_new_tokens": 3, **parameters}}
        )
        assert response.status_code == 200, (parameters, response.text)


def test_a_huge_prompt_is_refused_by_its_length_and_truncate_still_works(space):
    """A prompt with more characters than the context can hold tokens is refused before it is
    tokenized (a 5 MB one took ~7 s to refuse); with ``truncate``, only the tail is read."""
    long = {"inputs": "a" * 1_500_000, "parameters": {"max_new_tokens": 4}}
    refused = post(space, "/generate", long)
    assert refused.status_code == 422
    assert "1,500,000 characters" in refused.json()["error"]
    tail = {"inputs": "hello " * 100_000, "parameters": {"max_new_tokens": 2, "truncate": 16}}
    answered = post(space, "/generate", {**tail, "parameters": {**tail["parameters"],
                                                                "details": True}})  # fmt: skip
    assert answered.status_code == 200, answered.text
    oversized = space.http.post("/generate", json={"inputs": "a" * 3_000_000}, headers=AUTH)
    assert oversized.status_code == 413  # over the 2 MB body limit: not even parsed


def test_tier_cap_and_malformed_json(space):
    capped = post(space, "/tiers/abstraction/generate",
                  {"inputs": "x", "parameters": {"max_new_tokens": 65}})  # fmt: skip
    assert capped.status_code == 422 and "<= 64" in capped.json()["error"]
    broken = space.http.post(
        "/generate",
        content=b'{"inputs": "x",',
        headers={**AUTH, "content-type": "application/json"},
    )
    assert broken.status_code == 422 and broken.json()["error_type"] == "validation"
    assert space.http.get("/health").status_code == 200


def _long_stream_body():
    # A regex that cannot end before 1000 tokens, so the request stays busy however it samples.
    grammar = {"type": "regex", "value": "[a-z ]{4000}"}
    return {"inputs": "go", "parameters": {"max_new_tokens": 1000, "grammar": grammar}}


def _engine_counters(space):
    engines = space.http.get("/stats").json()["engines"]
    return {key: value for key, value in engines.items() if "+" not in key}


def test_queue_full_is_429_and_disconnect_cancels(space):
    before = sum(e["cancelled"] for e in _engine_counters(space).values())
    other = httpx.Client(base_url=space.url, headers=AUTH, timeout=60)
    # The 429 needs the long stream still running when the second request arrives. It usually
    # is, but on a loaded machine it has finished first (a CI run): then the engines hold
    # nothing, the precondition did not hold, and the stream is started again.
    for _attempt in range(3):
        with other.stream("POST", "/tiers/user/generate_stream", json=_long_stream_body()) as r:
            lines = r.iter_lines()  # keep a reference: a dropped iterator closes the response
            first = next(lines)
            assert first.startswith("data:") and '"token"' in first, first
            busy = post(space, "/tiers/user/generate", {"inputs": "hi"})
            engines = _engine_counters(space)
            if busy.status_code == 200 and all(e["active"] == 0 for e in engines.values()):
                continue
            assert busy.status_code == 429, (first, engines)
            assert busy.json() == {"error": "Model is overloaded", "error_type": "overloaded"}
            with pytest.raises(Exception, match="overloaded"):
                tgi(space, "user").text_generation("hi", max_new_tokens=2)
            break
    else:
        pytest.fail("the long stream ended before a second request three times")
    other.close()
    # Leaving the block closed the connection mid-stream.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        counters = _engine_counters(space).values()
        if sum(e["cancelled"] for e in counters) > before and all(
            e["active"] == 0 for e in counters
        ):
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"generation was not cancelled: {space.http.get('/stats').json()['engines']}")
    assert post(space, "/tiers/user/generate", {"inputs": "hi"}).status_code == 200


# ---- tiers share weights; the adapter tier does not ---------------------------------------------


def test_tiers_share_weights_and_adapter_changes_output(space):
    body = {"inputs": "The same prompt", "parameters": {"max_new_tokens": 12}}
    base = post(space, "/tiers/base/generate", body).json()["generated_text"]
    user = post(space, "/tiers/user/generate", body).json()["generated_text"]
    company = post(space, "/tiers/company/generate", body).json()["generated_text"]
    assert base == user  # same weights, greedy
    assert company != base  # LoRA merged into its own copy
    tiers = {t["tier"]: t for t in space.http.get("/tiers").json()["tiers"]}
    assert set(tiers["base"]["shares_weights_with"]) == {"abstraction", "user"}
    assert tiers["company"]["shares_weights_with"] == []
    assert all(t["demo_weights"] for t in tiers.values())
    assert space.http.get("/tiers").json()["loaded_models"] == 2


# ---- Gradio ------------------------------------------------------------------------------------


def test_gradio_predict_needs_only_the_prompt(space):
    assert isinstance(space.client.predict("Hello", api_name="/predict"), str)
    info = space.http.get("/gradio_api/info").json()["named_endpoints"]["/predict"]
    optional = {p["parameter_name"]: p["parameter_has_default"] for p in info["parameters"]}
    assert optional == {"prompt": False, "tier": True, "max_new_tokens": True,
                        "temperature": True, "context": True}  # fmt: skip


def test_gradio_predict_and_context(space):
    text = space.client.predict("Hello", "base", 8, 0.7, "", api_name="/predict")
    assert isinstance(text, str)
    text = space.client.predict("Hi", "user", 8, 0, '{"name": "Ada"}', api_name="/predict")
    assert isinstance(text, str)
    with pytest.raises(ValueError, match="context must be a JSON object"):
        space.client.predict("Hi", "user", 8, 0.7, "[1, 2]", api_name="/predict")
    with pytest.raises(ValueError, match="not in the list of choices"):
        space.client.predict("Hi", "gold", 8, 0.7, "", api_name="/predict")


def test_gradio_variations_and_connection_test(space):
    outputs = space.client.predict("Tell me", 3, "base", api_name="/variations")
    assert len(outputs) == 3 and len(set(outputs)) == 3
    ok = space.client.predict(space.url, "/api/generate", KEY, "", "company",
                              api_name="/test_connection")  # fmt: skip
    assert ok.startswith("✅")
    denied = space.client.predict(space.url, "/api/generate", "wrong", "", "company",
                                  api_name="/test_connection")  # fmt: skip
    assert denied.startswith("❌") and "401" in denied
    # Once internal errors (InvalidURL, UnicodeEncodeError), found by tests/test_reliability.py:
    for url, token, needle in [("ftp://x", "", "http:// or https://"),
                               (space.url, "clé", "printable ASCII")]:  # fmt: skip
        with pytest.raises(AppError, match=needle):
            space.client.predict(url, "/api/generate", token, "", "company",
                                 api_name="/test_connection")  # fmt: skip
    unreachable = space.client.predict("http://\U0001385b", "", "", "", "company",
                                       api_name="/test_connection")  # fmt: skip
    assert unreachable.startswith("❌")
