"""The predictor without a server: label mapping, multi-label heads, normalisation, loading."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from classifier import ClassifierConfig, ToxicityClassifier, plan_chunks
from scripts.launcher import ONNX_CACHE_DIR
from shared.errors import InputError, ModelLoadError
from shared.labels import LabelMappingError
from shared.text import normalize_arabic
from tests.harness import start_space

TOXIC = "أكره هذا الشخص وأتمنى أن يختفي"


@pytest.fixture(scope="module")
def demo_dir(demo_models) -> Path:
    return Path(demo_models["toxic-classifier"]["MODEL_ID"])


def config_for(model_dir: Path, **fields) -> ClassifierConfig:
    """The Space config on another model; fp32 unless asked (no int8 export per variant)."""
    fields.setdefault("precision", "fp32")
    return replace(ClassifierConfig.load(), model_id=str(model_dir), **fields)


def variant(demo_dir: Path, tmp_path: Path, id2label: dict[int, str], **config) -> Path:
    """A copy of the demo model with other labels (a fresh classification head)."""
    out = tmp_path / "variant"
    out.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(demo_dir / name, out / name)
    base = BertConfig.from_pretrained(demo_dir)
    base.id2label = id2label
    base.label2id = {v: k for k, v in id2label.items()}
    base.num_labels = len(id2label)
    for key, value in config.items():
        setattr(base, key, value)
    torch.manual_seed(1)
    BertForSequenceClassification(base).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def classifier(demo_dir) -> ToxicityClassifier:
    return ToxicityClassifier.load(config_for(demo_dir, precision="fp32"))


def test_label_map_file_beside_the_model_is_used(classifier):
    assert classifier.demo
    assert {raw: classifier.mapper.canonical_of(raw) for raw in classifier.raw_labels} == {
        "LABEL_0": "safe",
        "LABEL_1": "harmful",
    }


def test_verdict_follows_threshold(classifier):
    p = classifier.classify_one(TOXIC).scores["harmful"]
    low = ToxicityClassifier(
        classifier.model,
        classifier.tokenizer,
        replace(classifier.config, threshold=p - 1e-6),
        "m",
        label_map_file=None,
    )
    high = ToxicityClassifier(
        classifier.model,
        classifier.tokenizer,
        replace(classifier.config, threshold=min(1.0, p + 1e-6)),
        "m",
    )
    assert low.classify_one(TOXIC).label == "harmful"
    assert high.classify_one(TOXIC).label == "safe"


def test_normalisation_makes_decorated_text_equal(classifier):
    plain = classifier.classify_one(TOXIC)
    decorated = classifier.classify_one("أَكْرَهُ هـــذا الشَّخْصَ وأتمنّى أن يختفـــي")
    assert decorated.scores == plain.scores


def test_batch_equals_singles(classifier):
    texts = [TOXIC, "شكرا", "يا ghabi", "كلمة " * 700]
    batch = classifier.classify(texts)
    for text, verdict in zip(texts, batch, strict=True):
        single = classifier.classify_one(text)
        assert verdict.scores["harmful"] == pytest.approx(single.scores["harmful"], abs=1e-5)
        assert verdict.truncated == single.truncated
    assert [v.truncated for v in batch] == [False, False, False, True]


class _PythonOnlyTokenizer:
    """The demo tokenizer without its Rust backend, like a tokenizer that has none."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        self.model_max_length = tokenizer.model_max_length
        self.pad_token_id = tokenizer.pad_token_id
        self.padding_side = tokenizer.padding_side

    def __call__(self, *args, **kwargs):
        return self._tokenizer(*args, **kwargs)


TEXT = st.text(
    alphabet=st.sampled_from("ابتثجحخدذرسشصضطظعغفقكلمنهوي ءآأؤإئة ًٌٍَُِّْـ abcXYZ019 .,!؟،😀🙂"),
    max_size=1500,
).filter(str.strip)


@given(text=TEXT)
def test_preprocess_tokenizes_like_the_tokenizer(classifier, text):
    """Token ids and the truncation flag match the transformers tokenizer, with or without its
    Rust backend."""
    python_only = ToxicityClassifier(
        classifier.model, _PythonOnlyTokenizer(classifier.tokenizer), classifier.config, "m"
    )
    if not normalize_arabic(text, classifier.config.normalization).strip():
        # only diacritics or tatweel: nothing is left to classify
        with pytest.raises(InputError, match="empty after normalisation"):
            classifier.preprocess(text)
        return
    prepared = classifier.preprocess(text)
    limit = classifier.max_length
    expected = classifier.tokenizer(prepared.text, truncation=True, max_length=limit)
    whole = classifier.tokenizer(prepared.text, truncation=False)["input_ids"]
    assert list(prepared.input_ids) == expected["input_ids"]
    assert prepared.truncated == (len(whole) > limit)
    assert python_only.preprocess(text) == prepared


def test_preprocess_is_thread_safe(classifier):
    """Request threads tokenize at once (the Space's case): same results as one at a time."""
    texts = [TOXIC, "شكرا", "يا ghabi", "كلمة " * 700, "😀", "مرحبا بكم " * 40] * 8
    expected = [classifier.preprocess(t) for t in texts]
    with ThreadPoolExecutor(8) as pool:
        for _ in range(5):
            assert list(pool.map(classifier.preprocess, texts)) == expected


def test_preprocess_ignores_the_tokenizers_shared_settings(classifier, demo_dir):
    """What other callers set on the transformers tokenizer's Rust backend (truncation, padding)
    does not leak into the Space's token ids: the encoder has its own copy."""
    tokenizer = AutoTokenizer.from_pretrained(demo_dir)
    own = ToxicityClassifier(classifier.model, tokenizer, classifier.config, "m")
    texts = [TOXIC, "كلمة " * 700]
    expected = [own.preprocess(t) for t in texts]
    tokenizer.backend_tokenizer.enable_truncation(8)
    tokenizer.backend_tokenizer.enable_padding(length=600)
    assert [own.preprocess(t) for t in texts] == expected
    assert expected[1].truncated and len(expected[1].input_ids) == own.max_length


def test_preprocess_honours_the_truncation_side(classifier, demo_dir):
    tokenizer = AutoTokenizer.from_pretrained(demo_dir, truncation_side="left")
    left = ToxicityClassifier(classifier.model, tokenizer, classifier.config, "m")
    prepared = left.preprocess("أول " + "كلمة " * 700 + "آخر")
    expected = tokenizer(prepared.text, truncation=True, max_length=left.max_length)
    assert list(prepared.input_ids) == expected["input_ids"]
    assert prepared.input_ids != classifier.preprocess(prepared.text).input_ids
    assert prepared.truncated


def test_token_budget_chunks_keep_order_and_scores(classifier):
    texts = ["كلمة " * n for n in (300, 2, 150, 5, 400, 1, 90)]
    whole = [v.scores["harmful"] for v in classifier.classify(texts)]
    small = ToxicityClassifier(
        classifier.model,
        classifier.tokenizer,
        replace(classifier.config, batch_tokens=16),
        "m",
        label_map_file=None,
    )
    chunked = [v.scores["harmful"] for v in small.classify(texts)]
    singles = [classifier.classify_one(t).scores["harmful"] for t in texts]
    assert chunked == pytest.approx(singles, abs=1e-5)
    assert whole == pytest.approx(singles, abs=1e-5)


def test_bad_inputs_name_the_text(classifier):
    with pytest.raises(InputError, match=r"^text 2 of 3: text is empty$"):
        classifier.classify(["a", " ", "b"])
    with pytest.raises(InputError, match="20,000"):
        classifier.classify_one("ب" * 20_001)


def test_unmapped_labels_fail_at_startup_listing_them(demo_dir, tmp_path):
    model_dir = variant(demo_dir, tmp_path, {0: "LABEL_0", 1: "LABEL_1"})
    with pytest.raises(LabelMappingError) as err:
        ToxicityClassifier.load(config_for(model_dir, label_map={}))
    assert "['LABEL_0', 'LABEL_1']" in str(err.value)


@pytest.mark.parametrize("names", [("NOT_OFF", "OFF"), ("non-toxic", "toxic")])
def test_named_labels_map_with_the_shipped_config(demo_dir, tmp_path, names):
    # config.yaml's label_map names LABEL_0/LABEL_1 (the production checkpoint); a model with
    # named labels maps through the well-known names instead of failing on that map.
    assert set(ClassifierConfig.load().label_map) == {"LABEL_0", "LABEL_1"}
    model_dir = variant(demo_dir, tmp_path, {0: names[0], 1: names[1]})
    clf = ToxicityClassifier.load(config_for(model_dir))
    verdict = clf.classify_one(TOXIC)
    raw = {r["label"]: r["score"] for r in verdict.raw}
    assert verdict.scores["harmful"] == pytest.approx(raw[names[1]])


def test_label_map_file_mapping_every_label_sets_the_config_map_aside(demo_dir, tmp_path):
    # LABEL_0 is in the shipped config's map, bar is not: without the file the config map
    # would be a typo (it names LABEL_1, which this model lacks); with it, the file decides.
    model_dir = variant(demo_dir, tmp_path, {0: "LABEL_0", 1: "bar"})
    (model_dir / "label_map.json").write_text('{"LABEL_0": "harmful", "bar": "safe"}')
    clf = ToxicityClassifier.load(config_for(model_dir))
    assert {raw: clf.mapper.canonical_of(raw) for raw in clf.raw_labels} == {
        "LABEL_0": "harmful",
        "bar": "safe",
    }


def test_label_map_file_that_disagrees_with_the_config_is_warned_about(demo_dir, tmp_path, caplog):
    model_dir = variant(demo_dir, tmp_path, {0: "LABEL_0", 1: "LABEL_1"})
    (model_dir / "label_map.json").write_text('{"LABEL_0": "harmful", "LABEL_1": "safe"}')
    with caplog.at_level("INFO", logger="classifier"):
        clf = ToxicityClassifier.load(config_for(model_dir))
    assert [clf.mapper.canonical_of(raw) for raw in clf.raw_labels] == ["harmful", "safe"]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "differently" in warned[0] and "LABEL_0" in warned[0]


def test_label_map_file_that_agrees_with_the_config_is_not_warned_about(demo_dir, caplog):
    with caplog.at_level("INFO", logger="classifier"):
        ToxicityClassifier.load(config_for(demo_dir))  # the demo model's map is the config's
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_label_map_file_and_config_map_apply_label_by_label(demo_dir, tmp_path):
    model_dir = variant(demo_dir, tmp_path, {0: "LABEL_0", 1: "LABEL_1"})
    (model_dir / "label_map.json").write_text('{"LABEL_1": "harmful"}')
    clf = ToxicityClassifier.load(config_for(model_dir))  # LABEL_0 from the config's map
    assert {raw: clf.mapper.canonical_of(raw) for raw in clf.raw_labels} == {
        "LABEL_0": "safe",
        "LABEL_1": "harmful",
    }


def test_config_map_targets_match_ignoring_case(demo_dir, tmp_path):
    model_dir = variant(demo_dir, tmp_path, {0: "LABEL_0", 1: "LABEL_1"})
    clf = ToxicityClassifier.load(
        config_for(model_dir, label_map={"LABEL_0": "Safe", "LABEL_1": "HARMFUL"})
    )
    assert [clf.mapper.canonical_of(raw) for raw in clf.raw_labels] == ["safe", "harmful"]


def test_config_map_with_a_wrong_target_fails_even_when_set_aside(demo_dir, tmp_path):
    model_dir = variant(demo_dir, tmp_path, {0: "NOT_OFF", 1: "OFF"})
    config = config_for(model_dir, label_map={"LABEL_0": "sfae", "LABEL_1": "harmful"})
    with pytest.raises(LabelMappingError, match=r"\{'LABEL_0': 'sfae'\}; targets must be one of"):
        ToxicityClassifier.load(config)


def test_config_map_naming_some_model_labels_but_not_others_fails(demo_dir, tmp_path):
    model_dir = variant(demo_dir, tmp_path, {0: "LABEL_0", 1: "toxic"})
    with pytest.raises(LabelMappingError, match=r"\['LABEL_1'\], which the model does not have"):
        ToxicityClassifier.load(config_for(model_dir))


def test_named_labels_map_without_configuration(demo_dir, tmp_path):
    model_dir = variant(demo_dir, tmp_path, {0: "NOT_OFF", 1: "OFF"})
    clf = ToxicityClassifier.load(config_for(model_dir, label_map={}))
    verdict = clf.classify_one(TOXIC)
    raw = {r["label"]: r["score"] for r in verdict.raw}
    assert verdict.scores["harmful"] == pytest.approx(raw["OFF"])


def test_multi_label_heads_any_over_threshold(demo_dir, tmp_path):
    model_dir = variant(
        demo_dir,
        tmp_path,
        {0: "toxic", 1: "insult", 2: "threat"},
        problem_type="multi_label_classification",
    )
    clf = ToxicityClassifier.load(config_for(model_dir))  # the shipped config's label_map too
    assert clf.multi_label
    verdict = clf.classify_one(TOXIC)
    heads = {r["label"]: r["score"] for r in verdict.raw}
    assert sum(heads.values()) != pytest.approx(1.0)  # independent sigmoids
    assert verdict.scores["harmful"] == pytest.approx(max(heads.values()))
    assert verdict.scores["safe"] == pytest.approx(1 - max(heads.values()))


def test_lfs_pointer_weights_are_named(demo_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(demo_dir, broken)
    (broken / "model.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 540000000\n"
    )
    with pytest.raises(ModelLoadError, match=r"model\.safetensors is a Git LFS pointer"):
        ToxicityClassifier.load(config_for(broken))


@pytest.mark.slow
def test_space_with_broken_model_reports_it_on_health(demo_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(demo_dir, broken)
    (broken / "model.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 540000000\n"
    )
    with (
        pytest.raises(RuntimeError, match=r"Git LFS pointer.*not weights") as err,
        start_space("toxic-classifier", {"MODEL_ID": str(broken)}, timeout=120),
    ):
        pass
    assert '"status":"error"' in str(err.value).replace(" ", "")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model_id: x\nthreshhold: 0.4\n", "unknown keys \\['threshhold'\\]"),
        ("threshold: 1.5\n", "threshold must be in"),
        ("precision: fp8\n", "precision must be"),
        ("workers: 0\n", "workers must be at least 1, got 0"),
        ("runtime: tensorrt\n", "runtime must be onnxruntime or torch"),
        ("threshold: abc\n", "threshold in .*config.yaml must be a number, got 'abc'"),
        ("workers: two\n", "workers in .*config.yaml must be a number, got 'two'"),
        ("threshold: [0.5\n", "config.yaml is not a valid YAML config"),
        ("- a\n- b\n", "must be a YAML mapping"),
    ],
)
def test_config_rejects_unknown_keys_and_bad_values(tmp_path, text, message):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ModelLoadError, match=message):
        ClassifierConfig.load(path)


def test_config_takes_a_normalization_mapping(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps({"normalization": {"strip_tashkeel": False}}))
    assert ClassifierConfig.load(path).normalization.strip_tashkeel is False


@pytest.mark.parametrize(
    ("precision", "runtime"), [("int8", "onnxruntime"), ("int8", "torch"), ("bf16", "torch")]
)
def test_reduced_precision_stays_close_to_fp32(demo_dir, classifier, precision, runtime):
    other = ToxicityClassifier.load(
        config_for(demo_dir, precision=precision, runtime=runtime), cache_dir=ONNX_CACHE_DIR
    )
    assert other.onnx == (runtime == "onnxruntime")
    texts = [TOXIC, "شكرا جزيلا على المساعدة", "يا ghabi اسكت"]
    reference = [v.scores["harmful"] for v in classifier.classify(texts)]
    reduced = [v.scores["harmful"] for v in other.classify(texts)]
    # The same model, approximately: the bound is loose because it is the toy demo model
    # (the benchmark measures the real gap on a BERT-base model over the evaluation set).
    assert reduced == pytest.approx(reference, abs=0.05)
    assert reduced != reference


@given(
    lengths=st.lists(st.integers(min_value=1, max_value=600), max_size=80).map(sorted),
    budget=st.integers(min_value=1, max_value=4096),
)
def test_plan_chunks_covers_in_order_within_budget(lengths, budget):
    chunks = plan_chunks(lengths, budget)
    assert [i for s, e in chunks for i in range(s, e)] == list(range(len(lengths)))
    for s, e in chunks:
        assert e > s
        assert (e - s) * lengths[e - 1] <= budget or e - s == 1


def test_plan_chunks_splits_evenly():
    assert plan_chunks([40] * 16, 400) == [(0, 8), (8, 16)]
    assert plan_chunks([30, 30, 300, 300], 512) == [(0, 2), (2, 3), (3, 4)]
