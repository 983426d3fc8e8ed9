"""LLM tiers Space: four text-generation tiers behind TGI, OpenAI and ``/api/generate`` APIs.

The edge: read the environment, build the tier registry, mount the routes and the Gradio UI.
Models load lazily per tier; the default tier (``PRELOAD_TIERS``) loads in the background at
start and ``/health`` answers 503 until it is ready.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import gradio as gr
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from routes import Routes, install_error_handlers
from service import TierGenerator
from shared.serving import RequestStats, configure_gradio, serve
from tiers import TierRegistry, load_config
from ui import build_ui

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
logger = logging.getLogger("llm-tiers")

HERE = Path(__file__).resolve().parent
PORT = int(os.environ.get("PORT", "7860"))
HOST = os.environ.get("HOST", "0.0.0.0")
budget = os.environ.get("MEMORY_BUDGET_GB")

config = load_config(
    Path(os.environ.get("TIERS_CONFIG", HERE / "tiers.yaml")),
    {k: v for k, v in os.environ.items() if k.startswith("TIER_")},
    default_tier=os.environ.get("DEFAULT_TIER") or None,
    memory_budget_gb=float(budget) if budget else None,
)
registry = TierRegistry(
    config, token=os.environ.get("HF_TOKEN") or None, device=os.environ.get("DEVICE", "auto")
)
generator = TierGenerator(registry)
stats = RequestStats()
routes = Routes(generator, stats, api_key=os.environ.get("API_KEY") or None)

preload = [
    name.strip()
    for name in os.environ.get("PRELOAD_TIERS", config.default_tier).split(",")
    if name.strip()
]
preload_state: dict[str, Any] = {"done": False, "error": None}


def _preload() -> None:
    try:
        for name in preload:
            registry.get(name)
    except Exception as e:  # reported on /health; the other tiers may still work
        logger.exception("preloading %s failed", preload)
        preload_state["error"] = str(e)
    finally:
        preload_state["done"] = True


app = FastAPI(title="LLM tiers", version="1.0.0")
install_error_handlers(app)


@app.get("/health", tags=["service"])
def health() -> JSONResponse:
    """200 once the preloaded tiers are ready; 503 while loading or if loading failed."""
    body = {"tiers": registry.names, "default_tier": config.default_tier, "preload": preload}
    if preload_state["error"]:
        return JSONResponse({**body, "status": "error", "error": preload_state["error"]}, 503)
    if not preload_state["done"]:
        return JSONResponse({**body, "status": "loading"}, 503, headers={"Retry-After": "5"})
    return JSONResponse({**body, "status": "ok"})


@app.get("/stats", tags=["service"])
def get_stats() -> dict[str, Any]:
    """Request counts and latencies per endpoint, and each engine's batch and counters."""
    return {**stats.snapshot(), "engines": routes.engine_stats()}


app.include_router(routes.router())
configure_gradio()
demo = build_ui(generator, stats, self_url=f"http://127.0.0.1:{PORT}")
app = gr.mount_gradio_app(app, demo, path="/")

if __name__ == "__main__":
    threading.Thread(target=_preload, name="preload", daemon=True).start()
    serve(app, host=HOST, port=PORT)
