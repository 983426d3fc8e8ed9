"""The benchmark's model and texts: a BERT-base-sized AraBERT stand-in and short/long Arabic texts.

The model has AraBERT v02's dimensions (hidden 768, 12 layers, 12 heads, intermediate 3072,
512 positions, 64,000-token vocabulary) and random, seeded weights: speed depends on the shapes,
not on the values. Its WordPiece vocabulary is learnt from the evaluation set (then padded with
unused tokens to 64,000 entries) so that Arabic text splits into about as many tokens per word
as with a real Arabic WordPiece vocabulary; a vocabulary of single letters would make every text
several times longer in tokens than it really is.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from shared.text import ARABIC_PLACEHOLDERS

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
SPACE_DIR = ROOT / "spaces" / "toxic-classifier"
EVAL_SET = SPACE_DIR / "data" / "eval.jsonl"
MODELS_DIR = ROOT / "build" / "bench-models"
SEED = 0
VOCAB_SIZE = 64_000
# Learnt WordPiece entries before padding; chosen so that the eval set splits into about 1.6
# tokens per text word (punctuation included): short texts ~35 tokens, long ~340.
LEARNT_VOCAB = 1500
SHORT_WORDS = 20
LONG_WORDS = 200

# Changing how the model is built (bump the tag) or the eval set rebuilds it.
BUILD_VERSION = hashlib.sha256(
    f"bert-base-v1:{VOCAB_SIZE}:{LEARNT_VOCAB}:{SEED}".encode() + EVAL_SET.read_bytes()
).hexdigest()[:16]


def eval_texts() -> list[str]:
    """The evaluation set's texts, in file order."""
    lines = EVAL_SET.read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines if line.strip()]


def _normalized(texts: list[str]) -> list[str]:
    from shared.text import ArabicNormalization, normalize_arabic

    options = ArabicNormalization.arabert_v02()
    return [normalize_arabic(t, options) for t in texts]


def build_model(out: Path | None = None) -> Path:
    """Build (or reuse) the BERT-base model folder; returns it.

    Args:
        out: The folder; ``build/bench-models/arabert-base-random`` when None.

    Returns:
        A folder loadable with ``from_pretrained`` and by the Space (``MODEL_ID``).
    """
    out = out or MODELS_DIR / "arabert-base-random"
    marker = out / "bench_model.json"
    if marker.is_file() and json.loads(marker.read_text())["build_version"] == BUILD_VERSION:
        return out
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    logger.info("building the BERT-base benchmark model in %s", out)
    out.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(
        lowercase=False, strip_accents=False, handle_chinese_chars=False
    )
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=LEARNT_VOCAB, special_tokens=specials, show_progress=False
    )
    wordpiece.train_from_iterator(_normalized(eval_texts()), trainer=trainer)
    learnt = sorted(wordpiece.get_vocab().items(), key=lambda kv: kv[1])
    vocab = [token for token, _ in learnt]
    placeholders = list(ARABIC_PLACEHOLDERS)
    padding = VOCAB_SIZE - len(vocab) - len(placeholders)
    vocab += [f"[unused{i}]" for i in range(padding)]
    tokenizer = BertTokenizer(
        vocab={token: i for i, token in enumerate(vocab)},
        do_lower_case=False,
        tokenize_chinese_chars=False,
        strip_accents=False,
    )
    tokenizer.add_tokens(placeholders)
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(out)

    torch.manual_seed(SEED)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
        num_labels=2,
        id2label={0: "LABEL_0", 1: "LABEL_1"},
        label2id={"LABEL_0": 0, "LABEL_1": 1},
    )
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    (out / "label_map.json").write_text(
        json.dumps({"LABEL_0": "safe", "LABEL_1": "harmful"}, indent=2) + "\n", encoding="utf-8"
    )
    marker.write_text(json.dumps({"build_version": BUILD_VERSION, "random": True}) + "\n")
    return out


@dataclass(frozen=True)
class Texts:
    """The request texts of one length class."""

    # "short" or "long".
    name: str
    # Distinct texts; requests cycle through them.
    texts: list[str]


def make_texts(count: int = 16) -> tuple[Texts, Texts]:
    """Short (~20 words) and long (~200 words) texts cut from the eval set's running text.

    Args:
        count: How many distinct texts of each length.

    Returns:
        ``(short, long)``.
    """
    words = " ".join(eval_texts()).split()

    def cut(n: int, i: int) -> str:
        start = (i * n * 7) % (len(words) - n)  # spread the windows over the whole set
        return " ".join(words[start : start + n])

    return (
        Texts("short", [cut(SHORT_WORDS, i) for i in range(count)]),
        Texts("long", [cut(LONG_WORDS, i) for i in range(count)]),
    )


def token_counts(model_dir: Path, texts: Texts) -> tuple[int, int, float]:
    """Min, max and mean tokens (with [CLS]/[SEP], after the Space's normalisation)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    counts = [len(tokenizer(t)["input_ids"]) for t in _normalized(texts.texts)]
    return min(counts), max(counts), sum(counts) / len(counts)
