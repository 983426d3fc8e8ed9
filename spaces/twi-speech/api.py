"""REST: the team's existing API, for backends that post audio files over plain HTTP.

``POST /test-intent`` (one multipart ``file``), ``POST /batch-intent`` (several ``files``) and
``GET /performance-stats``. Errors go through ``install_routes``' boundary: bad audio is 422
``{"error", "error_type": "validation"}`` naming the problem.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import PurePosixPath, PureWindowsPath
from typing import Annotated, Any

from fastapi import FastAPI, File, Query, Request, UploadFile

from predictor import AudioInput, Recognition
from recognize import Recognizer
from shared.errors import InputError
from shared.serving import Service

#: One recording, as the multipart field ``file``.
AudioFile = Annotated[
    UploadFile | None,
    File(description="The recording (wav, mp3, ogg, webm, m4a, flac, ...), at most 30 s and "
         "25 MiB."),
]  # fmt: skip
#: Several recordings, each as a multipart field ``files``.
AudioFiles = Annotated[
    list[UploadFile] | None,
    File(description="The recordings, at most config.yaml's max_batch (16)."),
]
#: ``?top_k=``.
TopK = Annotated[
    int | None,
    Query(ge=1, le=50, description="Top predictions to return, best first (at most "
          "config.yaml's top_k, 5); all computed ones when left out."),
]  # fmt: skip


def result_json(result: Recognition, top_k: int | None) -> dict[str, Any]:
    """A recognition as ``/test-intent`` answers it, with its first ``top_k`` predictions."""
    if top_k is not None:
        result = replace(result, top_predictions=result.top_predictions[:top_k])
    return result.to_json()


def upload_name(name: str | None) -> str:
    """The file name a client gave, without folders, as text JSON can carry (at most 200
    characters); ``audio`` when it gave none."""
    base = PureWindowsPath(PurePosixPath(name or "").name).name.strip()
    base = base.encode("utf-8", "replace").decode("utf-8")
    return base[:200] or "audio"


def check_top_k(model: Recognizer, top_k: int | None) -> None:
    if top_k is not None and top_k > model.max_top_k:
        raise InputError(
            f"top_k={top_k} is more than the {model.max_top_k} predictions this Space computes "
            "(top_k in config.yaml)"
        )


def no_file(request: Request, field: str) -> InputError:
    """The error for a request that carries no audio in ``field``: it names what was sent."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip() or "none"
    if ctype != "multipart/form-data":
        return InputError(
            f"send the audio as multipart/form-data with the file in the field {field!r} "
            f"(got content type {ctype})"
        )
    return InputError(f"no audio file: the form has no {field!r} field with a file")


def add_routes(app: FastAPI, service: Service[Recognizer]) -> None:
    """Add ``POST /test-intent``, ``POST /batch-intent`` and ``GET /performance-stats``.

    Args:
        app: The FastAPI application (before Gradio is mounted at "/").
        service: The Space's service; its model is the cached, batched recognizer.
    """

    @app.post("/test-intent", tags=["intent"])
    def test_intent(
        request: Request,
        file: AudioFile = None,
        top_k: TopK = None,
    ) -> dict[str, Any]:
        """Transcript and intent of one recording."""
        with service.stats.track("test_intent"):
            model = service.model
            check_top_k(model, top_k)
            if file is None:
                raise no_file(request, "file")
            audio = AudioInput(file.file.read(), upload_name(file.filename))
            return result_json(model.recognize(audio), top_k)

    @app.post("/batch-intent", tags=["intent"])
    def batch_intent(
        request: Request,
        files: AudioFiles = None,
        top_k: TopK = None,
    ) -> list[dict[str, Any]]:
        """Transcript and intent of each recording, in order. A file that cannot be read gets
        ``{"filename", "error", "error_type"}`` in its place; the others are answered. When
        none can be read the whole call is a 422."""
        with service.stats.track("batch_intent"):
            model = service.model
            check_top_k(model, top_k)
            if not files:
                raise no_file(request, "files")
            if len(files) > model.max_batch:
                raise InputError(f"{len(files)} files in one batch; the limit is {model.max_batch}")
            audios = [AudioInput(f.file.read(), upload_name(f.filename)) for f in files]
            results = model.recognize_many(audios)
            if all(isinstance(r, InputError) for r in results):
                raise InputError(
                    "no file in the batch could be read: "
                    + "; ".join(f"{a.filename}: {r}" for a, r in zip(audios, results, strict=True))
                )
            return [
                result_json(r, top_k)
                if isinstance(r, Recognition)
                else {"filename": a.filename, "error": str(r), "error_type": "validation"}
                for a, r in zip(audios, results, strict=True)
            ]

    @app.get("/performance-stats", tags=["service"])
    def performance_stats() -> dict[str, Any]:
        """Requests, cache hits and average time per clip; the engine, batching and cache; the
        model."""
        return service.model.performance()
