"""oneDNN-packed linear layers for CPU inference.

A decode step multiplies one token's activations by every weight matrix of the model: it is
bound by how fast the weights stream from memory. ``torch.nn.functional.linear`` reads a
row-major weight through a generic GEMM path; the same weight reordered once into oneDNN's
blocked layout (what ``torch.compile``'s weight freezing does on CPU) is read 2-3x faster for
a few rows, and no slower for a prompt's hundreds: a bf16 decode step of the benchmark's 0.5B
Mistral went from 78 to 53 ms (``benchmarks/llm_tiers/decode_probe.py``, notes in
``benchmarks/results/llm-tiers.md``). The results are the same: oneDNN computes both.

:func:`pack_linears` swaps each ``nn.Linear`` of a model for a :class:`PackedLinear` holding
the reordered weight instead of the original, so the memory stays the same.
"""

from __future__ import annotations

import logging

import torch

__all__ = ["PackedLinear", "can_pack", "pack_linears"]

logger = logging.getLogger(__name__)


def can_pack(model: torch.nn.Module) -> bool:
    """True when ``model`` is on the CPU in fp32, or in bf16 on a CPU where oneDNN has a bf16
    path, and this torch has oneDNN's ops."""
    try:
        weight = next(model.parameters())
    except StopIteration:
        return False
    return (
        weight.device.type == "cpu"
        and weight.dtype in (torch.float32, torch.bfloat16)
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        # oneDNN's bf16 reorder needs AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT; on an AVX2-only
        # CPU it raises, and an explicitly requested bf16 model stays unpacked.
        and (weight.dtype != torch.bfloat16 or torch.ops.mkldnn._is_mkldnn_bf16_supported())
    )


class PackedLinear(torch.nn.Module):
    """``nn.Linear`` for inference, with its weight in oneDNN's blocked layout.

    Args:
        linear: The layer to replace; its weight is reordered into this module's buffer.
    """

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        with torch.no_grad():
            packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1)
        self.register_buffer("packed_weight", packed, persistent=False)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ weight.T + bias`` for ``x`` of shape ``(..., in_features)``."""
        bias = None if self.bias is None else self.bias.detach()
        return torch.ops.mkldnn._linear_pointwise(
            x.contiguous(), self.packed_weight, bias, "none", [], ""
        )

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed"


def pack_linears(model: torch.nn.Module) -> int:
    """Replace the model's ``nn.Linear`` layers by :class:`PackedLinear` ones, in place.

    A layer whose weight is also used elsewhere (an output projection tied to the input
    embeddings) is left as it is: packing it would keep a second copy. Call after moving the
    model to the CPU and merging any adapter, and only for inference.

    Args:
        model: A model on the CPU, in fp32 or bf16 (see :func:`can_pack`).

    Returns:
        How many layers were packed (0 when :func:`can_pack` is false).
    """
    if not can_pack(model):
        return 0
    users: dict[int, int] = {}
    for module in model.modules():
        for param in module.parameters(recurse=False):
            users[id(param)] = users.get(id(param), 0) + 1
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is torch.nn.Linear and users.get(id(child.weight), 0) == 1
    ]
    for parent, name, child in targets:
        setattr(parent, name, PackedLinear(child))
    logger.debug("packed %d linear layers", len(targets))
    return len(targets)
