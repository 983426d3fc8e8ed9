"""The edge's pure parts: the cache of results and the names of uploads."""

from __future__ import annotations

import pytest

from api import upload_name
from predictor import Recognition
from recognize import ResultCache


def result(intent: str) -> Recognition:
    return Recognition(
        filename="a.wav", intent=intent, confidence=0.9, transcription=intent,
        top_predictions=((intent, 0.9, 0),), model_type="single", whisper_info={},
        no_speech=False, confident=True, reply="",
    )  # fmt: skip


def test_the_cache_keeps_the_most_recently_used():
    cache = ResultCache(2)
    for name in ("a", "b"):
        cache.put((name, "m"), result(name))
    assert cache.get(("a", "m")).intent == "a"  # a is now the most recent
    cache.put(("c", "m"), result("c"))
    assert cache.get(("b", "m")) is None
    assert [cache.get((n, "m")).intent for n in ("a", "c")] == ["a", "c"]
    assert (len(cache), cache.hits, cache.misses) == (2, 3, 1)


def test_another_model_revision_is_another_key():
    cache = ResultCache(4)
    cache.put(("a", "model@v1"), result("a"))
    assert cache.get(("a", "model@v2")) is None


def test_a_cache_of_size_zero_keeps_nothing():
    cache = ResultCache(0)
    cache.put(("a", "m"), result("a"))
    assert cache.get(("a", "m")) is None and len(cache) == 0


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("command.wav", "command.wav"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\ama\\rec.webm", "rec.webm"),
        ("", "audio"),
        (None, "audio"),
        ("  ", "audio"),
        ("x" * 300 + ".wav", "x" * 200),
        ("bad\udc80name.wav", "bad?name.wav"),
    ],
)
def test_upload_names_lose_their_folders(given, expected):
    assert upload_name(given) == expected
