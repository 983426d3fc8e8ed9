"""Models the benchmarks build for themselves: random weights of real architectures and sizes.

The Hub is out of reach, so a benchmark that needs a model the size of a real one builds it here
(random weights; speed does not depend on their values) in a temporary folder, saved exactly like
a Hub checkpoint so the Spaces load it through their own loading code.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_MISTRAL = ROOT / "build" / "demo-models" / "mistral-tiny"


def build_random_mistral(folder: Path, *, layers: int = 28, hidden: int = 1024) -> int:
    """Write a random Mistral-shaped causal LM with the demo tokenizer into ``folder``.

    28 layers of width 1024 (32,000-token vocabulary) is ~0.5B parameters.

    Returns:
        The parameter count.
    """
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    if not DEMO_MISTRAL.is_dir():
        subprocess.run(
            [sys.executable, "-m", "scripts.build_demo_models", str(DEMO_MISTRAL.parent)],
            check=True,
            cwd=ROOT,
        )
    tokenizer = AutoTokenizer.from_pretrained(DEMO_MISTRAL)
    config = MistralConfig(
        vocab_size=32000,
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=max(1, hidden // 128),
        head_dim=64,
        max_position_embeddings=4096,
        sliding_window=None,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = MistralForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "demo_weights.json").write_text(json.dumps({"demo": True, "note": "benchmark"}))
    return sum(p.numel() for p in model.parameters())


def machine() -> dict[str, str]:
    """What the figures were measured on: CPU model, cores, torch version."""
    import os
    import platform

    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": str(len(os.sched_getaffinity(0))), "torch": torch.__version__}
