"""What the endpoints call: the batched predictor behind a cache of results, and the counters
of ``/performance-stats``. Plain Python: no Gradio, no HTTP.

A result is cached under the sha256 of the uploaded bytes and the model's ``id@revision``, so
the same recording sent again (a retry, a shopper repeating a tap) is answered without
decoding it or running the model, and a new model never answers from an old one's results.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from predictor import AudioInput, Prepared, Recognition, SpeechPredictor
from shared.errors import InputError
from shared.models import ModelSource
from shared.serving import BatchedPredictor, ModelInfo

#: Cache key: (sha256 of the upload, model ``id@revision``).
Key = tuple[str, str]


class ResultCache:
    """A thread-safe LRU of recognitions; ``capacity`` 0 keeps nothing."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Key, Recognition] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Key) -> Recognition | None:
        """The cached result (now the most recently used), or None; counts a hit or a miss."""
        with self._lock:
            found = self._items.get(key)
            if found is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return found

    def put(self, key: Key, result: Recognition) -> None:
        """Keep ``result``, dropping the least recently used beyond ``capacity``."""
        if self.capacity <= 0:
            return
        with self._lock:
            self._items[key] = result
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class Recognizer:
    """The Space's model as the endpoints use it: cached, batched, measured.

    Args:
        model: The speech predictor behind the request batcher.
        cache_size: Results kept for repeated uploads (0: none).
    """

    def __init__(
        self, model: BatchedPredictor[AudioInput, Prepared, Recognition], *, cache_size: int
    ) -> None:
        self.model = model
        self.predictor: SpeechPredictor = model.predictor  # type: ignore[assignment]
        self.cache = ResultCache(cache_size)
        self._lock = threading.Lock()
        self._total = 0
        self._successful = 0
        self._time_ms = 0.0

    @property
    def info(self) -> ModelInfo:
        """The model's ``/health`` entry."""
        return self.model.info

    @property
    def max_top_k(self) -> int:
        """Top predictions computed per clip (config.yaml ``top_k``)."""
        return self.predictor.settings.top_k

    @property
    def max_batch(self) -> int:
        """Most files in one batch call (config.yaml ``max_batch``)."""
        return self.predictor.settings.max_batch

    def recognize(self, audio: AudioInput) -> Recognition:
        """Transcript and intent of one upload.

        Raises:
            InputError: The upload is empty, too big, too long or not audio (the message says
                which).
        """
        (result,) = self.recognize_many([audio])
        if isinstance(result, InputError):
            raise result
        return result

    def recognize_many(self, audios: Sequence[AudioInput]) -> list[Recognition | InputError]:
        """Transcript and intent of each upload, in order; a bad upload gets its error in its
        place and does not stop the others.

        Each upload is looked up in the cache, else decoded on this thread; the decoded ones
        then run through the model together (the batcher may join them with other callers').
        ``processing_time_ms`` is the clip's own time: its lookup, or its decoding plus the
        model pass it ran in.
        """
        results: list[Recognition | InputError | None] = [None] * len(audios)
        pending: list[tuple[int, Key, Prepared, float]] = []
        for i, audio in enumerate(audios):
            start = time.perf_counter()
            key = (hashlib.sha256(audio.data).hexdigest(), self.info.ref)
            hit = self.cache.get(key)
            if hit is not None:
                results[i] = replace(hit, filename=audio.filename,
                                     processing_time_ms=_ms_since(start))  # fmt: skip
                continue
            try:
                prepared = self.predictor.preprocess(audio)
            except InputError as e:
                results[i] = e
                continue
            pending.append((i, key, prepared, _ms_since(start)))
        if pending:
            start = time.perf_counter()
            outputs = self.model.batcher.submit_many([prepared for _, _, prepared, _ in pending])
            forward_ms = _ms_since(start)
            for (i, key, _, decode_ms), output in zip(pending, outputs, strict=True):
                self.cache.put(key, output)
                results[i] = replace(output, processing_time_ms=decode_ms + forward_ms)
        done = [r for r in results if r is not None]
        with self._lock:
            self._total += len(done)
            for result in done:
                if isinstance(result, Recognition):
                    self._successful += 1
                    self._time_ms += result.processing_time_ms
        return done

    def performance(self) -> dict[str, Any]:
        """The ``/performance-stats`` body: counters, how the model runs, what it is."""
        settings = self.predictor.settings
        with self._lock:
            total, successful, time_ms = self._total, self._successful, self._time_ms
        info = self.info
        if self.predictor.model_type == "ctc":
            engine = f"transformers {info.precision}"
        else:
            engine = f"ctranslate2 {info.precision}"
        source = ModelSource.parse(settings.model_id, settings.revision)
        return {
            "performance_metrics": {
                "total_requests": total,
                "successful_requests": successful,
                "failed_requests": total - successful,
                "avg_processing_time": round(time_ms / successful, 1) if successful else 0.0,
                "cache_hits": self.cache.hits,
            },
            "optimization_status": {
                "engine": engine,
                "voice_activity_detection": "silero (faster-whisper)",
                "batching": {
                    "enabled": True,
                    "max_batch_size": self.model.batcher.max_batch_size,
                    "queued": self.model.batcher.queued,
                },
                "cache": {
                    "enabled": self.cache.capacity > 0,
                    "size": len(self.cache),
                    "capacity": self.cache.capacity,
                    "hits": self.cache.hits,
                    "misses": self.cache.misses,
                },
            },
            "model_info": {
                "model_path": settings.model_id,
                "revision": settings.revision,
                "model_type": self.predictor.model_type,
                "device": info.device,
                "model_source": "local" if source.is_local else "hub",
                "demo": info.demo,
                "intent_source": info.extra.get("intent_source"),
                "intents": len(self.predictor.labels),
            },
        }


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000
