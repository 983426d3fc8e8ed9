"""The predictor on tiny models of each kind it serves: multi-task Whisper, plain Whisper, CTC.

The models are the demo builds (``scripts/build_demo_models.py``: random weights) and, for the
multi-task kind, the plain one with an intent head added here; the clips are synthetic speech
(``training/synth.py``), so the tests check the pipeline, not the accuracy.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from multitask import CUSTOM_MODEL, WhisperForMultiTask
from predictor import AudioInput, SpeechPredictor, TwiSettings, detect_model_type
from shared.audio import AudioInputError
from shared.errors import ModelLoadError
from tests.harness import DEMO_MODELS_DIR
from training import synth

LABELS = ["go_home", "search", "add_to_cart"]


@pytest.fixture(scope="module")
def models(demo_models, tmp_path_factory) -> dict[str, Path]:
    del demo_models  # built by the fixture; the Space's own demo model is the trained one
    whisper, ctc = DEMO_MODELS_DIR / "whisper-tiny", DEMO_MODELS_DIR / "wav2vec2-ctc-tiny"
    multi = tmp_path_factory.mktemp("multitask")
    torch.manual_seed(0)
    model = WhisperForMultiTask.from_pretrained(whisper, num_labels=len(LABELS))
    model.config.custom_model = CUSTOM_MODEL
    model.config.task_types = ["transcription", "classification"]
    model.save_pretrained(multi)
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        shutil.copy(whisper / name, multi / name)
    labels = {"label_to_id": {n: i for i, n in enumerate(LABELS)},
              "id_to_label": {str(i): n for i, n in enumerate(LABELS)}}  # fmt: skip
    (multi / "intent_labels.json").write_text(json.dumps(labels))
    no_labels = tmp_path_factory.mktemp("multitask-without-labels")
    shutil.copytree(multi, no_labels, dirs_exist_ok=True)
    (no_labels / "intent_labels.json").unlink()
    return {"single": whisper, "ctc": ctc, "multi": multi, "multi-no-labels": no_labels}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("clips")
    spoken = next(synth.render([("Fa me kɔ fie", "go_home")], languages=["sw"],
                               per_utterance=1, seed=0))  # fmt: skip
    out = {}
    synth.write_wav(folder / "speech.wav", spoken.audio)
    synth.write_wav(folder / "silence.wav", np.zeros(2 * synth.SAMPLE_RATE, dtype=np.float32))
    for name in ("speech", "silence"):
        out[name] = (folder / f"{name}.wav").read_bytes()
    return out


def load(folder: Path, tmp_path: Path, **settings: object) -> SpeechPredictor:
    return SpeechPredictor.load(
        TwiSettings(model_id=str(folder), device="cpu", **settings),  # type: ignore[arg-type]
        cache_dir=tmp_path / "ct2",
    )


def run(predictor: SpeechPredictor, *items: AudioInput) -> list[dict]:
    prepared = [predictor.preprocess(item) for item in items]
    return [r.to_json() for r in predictor.postprocess(predictor.forward(prepared), prepared)]


def test_the_model_kind_is_read_from_the_files(models):
    assert detect_model_type(models["single"]) == "single"
    assert detect_model_type(models["ctc"]) == "ctc"
    assert detect_model_type(models["multi"]) == "multi"


def test_a_folder_without_a_model_config_is_a_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        detect_model_type(tmp_path)


@pytest.mark.parametrize("kind", ["single", "ctc", "multi"])
def test_each_kind_answers_the_test_intent_shape(kind, models, clips, tmp_path):
    predictor = load(models[kind], tmp_path)
    assert predictor.model_type == kind
    speech, silence = run(predictor, AudioInput(clips["speech"], "speech.wav"),
                          AudioInput(clips["silence"], "silence.wav"))  # fmt: skip
    assert speech["filename"] == "speech.wav" and not speech["no_speech"]
    labels = LABELS if kind == "multi" else predictor.text_intents.labels
    assert speech["intent"] in labels
    assert speech["top_predictions"][0]["intent"] == speech["intent"]
    confidences = [p["confidence"] for p in speech["top_predictions"]]
    assert confidences == sorted(confidences, reverse=True) and 0 <= confidences[0] <= 1
    assert speech["model_type"] == kind
    assert set(speech["whisper_info"]) == {"model_size", "language", "transcription_confidence"}
    assert speech["confident"] == (speech["confidence"] >= predictor.min_confidence)
    assert speech["reply"] == ("" if speech["confident"] else predictor.fallback_reply)
    # Silence is not sent to the model and gets no made-up command.
    assert silence["no_speech"] and silence["transcription"] == "" and silence["intent"] == ""


def test_the_multitask_intent_comes_from_the_head_on_the_same_encoder_output(models, clips,
                                                                            tmp_path):  # fmt: skip
    predictor = load(models["multi"], tmp_path)
    assert predictor.head is not None and predictor.info.extra["intent_source"] == "head"
    prepared = [predictor.preprocess(AudioInput(clips["speech"]))]
    # The head applied in numpy to the CTranslate2 encoder output is what torch computes on the
    # transformers encoder output (int8 CTranslate2: close, not equal).
    logits = predictor.forward(prepared)[0].intent_logits
    model = WhisperForMultiTask.from_pretrained(models["multi"]).eval()
    extractor = predictor.recognizer.model.feature_extractor
    mel = extractor(prepared[0].audio)[:, : extractor.nb_max_frames]
    mel = np.pad(mel, ((0, 0), (0, extractor.nb_max_frames - mel.shape[1])))
    with torch.inference_mode():
        encoder = model.model.encoder(torch.from_numpy(mel[None].astype(np.float32)))
        expected = model.intent_logits(encoder.last_hidden_state)[0].numpy()
    assert np.argmax(logits) == np.argmax(expected)
    assert np.allclose(logits, expected, atol=0.15)


def test_a_batch_reads_as_each_clip_alone(models, clips, tmp_path):
    predictor = load(models["multi"], tmp_path)
    spoken = next(synth.render([("Kyerɛ me me kɛntɛn no", "show_cart")], languages=["sw"],
                               per_utterance=1, seed=1))  # fmt: skip
    synth.write_wav(tmp_path / "other.wav", spoken.audio)
    items = [AudioInput(clips["speech"]), AudioInput((tmp_path / "other.wav").read_bytes())]
    alone = [run(predictor, item)[0] for item in items]
    together = run(predictor, *items)
    keys = ("transcription", "intent", "no_speech")
    for a, b in zip(alone, together, strict=True):
        assert [a[k] for k in keys] == [b[k] for k in keys]
        assert a["confidence"] == pytest.approx(b["confidence"], abs=1e-3)


def test_a_multitask_model_without_labels_falls_back_to_the_text_classifier(models, clips,
                                                                           tmp_path):  # fmt: skip
    predictor = load(models["multi-no-labels"], tmp_path)
    assert predictor.head is None
    assert "intent_labels.json" in predictor.info.extra["warnings"][0]
    (speech,) = run(predictor, AudioInput(clips["speech"]))
    assert speech["intent"] in predictor.text_intents.labels


def test_the_conversion_is_cached(models, tmp_path):
    load(models["single"], tmp_path)
    converted = list((tmp_path / "ct2").iterdir())
    load(models["single"], tmp_path)
    assert list((tmp_path / "ct2").iterdir()) == converted and len(converted) == 1


@pytest.mark.parametrize("case", ["empty", "not audio", "header only", "corrupt body"])
def test_bad_audio_is_an_input_error(case, models, clips, tmp_path):
    speech = clips["speech"]
    data = {
        "empty": b"",
        "not audio": b"this is not audio at all" * 10,
        "header only": speech[:44],  # a WAV cut before its first sample
        "corrupt body": b"RIFF" + bytes(range(256)) * 40,
    }[case]
    predictor = load(models["single"], tmp_path)
    with pytest.raises(AudioInputError):
        predictor.preprocess(AudioInput(data))


def test_a_truncated_file_keeps_the_audio_it_has(models, clips, tmp_path):
    predictor = load(models["single"], tmp_path)
    half = clips["speech"][: len(clips["speech"]) // 2]
    assert 0.5 < predictor.preprocess(AudioInput(half)).seconds < 2.0


@pytest.mark.parametrize("codec", ["mp3", "ogg", "flac", "webm", "m4a"])
def test_every_container_is_decoded(codec, models, clips, tmp_path):
    source = tmp_path / "speech.wav"
    source.write_bytes(clips["speech"])
    target = tmp_path / f"speech.{codec}"
    opus = ["-c:a", "libopus", "-ar", "48000"]  # Opus runs at 48 kHz
    args = {"ogg": opus, "webm": opus, "m4a": ["-c:a", "aac", "-ar", "44100"]}
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(source), "-ac", "2",
                    *args.get(codec, ["-ar", "44100"]), str(target)], check=True)  # fmt: skip
    predictor = load(models["single"], tmp_path)
    prepared = predictor.preprocess(AudioInput(target.read_bytes(), target.name))
    assert prepared.has_speech and 2.0 < prepared.seconds < 3.5  # stereo 44.1/48 kHz -> 16k mono


@pytest.fixture(scope="module")
def multilingual(tmp_path_factory) -> Path:
    """A random Whisper with the multilingual vocabulary (openai/whisper-small's kind)."""
    from benchmarks.models import build_random_whisper

    folder = tmp_path_factory.mktemp("multilingual")
    build_random_whisper(folder, size="tiny")
    return folder


def test_a_multilingual_whisper_runs_with_no_language_or_a_configured_one(multilingual, clips,
                                                                         tmp_path):  # fmt: skip
    """The production default (a multilingual Whisper, no language) once failed to load:
    faster-whisper's tokenizer wants a language. Without one the prompt has no language token;
    with one it has that language's token."""
    plain = load(multilingual, tmp_path)
    vocab = plain.recognizer.model.hf_tokenizer
    ids = [vocab.token_to_id(t) for t in ("<|startoftranscript|>", "<|transcribe|>",
                                          "<|notimestamps|>")]  # fmt: skip
    assert plain.recognizer.prompt == ids
    (speech,) = run(plain, AudioInput(clips["speech"]))
    assert speech["whisper_info"]["language"] is None and not speech["no_speech"]
    yoruba = load(multilingual, tmp_path, language="yo")
    assert yoruba.recognizer.prompt == [ids[0], vocab.token_to_id("<|yo|>"), *ids[1:]]
    with pytest.raises(ModelLoadError, match=re.escape("no <|tw|> token")):
        load(multilingual, tmp_path, language="tw")
