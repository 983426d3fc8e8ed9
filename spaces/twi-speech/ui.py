"""The Gradio UI and its API: ``predict`` (one recording -> the ``/test-intent`` JSON) and
``intents`` (the intents the model can answer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from intent_catalog import IntentCatalog, load_intents
from predictor import AudioInput
from recognize import Recognizer
from shared.errors import InputError
from shared.serving import Service, loading_banner

SpeechService = Service[Recognizer]


def render(result: dict[str, Any] | None) -> tuple[str, str, dict[str, float], str]:
    """A result as the UI shows it: transcript, intent line, confidence bars, reply."""
    if not result:
        return "", "", {}, ""
    if result["no_speech"]:
        return "", "🔇 **No speech heard** (silence or noise only)", {}, result["reply"]
    verdict = (
        "✅ the app acts on it"
        if result["confident"]
        else "⚠️ below the confidence the app acts on: it answers the fallback reply"
    )
    line = f"**{result['intent']}** · {result['confidence']:.0%} · {verdict}"
    bars = {p["intent"]: p["confidence"] for p in result["top_predictions"]}
    return result["transcription"], line, bars, result["reply"] or "(none: the app acts)"


def clear() -> tuple[str, str, None, str, None]:
    """Empty outputs while a new recording is recognised."""
    return "", "", None, "", None


def banner(service: Service[Any], model_id: str) -> tuple[str, bool]:
    """The note above the UI (which model runs, how, whether it is demo weights) and whether
    the model is still loading, from one read of the service's ``/health``."""
    _, body = service.health()
    model = body["models"].get("model")
    if body["status"] != "ok" or model is None:
        if body["status"] == "error":
            return f"❌ Model `{model_id}` failed to load: {body.get('error', '')}", False
        return f"⏳ Model `{model_id}` is loading…", True
    ref = f"{model['id']}@{model['revision']}" if model["revision"] else model["id"]
    note = (
        f"Model **{ref}** · {model['model_type']} · {model['precision']} on {model['device']}"
        f" · intents from the {model['intent_source']}"
    )
    for warning in model.get("warnings") or []:
        note += f"\n\n⚠️ {warning}"
    if model["demo"]:
        what = model.get("demo_note") or "not a model of real speech"
        note += (
            f"\n\n⚠️ **Demo weights**: this Space runs an offline demo model ({what}). Set"
            " `MODEL_ID` to a Twi speech model for real shoppers."
        )
    return note, False


def intent_table(labels: tuple[str, ...], catalog: IntentCatalog) -> list[dict[str, Any]]:
    """Each intent the model answers, by its index, with what ``intents.yaml`` says of it."""
    known = {intent.name: intent for intent in catalog.intents}
    rows = []
    for index, name in enumerate(labels):
        intent = known.get(name)
        rows.append({
            "index": index,
            "intent": name,
            "category": intent.category if intent else None,
            "description": intent.description if intent else None,
            "example": intent.examples[0].twi if intent else None,
        })  # fmt: skip
    return rows


def build_ui(service: SpeechService, *, model_id: str) -> gr.Blocks:
    """The Space's Blocks, its ``predict`` and ``intents`` API wired to ``service``.

    Args:
        service: The Space's service; its model is the cached, batched recognizer.
        model_id: The configured model, named in the banner while it loads.

    Returns:
        The Blocks (not yet queued or mounted).
    """
    catalog = load_intents()

    @service.endpoint("predict")
    def predict(audio: str | None) -> dict[str, Any]:
        """Transcript and e-commerce intent of one Twi voice command.

        Args:
            audio: The recording (wav, mp3, ogg, webm, m4a, flac, ...; at most 30 s and
                25 MiB): ``handle_file(path)`` from gradio_client.

        Returns:
            What ``POST /test-intent`` answers: filename, intent, confidence, transcription,
            processing_time_ms, top_predictions, model_type, whisper_info, no_speech,
            confident, reply.
        """
        if not audio:
            raise InputError("no audio: record or upload a voice command")
        path = Path(audio)
        return service.model.recognize(AudioInput(path.read_bytes(), path.name)).to_json()

    @service.endpoint("intents")
    def intents() -> list[dict[str, Any]]:
        """The intents the model answers, by index, with their category, description and an
        example command.

        Returns:
            One object per intent: index, intent, category, description, example.
        """
        return intent_table(service.model.predictor.labels, catalog)

    with gr.Blocks(title="Twi voice commands") as demo:
        gr.Markdown(
            "# Twi voice commands\nSay a shopping command in Twi (or upload a recording): the"
            " Space writes what it heard and the app action it means."
        )
        loading_banner(demo, lambda: banner(service, model_id))
        with gr.Row():
            with gr.Column():
                audio = gr.Audio(
                    sources=["microphone", "upload"], type="filepath", label="Voice command"
                )
                button = gr.Button("Recognise", variant="primary")
            with gr.Column():
                transcript = gr.Textbox(label="Transcript", interactive=False)
                intent = gr.Markdown()
                bars = gr.Label(label="Top intents", num_top_classes=5)
                reply = gr.Textbox(label="Reply to the shopper", interactive=False)
                details = gr.JSON(label="Response (what the API returns)")
        with gr.Accordion("Intents the app knows (intents)", open=False):
            list_button = gr.Button("List the intents")
            table = gr.JSON(label="Intents")

        # Outputs are cleared first: after a refused file the previous command's intent would
        # otherwise still be on screen.
        cleared = gr.on(
            [button.click, audio.stop_recording, audio.upload],
            clear,
            outputs=[transcript, intent, bars, reply, details],
            api_visibility="private",
            queue=False,
            show_progress="hidden",
        )
        event = cleared.then(
            predict, inputs=audio, outputs=details, api_name="predict", concurrency_limit=16
        )
        event.success(
            render, details, [transcript, intent, bars, reply], api_visibility="private",
            queue=False,
        )  # fmt: skip
        list_button.click(intents, outputs=table, api_name="intents", queue=False)
    return demo
