"""Spam classification and scam-conversation simulation Space, on one instruct LLM.

Endpoints: Gradio ``predict`` (one message -> the classification object), ``predict_batch`` (up
to 64 messages) and ``generate_reply`` (a simulated scammer or victim reply, streamed); REST
``POST /api/classify`` and ``POST /api/generate-reply``; ``GET /health`` and ``GET /stats``.

Configuration: ``config.yaml`` (and ``personas.yaml``), overridden by ``CLASSIFIER_MODEL_ID``,
``CLASSIFIER_REVISION``, ``GENERATOR_MODEL_ID``, ``GENERATOR_REVISION``, ``DTYPE``
(auto|float32|bfloat16|float16), ``SPAM_THRESHOLD``, ``DEVICE`` (auto|cpu|cuda) and
``MAX_REQUEST_BYTES`` (2 MB); also ``HF_TOKEN``, ``PORT`` (7860) and ``HOST`` (0.0.0.0). A bad
value stops the Space at start with one line naming it.
"""

from __future__ import annotations

import os
from dataclasses import asdict

from fastapi import FastAPI

from api import add_routes
from predictor import (
    CONFIG_PATH,
    PERSONAS_PATH,
    SpamModels,
    load_models,
    load_personas,
    load_settings,
)
from shared.config import env_overrides, load_or_exit
from shared.llm import EngineOverloaded, GenerationFailed
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

SPACE = "spam-mistral"
#: Environment variable -> config.yaml key.
ENV_VARS = {
    "CLASSIFIER_MODEL_ID": "classifier.model_id",
    "CLASSIFIER_REVISION": "classifier.revision",
    "GENERATOR_MODEL_ID": "generator.model_id",
    "GENERATOR_REVISION": "generator.revision",
    "DTYPE": "dtype",
    "SPAM_THRESHOLD": "threshold",
    "DEVICE": "device",
    "MAX_REQUEST_BYTES": "max_request_bytes",
}

SETTINGS = load_or_exit(
    SPACE, lambda: load_settings(CONFIG_PATH, env_overrides(os.environ, ENV_VARS))
)
PERSONAS = load_or_exit(SPACE, lambda: load_personas(PERSONAS_PATH))
configure_gradio()


def load() -> SpamModels:
    """Load the model(s) (in the background, once); the classifier behind the batcher."""
    classifier, generator = load_models(
        SETTINGS, PERSONAS, token=os.environ.get("HF_TOKEN") or None, device=SETTINGS.device
    )
    batched = BatchedPredictor(classifier, what="message", max_batch_size=16, name="spam-batcher")
    return SpamModels(batched, generator)


def stats() -> dict[str, object]:
    """/stats extras: the verdict cache and the generation engine."""
    models = service.model
    return {
        "cache": models.classifier.predictor.cache.stats(),
        "engine": asdict(models.generator.loaded.engine.stats()),
    }


service: Service[SpamModels] = Service(
    SPACE,
    load,
    models=SpamModels.infos,
    errors={
        EngineOverloaded: ErrorKind(429, "overloaded", message=lambda e: "Model is overloaded"),
        GenerationFailed: ErrorKind(424, "generation"),
    },
    stats_extra=stats,
)
demo = build_ui(service, PERSONAS, SETTINGS)
demo.queue(default_concurrency_limit=16, max_size=512)

app = FastAPI(title=SPACE, docs_url="/docs")
install_routes(app, service, max_body_bytes=SETTINGS.max_request_bytes)
add_routes(app, service)
app = mount_gradio(app, demo)


if __name__ == "__main__":
    launch(
        app,
        service,
        host=os.environ.get("HOST", "0.0.0.0"),
        port=int(os.environ.get("PORT", "7860")),
    )
