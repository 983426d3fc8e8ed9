"""Arabic toxicity classification Space: an AraBERT classifier behind a harmful/safe verdict.

Endpoints: Gradio ``predict`` (one text -> one JSON verdict) and ``predict_batch`` (up to 64
texts), ``POST /api/predict`` for REST backends (old Gradio ``{"data": [...]}`` shape and the
Inference API ``{"inputs": ...}`` shape), ``GET /health`` and ``GET /stats``.

Configuration (environment): ``MODEL_ID``, ``MODEL_REVISION``, ``HARMFUL_THRESHOLD``,
``PRECISION`` (fp32|bf16|int8), ``RUNTIME`` (onnxruntime|torch, for int8), ``BATCH_WORKERS``
(batches run at once), ``TORCH_NUM_THREADS`` (intra-op threads per batch; the cores split
between the workers when unset), ``ONNX_CACHE`` (where int8 ONNX exports are kept;
``$HF_HOME/onnx`` when unset), ``HF_TOKEN``, ``PORT`` (7860), ``HOST`` (0.0.0.0); defaults in
``config.yaml``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import gradio as gr
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, model_validator

from classifier import CONFIG_PATH, ClassifierConfig, Prepared, ToxicityClassifier, Verdict
from shared.errors import InputError, ModelLoadError
from shared.serving import (
    DynamicBatcher,
    ModelInfo,
    Service,
    configure_gradio,
    install_routes,
    serve,
)

logger = logging.getLogger("toxic-classifier")

EXAMPLES = [
    "أكره هذا الشخص وأتمنى أن يختفي",
    "انت غبي وما تفهم شي، اسكت احسن لك",
    "والله لأكسر راسك إذا شفتك بكرة",
    "شكرا جزيلا على المساعدة، الله يعطيك العافية",
    "قال لي يا غبي فرديت عليه بهدوء وتركته",
    "الخدمة بطيئة جدا والتطبيق مليء بالأخطاء، أتمنى أن تصلحوه",
]


def _env_number(name: str, kind: type[float] | type[int]) -> float | int | None:
    """An optional numeric environment variable; a malformed value stops the Space at start."""
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return kind(value)
    except ValueError as e:
        raise SystemExit(f"{name} must be {'an integer' if kind is int else 'a number'}, "
                         f"got {value!r}") from e  # fmt: skip


def load_config() -> ClassifierConfig:
    """The Space config file with the environment's overrides applied.

    A bad value stops the Space at start with one line naming it (``HARMFUL_THRESHOLD=1.5``:
    ``threshold must be in [0, 1], got 1.5``), not a stack trace.
    """
    try:
        return ClassifierConfig.load(
            CONFIG_PATH,
            model_id=os.environ.get("MODEL_ID") or None,
            revision=os.environ.get("MODEL_REVISION") or None,
            threshold=_env_number("HARMFUL_THRESHOLD", float),
            precision=os.environ.get("PRECISION") or None,
            runtime=os.environ.get("RUNTIME") or None,
            workers=_env_number("BATCH_WORKERS", int),
            device=os.environ.get("DEVICE") or None,
        )
    except ModelLoadError as e:
        raise SystemExit(f"toxic-classifier: bad configuration: {e}") from e


CONFIG = load_config()
configure_gradio()


class Engine:
    """The loaded classifier with its request batcher."""

    def __init__(self, classifier: ToxicityClassifier) -> None:
        self.classifier = classifier
        # A worker takes at most ``batch_tokens`` tokens (unpadded) and its share of the queue,
        # so two idle workers split 16 waiting texts instead of one taking them all.
        self.batcher: DynamicBatcher[Prepared, Verdict] = DynamicBatcher(
            self._run,
            max_batch_size=16,
            name="toxic-batcher",
            workers=classifier.config.workers,
            cost=lambda prepared: prepared.tokens,
            max_batch_cost=classifier.config.batch_tokens,
        )

    def _run(self, prepared: list[Prepared]) -> list[Verdict]:
        probs, truncated = self.classifier.forward(prepared)
        return self.classifier.postprocess(probs, truncated)

    def classify(self, texts: list[object]) -> list[Verdict]:
        """Validate every text (InputError names the bad one), then batch them."""
        return self.batcher.submit_many(self.classifier.preprocess_all(texts))


def model_threads(workers: int) -> int | None:
    """Intra-op threads per forward pass: ``TORCH_NUM_THREADS``, else the cores split evenly
    between the batcher's workers (None, the runtime's default of one per core, for 1 worker).

    Two batches on one thread each beat one batch on two threads in the served Space: a thread
    that the web server preempts stalls only its own batch, not its partner at every operator
    (README, "Speed").
    """
    threads = _env_number("TORCH_NUM_THREADS", int)
    if threads is not None:
        return int(threads)
    if workers == 1:
        return None
    return max(1, len(os.sched_getaffinity(0)) // workers)


def load_engine() -> tuple[Engine, ModelInfo]:
    """Load the model (in the background, once) and describe it for /health."""
    threads = model_threads(CONFIG.workers)
    classifier = ToxicityClassifier.load(
        CONFIG,
        token=os.environ.get("HF_TOKEN") or None,
        num_threads=threads,
        cache_dir=Path(os.environ["ONNX_CACHE"]) if os.environ.get("ONNX_CACHE") else None,
    )
    info = ModelInfo(
        model_id=CONFIG.model_id,
        revision=CONFIG.revision,
        device=classifier.device,
        dtype=classifier.config.precision,
        demo=classifier.demo,
        extra={
            "threshold": CONFIG.threshold,
            "labels": classifier.raw_labels,
            "label_map": {
                raw: classifier.mapper.canonical_of(raw) for raw in classifier.raw_labels
            },
            "runtime": "onnxruntime" if classifier.onnx else "torch",
            "workers": CONFIG.workers,
            "threads_per_worker": threads,
            "max_length": classifier.max_length,
            "max_chars": CONFIG.max_chars,
            "max_batch": CONFIG.max_batch,
        },
    )
    return Engine(classifier), info


service: Service[Engine] = Service("toxic-classifier", load_engine)


# -- Gradio endpoints ---------------------------------------------------------------------------


@service.endpoint("predict")
def predict(text: object) -> dict[str, Any]:
    """Classify one text.

    Args:
        text: Arabic (or any) text, at most 20,000 characters; the payload as sent (the event
            skips Textbox's str()), so anything else is refused by the classifier's checks.

    Returns:
        The verdict: label, score, scores, threshold, raw, truncated, model.
    """
    return service.model.classify([text])[0].to_json()


@service.endpoint("predict_batch")
def predict_batch(texts: list[str]) -> list[dict[str, Any]]:
    """Classify up to 64 texts; the verdicts come back in the same order.

    Args:
        texts: A list of texts.

    Returns:
        One verdict object per text.
    """
    engine = service.model
    return [v.to_json() for v in engine.classify(engine.classifier.check_batch(texts))]


def render(verdict: dict[str, Any] | None) -> tuple[dict[str, float], str]:
    """Turn a verdict into the UI's confidence bars and a one-line summary."""
    if not verdict:
        return {}, ""
    mark = "🚫 harmful" if verdict["label"] == "harmful" else "✅ safe"
    summary = (
        f"**{mark}** — p(harmful) = {verdict['scores']['harmful']:.3f}, "
        f"threshold {verdict['threshold']:.2f}"
        + (" — *text was truncated at the model's maximum length*" if verdict["truncated"] else "")
    )
    return verdict["scores"], summary


def clear() -> tuple[None, str, None]:
    """Empty verdict outputs (bars, summary, response) while a new text is classified."""
    return None, "", None


def _note() -> tuple[str, bool]:
    """The banner above the UI (which model runs, whether it is demo weights) and whether the
    model is still loading, from one read of the service."""
    _, body = service.health()
    info = service.info
    if body.get("status") != "ok" or info is None:
        if body.get("status") == "error":
            return f"❌ Model `{CONFIG.model_id}` failed to load: {body.get('error', '')}", False
        return f"⏳ Model `{CONFIG.model_id}` is loading…", True
    note = f"Model **{info.ref}** · threshold **{info.extra['threshold']:.2f}** · {info.dtype}"
    if info.demo:
        note += (
            "\n\n⚠️ **Demo weights**: this Space runs an offline demo model, a toy trained for"
            " seconds on a small synthetic lexicon, not a toxicity model: its verdicts mean"
            " little. Set `MODEL_ID` to a trained model."
        )
    return note, False


def refresh_note() -> tuple[str, gr.Timer]:
    """The banner, on page load and then on a timer until the model has loaded (or failed),
    when the timer stops: a page opened during the load would otherwise say "loading" until
    reloaded."""
    note, loading = _note()
    return note, gr.Timer(active=loading)


def batch_lines(texts: str) -> list[str]:
    """The UI's batch box, one text per line, as the list ``predict_batch`` takes."""
    return [line for line in texts.splitlines() if line.strip()]


with gr.Blocks(title="Arabic toxicity classifier") as demo:
    gr.Markdown("# Arabic toxicity classifier\nClassifies Arabic text as **harmful** or **safe**.")
    banner = gr.Markdown()
    with gr.Row():
        with gr.Column():
            text = gr.Textbox(
                label="Text", rtl=True, lines=4, max_lines=12, placeholder="اكتب النص هنا"
            )
            button = gr.Button("Classify", variant="primary")
        with gr.Column():
            bars = gr.Label(label="Verdict", num_top_classes=2)
            summary = gr.Markdown()
            details = gr.JSON(label="Response (what the API returns)")
    gr.Examples(EXAMPLES, inputs=text)
    with gr.Accordion("Batch (predict_batch)", open=False):
        batch_text = gr.Textbox(
            label="Texts, one per line (at most 64)",
            rtl=True,
            lines=4,
            max_lines=16,
            value="\n".join(EXAMPLES[:2]),
        )
        # What the API's predict_batch takes: a list of texts (a JSON component shows values
        # but cannot be edited, hence the text box above for people).
        batch_in = gr.JSON(
            label="Texts (a JSON list, at most 64)", value=EXAMPLES[:2], visible=False
        )
        batch_button = gr.Button("Classify batch")
        batch_out = gr.JSON(label="Verdicts")
    note_timer = gr.Timer(2.0)

    # The previous verdict is cleared first: after a refused text (empty, too long) the bars
    # would otherwise still show the verdict of the text before it.
    cleared = gr.on(
        [button.click, text.submit],
        clear,
        outputs=[bars, summary, details],
        api_visibility="private",
        queue=False,
        show_progress="hidden",
    )
    # preprocess=False: predict gets the payload as sent. Textbox's preprocessing is str(),
    # which would turn an API call's 5 or ["a"] into a text to classify instead of an error.
    event = cleared.then(
        predict,
        inputs=text,
        outputs=details,
        api_name="predict",
        concurrency_limit=64,
        preprocess=False,
    )
    event.success(render, details, [bars, summary], api_visibility="private", queue=False)
    batch_button.click(
        batch_lines, batch_text, batch_in, api_visibility="private", queue=False
    ).then(
        predict_batch,
        inputs=batch_in,
        outputs=batch_out,
        api_name="predict_batch",
        concurrency_limit=8,
    )
    gr.on(
        [demo.load, note_timer.tick],
        refresh_note,
        outputs=[banner, note_timer],
        api_visibility="private",
        queue=False,
        show_progress="hidden",
    )


# -- REST ---------------------------------------------------------------------------------------


class InferenceParameters(BaseModel):
    """The Inference API's text-classification ``parameters``."""

    model_config = ConfigDict(extra="allow")

    # How many labels to return per text, best first; all of them when None.
    top_k: int | None = Field(default=None, ge=1, strict=True)


class LegacyRequest(BaseModel):
    """``{"data": [text]}`` (old Gradio REST) or ``{"inputs": text | [texts]}`` (Inference API)."""

    model_config = ConfigDict(extra="forbid")

    # Old Gradio shape: one text in a one-element list.
    data: list[Any] | None = None
    # Inference API shape: a text or a list of texts.
    inputs: str | list[Any] | None = None
    # Inference API parameters: top_k is honoured; the others (function_to_apply) are accepted
    # and ignored, since the Space's scores are already the model's own probabilities.
    parameters: InferenceParameters | None = None
    # Inference API options (wait_for_model, use_cache): accepted and ignored.
    options: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_shape(self) -> LegacyRequest:
        if (self.data is None) == (self.inputs is None):
            raise ValueError('send either {"data": [text]} or {"inputs": text | [texts]}')
        return self


def inference_api_shape(verdict: Verdict, top_k: int | None = None) -> list[dict[str, float | str]]:
    """A verdict as Inference API text-classification output: labels by descending score, the
    first ``top_k`` of them (all when None)."""
    ranked = sorted(verdict.scores.items(), key=lambda kv: kv[1], reverse=True)
    return [{"label": label, "score": score} for label, score in ranked[:top_k]]


app = FastAPI(title="toxic-classifier", docs_url="/docs")
install_routes(app, service)


@app.post("/api/predict", tags=["predict"])
def api_predict(request: LegacyRequest) -> Any:
    """Classify over plain HTTP, in the old Gradio or the Inference API shape."""
    with service.stats.track("api_predict"):
        engine = service.model
        if request.data is not None:
            if len(request.data) != 1:
                raise InputError(f"data must hold exactly one text, got {len(request.data)} items")
            return {"data": [engine.classify(request.data)[0].to_json()]}
        texts = [request.inputs] if isinstance(request.inputs, str) else request.inputs
        verdicts = engine.classify(engine.classifier.check_batch(texts))
        top_k = request.parameters.top_k if request.parameters else None
        return [inference_api_shape(v, top_k) for v in verdicts]


demo.queue(default_concurrency_limit=16, max_size=512)
app = gr.mount_gradio_app(app, demo, path="/")


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    service.start_loading()
    serve(app, host=os.environ.get("HOST", "0.0.0.0"), port=int(os.environ.get("PORT", "7860")))
