"""The baseline: the Space as it was first written, a fp32 ``pipeline`` behind ``gr.Interface``.

One request at a time (Gradio's default queue, concurrency 1), no batching, no normalisation,
torch's default threads. ``/health`` is added only so the launcher can tell when it is up; the
pipeline loads before the server starts, so the server is ready as soon as it answers.

Environment: ``MODEL_ID`` (a local model folder), ``PORT``, ``HOST``.
"""

from __future__ import annotations

import os
from typing import Any

import gradio as gr
from fastapi.routing import APIRoute
from transformers import pipeline

classifier = pipeline("text-classification", model=os.environ["MODEL_ID"])


def classify(text: str) -> Any:
    return classifier(text)


def health() -> dict[str, str]:
    return {"status": "ok"}


demo = gr.Interface(classify, "text", "json", api_name="predict")

if __name__ == "__main__":
    demo.launch(
        server_name=os.environ.get("HOST", "127.0.0.1"),
        server_port=int(os.environ.get("PORT", "7860")),
        app_kwargs={"routes": [APIRoute("/health", health, methods=["GET"])]},
    )
