"""Unit tests of the pure parts: config, detokenizer, batching, sampling, grammar."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from engine import BatchEngine, GenerationRequest, IncrementalDetokenizer, SamplingOptions
from grammar import GrammarCache
from shared.errors import InputError, ModelLoadError
from tiers import TierNotFound, load_config

SPACE_DIR = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny(demo_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = demo_models["llm-tiers"]["TIER_BASE_MODEL"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    engine = BatchEngine(model, tokenizer, max_batch_size=4, max_concurrent_requests=8)
    yield model, tokenizer, engine
    engine.stop()


def _ids(tokenizer, text):
    return tuple(tokenizer(text)["input_ids"])


def test_config_env_overrides_and_sharing():
    config = load_config(
        SPACE_DIR / "tiers.yaml",
        {"TIER_BASE_MODEL": "/m/base", "TIER_USER_MAX_NEW_TOKENS": "7", "OTHER": "x"},
    )
    assert list(config.tiers) == ["base", "company", "abstraction", "user"]
    assert config.resolved("company").model == "/m/base"  # base_tier follows base's model
    assert config.tier("user").limits.max_new_tokens == 7
    with pytest.raises(TierNotFound, match="configured tiers: base, company"):
        config.tier("nope")


def test_config_errors_name_the_problem(tmp_path):
    bad = tmp_path / "tiers.yaml"
    bad.write_text("tiers:\n  a: {base_tier: b}\n")
    with pytest.raises(ModelLoadError, match="base_tier 'b' must be another configured tier"):
        load_config(bad, default_tier="a")
    with pytest.raises(ModelLoadError, match="default_tier 'base' is not one of"):
        load_config(bad, {"TIER_A_MODEL": "/x"})


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


class Person(BaseModel):
    name: str = Field(max_length=12)
    age: int = Field(ge=0, le=120)
    tags: list[str] = Field(max_length=3)


def test_grammar_output_parses_and_validates(tiny):
    model, tokenizer, engine = tiny
    cache = GrammarCache(tokenizer, model.config.vocab_size)
    grammar = cache.json_schema(Person.model_json_schema())
    for seed in range(8):
        sampling = SamplingOptions(do_sample=True, seed=seed)
        request = GenerationRequest(_ids(tokenizer, "json"), 300, sampling, grammar=grammar)
        result = engine.generate(request)
        assert result.finish_reason == "eos_token", result.text
        Person.model_validate(json.loads(result.text))


def test_bad_schema_is_an_input_error(tiny):
    model, tokenizer, _ = tiny
    cache = GrammarCache(tokenizer, model.config.vocab_size)
    with pytest.raises(InputError, match="Grammar is not valid"):
        cache.json_schema({"type": "nonsense"})


def test_stop_sequence_ends_generation(tiny):
    _, tokenizer, engine = tiny
    sampling = SamplingOptions(do_sample=True, seed=3)
    full = engine.generate(GenerationRequest(_ids(tokenizer, "s"), 40, sampling, ignore_eos=True))
    stop = full.text[5:7]
    cut = engine.generate(GenerationRequest(_ids(tokenizer, "s"), 40, sampling, stop=(stop,)))
    assert cut.finish_reason == "stop_sequence"
    assert cut.text.endswith(stop) and full.text.startswith(cut.text)


def test_memory_budget_evicts_the_least_recently_used_model(demo_models, tmp_path):
    import shutil

    from tiers import TierRegistry

    source = Path(demo_models["llm-tiers"]["TIER_BASE_MODEL"])
    paths = {}
    for tier in ("base", "company", "user"):
        paths[tier] = tmp_path / tier
        shutil.copytree(source, paths[tier])
    size_gb = (source / "model.safetensors").stat().st_size / 2**30
    config = load_config(
        SPACE_DIR / "tiers.yaml",
        {f"TIER_{t.upper()}_MODEL": str(p) for t, p in paths.items()},
        memory_budget_gb=2.5 * size_gb,  # room for two of the three models
    )
    registry = TierRegistry(config, device="cpu")
    try:
        registry.get("base")
        registry.get("company")
        registry.get("base")  # company is now the least recently used
        registry.get("user")
        assert registry.loaded("base") is not None
        assert registry.loaded("user") is not None
        assert registry.loaded("company") is None
        assert len(registry.models()) == 2
        registry.get("company")  # loads again on demand, evicting base
        assert registry.loaded("base") is None
        assert registry.loaded("company") is not None
    finally:
        registry.shutdown()
