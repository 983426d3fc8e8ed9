"""REST: ``POST /api/predict`` in the old Gradio ``{"data": [...]}`` shape and the Inference
API ``{"inputs": ...}`` shape, for backends that do not speak Gradio's protocol."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, model_validator

from predictor import Verdict
from shared.errors import InputError
from shared.serving import BatchedPredictor, Service


class InferenceParameters(BaseModel):
    """The Inference API's text-classification ``parameters``."""

    model_config = ConfigDict(extra="allow")

    # How many labels to return per text, best first; all of them when None.
    top_k: int | None = Field(default=None, ge=1, strict=True)


class PredictRequest(BaseModel):
    """``{"data": [text]}`` (old Gradio REST) or ``{"inputs": text | [texts]}`` (Inference API)."""

    model_config = ConfigDict(extra="forbid")

    # Old Gradio shape: one text in a one-element list.
    data: list[Any] | None = None
    # Inference API shape: a text or a list of texts. Any JSON value is let through, so that
    # the predictor's text check answers a wrong one: "text must be a string, got int".
    inputs: Any = None
    # Inference API parameters: top_k is honoured; the others (function_to_apply) are accepted
    # and ignored, since the Space's scores are already the model's own probabilities.
    parameters: InferenceParameters | None = None
    # Inference API options (wait_for_model, use_cache): accepted and ignored.
    options: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_shape(self) -> PredictRequest:
        if (self.data is None) == (self.inputs is None):
            raise ValueError('send either {"data": [text]} or {"inputs": text | [texts]}')
        return self


def inference_api_shape(verdict: Verdict, top_k: int | None = None) -> list[dict[str, float | str]]:
    """A verdict as Inference API text-classification output: labels by descending score, the
    first ``top_k`` of them (all when None)."""
    ranked = sorted(verdict.scores.items(), key=lambda kv: kv[1], reverse=True)
    return [{"label": label, "score": score} for label, score in ranked[:top_k]]


def add_routes(app: FastAPI, service: Service[BatchedPredictor[Any, Any, Verdict]]) -> None:
    """Add ``POST /api/predict`` to ``app``; errors go through ``install_routes``' boundary.

    Args:
        app: The FastAPI application (before Gradio is mounted at "/").
        service: The Space's service; its model is the batched classifier.
    """

    @app.post("/api/predict", tags=["predict"])
    def api_predict(request: PredictRequest) -> Any:
        """Classify over plain HTTP, in the old Gradio or the Inference API shape."""
        with service.stats.track("api_predict"):
            model = service.model
            if request.data is not None:
                if len(request.data) != 1:
                    raise InputError(
                        f"data must hold exactly one text, got {len(request.data)} items"
                    )
                return {"data": [model.predict(request.data)[0].to_json()]}
            inputs = request.inputs
            texts = model.predictor.check_batch(inputs) if isinstance(inputs, list) else [inputs]
            top_k = request.parameters.top_k if request.parameters else None
            return [inference_api_shape(v, top_k) for v in model.predict(texts)]
