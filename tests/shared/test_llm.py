"""shared.llm on the demo Mistral: detokenizer, batched decoding, sampling, grammars (and
finishing them within the budget), next-token log-probabilities, the registry's memory budget."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from shared.errors import InputError, ModelLoadError
from shared.llm import (
    BatchEngine,
    CausalLMRegistry,
    GenerationRequest,
    GrammarCache,
    IncrementalDetokenizer,
    ModelSpec,
    SamplingOptions,
    encode_prefix,
    next_token_logprobs,
)
from shared.models import cpu_supports_bf16


@pytest.fixture(scope="module")
def tiny(demo_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = demo_models["llm-tiers"]["TIER_BASE_MODEL"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    engine = BatchEngine(model, tokenizer, max_batch_size=4, max_concurrent_requests=8)
    yield model, tokenizer, engine
    engine.stop()


@pytest.fixture(scope="module")
def grammars(tiny):
    model, tokenizer, _ = tiny
    return GrammarCache(tokenizer, model.config.vocab_size)


def _ids(tokenizer, text):
    return tuple(tokenizer(text)["input_ids"])


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1))
def test_detokenizer_deltas_add_up_to_the_text(tiny, text):
    _, tokenizer, _ = tiny
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    detok = IncrementalDetokenizer(tokenizer)
    assert "".join(detok.add(i) for i in ids) == tokenizer.decode(ids)


def test_batched_decoding_matches_one_at_a_time(tiny):
    _, tokenizer, engine = tiny
    prompts = ["Hi", "a somewhat longer prompt than the first", "x y z"]
    solo = [
        engine.generate(GenerationRequest(_ids(tokenizer, p), 12, ignore_eos=True)) for p in prompts
    ]
    streams = [
        engine.submit(GenerationRequest(_ids(tokenizer, p), 12 + 4 * i, ignore_eos=True))
        for i, p in enumerate(prompts)
    ]
    batched = [s.collect() for s in streams]
    for one, many in zip(solo, batched, strict=True):
        assert [t.id for t in many.tokens][:12] == [t.id for t in one.tokens]
    assert [r.generated_tokens for r in batched] == [12, 16, 20]


def test_seed_reproduces_sampling(tiny):
    _, tokenizer, engine = tiny

    def run(seed):
        sampling = SamplingOptions(do_sample=True, temperature=0.9, top_k=50, seed=seed)
        return engine.generate(GenerationRequest(_ids(tokenizer, "hello"), 16, sampling)).text

    assert run(7) == run(7)
    assert len({run(s) for s in range(4)}) > 1


@pytest.mark.parametrize("temperature", [1e-300, 1e-45, 1e-20, 1e300])
def test_any_positive_temperature_samples_a_finite_logprob(tiny, temperature):
    """TGI accepts any temperature > 0; 1e-300 once made the probabilities NaN (a 424)."""
    _, tokenizer, engine = tiny
    sampling = SamplingOptions(do_sample=True, temperature=temperature, seed=3)
    result = engine.generate(GenerationRequest(_ids(tokenizer, "hello"), 6, sampling))
    assert result.generated_tokens >= 1
    assert all(math.isfinite(t.logprob) for t in result.tokens)
    if temperature < 1e-10:  # all the mass on the best token: greedy decoding's output
        greedy = engine.generate(GenerationRequest(_ids(tokenizer, "hello"), 6))
        assert [t.id for t in result.tokens] == [t.id for t in greedy.tokens]


class Person(BaseModel):
    name: str = Field(max_length=12)
    age: int = Field(ge=0, le=120)
    tags: list[str] = Field(max_length=3)


def test_grammar_output_parses_and_validates(tiny, grammars):
    _, tokenizer, engine = tiny
    grammar = grammars.json_schema(Person.model_json_schema())
    for seed in range(8):
        sampling = SamplingOptions(do_sample=True, seed=seed)
        request = GenerationRequest(_ids(tokenizer, "json"), 300, sampling, grammar=grammar)
        result = engine.generate(request)
        assert result.finish_reason == "eos_token", result.text
        Person.model_validate(json.loads(result.text))


def test_bad_schema_is_an_input_error(grammars):
    with pytest.raises(InputError, match="Grammar is not valid"):
        grammars.json_schema({"type": "nonsense"})


# An unbounded string: on random weights the model rarely closes it by itself.
NOTE = {"type": "object", "properties": {"note": {"type": "string"}}, "required": ["note"]}


@pytest.mark.parametrize("max_new_tokens", [None, 12, 20, 40])
def test_grammar_output_is_complete_however_small_the_budget(tiny, grammars, max_new_tokens):
    """Near the end of the budget the engine emits the closing tokens, so the text parses and
    validates; the finish reason stays `length` when the budget is what ended it."""
    _, tokenizer, engine = tiny
    grammar = grammars.json_schema(NOTE)
    budget = max_new_tokens or grammar.min_new_tokens
    reasons = []
    for seed in range(6):
        sampling = SamplingOptions(do_sample=True, temperature=1.5, seed=seed)
        result = engine.generate(
            GenerationRequest(_ids(tokenizer, "json"), budget, sampling, grammar=grammar)
        )
        assert isinstance(json.loads(result.text)["note"], str), result.text
        if result.finish_reason == "length":
            assert result.generated_tokens == budget
        else:  # the model closed the document itself, then ended it
            assert result.finish_reason == "eos_token" and result.tokens[-1].special
        reasons.append(result.finish_reason)
    if budget <= 20:
        assert "length" in reasons  # the closing tokens were forced at least once


# Opening one item adds six required members to the completion at once.
ITEM = {"type": "object", "properties": {k: {"type": "integer"} for k in "abcdef"},
        "required": list("abcdef")}  # fmt: skip
ITEMS = {"type": "object", "properties": {"items": {"type": "array", "items": ITEM}},
         "required": ["items"]}  # fmt: skip


@pytest.mark.parametrize("max_new_tokens", [30, 46, 80, 120])
def test_nested_required_members_still_fit_the_budget(tiny, grammars, max_new_tokens):
    _, tokenizer, engine = tiny
    grammar = grammars.json_schema(ITEMS)
    prompt = _ids(tokenizer, "json")
    sampling = [SamplingOptions(do_sample=True, temperature=1.3, seed=seed) for seed in range(6)]
    requests = [GenerationRequest(prompt, max_new_tokens, o, grammar=grammar) for o in sampling]
    streams = [engine.submit(request) for request in requests]
    for stream in streams:
        text = stream.collect().text
        items = json.loads(text)["items"]
        assert all(sorted(item) == list("abcdef") for item in items), text


def test_regex_output_is_complete_however_small_the_budget(tiny, grammars):
    _, tokenizer, engine = tiny
    pattern = "[A-Z][a-z]{2,40}, [0-9]{3}( [a-z]+)*"
    grammar = grammars.regex(pattern)
    shortest = grammar.min_new_tokens
    assert re.fullmatch(pattern, tokenizer.decode(list(grammar.shortest)))
    for budget in (shortest, shortest + 2, shortest + 8):
        for seed in range(4):
            sampling = SamplingOptions(do_sample=True, seed=seed)
            request = GenerationRequest(_ids(tokenizer, "go"), budget, sampling, grammar=grammar)
            result = engine.generate(request)
            assert re.fullmatch(pattern, result.text), (budget, result.text)


def test_shortest_output_is_a_valid_document(grammars, tiny):
    _, tokenizer, _ = tiny
    note = grammars.json_schema(NOTE)
    assert json.loads(tokenizer.decode(list(note.shortest))) == {"note": ""}
    person = grammars.json_schema(Person.model_json_schema())
    Person.model_validate_json(tokenizer.decode(list(person.shortest)))
    assert json.loads(tokenizer.decode(list(grammars.any_json().shortest))) == {}


def test_next_token_logprobs_match_the_engine(tiny):
    model, tokenizer, engine = tiny
    prompts = [_ids(tokenizer, p) for p in ("Hi", "a longer prompt, padded on the left", "x")]
    logprobs = next_token_logprobs(model, prompts)
    assert logprobs.shape == (3, model.config.vocab_size)
    for prompt, row in zip(prompts, logprobs, strict=True):
        first = engine.generate(GenerationRequest(prompt, 1, ignore_eos=True)).tokens[0]
        assert int(row.argmax()) == first.id
        assert float(row[first.id]) == pytest.approx(first.logprob, abs=1e-4)
    with pytest.raises(ValueError, match="at least one prompt"):
        next_token_logprobs(model, [])


def test_a_shared_prefix_is_run_once_and_scores_the_same(tiny):
    model, tokenizer, _ = tiny
    prefix = _ids(tokenizer, "You are a spam filter. Answer spam or not_spam.")
    tails = [
        tokenizer.encode(t, add_special_tokens=False) for t in (" hi", " you won a prize!", "x")
    ]
    whole = next_token_logprobs(model, [[*prefix, *tail] for tail in tails])
    cached = encode_prefix(model, prefix)
    assert cached.ids == tuple(prefix) and len(cached.layers) == model.config.num_hidden_layers
    split = next_token_logprobs(model, tails, prefix=cached)
    assert torch.allclose(whole, split, atol=1e-4)
    with pytest.raises(ValueError, match="at least one token"):
        encode_prefix(model, [])


def test_stop_sequence_ends_generation(tiny):
    _, tokenizer, engine = tiny
    sampling = SamplingOptions(do_sample=True, seed=3)
    full = engine.generate(GenerationRequest(_ids(tokenizer, "s"), 40, sampling, ignore_eos=True))
    stop = full.text[5:7]
    cut = engine.generate(GenerationRequest(_ids(tokenizer, "s"), 40, sampling, stop=(stop,)))
    assert cut.finish_reason == "stop_sequence"
    assert cut.text.endswith(stop) and full.text.startswith(cut.text)


def test_registry_shares_equal_specs(demo_models):
    path = demo_models["llm-tiers"]["TIER_BASE_MODEL"]
    registry = CausalLMRegistry(device="cpu")
    try:
        one = registry.get(ModelSpec.parse(path))
        one.engine.generate(GenerationRequest((1, 2, 3), 2))
        assert torch.is_grad_enabled()  # loading and generating leave this thread's mode alone
        assert registry.get(ModelSpec(path)) is one
        assert registry.loaded(ModelSpec(path, dtype="float32")) is None  # another spec
        # "auto": bf16 where this CPU computes in it natively, fp32 elsewhere.
        assert one.demo and one.device == "cpu"
        assert one.dtype == ("bfloat16" if cpu_supports_bf16() else "float32")
        assert len(registry.models()) == 1
    finally:
        registry.shutdown()


def test_registry_load_error_names_the_problem(tmp_path):
    registry = CausalLMRegistry(device="cpu")
    spec = ModelSpec(str(tmp_path))
    with pytest.raises(ModelLoadError, match=r"lacks config\.json"):
        registry.get(spec)
    assert "lacks config.json" in (registry.error(spec) or "")


def test_memory_budget_evicts_the_least_recently_used_model(demo_models, tmp_path):
    source = Path(demo_models["llm-tiers"]["TIER_BASE_MODEL"])
    specs = {}
    for name in ("base", "company", "user"):
        shutil.copytree(source, tmp_path / name)
        specs[name] = ModelSpec(str(tmp_path / name))
    # The file is fp32; "auto" may load bf16 (half of it), and the budget counts what is loaded.
    file_gb = (source / "model.safetensors").stat().st_size / 2**30
    size_gb = file_gb / 2 if cpu_supports_bf16() else file_gb
    # Room for two of the three models.
    registry = CausalLMRegistry(memory_budget_gb=2.5 * size_gb, device="cpu")
    try:
        registry.get(specs["base"])
        registry.get(specs["company"])
        registry.get(specs["base"])  # company is now the least recently used
        registry.get(specs["user"])
        assert registry.loaded(specs["base"]) is not None
        assert registry.loaded(specs["user"]) is not None
        assert registry.loaded(specs["company"]) is None
        assert len(registry.models()) == 2
        registry.get(specs["company"])  # loads again on demand, evicting base
        assert registry.loaded(specs["base"]) is None
        assert registry.loaded(specs["company"]) is not None
    finally:
        registry.shutdown()
