"""Unit tests of the Space's pure parts: config, tier registry, the predictor's validation.

The engine, grammars and model registry are ``shared.llm``'s (tests/shared/test_llm.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from api import ERRORS, AuthError, RevisionMismatch
from predictor import TierGenerator
from protocol import GenerateParameters, Grammar
from shared.config import ConfigError
from shared.errors import InputError, ModelLoadError
from shared.llm import (
    CausalLMRegistry,
    EngineOverloaded,
    GenerationCancelled,
    GenerationFailed,
    ModelSpec,
)
from shared.models import cpu_supports_bf16
from shared.serving import Service
from tiers import TierNotFound, TierRegistry, load_space_config
from ui import tier_table

SPACE_DIR = Path(__file__).resolve().parent.parent
CONFIG = SPACE_DIR / "config.yaml"
# What dtype "auto" serves on this machine.
AUTO_PRECISION = "bf16" if cpu_supports_bf16() else "fp32"


def test_config_env_overrides_and_sharing():
    config = load_space_config(
        CONFIG,
        {"TIER_BASE_MODEL": "/m/base", "TIER_USER_MAX_NEW_TOKENS": "7", "OTHER": "x"},
    )
    assert list(config.tiers) == ["base", "company", "abstraction", "user"]
    assert config.resolved("company").model == "/m/base"  # base_tier follows base's model
    assert config.tier("user").limits.max_new_tokens == 7
    assert config.preload == ["base"]
    with pytest.raises(TierNotFound, match="configured tiers: base, company"):
        config.tier("nope")


def test_env_adds_a_tier_and_unsets_fields():
    config = load_space_config(
        CONFIG,
        {
            "TIER_GOLD_MODEL": "owner/gold@v2",
            "TIER_GOLD_DTYPE": "bfloat16",  # sorts before _MODEL: still the new tier's
            "TIER_COMPANY_MODEL": "/m/company",  # its own model: no longer base's weights
            "TIER_USER_BASE_TIER": "",
            "TIER_USER_MODEL": "/m/user",
            "PRELOAD_TIERS": "base, gold",
        },
    )
    assert config.tier("gold").dtype == "bfloat16"
    assert config.tier("company").base_tier is None
    assert config.resolved("user").model == "/m/user"
    assert config.preload == ["base", "gold"]
    registry = TierRegistry(config, CausalLMRegistry(device="cpu"))
    assert registry.spec("gold") == ModelSpec("owner/gold", "v2", dtype="bfloat16")


def test_config_errors_name_the_problem(tmp_path):
    bad = tmp_path / "config.yaml"
    bad.write_text("tiers:\n  a: {base_tier: b}\n")
    with pytest.raises(ConfigError, match="base_tier: must be another configured tier"):
        load_space_config(bad, {"DEFAULT_TIER": "a"})
    with pytest.raises(ConfigError, match=r"default_tier='base': .*'base' is not a configured"):
        load_space_config(bad, {"TIER_A_MODEL": "/x"})


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"MEMORY_BUDGET_GB": "lots"}, "MEMORY_BUDGET_GB='lots': memory_budget_gb: "),
        ({"TIER_BASE_DTYPE": "float8"}, "TIER_BASE_DTYPE='float8': tiers.base.dtype: "),
        ({"DEFAULT_TIER": "nope"}, "DEFAULT_TIER='nope': default_tier: "),
        ({"PRELOAD_TIERS": "base,gold"}, "PRELOAD_TIERS='base,gold': preload_tiers: "),
        ({"DEVICE": "tpu"}, "DEVICE='tpu': device: "),
        ({"TIER_USER_MAX_BATCH_SIZE": "0"}, "TIER_USER_MAX_BATCH_SIZE='0': "),
        ({"TIER_USER_BASE_TIER": "gold"}, "TIER_USER_BASE_TIER='gold': tiers.user.base_tier: "),
    ],
)
def test_bad_environment_is_one_line_naming_it(env, needle):
    with pytest.raises(ConfigError) as caught:
        load_space_config(CONFIG, env)
    message = str(caught.value)
    assert needle in message and "\n" not in message


@pytest.fixture(scope="module")
def generator(demo_models):
    env = dict(demo_models["llm-tiers"])
    registry = TierRegistry(load_space_config(CONFIG, env), CausalLMRegistry(device="cpu"))
    yield TierGenerator(registry)
    registry.shutdown()


def test_tiers_share_one_model_and_report_it(generator):
    generator.preload(["base", "user"])
    registry = generator.registry
    assert registry.get("base") is registry.get("abstraction")
    assert registry.sharing("base") == ["company", "abstraction", "user"]
    infos = generator.model_infos()
    assert set(infos) == {"base", "company", "abstraction", "user"}
    assert infos["base"].precision == AUTO_PRECISION and infos["base"].demo
    assert generator.not_loaded() == []
    # The UI's table shows what /tiers says (a local folder has no revision).
    rows = generator.describe_tiers()
    assert [row["revision"] for row in rows] == [None] * 4
    assert [row[2] for row in tier_table(generator)] == [""] * 4


def test_prepare_refuses_a_grammar_budget_too_small_to_finish(generator):
    schema = {"type": "object", "properties": {"note": {"type": "string"}}, "required": ["note"]}
    grammar = Grammar(type="json", value=schema)
    shortest = generator.registry.get("base").grammars.json_schema(schema).min_new_tokens
    assert shortest and shortest > 1
    with pytest.raises(InputError, match=f"`max_new_tokens` must be at least {shortest}"):
        generator.prepare("base", "x", GenerateParameters(max_new_tokens=1, grammar=grammar))
    prepared = generator.prepare(
        "base", "x", GenerateParameters(max_new_tokens=shortest, grammar=grammar)
    )
    assert prepared.request.max_new_tokens == shortest


@pytest.mark.parametrize(
    ("error", "status", "error_type", "headers"),
    [
        (TierNotFound("tier 'x' is not configured"), 404, "not_found", {}),
        (EngineOverloaded("queue full"), 429, "overloaded", {}),
        (GenerationFailed("generation failed: OOM"), 424, "generation", {}),
        (AuthError("missing token"), 401, "authentication", {"www-authenticate": "Bearer"}),
        (RevisionMismatch("serves main, not 'v2'"), 409, "revision_mismatch", {}),
        (InputError("`inputs` cannot be empty"), 422, "validation", {}),
        (GenerationCancelled("the client went away"), 499, "cancelled", {}),
        (ModelLoadError("could not fetch x"), 503, "unavailable", {}),
    ],
)
def test_errors_answer_tgi_status_and_body(error, status, error_type, headers):
    service = Service("llm-tiers", lambda: None, errors=ERRORS)
    response = service.error_response(error)
    assert response.status_code == status
    body = json.loads(response.body)
    assert body["error_type"] == error_type
    assert body["error"] == ("Model is overloaded" if status == 429 else str(error))
    assert {k: v for k, v in response.headers.items() if k in ("www-authenticate",)} == headers
    assert "retry-after" not in response.headers  # a failed load will not fix itself
