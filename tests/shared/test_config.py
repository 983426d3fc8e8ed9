"""The one config loader: config.yaml defaults, environment overrides, one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field

from shared.config import ConfigError, Override, env_overrides, load_config, load_or_exit


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(100, ge=1)


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_id: str = "owner/model"
    threshold: float = Field(0.5, ge=0, le=1)
    precision: Literal["fp32", "bf16", "int8"] = "fp32"
    limits: Limits = Limits()


VARIABLES = {
    "MODEL_ID": "model_id",
    "HARMFUL_THRESHOLD": "threshold",
    "PRECISION": "precision",
    "MAX_NEW_TOKENS": "limits.max_new_tokens",
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_file_sets_defaults_and_the_environment_wins(tmp_path):
    path = write(tmp_path, "threshold: 0.3\nprecision: int8\nlimits: {max_new_tokens: 7}\n")
    env = {"HARMFUL_THRESHOLD": "0.25", "MAX_NEW_TOKENS": "9", "PRECISION": "", "OTHER": "x"}
    settings = load_config(Settings, path, env_overrides(env, VARIABLES))
    assert settings == Settings(threshold=0.25, precision="int8", limits=Limits(max_new_tokens=9))


def test_empty_and_missing_variables_are_not_overrides():
    assert env_overrides({"MODEL_ID": "  ", "PRECISION": ""}, VARIABLES) == []
    assert env_overrides({"PRECISION": "bf16"}, VARIABLES) == [
        Override("PRECISION", ("precision",), "bf16")
    ]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"PRECISION": "int4"}, "PRECISION='int4': precision: Input should be 'fp32', 'bf16' "),
        (
            {"HARMFUL_THRESHOLD": "1.5"},
            "HARMFUL_THRESHOLD='1.5': threshold: Input should be less than or equal to 1",
        ),
        (
            {"HARMFUL_THRESHOLD": "lots"},
            "HARMFUL_THRESHOLD='lots': threshold: Input should be a valid number",
        ),
        (
            {"MAX_NEW_TOKENS": "0"},
            "MAX_NEW_TOKENS='0': limits.max_new_tokens: Input should be greater than or equal to 1",
        ),
    ],
)
def test_a_bad_variable_is_named_with_its_value_and_what_is_allowed(tmp_path, env, expected):
    path = write(tmp_path, "threshold: 0.3\n")
    with pytest.raises(ConfigError) as error:
        load_config(Settings, path, env_overrides(env, VARIABLES))
    assert str(error.value).startswith(expected)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("threshold: 2\n", "config.yaml: threshold=2: Input should be less than or equal to 1"),
        ("tresholds: 2\n", "config.yaml: unknown key 'tresholds'; valid keys: ['limits', 'model"),
        ("limits: {max_new: 2}\n", "config.yaml: unknown key 'limits.max_new'"),
        ("threshold: [0.5\n", "is not valid YAML"),
        ("- a\n- b\n", "must be a YAML mapping"),
    ],
)  # fmt: skip
def test_a_bad_file_is_named_with_the_key(tmp_path, text, expected):
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[")):
        load_config(Settings, write(tmp_path, text))


def test_a_missing_or_binary_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(Settings, tmp_path / "absent.yaml")
    binary = tmp_path / "config.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_config(Settings, binary)


def test_an_empty_file_means_the_defaults(tmp_path):
    assert load_config(Settings, write(tmp_path, "")) == Settings()
    assert load_config(Settings) == Settings()


def test_load_or_exit_stops_with_one_line():
    def bad() -> Settings:
        raise ConfigError("PRECISION='int4': precision: Input should be 'fp32'")

    with pytest.raises(SystemExit) as stop:
        load_or_exit("toxic-classifier", bad)
    assert str(stop.value.code) == (
        "toxic-classifier: bad configuration: PRECISION='int4': precision: Input should be 'fp32'"
    )
    assert load_or_exit("x", Settings) == Settings()


@given(st.text())
def test_any_string_override_is_accepted_or_refused_in_one_line(value):
    env = {"HARMFUL_THRESHOLD": value, "PRECISION": value}
    try:
        settings = load_config(Settings, None, env_overrides(env, VARIABLES))
    except ConfigError as e:
        assert "\n" not in str(e)
        assert str(e).split("=", 1)[0] in VARIABLES
    else:
        assert 0 <= settings.threshold <= 1
