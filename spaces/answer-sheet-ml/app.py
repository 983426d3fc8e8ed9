"""Answer sheet Space: a scanned sheet (image or PDF) in, its register number and subject code out.

Endpoints: ``POST /extract`` (multipart ``file``; ``exam_type``, ``pages=first|all``), ``GET
/status``, ``GET /health``, ``GET /stats``, and the Gradio UI at ``/`` with ``predict`` (a file
-> the ``/extract`` JSON) for gradio_client.

Configuration: ``config.yaml``, overridden by ``DETECTOR_MODEL``, ``REGISTER_MODEL``,
``SUBJECT_MODEL`` (paths or ``owner/repo[@rev]:file`` on the Hub), ``DEFAULT_EXAM_TYPE``,
``DPI``, ``MAX_PAGES``, ``MAX_REQUEST_BYTES`` and ``THREADS``; also ``HF_TOKEN``, ``PORT``
(7860) and ``HOST`` (0.0.0.0). A bad value stops the Space at start with one line naming it.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from api import add_routes
from predictor import CONFIG_PATH, SheetReader, load_settings
from shared.config import env_overrides, load_or_exit
from shared.documents import DocumentError
from shared.serving import (
    ErrorKind,
    Service,
    configure_gradio,
    install_routes,
    launch,
    mount_gradio,
)
from ui import build_ui

#: Environment variable -> config.yaml key.
ENV_VARS = {
    "DETECTOR_MODEL": "detector_model",
    "REGISTER_MODEL": "register_model",
    "SUBJECT_MODEL": "subject_model",
    "DEFAULT_EXAM_TYPE": "default_exam_type",
    "DPI": "dpi",
    "MAX_PAGES": "max_pages",
    "MAX_REQUEST_BYTES": "max_request_bytes",
    "THREADS": "threads",
}
#: The Space's own errors, on top of the shared ones (a bad document is already a 422).
ERRORS = {
    # poppler missing: the machine's fault, not the caller's.
    DocumentError: ErrorKind(503, "unavailable"),
}

SETTINGS = load_or_exit(
    "answer-sheet-ml", lambda: load_settings(CONFIG_PATH, env_overrides(os.environ, ENV_VARS))
)
configure_gradio()


def load() -> SheetReader:
    """Load the detector and the readers (in the background, once)."""
    return SheetReader.load(SETTINGS, token=os.environ.get("HF_TOKEN") or None)


service: Service[SheetReader] = Service("answer-sheet-ml", load, errors=ERRORS)
demo = build_ui(service, settings=SETTINGS)
demo.queue(default_concurrency_limit=8, max_size=128)

app = FastAPI(title="answer-sheet-ml", docs_url="/docs")
install_routes(app, service, max_body_bytes=SETTINGS.max_request_bytes)
add_routes(app, service)
app = mount_gradio(app, demo, max_file_size=SETTINGS.max_bytes)


if __name__ == "__main__":
    launch(
        app,
        service,
        host=os.environ.get("HOST", "0.0.0.0"),
        port=int(os.environ.get("PORT", "7860")),
    )
