"""int8 ONNX export, its cache and the ONNX Runtime model, on a tiny BERT built here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from shared.errors import ModelLoadError
from shared.quantize import INT8_FILENAME, OnnxModel, cached_int8_onnx, model_fingerprint


def tiny_bert(folder: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
        # Large random weights give logits of order 1, so a wrong graph cannot hide in the
        # tolerance the way it could behind the default init's ~0.01 logits.
        initializer_range=0.5,
    )
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    return folder


def example() -> dict[str, torch.Tensor]:
    ids = torch.tensor([[2, 10, 11, 3, 0], [2, 12, 13, 14, 3]])
    return {
        "input_ids": ids,
        "attention_mask": (ids != 0).long(),
        "token_type_ids": torch.zeros_like(ids),
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """A tiny model folder, its cached int8 export and the names of what was loaded."""
    root = tmp_path_factory.mktemp("quantize")
    folder = tiny_bert(root / "model")
    loaded: list[str] = []

    def load() -> BertForSequenceClassification:
        loaded.append("model")
        return BertForSequenceClassification.from_pretrained(folder).eval()

    path = cached_int8_onnx(folder, load, example, root / "cache")
    return folder, path, loaded


def test_int8_model_matches_fp32_for_any_batch_and_length(exported):
    folder, path, _ = exported
    reference = BertForSequenceClassification.from_pretrained(folder).eval()
    model = OnnxModel(path, reference.config, threads=1)
    # The graph takes token_type_ids (the example had them); left out, they are zeros.
    assert model.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    texts = [[2, 5, 6, 7, 8, 9, 3], [2, 20, 3], [2, 30, 31, 3]]
    width = max(map(len, texts))
    ids = torch.tensor([t + [0] * (width - len(t)) for t in texts])  # (3, 7), padded
    mask = (ids != 0).long()
    with torch.inference_mode():
        expected = reference(input_ids=ids, attention_mask=mask).logits  # (3, num_labels)
    got = model(input_ids=ids, attention_mask=mask).logits
    assert got.shape == expected.shape == (3, 2)
    assert got.dtype == torch.float32
    assert expected.abs().max() > 0.5  # logits big enough for the bound below to mean something
    # int8 weights and activations: close to fp32, not equal. Large random weights make int8's
    # error large too (~12% of the logits' spread here), but a graph that ignored the mask or
    # returned nothing useful would be off by about the spread itself.
    spread = float(expected.std())
    error = (got - expected).abs().max()
    assert error < 0.25 * spread
    assert error > 0
    # Padding is masked: each text alone (batch 1, its own length) gets its padded row's logits.
    for i, text in enumerate(texts):
        alone = model(
            input_ids=torch.tensor([text]),
            attention_mask=torch.ones(1, len(text), dtype=torch.long),
        )
        assert alone.logits.shape == (1, 2)
        assert torch.allclose(alone.logits[0], got[i], atol=0.25 * spread)


def test_missing_input_is_named(exported):
    folder, path, _ = exported
    model = OnnxModel(path, BertConfig.from_pretrained(folder))
    with pytest.raises(TypeError, match="missing model input 'attention_mask'"):
        model(input_ids=torch.tensor([[2, 3]]))


def test_cache_hit_skips_the_export(exported, tmp_path):
    folder, path, loaded = exported
    assert path.name == INT8_FILENAME
    assert loaded == ["model"]

    def must_not_load() -> None:
        raise AssertionError("the cached export should have been used")

    assert cached_int8_onnx(folder, must_not_load, example, path.parent.parent) == path
    # A copy of the same files shares the entry; other weights do not.
    copy = tmp_path / "copy"
    copy.mkdir()
    for item in folder.iterdir():
        (copy / item.name).write_bytes(item.read_bytes())
    assert model_fingerprint(copy) == model_fingerprint(folder)
    assert model_fingerprint(tiny_bert(tmp_path / "other", seed=1)) != model_fingerprint(folder)


def test_failed_export_is_a_load_error_and_leaves_no_entry(tmp_path):
    folder = tiny_bert(tmp_path / "model")
    cache = tmp_path / "cache"

    def not_an_input() -> dict[str, torch.Tensor]:
        return {"pixel_values": torch.zeros(2, 3)}  # BERT's forward has no such argument

    with pytest.raises(ModelLoadError, match=r"could not export .*model to int8 ONNX"):
        cached_int8_onnx(
            folder,
            lambda: BertForSequenceClassification.from_pretrained(folder).eval(),
            not_an_input,
            cache,
        )
    # The export got as far as creating the entry; nothing of it is left behind.
    assert cache.is_dir()
    assert list(cache.iterdir()) == []
