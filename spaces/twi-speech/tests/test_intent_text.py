"""The intents file, the text intent classifier and the committed model it trains."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from intent_catalog import CATEGORIES, IntentCatalog, load_intents
from intent_text import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    FeatureSettings,
    TextIntentClassifier,
    normalize_twi,
    text_features,
)
from shared.errors import ModelLoadError
from training.train_text_intents import MODEL_DIR, intent_report, main

# Measured when the committed model was trained: 762/762 training examples and 134/136
# held-out paraphrases right. The bounds leave room for a retrained model, not for a broken one.
MIN_TRAIN_ACCURACY = 0.98
MIN_HELD_OUT_ACCURACY = 0.93


@pytest.fixture(scope="module")
def catalog() -> IntentCatalog:
    return load_intents()


@pytest.fixture(scope="module")
def model() -> TextIntentClassifier:
    return TextIntentClassifier.load(MODEL_DIR)


def accuracy(model: TextIntentClassifier, pairs: list[tuple[str, str]]) -> float:
    predictions = model.predict([text for text, _ in pairs], top_k=1)
    return float(
        np.mean([p.intent == label for p, (_, label) in zip(predictions, pairs, strict=True)])
    )


# -- intents.yaml ---------------------------------------------------------------------------


def test_the_intents_file_covers_the_app(catalog):
    assert len(catalog.intents) >= 30
    assert {intent.category for intent in catalog.intents} == set(CATEGORIES)
    for intent in catalog.intents:
        assert len(intent.examples) >= 10, intent.name
        assert len(intent.held_out) >= 3, intent.name
        assert intent.description.strip(), intent.name
        for utterance in intent.examples + intent.held_out:
            assert utterance.twi.strip() and utterance.en.strip(), (intent.name, utterance)
    assert catalog.fallback_reply == "Mentumi ntie wo yiye. San ka bio."
    assert 0.0 < catalog.min_confidence < 1.0
    assert any("ɛ" in t or "ɔ" in t for t, _ in catalog.training_pairs())  # real orthography


def test_held_out_paraphrases_are_never_training_examples(catalog):
    """Compared as the classifier sees them, so a change of case or accent is no new text."""
    seen = {normalize_twi(text) for text, _ in catalog.training_pairs()}
    reused = [text for text, _ in catalog.held_out_pairs() if normalize_twi(text) in seen]
    assert reused == []


def test_no_text_is_an_example_of_two_intents(catalog):
    intents_of: dict[str, set[str]] = {}
    for text, label in catalog.training_pairs() + catalog.held_out_pairs():
        intents_of.setdefault(normalize_twi(text), set()).add(label)
    assert {text: labels for text, labels in intents_of.items() if len(labels) > 1} == {}


def test_a_bad_intents_file_is_named_with_the_problem(tmp_path):
    path = tmp_path / "intents.yaml"
    path.write_text(
        "fallback_reply: x\nmin_confidence: 0.5\nintents:\n"
        "  - {name: a, category: shopping, description: d, examples: [], held_out: []}\n",
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match=r"intents\[0\] \(a\): category must be one of"):
        load_intents(path)
    path.write_text("fallback_reply: x\nmin_confidence: 2\nintents: []\n", encoding="utf-8")
    with pytest.raises(ValueError, match="min_confidence must be a number in"):
        load_intents(path)


# -- normalisation and features -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mesrɛ wo, fa gu me kɛntɛn mu!", "mesre wo fa gu me kenten mu"),
        ("MEPƐ SƐ METƆ", "mepe se meto"),
        ("San w'akyi.", "san wakyi"),
        ("San w’akyi", "san wakyi"),
        ("Ɛ̀yɛ̀ dɛ́n?", "eye den"),  # tone marks
        ("ɛsõ dodo", "eso dodo"),
        ("Mεpε", "mepe"),  # Greek epsilon, as some keyboards type ɛ
        ("  \t\n ", ""),
        ("...?!", ""),
        ("Tua sidi 150", "tua sidi 150"),
    ],
)
def test_normalize_twi(text, expected):
    assert normalize_twi(text) == expected


def test_without_folding_open_vowels_are_kept():
    assert normalize_twi("Mesrɛ wo, Ɔkyena", fold_open_vowels=False) == "mesrɛ wo ɔkyena"


def test_features_are_word_bounded_character_ngrams():
    grams = text_features("Fon fon", FeatureSettings(min_n=2, max_n=3))
    assert grams["<fon>"] == 2  # the whole word
    assert grams["<f"] == 2 and grams["on>"] == 2 and grams["fo"] == 2
    assert "n f" not in grams and "<" not in grams
    pairs = text_features("fa gu mu", FeatureSettings(word_ngrams=2))
    assert pairs["fa gu"] == 1 and pairs["gu mu"] == 1


# -- the committed model ---------------------------------------------------------------------


def test_the_committed_model_is_small_and_knows_every_intent(model, catalog):
    assert model.labels == catalog.names
    size = (MODEL_DIR / WEIGHTS_FILE).stat().st_size + (MODEL_DIR / CONFIG_FILE).stat().st_size
    assert size < 1_000_000


def test_the_committed_model_fits_its_training_examples(model, catalog):
    assert accuracy(model, catalog.training_pairs()) >= MIN_TRAIN_ACCURACY


def test_the_committed_model_recognises_held_out_paraphrases(model, catalog):
    assert accuracy(model, catalog.held_out_pairs()) >= MIN_HELD_OUT_ACCURACY


def test_sparse_features_and_forward_match_the_dense_computation(model, catalog):
    texts = [text for text, _ in catalog.held_out_pairs()] + ["", "漢字"]
    features = model.featurize(texts)
    x = features.dense().astype(np.float64)  # (batch, n_features)
    norms = np.linalg.norm(x, axis=1)
    np.testing.assert_allclose(norms[:-2], 1.0, rtol=1e-5)
    assert norms[-2:].tolist() == [0.0, 0.0]
    logits = x @ model.weights.astype(np.float64)
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(model.forward(features), expected, atol=1e-6)
    # The columns serving finds are the vocabulary's share of text_features' n-grams.
    for row, text in enumerate(texts):
        grams = text_features(text, model.settings)
        known = {model.index[gram] for gram in grams if gram in model.index}
        assert set(np.flatnonzero(x[row]).tolist()) == known, text


def test_save_and_load_give_identical_probabilities(model, catalog, tmp_path):
    texts = [text for text, _ in catalog.held_out_pairs()]
    model.save(tmp_path / "copy")
    copy = TextIntentClassifier.load(tmp_path / "copy")
    assert copy.labels == model.labels and copy.vocabulary == model.vocabulary
    assert copy.training == model.training and copy.settings == model.settings
    np.testing.assert_array_equal(copy.probabilities(texts), model.probabilities(texts))


def test_open_vowels_written_e_and_o_score_the_same(model, catalog):
    texts = [text for text, _ in catalog.training_pairs() + catalog.held_out_pairs()]
    plain = [
        t.replace("ɛ", "e").replace("Ɛ", "E").replace("ɔ", "o").replace("Ɔ", "O") for t in texts
    ]
    assert plain != texts
    np.testing.assert_array_equal(model.probabilities(plain), model.probabilities(texts))
    assert model.predict(["Fa ntoma yi gu me kenten mu"])[0].intent == "add_to_cart"


def test_case_punctuation_and_tone_marks_do_not_change_the_answer(model):
    texts = [
        "Mesrɛ wo, yi fon no firi cart no mu.",
        "MESRƐ WO YI FON NO FIRI CART NO MU",
        "mesrɛ̀ wó yi fon no firi cart no mu?!",
    ]
    probabilities = model.probabilities(texts)
    np.testing.assert_array_equal(probabilities[0], probabilities[1])
    np.testing.assert_array_equal(probabilities[0], probabilities[2])


@pytest.mark.parametrize("text", ["", "   ", "\n\t", "?!", "漢字だけ"])
def test_text_without_known_ngrams_is_uniform(model, text):
    [prediction] = model.predict([text])
    n = len(model.labels)
    np.testing.assert_allclose(prediction.probabilities(), np.full(n, 1 / n), rtol=1e-6)
    assert prediction.confidence == pytest.approx(1 / n)


def test_predictions_carry_top_k_and_the_full_vector(model):
    [prediction] = model.predict(["Me nneɛma no duru he?"], top_k=3)
    assert prediction.intent == "track_order"
    assert len(prediction.top) == 3
    index = model.labels.index("track_order")
    assert prediction.top[0] == (prediction.intent, prediction.confidence, index)
    assert prediction.probabilities().shape == (len(model.labels),)
    json.dumps(prediction.to_json())
    assert len(model.predict(["Aane"], top_k=100)[0].top) == len(model.labels)
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        model.predict(["Aane"], top_k=0)
    with pytest.raises(TypeError, match="list of texts"):
        model.predict("Aane")
    assert model.predict([]) == []


@given(text=st.text(), top_k=st.integers(min_value=1, max_value=40))
def test_any_text_gets_a_distribution_and_sorted_top_k(model, text, top_k):
    [prediction] = model.predict([text], top_k=top_k)
    probabilities = prediction.probabilities()
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.all(probabilities >= 0)
    assert len(prediction.top) == min(top_k, len(model.labels))
    confidences = [p for _, p, _ in prediction.top]
    assert confidences == sorted(confidences, reverse=True)
    for name, p, index in prediction.top:
        assert model.labels[index] == name and prediction.scores[index] == p
    assert prediction.confidence == max(prediction.scores)


def test_another_seed_reaches_the_same_optimum(catalog):
    pairs = catalog.training_pairs()[::5]
    a = TextIntentClassifier.train(pairs, seed=0)
    b = TextIntentClassifier.train(pairs, seed=1)
    np.testing.assert_allclose(a.weights, b.weights, atol=1e-4)


def test_training_refuses_what_it_cannot_learn():
    with pytest.raises(ValueError, match="at least 2 intents"):
        TextIntentClassifier.train([("aane", "affirm")])
    with pytest.raises(ValueError, match="without any letter or digit"):
        TextIntentClassifier.train([("aane", "affirm"), ("?!", "deny")])


# -- loading errors --------------------------------------------------------------------------


def test_a_missing_model_folder_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        TextIntentClassifier.load(tmp_path / "nowhere")


def test_an_lfs_pointer_is_named_not_loaded(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(MODEL_DIR, folder)
    (folder / WEIGHTS_FILE).write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 431252\n"
    )
    with pytest.raises(ModelLoadError, match=r"model\.safetensors is a Git LFS pointer"):
        TextIntentClassifier.load(folder)


def test_a_config_of_another_format_or_shape_is_refused(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(MODEL_DIR, folder)
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    (folder / CONFIG_FILE).write_text(json.dumps({**config, "format": "other"}), encoding="utf-8")
    with pytest.raises(ModelLoadError, match="is not a text-intent config"):
        TextIntentClassifier.load(folder)
    config["labels"] = config["labels"][:-1]
    (folder / CONFIG_FILE).write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ModelLoadError, match="does not fit"):
        TextIntentClassifier.load(folder)


# -- the training command ---------------------------------------------------------------------


def test_intent_report_on_known_predictions():
    report = intent_report(
        ["t1", "t2", "t3", "t4"],
        ["a", "a", "b", "c"],
        ["a", "b", "b", "b"],
        [0.9, 0.6, 0.8, 0.4],
        ["a", "b", "c"],
    )
    assert report.accuracy == 0.5
    # F1: a 2/3, b 2/4, c 0.
    assert report.macro_f1 == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert report.confused == (("a", "b", 1), ("c", "b", 1))
    assert report.errors == (("t2", "a", "b", 0.6), ("t4", "c", "b", 0.4))


def test_the_training_command_reproduces_the_committed_model(model, catalog, tmp_path, capsys):
    """Same seed, same data: the same vocabulary, weights to float32 precision, predictions."""
    assert model.training is not None
    argv = ["--output", str(tmp_path), "--folds", "0", "--seed", str(model.training.seed)]
    assert main([*argv, "--l2", str(model.training.l2)]) == 0
    assert "held-out paraphrases: 136 texts" in capsys.readouterr().out
    assert {p.name for p in tmp_path.iterdir()} == {WEIGHTS_FILE, CONFIG_FILE, "README.md"}
    card = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "held-out paraphrases (never trained on) | 136 |" in card
    assert "Not trained or tested on ASR output of real speakers" in card

    retrained = TextIntentClassifier.load(tmp_path)
    assert retrained.labels == model.labels and retrained.vocabulary == model.vocabulary
    np.testing.assert_allclose(retrained.idf, model.idf, rtol=1e-6)
    np.testing.assert_allclose(retrained.weights, model.weights, atol=1e-5)
    texts = [text for text, _ in catalog.held_out_pairs()]
    assert [p.intent for p in retrained.predict(texts)] == [p.intent for p in model.predict(texts)]
