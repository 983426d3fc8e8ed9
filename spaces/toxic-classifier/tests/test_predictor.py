"""The predictor without a server: label mapping, multi-label heads, normalisation, loading,
and the batched composition the Space serves."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from predictor import Settings, ToxicityClassifier, load_settings
from scripts.launcher import ONNX_CACHE_DIR
from shared.config import ConfigError
from shared.errors import InputError, ModelLoadError
from shared.labels import LabelMappingError
from shared.serving import BatchedPredictor
from shared.text import normalize_arabic
from tests.harness import start_space

TOXIC = "أكره هذا الشخص وأتمنى أن يختفي"


@pytest.fixture(scope="module")
def demo_dir(demo_models) -> Path:
    return Path(demo_models["toxic-classifier"]["MODEL_ID"])


def config_for(model_dir: Path, **fields) -> Settings:
    """The Space config on another model; fp32 unless asked (no int8 export per variant)."""
    fields.setdefault("precision", "fp32")
    return load_settings().model_copy(update={"model_id": str(model_dir), **fields})


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
    assert classifier.mapper.mapping == {"LABEL_0": "safe", "LABEL_1": "harmful"}
    info = classifier.info
    assert (info.precision, info.device, info.demo) == ("fp32", "cpu", True)
    assert info.extra["label_map"] == {"LABEL_0": "safe", "LABEL_1": "harmful"}
    assert info.extra["runtime"] == "torch"


def test_verdict_follows_threshold(classifier):
    p = classifier.classify_one(TOXIC).scores["harmful"]
    low = ToxicityClassifier(
        classifier.model,
        classifier.tokenizer,
        classifier.settings.model_copy(update={"threshold": p - 1e-6}),
        "m",
        label_map_file=None,
    )
    high = ToxicityClassifier(
        classifier.model,
        classifier.tokenizer,
        classifier.settings.model_copy(update={"threshold": min(1.0, p + 1e-6)}),
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
        classifier.model, _PythonOnlyTokenizer(classifier.tokenizer), classifier.settings, "m"
    )
    if not normalize_arabic(text, classifier.settings.normalization).strip():
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
    own = ToxicityClassifier(classifier.model, tokenizer, classifier.settings, "m")
    texts = [TOXIC, "كلمة " * 700]
    expected = [own.preprocess(t) for t in texts]
    tokenizer.backend_tokenizer.enable_truncation(8)
    tokenizer.backend_tokenizer.enable_padding(length=600)
    assert [own.preprocess(t) for t in texts] == expected
    assert expected[1].truncated and len(expected[1].input_ids) == own.max_length


def test_preprocess_honours_the_truncation_side(classifier, demo_dir):
    tokenizer = AutoTokenizer.from_pretrained(demo_dir, truncation_side="left")
    left = ToxicityClassifier(classifier.model, tokenizer, classifier.settings, "m")
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
        classifier.settings.model_copy(update={"batch_tokens": 16}),
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


def test_the_served_batcher_answers_what_classify_answers(classifier):
    """app.py serves the classifier through BatchedPredictor (token budget, two workers): the
    same preprocess/forward/postprocess as classify, so the same verdicts and errors."""
    served = BatchedPredictor(
        classifier,
        what="text",
        max_batch_size=16,
        workers=2,
        cost=lambda p: p.tokens,
        max_batch_cost=64,
    )
    texts = [TOXIC, "شكرا", "يا ghabi", "كلمة " * 700]
    direct = classifier.classify(texts)
    with ThreadPoolExecutor(4) as pool:
        singles = list(pool.map(lambda t: served.predict([t])[0], texts))
    for batched in (served.predict(texts), singles):
        assert [v.truncated for v in batched] == [v.truncated for v in direct]
        for got, want in zip(batched, direct, strict=True):
            assert got.scores["harmful"] == pytest.approx(want.scores["harmful"], abs=1e-5)
    assert served.info == classifier.info
    with pytest.raises(InputError, match=r"^text 2 of 2: text must be a string, got int$"):
        served.predict(["a", 5])


def test_postprocess_takes_truncation_from_the_prepared_batch(classifier):
    batch = [classifier.preprocess(t) for t in ("كلمة " * 700, TOXIC)]
    verdicts = classifier.postprocess(classifier.forward(batch), batch)
    assert [v.truncated for v in verdicts] == [True, False]
    single = classifier.classify_one(TOXIC)
    assert verdicts[1].scores["harmful"] == pytest.approx(single.scores["harmful"], abs=1e-5)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("not a list", "texts must be a list of strings, got str"),
        ([], "texts is empty"),
        (["x"] * 65, "65 texts in one batch; the limit is 64"),
    ],
)
def test_check_batch_limits(classifier, payload, message):
    with pytest.raises(InputError, match=message):
        classifier.check_batch(payload)
    assert classifier.check_batch(["x"] * 64) == ["x"] * 64


@pytest.mark.parametrize("names", [("LABEL_0", "LABEL_1"), ("NOT_OFF", "OFF")])
def test_a_model_without_a_label_map_fails_at_startup_listing_its_labels(demo_dir, tmp_path, names):
    model_dir = variant(demo_dir, tmp_path, dict(enumerate(names)))
    with pytest.raises(LabelMappingError) as err:
        ToxicityClassifier.load(config_for(model_dir, label_map={}))
    assert f"no label map for the model's labels {list(names)}" in str(err.value)


def test_the_config_map_written_for_other_labels_fails_listing_the_models(demo_dir, tmp_path):
    # config.yaml's label_map names LABEL_0/LABEL_1 (the production checkpoint): a model with
    # named labels and no label_map.json is refused, not mapped by a guess.
    assert load_settings().label_map == {"LABEL_0": "safe", "LABEL_1": "harmful"}
    model_dir = variant(demo_dir, tmp_path, {0: "NOT_OFF", 1: "OFF"})
    with pytest.raises(LabelMappingError) as err:
        ToxicityClassifier.load(config_for(model_dir))
    message = str(err.value)
    assert "maps ['LABEL_0', 'LABEL_1'], which the model does not have" in message
    assert "the model's labels are ['NOT_OFF', 'OFF']" in message


@pytest.mark.parametrize("names", [("NOT_OFF", "OFF"), ("non-toxic", "toxic")])
def test_named_labels_map_through_the_aliases(demo_dir, tmp_path, names):
    model_dir = variant(demo_dir, tmp_path, {0: names[0], 1: names[1]})
    clf = ToxicityClassifier.load(config_for(model_dir, label_map="aliases"))
    assert clf.mapper.mapping == {names[0]: "safe", names[1]: "harmful"}
    verdict = clf.classify_one(TOXIC)
    raw = {r["label"]: r["score"] for r in verdict.raw}
    assert verdict.scores["harmful"] == pytest.approx(raw[names[1]])


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (("LABEL_0", "LABEL_1"), "no label map for the model's labels ['LABEL_0', 'LABEL_1']"),
        (("toxic", "spam"), "does not map the model label(s) ['spam']"),
    ],
)
def test_aliases_never_guess_generic_or_unknown_labels(demo_dir, tmp_path, names, message):
    model_dir = variant(demo_dir, tmp_path, dict(enumerate(names)))
    with pytest.raises(LabelMappingError) as err:
        ToxicityClassifier.load(config_for(model_dir, label_map="aliases"))
    assert message in str(err.value)


def test_label_map_file_wins_over_the_config_map(demo_dir, tmp_path):
    # The shipped config maps LABEL_0/LABEL_1; this model has LABEL_0 and bar, and its own
    # label_map.json decides alone.
    model_dir = variant(demo_dir, tmp_path, {0: "LABEL_0", 1: "bar"})
    (model_dir / "label_map.json").write_text('{"LABEL_0": "harmful", "bar": "safe"}')
    clf = ToxicityClassifier.load(config_for(model_dir))
    assert clf.mapper.mapping == {"LABEL_0": "harmful", "bar": "safe"}


def test_label_map_file_wins_even_where_the_config_map_disagrees(demo_dir, tmp_path, caplog):
    model_dir = variant(demo_dir, tmp_path, {0: "LABEL_0", 1: "LABEL_1"})
    (model_dir / "label_map.json").write_text('{"LABEL_0": "harmful", "LABEL_1": "safe"}')
    with caplog.at_level("INFO", logger="shared.labels"):
        clf = ToxicityClassifier.load(config_for(model_dir))
    assert clf.mapper.mapping == {"LABEL_0": "harmful", "LABEL_1": "safe"}
    (logged,) = [r.getMessage() for r in caplog.records if r.name == "shared.labels"]
    assert f"from {model_dir / 'label_map.json'}" in logged


def test_label_map_file_that_maps_some_labels_does_not_borrow_the_rest(demo_dir, tmp_path):
    model_dir = variant(demo_dir, tmp_path, {0: "LABEL_0", 1: "LABEL_1"})
    (model_dir / "label_map.json").write_text('{"LABEL_1": "harmful"}')
    with pytest.raises(LabelMappingError, match=r"does not map the model label\(s\) \['LABEL_0'\]"):
        ToxicityClassifier.load(config_for(model_dir))  # the config's LABEL_0 is not used


def test_config_map_targets_match_ignoring_case(demo_dir, tmp_path):
    model_dir = variant(demo_dir, tmp_path, {0: "LABEL_0", 1: "LABEL_1"})
    clf = ToxicityClassifier.load(
        config_for(model_dir, label_map={"LABEL_0": "Safe", "LABEL_1": "HARMFUL"})
    )
    assert [clf.mapper.canonical_of(raw) for raw in clf.raw_labels] == ["safe", "harmful"]


def test_config_map_with_a_wrong_target_fails_when_the_config_loads(tmp_path):
    # Checked before any model is loaded, so a typo never passes unseen, even for a model
    # whose label_map.json leaves the config's map unused.
    path = tmp_path / "config.yaml"
    path.write_text("label_map:\n  LABEL_0: sfae\n  LABEL_1: harmful\n")
    with pytest.raises(ConfigError, match=r"\{'LABEL_0': 'sfae'\}; targets must be one of"):
        load_settings(path)


def test_config_map_naming_some_model_labels_but_not_others_fails(demo_dir, tmp_path):
    model_dir = variant(demo_dir, tmp_path, {0: "LABEL_0", 1: "toxic"})
    with pytest.raises(LabelMappingError, match=r"\['LABEL_1'\], which the model does not have"):
        ToxicityClassifier.load(config_for(model_dir))


def test_multi_label_heads_any_over_threshold(demo_dir, tmp_path):
    model_dir = variant(
        demo_dir,
        tmp_path,
        {0: "toxic", 1: "insult", 2: "threat"},
        problem_type="multi_label_classification",
    )
    clf = ToxicityClassifier.load(config_for(model_dir, label_map="aliases"))
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
        ("model_id: x\nthreshhold: 0.4\n", "unknown key 'threshhold'; valid keys: \\["),
        ("threshold: 1.5\n", "threshold=1.5: Input should be less than or equal to 1"),
        ("precision: fp8\n", "precision='fp8': Input should be 'fp32', 'bf16' or 'int8'"),
        ("workers: 0\n", "workers=0: Input should be greater than or equal to 1"),
        # RUNTIME is gone (int8 always runs in ONNX Runtime): an old config says so at start.
        ("runtime: torch\n", "unknown key 'runtime'"),
        ("threshold: abc\n", "config.yaml: threshold='abc': Input should be a valid number"),
        ("workers: two\n", "config.yaml: workers='two': Input should be a valid integer"),
        ("label_map: alias\n", "label_map='alias': .*a mapping of model labels .*, or 'aliases'"),
        ("normalization: v03\n", "normalization='v03': .*use one of \\['arabert_v02', 'none'\\]"),
        ("threshold: [0.5\n", "config.yaml is not valid YAML"),
        ("- a\n- b\n", "must be a YAML mapping"),
    ],
)
def test_config_rejects_unknown_keys_and_bad_values(tmp_path, text, message):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(path)


def test_config_takes_a_normalization_mapping(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps({"normalization": {"strip_tashkeel": False}}))
    assert load_settings(path).normalization.strip_tashkeel is False


@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_reduced_precision_stays_close_to_fp32(demo_dir, classifier, precision):
    other = ToxicityClassifier.load(
        config_for(demo_dir, precision=precision), cache_dir=ONNX_CACHE_DIR
    )
    # int8 on CPU always runs the int8 ONNX export in ONNX Runtime.
    assert other.onnx == (precision == "int8")
    texts = [TOXIC, "شكرا جزيلا على المساعدة", "يا ghabi اسكت"]
    reference = [v.scores["harmful"] for v in classifier.classify(texts)]
    reduced = [v.scores["harmful"] for v in other.classify(texts)]
    # The same model, approximately: the bound is loose because it is the toy demo model
    # (the benchmark measures the real gap on a BERT-base model over the evaluation set).
    assert reduced == pytest.approx(reference, abs=0.05)
    assert reduced != reference
