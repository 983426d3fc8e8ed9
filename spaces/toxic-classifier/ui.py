"""The Gradio UI and its API: ``predict`` (one text) and ``predict_batch`` (up to 64 texts)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from predictor import Verdict
from shared.serving import BatchedPredictor, Service, loading_banner

EXAMPLES = [
    "أكره هذا الشخص وأتمنى أن يختفي",
    "انت غبي وما تفهم شي، اسكت احسن لك",
    "والله لأكسر راسك إذا شفتك بكرة",
    "شكرا جزيلا على المساعدة، الله يعطيك العافية",
    "قال لي يا غبي فرديت عليه بهدوء وتركته",
    "الخدمة بطيئة جدا والتطبيق مليء بالأخطاء، أتمنى أن تصلحوه",
]

ClassifierService = Service[BatchedPredictor[Any, Any, Verdict]]


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


def batch_lines(texts: str) -> list[str]:
    """The UI's batch box, one text per line, as the list ``predict_batch`` takes."""
    return [line for line in texts.splitlines() if line.strip()]


def banner(service: Service[Any], model_id: str) -> tuple[str, bool]:
    """The note above the UI (which model runs, whether it is demo weights) and whether the
    model is still loading, from one read of the service's ``/health``."""
    _, body = service.health()
    model = body["models"].get("model")
    if body["status"] != "ok" or model is None:
        if body["status"] == "error":
            return f"❌ Model `{model_id}` failed to load: {body.get('error', '')}", False
        return f"⏳ Model `{model_id}` is loading…", True
    ref = f"{model['id']}@{model['revision']}" if model["revision"] else model["id"]
    note = f"Model **{ref}** · threshold **{model['threshold']:.2f}** · {model['precision']}"
    if model["demo"]:
        note += (
            "\n\n⚠️ **Demo weights**: this Space runs an offline demo model, a toy trained for"
            " seconds on a small synthetic lexicon, not a toxicity model: its verdicts mean"
            " little. Set `MODEL_ID` to a trained model."
        )
    return note, False


def build_ui(service: ClassifierService, *, model_id: str) -> gr.Blocks:
    """The Space's Blocks, its ``predict`` and ``predict_batch`` API wired to ``service``.

    Args:
        service: The Space's service; its model is the batched classifier.
        model_id: The configured model, named in the banner while it loads.

    Returns:
        The Blocks (not yet queued or mounted).
    """

    @service.endpoint("predict")
    def predict(text: object) -> dict[str, Any]:
        """Classify one text.

        Args:
            text: Arabic (or any) text, at most 20,000 characters; the payload as sent (the
                event skips Textbox's str()), so anything else is refused by the text check.

        Returns:
            The verdict: label, score, scores, threshold, raw, truncated, model.
        """
        return service.model.predict([text])[0].to_json()

    @service.endpoint("predict_batch")
    def predict_batch(texts: list[str]) -> list[dict[str, Any]]:
        """Classify up to 64 texts; the verdicts come back in the same order.

        Args:
            texts: A list of texts.

        Returns:
            One verdict object per text.
        """
        model = service.model
        return [v.to_json() for v in model.predict(model.predictor.check_batch(texts))]

    with gr.Blocks(title="Arabic toxicity classifier") as demo:
        gr.Markdown(
            "# Arabic toxicity classifier\nClassifies Arabic text as **harmful** or **safe**."
        )
        loading_banner(demo, lambda: banner(service, model_id))
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
            # What the API's predict_batch takes: a list of texts (a JSON component shows
            # values but cannot be edited, hence the text box above for people).
            batch_in = gr.JSON(
                label="Texts (a JSON list, at most 64)", value=EXAMPLES[:2], visible=False
            )
            batch_button = gr.Button("Classify batch")
            batch_out = gr.JSON(label="Verdicts")

        # The previous verdict is cleared first: after a refused text (empty, too long) the
        # bars would otherwise still show the verdict of the text before it.
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
    return demo
