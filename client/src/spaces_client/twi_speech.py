"""``TwiSpeechClient``: the twi-speech Space (intent recognition from Twi speech).

Written against the contract of the issue that specifies the Space, until the Space lands:
``POST /test-intent?top_k=5`` (multipart ``file``) and Gradio ``predict`` (audio file) answer
one :class:`~spaces_client.models.SpeechIntent`; ``POST /batch-intent`` (multipart ``files``)
a list of them.
"""

from __future__ import annotations

import io
import wave
from collections.abc import Sequence
from typing import Any

from gradio_client import handle_file

from spaces_client._base import FileInput, FilePart, SpaceClient, on_disk, read_file, validator
from spaces_client.engine import GradioCall, Request, RestCall
from spaces_client.models import SpeechIntent

_parse = validator(SpeechIntent)


def silence_wav(seconds: float = 0.5, rate: int = 16000) -> bytes:
    """A silent 16 kHz mono WAV (what ``spaces-client check`` sends)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\0\0" * int(seconds * rate))
    return buffer.getvalue()


def _many(values: Any, count: int) -> list[SpeechIntent]:
    if isinstance(values, dict):  # {"results": [...]} as well as a bare list
        values = values.get("results", values.get("predictions"))
    results = [_parse(v) for v in values]
    if len(results) != count:
        raise ValueError(f"{len(results)} results for {count} files")
    return results


class TwiSpeechClient(SpaceClient):
    """Typed client of the twi-speech Space."""

    kind = "twi_speech"

    def _one(self, part: FilePart, path: str | None, top_k: int) -> Request[SpeechIntent]:
        return Request(
            name="recognize",
            gradio=GradioCall("/predict", (handle_file(path),)) if path else None,
            parse_gradio=_parse,
            rest=RestCall(
                "POST", "/test-intent", params={"top_k": top_k}, files=[("file", part.multipart())]
            ),
            parse_rest=_parse,
            local_args=(part.data,),
            local_kwargs={"top_k": top_k},
            parse_local=_parse,
        )

    def _batch(self, parts: list[FilePart], top_k: int) -> Request[list[SpeechIntent]]:
        return Request(
            name="recognize_many",
            gradio=None,  # no batch endpoint in Gradio
            parse_gradio=None,
            rest=RestCall(
                "POST",
                "/batch-intent",
                params={"top_k": top_k},
                files=[("files", p.multipart()) for p in parts],
            ),
            parse_rest=lambda values: _many(values, len(parts)),
            local_args=([p.data for p in parts],),
            local_kwargs={"top_k": top_k},
            parse_local=lambda values: _many(values, len(parts)),
        )

    def probe(self) -> Request[SpeechIntent]:
        """Half a second of silence (``no_speech`` is an answer too)."""
        return self._one(read_file(silence_wav(), "probe.wav"), None, 1)

    def recognize(
        self, audio: FileInput, *, top_k: int = 5, timeout: float | None = None
    ) -> SpeechIntent:
        """Recognise the intent spoken in one recording.

        Args:
            audio: The recording: a path, its bytes or a binary file (WAV, MP3, OGG, ...).
            top_k: How many ranked intents to return.
            timeout: This call's deadline in seconds.

        Returns:
            The intent, its confidence, the transcription and the top predictions.
        """
        part = read_file(audio, "audio.wav")
        with on_disk([part]) as paths:
            return self._run(self._one(part, paths[0], top_k), timeout)

    async def arecognize(
        self, audio: FileInput, *, top_k: int = 5, timeout: float | None = None
    ) -> SpeechIntent:
        """Async :meth:`recognize`."""
        part = read_file(audio, "audio.wav")
        with on_disk([part]) as paths:
            return await self._arun(self._one(part, paths[0], top_k), timeout)

    def recognize_many(
        self, files: Sequence[FileInput], *, top_k: int = 5, timeout: float | None = None
    ) -> list[SpeechIntent]:
        """Recognise the intents of several recordings in one request; one result each, in order."""
        parts = [read_file(f, f"audio-{i}.wav") for i, f in enumerate(files)]
        return self._run(self._batch(parts, top_k), timeout)

    async def arecognize_many(
        self, files: Sequence[FileInput], *, top_k: int = 5, timeout: float | None = None
    ) -> list[SpeechIntent]:
        """Async :meth:`recognize_many`."""
        parts = [read_file(f, f"audio-{i}.wav") for i, f in enumerate(files)]
        return await self._arun(self._batch(parts, top_k), timeout)
