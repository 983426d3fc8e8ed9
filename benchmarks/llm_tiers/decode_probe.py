"""Time one decode step of the benchmark's model in each way torch can run it on this CPU.

The question it answers for the engine: which forward (eager fp32 or bf16; with oneDNN-packed
linear weights, ``shared.packed``; fbgemm's dynamic int8 linears; ``torch.compile`` with
inductor's weight freezing, with or without ``max_autotune``) reads the weights fastest per
decode step, at what compile cost, and whether that survives the engine's real calls (an
attention mask, batch sizes changing between steps). It times the model alone, not the engine.
The GB/s it prints are the fp32 or bf16 weights' bytes over the step, whatever the forward holds.

    .venv/bin/python benchmarks/llm_tiers/decode_probe.py --forward eager --dtype bfloat16
    .venv/bin/python benchmarks/llm_tiers/decode_probe.py --forward autotune --mask --batches 1 3 8

Each line: the prefill's seconds (the first one includes compiling) and the decode steps' median
milliseconds after two warm-up steps, with the weights' GB/s that median reaches.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.models import build_random_mistral  # noqa: E402
from shared.packed import pack_linears  # noqa: E402

FORWARDS = ("eager", "packed", "int8", "compile", "autotune")


def forward_of(model: torch.nn.Module, kind: str) -> torch.nn.Module:
    """The model itself, with oneDNN-packed linears (what the engine serves), or compiled by
    inductor with frozen weights (and autotuned GEMMs)."""
    if kind == "eager":
        return model
    if kind == "packed":
        pack_linears(model)
        return model
    if kind == "int8":
        # fbgemm's dynamic int8 linears: int8 weights, each input quantized with one scale for
        # the whole tensor (so a row's result depends on the other rows of its batch).
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, torch.qint8)
    options = {"freezing": True, "max_autotune": kind == "autotune"}
    return torch.compile(model, dynamic=True, options=options)  # type: ignore[return-value]


def probe(forward: torch.nn.Module, batch: int, prompt: int, steps: int, mask: bool,
          nbytes: int) -> str:  # fmt: skip
    """Prefill ``batch`` prompts, then ``steps`` decode steps; one result line."""
    from transformers import DynamicCache

    ids = torch.randint(100, 30000, (batch, prompt))
    cache = DynamicCache()
    extra = {"attention_mask": torch.ones(batch, prompt, dtype=torch.long)} if mask else {}
    start = time.perf_counter()
    out = forward(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1, **extra)
    prefill = time.perf_counter() - start
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    times = []
    for step in range(steps):
        if mask:
            extra = {"attention_mask": torch.ones(batch, prompt + step + 1, dtype=torch.long)}
        start = time.perf_counter()
        out = forward(input_ids=token, past_key_values=cache, use_cache=True,
                      position_ids=torch.full((batch, 1), prompt + step), **extra)  # fmt: skip
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        times.append(time.perf_counter() - start)
    steady = sorted(times[2:])
    median = steady[len(steady) // 2]
    return (
        f"batch {batch}: prefill {prefill:.2f} s, decode step median {median * 1000:.1f} ms "
        f"({batch / median:.1f} tokens/s, {nbytes / median / 1e9:.1f} GB/s of weights); "
        f"all steps {[round(t * 1000) for t in times]} ms"
    )


def main() -> None:
    """Build (or reuse) the model, then probe each batch size in turn in one process."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--forward", choices=FORWARDS, default="eager")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
    parser.add_argument("--batches", type=int, nargs="+", default=[1])
    parser.add_argument("--prompt", type=int, default=52, help="prompt tokens")
    parser.add_argument("--steps", type=int, default=12, help="decode steps per batch")
    parser.add_argument(
        "--mask", action="store_true", help="pass an attention mask (the engine does)"
    )
    parser.add_argument("--model", type=Path, default=None, help="folder (built if empty)")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM

    folder = args.model or Path(tempfile.gettempdir()) / "decode-probe-model"
    if not (folder / "config.json").is_file():
        build_random_mistral(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, args.dtype)).eval()
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    forward = forward_of(model, args.forward)
    print(f"{args.forward}, {args.dtype}, mask={args.mask}, {nbytes / 1e9:.2f} GB of weights")
    began = time.perf_counter()
    with torch.inference_mode():
        for batch in args.batches:
            line = probe(forward, batch, args.prompt, args.steps, args.mask, nbytes)
            print(f"{line} (at {time.perf_counter() - began:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
