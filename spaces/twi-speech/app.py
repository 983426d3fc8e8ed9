"""Twi voice commands Space: a recording in, its transcript and e-commerce intent out.

Endpoints: Gradio ``predict`` (one recording -> the ``/test-intent`` JSON) and ``intents``,
``POST /test-intent`` and ``POST /batch-intent`` (multipart uploads, the team's existing API),
``GET /performance-stats``, ``GET /health`` and ``GET /stats``.

Configuration: ``config.yaml``, overridden by ``MODEL_ID`` (or ``python app.py --huggingface
REPO``), ``MODEL_REVISION``, ``MODEL_TYPE`` (auto|multi|single|ctc), ``LANGUAGE``, ``DEVICE``
(auto|cpu|cuda) and ``MAX_REQUEST_BYTES``; also ``CT2_CACHE`` (where CTranslate2 conversions are
kept; ``$HF_HOME/ct2`` when unset), ``HF_TOKEN``, ``PORT`` (7860) and ``HOST`` (0.0.0.0). A bad
value stops the Space at start with one line naming it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from fastapi import FastAPI

from api import add_routes
from predictor import CONFIG_PATH, SpeechPredictor, load_settings
from recognize import Recognizer
from shared.audio import AudioError
from shared.config import env_overrides, load_or_exit
from shared.serving import (
    BatchedPredictor,
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
    "MODEL_ID": "model_id",
    "MODEL_REVISION": "revision",
    "MODEL_TYPE": "model_type",
    "LANGUAGE": "language",
    "DEVICE": "device",
    "MAX_REQUEST_BYTES": "max_request_bytes",
}
#: The Space's own errors, on top of the shared ones (bad audio is already a 422: InputError).
ERRORS = {
    # ffmpeg missing: the machine's fault, not the caller's.
    AudioError: ErrorKind(503, "unavailable"),
}


def cli_environment(argv: Sequence[str], env: Mapping[str, str]) -> dict[str, str]:
    """The environment with the command line's settings on top: ``--huggingface REPO`` is
    ``MODEL_ID=REPO`` (the old backend's way of naming the model)."""
    parser = argparse.ArgumentParser(description="Serve the twi-speech Space.")
    parser.add_argument(
        "--huggingface", metavar="REPO", help="Hub repo id or local folder of the speech model"
    )
    args = parser.parse_args(argv)
    return {**env, **({"MODEL_ID": args.huggingface} if args.huggingface else {})}


ENVIRONMENT = cli_environment(sys.argv[1:], os.environ) if __name__ == "__main__" else os.environ
SETTINGS = load_or_exit(
    "twi-speech", lambda: load_settings(CONFIG_PATH, env_overrides(ENVIRONMENT, ENV_VARS))
)
THREADS = len(os.sched_getaffinity(0))
configure_gradio()


def ct2_cache() -> Path | None:
    """Where CTranslate2 conversions are kept: ``CT2_CACHE``, else ``$HF_HOME/ct2`` (a Space's
    persistent storage when it has one), else the predictor's temporary folder."""
    if os.environ.get("CT2_CACHE"):
        return Path(os.environ["CT2_CACHE"])
    return Path(os.environ["HF_HOME"]) / "ct2" if os.environ.get("HF_HOME") else None


def load() -> Recognizer:
    """Load the model (in the background, once) behind the request batcher and the cache."""
    predictor = SpeechPredictor.load(
        SETTINGS, token=os.environ.get("HF_TOKEN") or None, threads=THREADS, cache_dir=ct2_cache()
    )
    # One batch at a time: the CTranslate2 model takes every core for each pass.
    batched = BatchedPredictor(predictor, what="file", max_batch_size=8, name="twi-batcher")
    return Recognizer(batched, cache_size=SETTINGS.cache_size)


service: Service[Recognizer] = Service("twi-speech", load, errors=ERRORS)
demo = build_ui(service, model_id=SETTINGS.model_id)
demo.queue(default_concurrency_limit=16, max_size=256)

app = FastAPI(title="twi-speech", docs_url="/docs")
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
