"""The Gradio UI and its API: ``predict``, ``predict_batch`` and ``generate_reply``.

The API endpoints are plain functions (``gr.api``), so gradio_client sends its values as they
are (a number is refused by the text check, not classified as ``"5"``); the page's own events
call the same functions and are private.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from predictor import Personas, ReplyOptions, SpamModels, SpamSettings
from shared.serving import Service, loading_banner

SPAM_EXAMPLES = [
    "CONGRATULATIONS! You won a $1,000 gift card. Claim now at bit.ly/3xYz9 before midnight!",
    "Your parcel is held at customs. Pay the 2.99 fee here: http://parcel-release-fee.info",
    "عزيزي العميل، تم إيقاف بطاقتك. لتفعيلها أرسل رمز التحقق الذي وصلك الآن",
    "مبروك! ربحت جائزة ١٠٠٠٠ ريال، أرسل بياناتك البنكية لاستلامها",
]
HAM_EXAMPLES = [
    "Your card ending 4821 was charged SAR 54.00 at Carrefour. Not you? Call the number on "
    "the back of your card.",
    "Mum, don't answer that SMS about the parcel, it's a scam.",
    "تم شحن طلبك رقم 58213، ويصل غدا بين ٩ و١٢ ظهرا",
    "هلا، نتقابل بكرة الساعة ٧ عند المقهى؟",
]
DEMO_NOTE = (
    "⚠️ **Demo weights**: this Space runs a tiny random Mistral built offline, so its "
    "verdicts and replies are meaningless; they show that the endpoints, batching, streaming "
    "and redaction work. Set `CLASSIFIER_MODEL_ID` and `GENERATOR_MODEL_ID` to an instruct "
    "model."
)
SIMULATION_NOTE = (
    "🎭 **Simulation** for scam-awareness training: the model plays one side of a scam "
    "conversation, you play the other. Replies are marked as simulated, and links, phone "
    "numbers, e-mail addresses, account and card numbers in them are replaced by placeholders."
)


def render(verdict: dict[str, Any] | None) -> tuple[dict[str, float], str]:
    """A verdict as the UI's bars and a one-line summary."""
    if not verdict:
        return {}, ""
    mark = "🚩 spam" if verdict["classification"] == "spam" else "✅ not spam"
    summary = f"**{mark}** — p(spam) = {verdict['probabilities']['spam']:.3f}"
    if verdict["truncated"]:
        summary += " — *the message was cut to the model's limit*"
    return verdict["probabilities"], summary


def banner(service: Service[Any], model_id: str) -> tuple[str, bool]:
    """The note above the UI and whether the models are still loading (one /health read)."""
    _, body = service.health()
    if body["status"] != "ok":
        if body["status"] == "error":
            return f"❌ `{model_id}` failed to load: {body.get('error', '')}", False
        return f"⏳ `{model_id}` is loading…", True
    models = body["models"]
    parts = [f"{role}: **{m['id']}** ({m['precision']})" for role, m in models.items()]
    note = " · ".join(parts)
    if any(m["demo"] for m in models.values()):
        note += "\n\n" + DEMO_NOTE
    return note, False


def conversation_of(history: list[dict[str, Any]], persona_role: str, other: str) -> list[dict]:
    """The chat's messages as turns: the model's are the persona's, the person's the other's."""
    turns = []
    for message in history:
        content = message.get("content")
        if isinstance(content, list):  # Gradio 6 may give [{"type": "text", "text": ...}]
            content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
        if not isinstance(content, str) or not content.strip():
            continue
        role = persona_role if message.get("role") == "assistant" else other
        turns.append({"role": role, "text": content})
    return turns


def build_ui(service: Service[SpamModels], personas: Personas, settings: SpamSettings) -> gr.Blocks:
    """The Space's Blocks and API, wired to ``service``.

    Args:
        service: The Space's service.
        personas: The personas and styles (for the dropdowns).
        settings: The Space's settings (generation defaults, limits).

    Returns:
        The Blocks (not yet queued or mounted).
    """
    gen = settings.generation

    @service.endpoint("predict")
    def predict(text: str) -> dict[str, Any]:
        """Classify one message as spam or not_spam.

        Args:
            text: The message (SMS, e-mail, chat), at most 20,000 characters.

        Returns:
            classification, confidence, probabilities (spam, not_spam), model, truncated.
        """
        return service.model.classifier.predict([text])[0].to_json()

    @service.endpoint("predict_batch")
    def predict_batch(texts: list[str]) -> list[dict[str, Any]]:
        """Classify up to 64 messages; the verdicts come back in the same order.

        Args:
            texts: The messages.

        Returns:
            One classification object per message.
        """
        classifier = service.model.classifier
        checked = classifier.predictor.check_batch(texts)
        return [v.to_json() for v in classifier.predict(checked)]

    @service.endpoint("generate_reply")
    def generate_reply(
        conversation: list[dict[str, str]] | str,
        persona: str = personas.defaults.persona,
        style: str = personas.defaults.style,
        max_new_tokens: int = gen.max_new_tokens,
        temperature: float = gen.temperature,
        top_p: float = gen.top_p,
        seed: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Play one side of a scam conversation; streams the reply as it is written.

        Args:
            conversation: Turns ``[{"role": "scammer"|"victim", "text": ...}]``, or one text
                from the other side.
            persona: Who replies: scammer or victim (personas.yaml).
            style: neutral, urgent or friendly (personas.yaml).
            max_new_tokens: Most tokens in the reply.
            temperature: Sampling temperature.
            top_p: Nucleus sampling mass.
            seed: Random seed for a reproducible reply.

        Returns:
            reply (contact points redacted), persona, style, finish_reason (null while
            streaming), simulated (always true), redacted, notice.
        """
        options = ReplyOptions(max_new_tokens, temperature, top_p, seed)
        for reply in service.model.generator.stream(conversation, persona, style, options):
            yield reply.to_json()

    def chat(
        message: str, history: list[dict[str, Any]], persona: str, style: str,
        max_new: float, temperature: float, top_p: float,
    ) -> Iterator[tuple[list[dict[str, Any]], str]]:  # fmt: skip
        """The page's chat: the person's message, then the persona's reply as it streams."""
        if not message or not message.strip():
            raise gr.Error("type a message first")
        name, who = personas.persona(persona)
        other = next((r for r in personas.roles if r != who.speaks_as), who.speaks_as)
        history = [*history, {"role": "user", "content": message}]
        turns = conversation_of(history, who.speaks_as, other)
        yield history, ""
        for reply in generate_reply(
            turns, name, style, int(max_new), float(temperature), float(top_p)
        ):
            text = reply["reply"] or "…"
            if reply["finish_reason"] is not None:
                text = f"{text}\n\n*🎭 simulated ({reply['persona']}, {reply['style']})*"
            yield [*history, {"role": "assistant", "content": text}], ""

    def batch_lines(texts: str) -> list[dict[str, Any]]:
        lines = [line for line in texts.splitlines() if line.strip()]
        return predict_batch(lines)

    with gr.Blocks(title="Spam & scam simulator") as demo:
        gr.Markdown(
            "# Spam classifier and scam-conversation simulator\n"
            "Classifies messages as **spam** or **not spam** from an instruct LLM's label "
            "probabilities, and plays either side of a scam conversation so people can "
            "practise spotting scams."
        )
        loading_banner(demo, lambda: banner(service, settings.classifier.model_id))
        with gr.Tab("Classify"):
            with gr.Row():
                with gr.Column():
                    text = gr.Textbox(label="Message", lines=5, max_lines=15)
                    button = gr.Button("Classify", variant="primary")
                with gr.Column():
                    bars = gr.Label(label="Verdict", num_top_classes=2)
                    summary = gr.Markdown()
                    details = gr.JSON(label="Response (what the API returns)")
            gr.Examples(SPAM_EXAMPLES, inputs=text, label="Spam examples")
            gr.Examples(HAM_EXAMPLES, inputs=text, label="Not spam examples")
            with gr.Accordion("Batch (predict_batch)", open=False):
                batch_text = gr.Textbox(
                    label="Messages, one per line (at most 64)",
                    lines=4,
                    value="\n".join([SPAM_EXAMPLES[0], HAM_EXAMPLES[1]]),
                )
                batch_button = gr.Button("Classify batch")
                batch_out = gr.JSON(label="Verdicts")
        with gr.Tab("Simulate a conversation"):
            gr.Markdown(SIMULATION_NOTE)
            with gr.Row():
                persona = gr.Dropdown(
                    sorted(personas.personas),
                    value=personas.defaults.persona,
                    label="The model plays",
                    info="; ".join(f"{k}: {p.description}" for k, p in personas.personas.items()),
                )
                style = gr.Dropdown(
                    sorted(personas.styles), value=personas.defaults.style, label="Style"
                )
            chatbot = gr.Chatbot(label="Conversation", height=360)
            message = gr.Textbox(label="Your message (you play the other side)", lines=2)
            with gr.Row():
                send = gr.Button("Send", variant="primary")
                reset = gr.Button("New conversation")
            with gr.Accordion("Generation parameters", open=False):
                max_new = gr.Slider(1, gen.max_new_tokens_cap, value=gen.max_new_tokens,
                                    step=1, label="max_new_tokens")  # fmt: skip
                temp = gr.Slider(0.05, 2.0, value=gen.temperature, step=0.05, label="temperature")
                top_p = gr.Slider(0.05, 1.0, value=gen.top_p, step=0.05, label="top_p")

        gr.api(predict, api_name="predict", concurrency_limit=64)
        gr.api(predict_batch, api_name="predict_batch", concurrency_limit=8)
        gr.api(generate_reply, api_name="generate_reply", concurrency_limit=16)

        # The previous verdict is cleared first, so a refused message does not leave the
        # verdict of the one before it on screen.
        cleared = gr.on(
            [button.click, text.submit],
            lambda: (None, "", None),
            outputs=[bars, summary, details],
            api_visibility="private",
            queue=False,
            show_progress="hidden",
        )
        cleared.then(predict, text, details, api_visibility="private").success(
            render, details, [bars, summary], api_visibility="private", queue=False
        )
        batch_button.click(batch_lines, batch_text, batch_out, api_visibility="private")
        gr.on(
            [send.click, message.submit],
            chat,
            [message, chatbot, persona, style, max_new, temp, top_p],
            [chatbot, message],
            api_visibility="private",
        )
        reset.click(lambda: ([], ""), None, [chatbot, message], api_visibility="private",
                    queue=False)  # fmt: skip
    return demo
