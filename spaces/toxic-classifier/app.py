"""Arabic toxicity classification Space: an AraBERT classifier behind a harmful/safe verdict.

Endpoints: Gradio ``predict`` (one text -> one JSON verdict) and ``predict_batch`` (up to 64
texts), ``POST /api/predict`` for REST backends (old Gradio ``{"data": [...]}`` shape and the
Inference API ``{"inputs": ...}`` shape), ``GET /health`` and ``GET /stats``.

Configuration: ``config.yaml``, overridden by ``MODEL_ID``, ``MODEL_REVISION``,
``HARMFUL_THRESHOLD``, ``PRECISION`` (fp32|bf16|int8), ``BATCH_WORKERS`` (batches run at once;
the cores are split evenly between them), ``DEVICE`` (auto|cpu|cuda) and ``MAX_REQUEST_BYTES``
(2 MB); also ``ONNX_CACHE`` (where int8 ONNX exports are kept; ``$HF_HOME/onnx`` when unset),
``HF_TOKEN``, ``PORT`` (7860) and ``HOST`` (0.0.0.0). A bad value stops the Space at start with
one line naming it.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI

from api import add_routes
from predictor import CONFIG_PATH, Prepared, ToxicityClassifier, Verdict, load_settings
from shared.config import env_overrides, load_or_exit
from shared.serving import (
    BatchedPredictor,
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
    "HARMFUL_THRESHOLD": "threshold",
    "PRECISION": "precision",
    "BATCH_WORKERS": "workers",
    "DEVICE": "device",
    "MAX_REQUEST_BYTES": "max_request_bytes",
}

SETTINGS = load_or_exit(
    "toxic-classifier", lambda: load_settings(CONFIG_PATH, env_overrides(os.environ, ENV_VARS))
)
# Each batcher worker runs its forward passes on its share of the cores. Two batches on one
# thread each beat one batch on two threads in the served Space: a thread that the web server
# preempts stalls only its own batch, not its partner at every operator
# (benchmarks/results/toxic-classifier.md).
THREADS = max(1, len(os.sched_getaffinity(0)) // SETTINGS.workers)
configure_gradio()


def load() -> BatchedPredictor[object, Prepared, Verdict]:
    """Load the model (in the background, once) behind the request batcher."""
    cache = os.environ.get("ONNX_CACHE")
    classifier = ToxicityClassifier.load(
        SETTINGS,
        token=os.environ.get("HF_TOKEN") or None,
        threads=THREADS,
        cache_dir=Path(cache) if cache else None,
    )
    # A worker takes at most batch_tokens tokens (unpadded) and its share of the queue, so two
    # idle workers split 16 waiting texts instead of one taking them all.
    return BatchedPredictor(
        classifier,
        what="text",
        max_batch_size=16,
        workers=SETTINGS.workers,
        cost=lambda prepared: prepared.tokens,
        max_batch_cost=SETTINGS.batch_tokens,
        name="toxic-batcher",
    )


service: Service[BatchedPredictor[object, Prepared, Verdict]] = Service("toxic-classifier", load)
demo = build_ui(service, model_id=SETTINGS.model_id)
demo.queue(default_concurrency_limit=16, max_size=512)

app = FastAPI(title="toxic-classifier", docs_url="/docs")
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
