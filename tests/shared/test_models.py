"""Model sources: parsing, validation before loading, LFS pointers, safe weights loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from shared.errors import ModelLoadError
from shared.models import (
    TRANSFORMERS_WEIGHTS,
    ModelSource,
    cpu_supports_bf16,
    demo_info,
    find_lfs_pointers,
    is_lfs_pointer,
    load_state_dict,
    resolve_model,
    select_device,
    validate_model_dir,
)

POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
    "size 1262331904\n"
)


def make_model(folder: Path, *, pointer: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    weights = folder / "model.safetensors"
    if pointer:
        weights.write_text(POINTER)
    else:
        save_file({"w": torch.ones(2, 2)}, str(weights))
    return folder


@pytest.mark.parametrize(
    ("spec", "revision", "location", "expected_revision", "local"),
    [
        ("owner/model", None, "owner/model", None, False),
        ("owner/model@v2", None, "owner/model", "v2", False),
        ("owner/model@v2", "abc123", "owner/model", "abc123", False),
        ("./models/x", None, "./models/x", None, True),
        ("/abs/path@weird", None, "/abs/path@weird", None, True),
    ],
)
def test_parse(spec, revision, location, expected_revision, local):
    source = ModelSource.parse(spec, revision)
    assert (source.location, source.revision, source.is_local) == (
        location,
        expected_revision,
        local,
    )


def test_parse_empty_is_an_error():
    with pytest.raises(ModelLoadError, match="empty"):
        ModelSource.parse("  ")


def test_str_names_revision():
    assert str(ModelSource.parse("a/b")) == "a/b@main"
    assert str(ModelSource.parse("a/b@dev")) == "a/b@dev"


def test_lfs_pointer_is_detected_and_named(tmp_path):
    folder = make_model(tmp_path / "m", pointer=True)
    assert is_lfs_pointer(folder / "model.safetensors")
    assert find_lfs_pointers(folder) == [folder / "model.safetensors"]
    size = len(POINTER)
    with pytest.raises(ModelLoadError) as err:
        validate_model_dir(folder, ["config.json", TRANSFORMERS_WEIGHTS])
    assert str(err.value) == (
        f"model.safetensors is a Git LFS pointer ({size} bytes), not weights: "
        "run `git lfs pull` or re-upload the file"
    )
    with pytest.raises(ModelLoadError, match="Git LFS pointer"):
        load_state_dict(folder / "model.safetensors")


def test_real_weights_are_not_pointers(tmp_path):
    folder = make_model(tmp_path / "m")
    assert not is_lfs_pointer(folder / "model.safetensors")
    validate_model_dir(folder, ["config.json", TRANSFORMERS_WEIGHTS])


def test_missing_required_file_lists_what_is_there(tmp_path):
    folder = make_model(tmp_path / "m")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"lacks one of \['model.safetensors'") as err:
        validate_model_dir(folder, ["config.json", TRANSFORMERS_WEIGHTS])
    assert "config.json" in str(err.value)


def test_missing_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model(ModelSource.parse(str(tmp_path / "nope")))


def test_resolve_local(tmp_path):
    folder = make_model(tmp_path / "m")
    assert resolve_model(ModelSource.parse(str(folder)), required=["config.json"]) == folder


def test_hub_unreachable_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="could not fetch no-such-owner/no-such-model@main"):
        resolve_model(ModelSource.parse("no-such-owner/no-such-model"), cache_dir=tmp_path)


def test_load_state_dict_safetensors(tmp_path):
    folder = make_model(tmp_path / "m")
    state = load_state_dict(folder / "model.safetensors")
    assert torch.equal(state["w"], torch.ones(2, 2))


def test_load_state_dict_torch_uses_weights_only(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(3)}, path)
    assert torch.equal(load_state_dict(path)["w"], torch.zeros(3))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, evil)
    with pytest.raises(ModelLoadError, match="will not be unpickled"):
        load_state_dict(evil)


def test_demo_marker(tmp_path):
    folder = make_model(tmp_path / "m")
    assert demo_info(folder) is None
    (folder / "demo_weights.json").write_text(json.dumps({"demo": True}))
    assert demo_info(folder) == {"demo": True}


def test_select_device_cpu():
    choice = select_device("cpu")
    assert (choice.device, choice.dtype) == ("cpu", "float32")
    assert choice.torch_dtype() is torch.float32
    assert select_device("cpu", "bfloat16").torch_dtype() is torch.bfloat16
    # bf16 by default only when asked for and where the CPU computes in it natively.
    native = select_device("cpu", cpu_bf16=True).dtype
    assert native == ("bfloat16" if cpu_supports_bf16() else "float32")
    assert select_device("cpu", "float32", cpu_bf16=True).dtype == "float32"


def test_select_device_cuda_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(ModelLoadError, match="no GPU"):
        select_device("cuda")
