"""LLM tiers Space: four text-generation tiers behind TGI, OpenAI and ``/api/generate`` APIs.

The edge: read the configuration (``config.yaml``, or ``TIERS_CONFIG``, with the environment's
overrides; a bad value stops the Space at start with one line), build the tier registry and the
predictor, mount the HTTP routes and the Gradio UI. Models load lazily per tier; the preloaded
tiers (``PRELOAD_TIERS``, the default tier unless set) load in the background at start and
``/health`` answers 503 until they are ready. Environment variables: see README.md.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI

from api import ERRORS, VERSION, Routes
from predictor import TierGenerator
from shared.config import load_or_exit
from shared.llm import CausalLMRegistry
from shared.serving import Service, configure_gradio, install_routes, launch, mount_gradio
from tiers import TierRegistry, load_space_config
from ui import build_ui

HERE = Path(__file__).resolve().parent
PORT = int(os.environ.get("PORT", "7860"))
HOST = os.environ.get("HOST", "0.0.0.0")

CONFIG = load_or_exit(
    "llm-tiers",
    lambda: load_space_config(
        Path(os.environ.get("TIERS_CONFIG") or HERE / "config.yaml"), os.environ
    ),
)
registry = TierRegistry(
    CONFIG,
    CausalLMRegistry(
        memory_budget_gb=CONFIG.memory_budget_gb,
        token=os.environ.get("HF_TOKEN") or None,
        device=CONFIG.device,
    ),
)
generator = TierGenerator(registry)
service: Service[TierGenerator] = Service(
    "llm-tiers",
    lambda: generator.preload(CONFIG.preload),
    models=TierGenerator.model_infos,
    not_loaded=TierGenerator.not_loaded,
    errors=ERRORS,
    stats_extra=lambda: {"engines": generator.engine_stats()},
)

app = FastAPI(title="LLM tiers", version=VERSION)
install_routes(app, service, max_body_bytes=CONFIG.max_request_bytes)
Routes(generator, service, api_key=os.environ.get("API_KEY") or None).install(app)
configure_gradio()
demo = build_ui(generator, service, self_url=f"http://127.0.0.1:{PORT}")
app = mount_gradio(app, demo)  # unknown routes answer TGI's body, not Gradio's

if __name__ == "__main__":
    launch(app, service, host=HOST, port=PORT)
