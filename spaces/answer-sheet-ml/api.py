"""REST: ``POST /extract`` (the web app forwards each upload here) and ``GET /status``.

Errors go through ``install_routes``' boundary: a file that is not a readable document, or is
over a limit, is 422 ``{"error", "error_type": "validation"}`` naming the problem; a model still
loading is 503 with ``Retry-After``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import FastAPI, File, Form, Query, Request, UploadFile

from predictor import SheetReader
from shared.errors import InputError
from shared.serving import Service

#: The sheet, as the multipart field ``file``.
SheetFile = Annotated[
    UploadFile | None,
    File(description="The answer sheet: PDF, PNG, JPEG, TIFF, BMP or WebP, at most 20 MiB."),
]
#: ``exam_type`` as a query parameter or a form field.
ExamType = Annotated[
    str | None,
    Query(
        max_length=64,
        description="Validation rules to apply (config.yaml exam_types); the "
        "default type when left out.",
    ),
]
#: ``exam_type`` as a form field beside the file (the query parameter wins).
ExamTypeForm = Annotated[str | None, Form(alias="exam_type", max_length=64)]
Pages = Annotated[
    Literal["first", "all"] | None,
    Query(
        description="first (the default): read the first page only; all: read each page as "
        "its own sheet."
    ),
]
#: ``pages`` as a form field beside the file (the query parameter wins).
PagesForm = Annotated[Literal["first", "all"] | None, Form(alias="pages")]


def no_file(request: Request) -> InputError:
    """The error for a request without a file: it names what was sent."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip() or "none"
    if ctype != "multipart/form-data":
        return InputError(
            "send the sheet as multipart/form-data with the file in the field 'file' "
            f"(got content type {ctype})"
        )
    return InputError("no file: the form has no 'file' field with a file")


def add_routes(app: FastAPI, service: Service[SheetReader]) -> None:
    """Add ``POST /extract`` and ``GET /status``.

    Args:
        app: The FastAPI application (before Gradio is mounted at "/").
        service: The Space's service; its model is the loaded :class:`SheetReader`.
    """

    @app.post("/extract", tags=["extract"])
    def extract(
        request: Request,
        file: SheetFile = None,
        exam_type: ExamType = None,
        exam_type_form: ExamTypeForm = None,
        pages: Pages = None,
        pages_form: PagesForm = None,
    ) -> dict[str, Any]:
        """Register number and subject code of an answer sheet (the first page, or each page
        with ``pages=all``), with per-character confidences, boxes, validity and
        ``needs_review``."""
        with service.stats.track("extract"):
            model = service.model
            if file is None:
                raise no_file(request)
            data = file.file.read()
            which = pages or pages_form or "first"
            result = model.extract(data, exam_type=exam_type or exam_type_form, pages=which)
            return result.to_json(which)

    @app.get("/status", tags=["service"])
    def status() -> dict[str, Any]:
        """Whether extraction is available, the loaded models (name and checksum), the exam
        types and thresholds, and the upload limits."""
        if not service.ready:
            _, health = service.health()
            return {
                "extraction_available": False,
                "mode": health["status"],
                "error": health.get("error"),
                "models": {},
            }
        return service.model.status()
