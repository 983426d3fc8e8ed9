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
    # The same "AMD EPYC" has come with AVX-512 + bf16 on some days and AVX2 only on others:
    # figures from the two are not comparable, so the vector ISA is part of the machine.
    from shared.models import cpu_supports_bf16

    isa = torch.backends.cpu.get_cpu_capability()
    cpu += f" ({isa}{', native bf16' if cpu_supports_bf16() else ', no native bf16'})"
    return {"cpu": cpu, "cores": str(len(os.sched_getaffinity(0))), "torch": torch.__version__}


#: Shapes of the real Whisper checkpoints (openai/whisper-<size>): d_model, layers per stack,
#: attention heads. The feed-forward width is 4 * d_model.
WHISPER_SIZES = {"tiny": (384, 4, 6), "base": (512, 6, 8), "small": (768, 12, 12)}
#: Whisper's multilingual vocabulary size (openai/whisper-tiny ... large-v2).
WHISPER_VOCAB = 51865


def build_random_whisper(folder: Path, *, size: str = "tiny", never_ends: bool = False) -> int:
    """Write a random multilingual Whisper of a real size into ``folder``, like a Hub checkpoint.

    ``config.json``, ``model.safetensors``, ``tokenizer.json`` (a byte-level BPE over Twi text
    padded with filler entries to Whisper's 51,865 ids, then Whisper's special tokens, 100
    language tokens among them, with ``<|notimestamps|>`` last: faster-whisper reads every id
    after it as a timestamp; CTranslate2 and faster-whisper see a multilingual model) and
    ``preprocessor_config.json`` (80 mels, 30 s windows, so the encoder sees 1,500 positions, as
    the real model does).

    Args:
        folder: Where to write the model (created if needed).
        size: ``tiny`` (d_model 384, 4+4 layers), ``base`` (512, 6+6) or ``small`` (768, 12+12).
        never_ends: Zero the ``<|endoftext|>`` embedding (tied to the output projection), so its
            logit is 0 while the best of 51k random logits is positive: greedy decoding never
            stops early and every engine spends its whole token budget.

    Returns:
        The parameter count.
    """
    import torch
    from faster_whisper.tokenizer import _LANGUAGE_CODES
    from tokenizers import Tokenizer
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizerFast,
    )

    from scripts.build_demo_models import _twi_tokenizer

    if size not in WHISPER_SIZES:
        raise ValueError(f"size must be one of {sorted(WHISPER_SIZES)}, got {size!r}")
    d_model, layers, heads = WHISPER_SIZES[size]
    languages = [f"<|{code}|>" for code in _LANGUAGE_CODES]
    tail = ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>",
            "<|nospeech|>", "<|notimestamps|>"]  # fmt: skip
    specials = ["<|endoftext|>", "<|startoftranscript|>", *languages, *tail]
    # Filler vocabulary entries (no merge produces them) pad the BPE to Whisper's id space.
    spec = json.loads(_twi_tokenizer([], 400).to_str())  # type: ignore[attr-defined]
    vocab = spec["model"]["vocab"]
    for i in range(len(vocab), WHISPER_VOCAB - len(specials) - 1):
        vocab[f"<filler{i}>"] = i
    # An empty entry, as the multilingual Whisper vocabulary has: CTranslate2 4.8 tells a
    # multilingual model by it (without it this vocabulary converts as English-only).
    vocab[""] = len(vocab)
    bpe = Tokenizer.from_str(json.dumps(spec))
    bpe.add_special_tokens(specials)
    eot = "<|endoftext|>"
    tokenizer = WhisperTokenizerFast(tokenizer_object=bpe, bos_token=eot, eos_token=eot,
                                     unk_token=eot, pad_token=eot)  # fmt: skip
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
    if len(tokenizer) != WHISPER_VOCAB or ids["<|notimestamps|>"] != WHISPER_VOCAB - 1:
        last = ids["<|notimestamps|>"]
        raise RuntimeError(
            f"tokenizer has {len(tokenizer)} ids, <|notimestamps|> at {last}; "
            f"expected {WHISPER_VOCAB} and the last"
        )
    config = WhisperConfig(
        vocab_size=WHISPER_VOCAB, num_mel_bins=80, d_model=d_model, encoder_layers=layers,
        decoder_layers=layers, encoder_attention_heads=heads, decoder_attention_heads=heads,
        encoder_ffn_dim=4 * d_model, decoder_ffn_dim=4 * d_model, max_source_positions=1500,
        max_target_positions=448, pad_token_id=ids[eot], bos_token_id=ids[eot],
        eos_token_id=ids[eot], decoder_start_token_id=ids["<|startoftranscript|>"],
        suppress_tokens=[], begin_suppress_tokens=[],
    )  # fmt: skip
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    if never_ends:
        with torch.no_grad():
            model.model.decoder.embed_tokens.weight[ids[eot]] = 0.0
    generation = model.generation_config
    generation.no_timestamps_token_id = ids["<|notimestamps|>"]
    generation.is_multilingual = True
    generation.lang_to_id = {t: ids[t] for t in languages}
    generation.task_to_id = {"transcribe": ids["<|transcribe|>"],
                             "translate": ids["<|translate|>"]}  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80, chunk_length=30).save_pretrained(folder)
    (folder / "demo_weights.json").write_text(json.dumps({"demo": True, "note": "benchmark"}))
    return sum(p.numel() for p in model.parameters())
