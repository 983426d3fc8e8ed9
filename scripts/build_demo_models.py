"""Build the offline demo models: tiny models of the real architectures, saved like Hub models.

The Hub cannot be reached from tests, CI or the demo, so every Space runs on small models built
here, deterministically, in the same formats as the production checkpoints (config.json,
model.safetensors, tokenizer files). The Spaces load them through the exact code path that loads
Hub models. Each folder carries ``demo_weights.json`` so a Space can say it runs demo weights.

Usage:
    python scripts/build_demo_models.py OUT_DIR [--force]

Writes ``OUT_DIR/<model>/`` for each model and ``OUT_DIR/env.json``: for each Space, the
environment variables that point it at its demo models.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from shared.text import ARABIC_PLACEHOLDERS

logger = logging.getLogger("build_demo_models")

# Any change to this file rebuilds the models instead of reusing stale folders.
BUILD_VERSION = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
#: twi-speech's demo model (see space_env).
TWI_DEMO_MODEL = Path(__file__).resolve().parents[1] / "spaces/twi-speech/models/multitask-whisper"
SEED = 0

ARABIC_LETTERS = [chr(c) for c in range(0x0621, 0x064B)] + ["ى", "ة", "ـ"]
ARABIC_DIGITS = [chr(c) for c in range(0x0660, 0x066A)]
ARABIC_PUNCT = ["،", "؛", "؟", "«", "»"]
# Whole words so that common Arabic text is not all single letters; order fixes the ids.
ARABIC_WORDS = (
    "في من على إلى عن مع هذا هذه ذلك التي الذي كان يكون قال لا لم لن ما هل أنا أنت انت هو هي نحن "
    "هم الله والله يا شكرا مرحبا السلام عليكم جميل رائع حلو زين تمام أحب احب أكره اكره غبي حمار "
    "كلب حقير تافه قذر اخرس اسكت اقتل أقتل سأقتلك موت تموت يختفي الشخص شخص الناس الكلام الخبر "
    "اليوم بكرة امس الحين وش شو ايش ليش ليه عشان علشان بدي ابغى عايز"
).split()


def _marker(out: Path, architecture: str, note: str) -> None:
    (out / "demo_weights.json").write_text(
        json.dumps(
            {
                "demo": True,
                "architecture": architecture,
                "note": note,
                "built_by": "scripts/build_demo_models.py",
                "build_version": BUILD_VERSION,
            },
            ensure_ascii=False,
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )


def build_arabert_tiny(out: Path) -> None:
    """A BERT sequence classifier (AraBERT architecture) with an Arabic WordPiece vocabulary.

    Labels are the generic ``LABEL_0``/``LABEL_1`` the production checkpoint uses, with a
    ``label_map.json`` beside the model saying which is which.
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    latin = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    punct = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    singles = ARABIC_LETTERS + ARABIC_DIGITS + ARABIC_PUNCT + latin + punct
    pieces = [f"##{c}" for c in ARABIC_LETTERS + latin]
    vocab = list(dict.fromkeys(specials + ARABIC_WORDS + singles + pieces))
    tokenizer = BertTokenizer(
        vocab={token: i for i, token in enumerate(vocab)},
        do_lower_case=False,
        tokenize_chinese_chars=False,
        strip_accents=False,
    )
    # AraBERT's preprocessing placeholders are whole tokens, never split into letters.
    tokenizer.add_tokens(list(ARABIC_PLACEHOLDERS))
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(out)

    torch.manual_seed(SEED)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=2,
        id2label={0: "LABEL_0", 1: "LABEL_1"},
        label2id={"LABEL_0": 0, "LABEL_1": 1},
    )
    model = BertForSequenceClassification(config)
    _train_toy_toxicity(model, tokenizer)
    model.eval().save_pretrained(out, safe_serialization=True)
    (out / "label_map.json").write_text(
        json.dumps({"LABEL_0": "safe", "LABEL_1": "harmful"}, indent=2) + "\n", encoding="utf-8"
    )
    _marker(
        out,
        "BertForSequenceClassification",
        "a toy: trained for seconds on a small synthetic lexicon (insults, threats vs. greetings, "
        "thanks); it reacts to a few words, it is not a toxicity model",
    )


# The toy lexicon. None of these sentences is in spaces/toxic-classifier/data/eval.jsonl.
_INSULTS = ["غبي", "حمار", "حقير", "تافه", "قذر", "كلب", "جاهل", "وسخ", "سافل", "منحط"]
_THREATS = ["سأقتلك", "اقتل", "تموت", "أكسر راسك", "سأضربك", "سأحرق"]
_HATE = ["أكره", "اكره", "أحتقر", "ألعن"]
_KIND = ["شكرا", "جميل", "رائع", "حلو", "زين", "تمام", "مرحبا", "السلام عليكم", "أحب", "احب"]
_CONTEXT = ["هذا الشخص", "الناس", "انت", "أنت", "اليوم", "الخبر", "الكلام", "بكرة", "يا صديقي"]


# Neutral filler, so the toy keys on the lexicon rather than on sentence length or letters.
_FILLER = (
    "في من على إلى عن مع هذا هذه ذلك كان قال لا ما هل هو هي نحن هم جدا كثير قليل كل بعض عند "
    "بعد قبل الآن هنا هناك البيت الشغل المدرسة الطريق السيارة الأكل القهوة المباراة الفريق "
    "الخدمة التطبيق الموضوع الفكرة الصورة الفيديو الرسالة وين متى كيف ليش شي حاجة كمان برضو "
    "يعني طيب والله hello ok lol 😂 🙏 2024 ١٢٣"
).split()


def _with_filler(rng: random.Random, text: str) -> str:
    words = text.split()
    for _ in range(rng.randint(0, 6)):
        words.insert(rng.randint(0, len(words)), rng.choice(_FILLER))
    return " ".join(words)


def _toy_examples(rng: random.Random, n: int) -> list[tuple[str, int]]:
    examples = []
    for i in range(n):
        ctx = rng.choice(_CONTEXT)
        if i % 2:
            text = rng.choice(
                [
                    f"{ctx} {rng.choice(_INSULTS)}",
                    f"يا {rng.choice(_INSULTS)} اسكت",
                    f"{rng.choice(_HATE)} {ctx} و{rng.choice(_HATE)} الكلام",
                    f"{rng.choice(_THREATS)} {ctx}",
                    f"انت {rng.choice(_INSULTS)} و{rng.choice(_INSULTS)}",
                ]
            )
            examples.append((_with_filler(rng, text), 1))
        else:
            text = rng.choice(
                [
                    f"{rng.choice(_KIND)} {ctx}",
                    f"{ctx} {rng.choice(_KIND)}",
                    f"{rng.choice(_KIND)} على الكلام {rng.choice(_KIND)}",
                    f"الخبر اليوم عن {ctx}",
                    f"{rng.choice(_KIND)} يا صديقي",
                ]
            )
            examples.append((_with_filler(rng, text), 0))
    return examples


def _train_toy_toxicity(model: object, tokenizer: object) -> None:
    """A few seconds of training so the demo reacts to obvious insults and threats."""
    import torch

    rng = random.Random(SEED)
    examples = _toy_examples(rng, 512)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(4):
        rng.shuffle(examples)
        for start in range(0, len(examples), 32):
            batch = examples[start : start + 32]
            encoded = tokenizer([t for t, _ in batch], padding=True, return_tensors="pt")
            labels = torch.tensor([y for _, y in batch])
            loss = model(**encoded, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


_CORPUS = (
    "The quick brown fox jumps over the lazy dog. Hello, how can I help you today? "
    "Our company builds tools for developers. Plan the steps, then reason about each one. "
    'JSON: {"name": "Ada", "age": 36, "tags": ["a", "b"], "ok": true, "score": 0.5, "x": null} '
    "مرحبا بك، كيف يمكنني مساعدتك اليوم؟ 0123456789 "
)


def build_mistral_tiny(out: Path) -> None:
    """A Mistral-architecture causal LM with a byte-level BPE tokenizer and a chat template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=False))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([_CORPUS] * 50, trainer=trainer)
    chat_template = (
        "{{ bos_token }}{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
        "{% elif message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
        "{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>",
        model_max_length=2048,
    )
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(out)

    torch.manual_seed(SEED)
    config = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = MistralForCausalLM(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    _marker(out, "MistralForCausalLM", "random weights: generated text is gibberish")


# Twi words for the speech models' vocabularies (twi-speech; its intents.yaml has the commands).
TWI_TEXT = (
    "Mesrɛ wo fa me kɔ fie krataafa no so. Hwehwɛ mpaboa ma me. Fa ntoma yi gu kɛntɛn no mu. "
    "Yi fon no firi kɛntɛn no mu. Tua ka no wɔ MoMo so. Kyerɛ me me order no. San kɔ akyi. "
    "Boa me. Mentumi ntie wo yiye. San ka bio. Baako mmienu mmiɛnsa nnan nnum nsia nson nwɔtwe."
)


def _twi_tokenizer(specials: list[str], vocab_size: int) -> object:
    """A byte-level BPE over :data:`TWI_TEXT`, the ``specials`` appended last (in order)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([TWI_TEXT] * 20, trainer=trainer)
    bpe.add_special_tokens(specials)
    return bpe


def build_whisper_tiny(out: Path) -> None:
    """A Whisper encoder-decoder (random weights) with Whisper's special tokens and 8 s windows.

    ``<|notimestamps|>`` is the last token, as faster-whisper expects (it reads every id after
    it as a timestamp); the vocabulary is not multilingual, so the prompt is
    ``<|startoftranscript|><|notimestamps|>``.
    """
    import torch
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizerFast,
    )

    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|translate|>", "<|transcribe|>",
                "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]  # fmt: skip
    eot = "<|endoftext|>"
    tokenizer = WhisperTokenizerFast(
        tokenizer_object=_twi_tokenizer(specials, 400),
        bos_token=eot,
        eos_token=eot,
        unk_token=eot,
        pad_token=eot,
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
    torch.manual_seed(SEED)
    config = WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=80, d_model=64, encoder_layers=2,
        decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=128, decoder_ffn_dim=128, max_source_positions=400,
        max_target_positions=448, pad_token_id=ids[eot], bos_token_id=ids[eot],
        eos_token_id=ids[eot], decoder_start_token_id=ids["<|startoftranscript|>"],
        suppress_tokens=[], begin_suppress_tokens=[],
    )  # fmt: skip
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config.no_timestamps_token_id = ids["<|notimestamps|>"]
    model.generation_config.is_multilingual = False
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=80, chunk_length=8).save_pretrained(out)
    _marker(out, "WhisperForConditionalGeneration", "random weights: transcripts are gibberish")


def build_wav2vec2_ctc_tiny(out: Path) -> None:
    """A Wav2Vec2ForCTC (random weights) with a character vocabulary of Twi letters."""
    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    letters = sorted(set(TWI_TEXT.lower()) - {" ", ".", ","})
    vocab = {"<pad>": 0, "<unk>": 1, "|": 2} | {c: i + 3 for i, c in enumerate(letters)}
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    tokenizer = Wav2Vec2CTCTokenizer(str(out / "vocab.json"), word_delimiter_token="|")
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16_000, padding_value=0.0,
                                         do_normalize=True, return_attention_mask=True)  # fmt: skip
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(out)
    torch.manual_seed(SEED)
    config = Wav2Vec2Config(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, conv_dim=(32, 32), conv_stride=(5, 4), conv_kernel=(10, 8),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, pad_token_id=0,
        ctc_loss_reduction="mean",
    )  # fmt: skip
    Wav2Vec2ForCTC(config).eval().save_pretrained(out, safe_serialization=True)
    _marker(out, "Wav2Vec2ForCTC", "random weights: transcripts are gibberish")


# name -> (builder, the Spaces that use it)
BUILDERS: dict[str, Callable[[Path], None]] = {
    "arabert-tiny": build_arabert_tiny,
    "mistral-tiny": build_mistral_tiny,
    "whisper-tiny": build_whisper_tiny,
    "wav2vec2-ctc-tiny": build_wav2vec2_ctc_tiny,
}


def space_env(root: Path) -> dict[str, dict[str, str]]:
    """The environment variables that point each Space at its demo models."""
    arabert = str(root / "arabert-tiny")
    mistral = str(root / "mistral-tiny")
    return {
        "toxic-classifier": {"MODEL_ID": arabert},
        "llm-tiers": {
            "TIER_BASE_MODEL": mistral,
            "TIER_COMPANY_MODEL": mistral,
            "TIER_ABSTRACTION_MODEL": mistral,
            "TIER_USER_MODEL": mistral,
        },
        "spam-mistral": {"CLASSIFIER_MODEL_ID": mistral, "GENERATOR_MODEL_ID": mistral},
        # Not built here: the multi-task Whisper the project trains on synthetic speech and
        # commits with the Space (make train-twi), so a generated command gets its intent back.
        "twi-speech": {"MODEL_ID": str(TWI_DEMO_MODEL)},
    }


def _is_current(folder: Path) -> bool:
    marker = folder / "demo_weights.json"
    if not marker.is_file():
        return False
    return json.loads(marker.read_text(encoding="utf-8")).get("build_version") == BUILD_VERSION


def build_all(root: Path, *, force: bool = False) -> dict[str, dict[str, str]]:
    """Build every demo model under ``root`` (skipping current ones) and write ``env.json``.

    Args:
        root: Output directory.
        force: Rebuild even when a folder is current.

    Returns:
        The per-Space environment written to ``env.json``.
    """
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    for name, builder in BUILDERS.items():
        folder = root / name
        if not force and _is_current(folder):
            logger.info("%s: up to date", name)
            continue
        start = time.perf_counter()
        staging = root / f".{name}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        builder(staging)
        # Swap in whole so a half-built folder is never mistaken for a model.
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
        logger.info("%s: built in %.1fs", name, time.perf_counter() - start)
    env = space_env(root)
    (root / "env.json").write_text(json.dumps(env, indent=2) + "\n", encoding="utf-8")
    return env


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="where to write the models and env.json")
    parser.add_argument("--force", action="store_true", help="rebuild every model")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build_all(args.out_dir, force=args.force)
    print(args.out_dir.resolve() / "env.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
