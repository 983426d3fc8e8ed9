"""REST for backends that do not speak Gradio's protocol: ``POST /api/classify`` and
``POST /api/generate-reply``, the routes the old backend module called."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, model_validator

from predictor import ReplyOptions, SpamModels
from shared.serving import Service


class ClassifyRequest(BaseModel):
    """``{"text": message}`` (one verdict) or ``{"texts": [messages]}`` (a list of them)."""

    model_config = ConfigDict(extra="forbid")

    # One message. Any JSON value is let through, so that the predictor's text check answers
    # a wrong one ("text must be a string, got int").
    text: Any = None
    # Up to 64 messages.
    texts: Any = None

    @model_validator(mode="after")
    def _one_shape(self) -> ClassifyRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError('send either {"text": message} or {"texts": [messages]}')
        return self


class ReplyParameters(BaseModel):
    """Generation parameters; the Space's defaults for those left out."""

    model_config = ConfigDict(extra="forbid")

    # Most tokens to generate (the Space caps it).
    max_new_tokens: int | None = Field(None, strict=True)
    # Sampling temperature, in (0, 5].
    temperature: float | None = Field(None, allow_inf_nan=False)
    # Nucleus sampling mass, in (0, 1].
    top_p: float | None = Field(None, allow_inf_nan=False)
    # Random seed, for a reproducible reply.
    seed: int | None = Field(None, strict=True)


class ReplyRequest(BaseModel):
    """A conversation (turns, or one text) and who replies, in which style."""

    model_config = ConfigDict(extra="forbid")

    # [{"role": "scammer"|"victim", "text": ...}, ...] or one text; checked by the generator.
    conversation: Any
    # Who replies: a persona of personas.yaml (the default persona when null).
    persona: str | None = None
    # How: a style of personas.yaml (the default style when null).
    style: str | None = None
    # Generation parameters.
    parameters: ReplyParameters | None = None


def add_routes(app: FastAPI, service: Service[SpamModels]) -> None:
    """Add the REST routes to ``app``; errors go through ``install_routes``' boundary.

    Args:
        app: The FastAPI application (before Gradio is mounted at "/").
        service: The Space's service.
    """

    @app.post("/api/classify", tags=["predict"])
    def api_classify(request: ClassifyRequest) -> Any:
        """Classify one message (an object) or several (a list of objects, in order)."""
        with service.stats.track("api_classify"):
            classifier = service.model.classifier
            if request.text is not None:
                return classifier.predict([request.text])[0].to_json()
            texts = classifier.predictor.check_batch(request.texts)
            return [verdict.to_json() for verdict in classifier.predict(texts)]

    @app.post("/api/generate-reply", tags=["predict"])
    def api_generate_reply(request: ReplyRequest) -> dict[str, Any]:
        """A simulated reply: ``{"reply", "persona", "style", "finish_reason", "simulated"}``."""
        with service.stats.track("api_generate_reply"):
            params = request.parameters or ReplyParameters()
            reply = service.model.generator.generate_reply(
                request.conversation,
                request.persona,
                request.style,
                ReplyOptions(**params.model_dump()),
            )
            return reply.to_json()
