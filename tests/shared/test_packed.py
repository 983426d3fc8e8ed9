"""oneDNN-packed linears compute what nn.Linear computes, and leave tied weights alone."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM

from shared.packed import PackedLinear, can_pack, pack_linears
from tests.harness import DEMO_MODELS_DIR

pytestmark = pytest.mark.skipif(
    not can_pack(torch.nn.Linear(2, 2)), reason="this torch has no oneDNN linear ops"
)


# oneDNN's bf16 path needs AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT; asked of torch directly, not
# through can_pack, so that the test below checks can_pack against it.
_bf16_supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
BF16_PACKS = bool(_bf16_supported and _bf16_supported())
DTYPES = [torch.float32, torch.bfloat16] if BF16_PACKS else [torch.float32]


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 70),
    features=st.sampled_from([(8, 16), (64, 32), (96, 200)]),
    bias=st.booleans(),
    dtype=st.sampled_from(DTYPES),
    leading=st.sampled_from([(), (2,), (3, 1)]),
)
def test_packed_linear_matches_linear(rows, features, bias, dtype, leading):
    torch.manual_seed(rows)
    linear = torch.nn.Linear(*features, bias=bias).to(dtype).eval()
    x = torch.randn(*leading, rows, features[0]).to(dtype)
    with torch.inference_mode():
        expected = linear(x)
        got = PackedLinear(linear)(x)
    assert got.shape == expected.shape and got.dtype == dtype
    # oneDNN computes both; the blocked layout may sum in another order.
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, expected, atol=tolerance, rtol=tolerance)


def test_a_packed_model_gives_the_same_logits():
    folder = DEMO_MODELS_DIR / "mistral-tiny"
    ids = torch.tensor([[1, 5, 9, 200, 31, 7], [1, 44, 3, 2, 90, 11]])
    for dtype in DTYPES:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
        with torch.inference_mode():
            expected = model(input_ids=ids).logits.float()
            linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
            assert pack_linears(model) == linears > 0
            assert not any(type(m) is torch.nn.Linear for m in model.modules())
            got = model(input_ids=ids).logits.float()
        tolerance = 1e-4 if dtype == torch.float32 else 5e-2
        torch.testing.assert_close(got, expected, atol=tolerance, rtol=tolerance)


def test_a_tied_output_projection_is_not_packed():
    embedding = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = embedding.weight
    model = torch.nn.ModuleDict({"embed": embedding, "head": head, "other": torch.nn.Linear(4, 4)})
    assert pack_linears(model) == 1
    assert model["head"] is head and isinstance(model["other"], PackedLinear)
    assert pack_linears(model) == 0  # nothing left to pack


def test_nothing_is_packed_off_the_cpu_or_in_float16():
    half = torch.nn.Sequential(torch.nn.Linear(4, 4).half())
    assert not can_pack(half) and pack_linears(half) == 0
    assert not can_pack(torch.nn.Sequential())


@pytest.mark.skipif(BF16_PACKS, reason="this CPU has oneDNN's bf16 path")
def test_bf16_stays_unpacked_where_onednn_has_no_bf16_path():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4)).to(torch.bfloat16).eval()
    assert not can_pack(model) and pack_linears(model) == 0  # the reorder would raise here
    assert type(model[0]) is torch.nn.Linear
    with torch.inference_mode():
        assert model(torch.ones(2, 4, dtype=torch.bfloat16)).shape == (2, 4)
    assert can_pack(torch.nn.Sequential(torch.nn.Linear(4, 4)))  # fp32 still packs
