"""Stub Spaces that answer exactly as the Spaces' README (or issue) contracts say, fast:
toxic-classifier (Gradio + REST, for the fault tests), llm-tiers (REST, TGI streams),
answer-sheet-ml and twi-speech (not built yet: their issue's contract), and the Inference API.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, StreamingResponse

DEMO_MODEL = "stub/toxic@main"


def toxic_verdict(text: str) -> dict[str, Any]:
    """A deterministic verdict per text (what the stub Space and the tests agree on)."""
    harmful = (zlib.crc32(text.encode()) % 1000) / 1000
    label = "harmful" if harmful >= 0.5 else "safe"
    scores = {"harmful": harmful, "safe": 1 - harmful}
    return {
        "label": label,
        "score": scores[label],
        "scores": scores,
        "threshold": 0.5,
        "raw": [{"label": "LABEL_0", "score": 1 - harmful}, {"label": "LABEL_1", "score": harmful}],
        "truncated": False,
        "model": DEMO_MODEL,
    }


def _error(status: int, message: str, error_type: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message, "error_type": error_type}, status, headers=headers)


def health(space: str, model: str = DEMO_MODEL) -> dict[str, Any]:
    return {
        "status": "ok",
        "space": space,
        "uptime_s": 1.0,
        "models": {
            "model": {
                "id": model,
                "revision": "main",
                "device": "cpu",
                "precision": "fp32",
                "demo": True,
                "load_s": 0.1,
            }
        },
        "not_loaded": [],
    }


def toxic_app(*, gradio: bool = True) -> FastAPI:
    """toxic-classifier: Gradio /predict, /predict_batch; POST /api/predict; /health."""
    app = FastAPI()

    def check(text: Any) -> str:
        if not isinstance(text, str):
            raise ValueError(f"text must be a string, got {type(text).__name__}")
        if not text.strip():
            raise ValueError("text is empty")
        return text

    @app.get("/health")
    def get_health() -> dict[str, Any]:
        return health("toxic-classifier")

    @app.post("/api/predict")
    async def api_predict(request: Request) -> Any:
        body = await request.json()
        try:
            if "data" in body:
                return {"data": [toxic_verdict(check(body["data"][0]))]}
            texts = body["inputs"] if isinstance(body["inputs"], list) else [body["inputs"]]
            out = []
            for text in texts:
                v = toxic_verdict(check(text))
                out.append(
                    sorted(
                        [{"label": k, "score": s} for k, s in v["scores"].items()],
                        key=lambda d: -d["score"],
                    )
                )
            return out
        except ValueError as e:
            return _error(422, str(e), "validation")

    if gradio:
        import gradio as gr

        def predict(text: str) -> dict[str, Any]:
            try:
                return toxic_verdict(check(text))
            except ValueError as e:
                raise gr.Error(str(e)) from e

        def predict_batch(texts: list[str]) -> list[dict[str, Any]]:
            try:
                return [toxic_verdict(check(t)) for t in texts]
            except ValueError as e:
                raise gr.Error(str(e)) from e

        with gr.Blocks() as demo:
            gr.api(predict, api_name="predict", concurrency_limit=64)
            gr.api(predict_batch, api_name="predict_batch", concurrency_limit=8)
        demo.queue(default_concurrency_limit=64, max_size=2048)
        app = gr.mount_gradio_app(app, demo, path="/")
    return app


# ---- llm-tiers ----------------------------------------------------------------------------------

TIERS = ("base", "company", "abstraction", "user")


def example_of(schema: dict[str, Any]) -> Any:
    """The shortest value of a JSON schema (what a grammar-constrained stub answers)."""
    kind = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    if kind == "object":
        return {k: example_of(v) for k, v in schema.get("properties", {}).items()}
    if kind == "array":
        return []
    return {"string": "x", "integer": 1, "number": 1.5, "boolean": True}.get(kind)


def tiers_text(inputs: str, tier: str, params: dict[str, Any]) -> str:
    grammar = params.get("grammar")
    if grammar and grammar.get("type") == "json":
        return json.dumps(example_of(grammar["value"]))
    n = int(params.get("max_new_tokens") or 5)
    seed = params.get("seed")
    return " ".join([f"{tier}{'' if seed is None else seed}:{inputs}"] + ["tok"] * (n - 1))


def tiers_app(*, stream_delay: float = 0.0) -> FastAPI:
    """llm-tiers: POST /api/generate (with "stream": true, TGI events); /health."""
    app = FastAPI()

    @app.get("/health")
    def get_health() -> dict[str, Any]:
        return health("llm-tiers", "stub/mistral-tiny")

    @app.post("/api/generate")
    async def generate(request: Request) -> Any:
        body = await request.json()
        tier = body.get("tier") or "base"
        if tier not in TIERS:
            return _error(
                404, f"unknown tier {tier!r}; configured: {', '.join(TIERS)}", "not_found"
            )
        if not body.get("inputs"):
            return _error(422, "Input validation error: `inputs` cannot be empty", "validation")
        params = body.get("parameters") or {}
        text = tiers_text(body["inputs"], tier, params)
        if not body.get("stream"):
            out: dict[str, Any] = {"generated_text": text}
            if params.get("details"):
                out["details"] = {
                    "finish_reason": "length",
                    "generated_tokens": len(text.split(" ")),
                }
            return out

        async def events() -> Any:
            words = text.split(" ")
            for i, word in enumerate(words):
                piece = word if i == 0 else " " + word
                last = i == len(words) - 1
                event = {
                    "index": i + 1,
                    "token": {"id": i, "text": piece, "logprob": -1.0, "special": False},
                    "generated_text": text if last else None,
                    "details": None,
                }
                yield f"data:{json.dumps(event)}\n\n"
                if stream_delay:
                    await asyncio.sleep(stream_delay)

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


# ---- answer-sheet-ml and twi-speech (issue contracts) -------------------------------------------


def sheet_reading(filename: str, size: int, exam_type: str | None, pages: str) -> dict[str, Any]:
    field = {
        "value": f"{size:08d}",
        "confidence": 0.97,
        "characters": [],
        "box": [1, 2, 3, 4],
        "valid": True,
    }
    code = {
        "value": exam_type or "MTH101",
        "confidence": 0.9,
        "characters": [],
        "box": None,
        "valid": exam_type != "bad",
    }
    return {
        "register_number": field,
        "subject_code": code,
        "needs_review": exam_type == "bad",
        "rotation": 0,
        "page": 1,
        "pages": 2 if pages == "all" else 1,
        "processing_ms": 12.5,
        "models": {"detector": "stub"},
        "filename": filename,
    }


def answer_sheet_app(*, gradio: bool = True) -> FastAPI:
    """answer-sheet-ml: POST /extract (multipart file, exam_type, pages); Gradio predict(file)."""
    app = FastAPI()

    @app.get("/health")
    def get_health() -> dict[str, Any]:
        return health("answer-sheet-ml", "stub/sheet-reader")

    @app.post("/extract")
    async def extract(
        file: Annotated[UploadFile, File()],
        exam_type: Annotated[str | None, Form()] = None,
        pages: Annotated[str, Form()] = "first",
    ) -> Any:
        data = await file.read()
        if not data:
            return _error(422, "the file is empty", "validation")
        return sheet_reading(file.filename or "", len(data), exam_type, pages)

    if gradio:
        import gradio as gr

        def predict(file: str) -> dict[str, Any]:
            with open(file, "rb") as f:
                size = len(f.read())
            return sheet_reading(file.rsplit("/", 1)[-1], size, None, "first")

        with gr.Blocks() as demo:
            scan, reading = gr.File(type="filepath"), gr.JSON()
            gr.Button().click(predict, scan, reading, api_name="predict")
        demo.queue()
        app = gr.mount_gradio_app(app, demo, path="/")
    return app


def intent_of(filename: str, size: int, top_k: int) -> dict[str, Any]:
    intents = ["greeting", "balance", "transfer", "airtime", "help", "goodbye"]
    top = [
        {
            "intent": intents[(size + i) % len(intents)],
            "confidence": round(0.9 / (i + 1), 3),
            "index": (size + i) % len(intents),
        }
        for i in range(top_k)
    ]
    return {
        "filename": filename,
        "intent": top[0]["intent"],
        "confidence": top[0]["confidence"],
        "transcription": "maakye",
        "processing_time_ms": 30.0,
        "top_predictions": top,
        "model_type": "whisper+classifier",
        "whisper_info": {"model_size": "small", "language": None, "transcription_confidence": 0.8},
        "no_speech": size < 100,
    }


def twi_speech_app(*, gradio: bool = True) -> FastAPI:
    """twi-speech: POST /test-intent?top_k=, POST /batch-intent (files); Gradio predict(audio)."""
    app = FastAPI()

    @app.get("/health")
    def get_health() -> dict[str, Any]:
        return health("twi-speech", "stub/whisper-small-twi")

    @app.post("/test-intent")
    async def test_intent(file: Annotated[UploadFile, File()], top_k: int = 5) -> Any:
        data = await file.read()
        return intent_of(file.filename or "", len(data), top_k)

    @app.post("/batch-intent")
    async def batch_intent(files: Annotated[list[UploadFile], File()], top_k: int = 5) -> Any:
        return [intent_of(f.filename or "", len(await f.read()), top_k) for f in files]

    if gradio:
        import gradio as gr

        def predict(audio: str) -> dict[str, Any]:
            with open(audio, "rb") as f:
                size = len(f.read())
            return intent_of(audio.rsplit("/", 1)[-1], size, 5)

        with gr.Blocks() as demo:
            audio, intent = gr.Audio(type="filepath"), gr.JSON()
            gr.Button().click(predict, audio, intent, api_name="predict")
        demo.queue()
        app = gr.mount_gradio_app(app, demo, path="/")
    return app


# ---- the Inference API --------------------------------------------------------------------------


def inference_app() -> FastAPI:
    """``POST /models/{model_id}``: text classification (``[[{label, score}]]``) for a model id
    with "toxic" in it, text generation (``[{"generated_text"}]``) otherwise."""
    app = FastAPI()
    app.state.calls = 0

    @app.post("/models/{model_id:path}")
    async def infer(model_id: str, request: Request) -> Any:
        app.state.calls += 1
        if request.headers.get("authorization") != "Bearer hf_test_token":
            return _error(401, "Invalid credentials in Authorization header", "authentication")
        body = await request.json()
        if "toxic" in model_id:
            texts = body["inputs"] if isinstance(body["inputs"], list) else [body["inputs"]]
            return [[r for r in toxic_verdict(t)["raw"]] for t in texts]
        params = body.get("parameters") or {}
        return [{"generated_text": tiers_text(body["inputs"], "inference", params)}]

    return app
