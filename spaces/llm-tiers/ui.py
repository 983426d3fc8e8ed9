"""Gradio UI: generate (streamed), variations, and each tier's model with a connection test."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Iterator
from typing import Any

import gradio as gr
import httpx

from predictor import TierGenerator
from protocol import GenerateParameters
from shared.errors import InputError
from shared.serving import Service

logger = logging.getLogger(__name__)

# Initial values of the Generate tab, also the defaults of the `predict` API's parameters.
DEFAULT_MAX_NEW_TOKENS = 100
DEFAULT_TEMPERATURE = 0.7


def _parse_context(context: str | None) -> dict[str, Any] | None:
    if not context or not context.strip():
        return None
    try:
        value = json.loads(context)
    except json.JSONDecodeError as e:
        raise InputError(f"context must be a JSON object: {e}") from e
    if not isinstance(value, dict):
        raise InputError('context must be a JSON object, e.g. {"name": "Ada"}')
    return value


def tier_table(generator: TierGenerator) -> list[list[Any]]:
    """Rows of the tiers table: tier, model, revision, adapter, loaded, demo weights; the
    same values as ``GET /tiers`` (an empty revision is the model's default branch or a local
    folder, ``null`` there)."""
    rows = []
    for row in generator.describe_tiers():
        rows.append(
            [
                row["tier"] + (" (default)" if row["tier"] == generator.default_tier else ""),
                row["model"],
                row["revision"] or "",
                row["adapter"] or "",
                "yes" if row["loaded"] else "no (loads on first request)",
                "DEMO (random weights)" if row["demo_weights"] else "trained",
            ]
        )
    return rows


def demo_banner(generator: TierGenerator) -> str:
    """A plain warning naming the tiers that run demo weights (empty when none do)."""
    registry = generator.registry
    demo = [name for name in registry.names if registry.demo_marker(name)]
    if not demo:
        return ""
    return (
        f"**⚠️ Demo weights:** tier(s) {', '.join(demo)} run small random demo models built by "
        "`scripts/build_demo_models.py`. Their output is gibberish; it only shows that the "
        "routes, streaming, grammar and limits work. Set `TIER_<NAME>_MODEL` to serve real models."
    )


def build_ui(generator: TierGenerator, service: Service[Any], *, self_url: str) -> gr.Blocks:
    """The Gradio Blocks app.

    Args:
        generator: The predictor.
        service: The Space's service: its error boundary and ``/stats``.
        self_url: This Space's own URL, the default target of "Test connection".
    """
    registry = generator.registry
    tiers = registry.names
    default = registry.config.default_tier

    @service.endpoint("predict")
    def predict(
        prompt: str,
        tier: str = default,
        max_new_tokens: float = DEFAULT_MAX_NEW_TOKENS,
        temperature: float = DEFAULT_TEMPERATURE,
        context: str | None = None,
    ) -> Iterator[str]:
        """Complete a prompt on a tier, streaming the text as it grows.

        Args:
            prompt: The user message (the tier's system prompt and chat template apply).
            tier: Tier name.
            max_new_tokens: Most tokens to generate.
            temperature: Sampling temperature; 0 is greedy.
            context: Optional JSON object rendered into the system prompt.
        """
        if not prompt or not prompt.strip():
            raise InputError("prompt is empty: type something to complete")
        chat = generator.chat_prompt(
            tier, [{"role": "user", "content": prompt}], context=_parse_context(context)
        )
        params = GenerateParameters(
            max_new_tokens=int(max_new_tokens),
            temperature=float(temperature) if temperature and temperature > 0 else None,
        )
        prepared = generator.prepare(
            tier, chat, params, templated=True, greedy=not temperature or temperature <= 0
        )
        stream = generator.stream(prepared)
        text = ""
        for token in stream:
            text += token.text
            yield text
        assert stream.result is not None
        yield stream.result.text

    @service.endpoint("variations")
    def variations(prompt: str, n: float = 3, tier: str = default) -> list[str]:
        if not prompt or not prompt.strip():
            raise InputError("prompt is empty: type something to complete")
        count = int(n)
        if not 1 <= count <= 8:
            raise InputError(f"n must be between 1 and 8, got {count}")
        config = registry.config.tier(tier)
        chat = generator.chat_prompt(tier, [{"role": "user", "content": prompt}])
        base_seed = random.getrandbits(31)
        streams = []
        for i in range(count):
            # Distinct seeds give different samples; submitted together, they decode as one batch.
            params = GenerateParameters(
                do_sample=True,
                temperature=config.defaults.temperature or 1.0,
                seed=base_seed + i,
            )
            streams.append(generator.stream(generator.prepare(tier, chat, params, templated=True)))
        return [s.collect().text for s in streams]

    @service.endpoint("test_connection")
    def test_connection(
        url: str = self_url,
        path: str = "/api/generate",
        token: str | None = None,
        revision: str | None = None,
        tier: str = default,
    ) -> str:
        target = (url or self_url).rstrip("/") + "/" + (path or "/api/generate").lstrip("/")
        body: dict[str, Any] = {
            "inputs": "Hello",
            "parameters": {"max_new_tokens": 8, "temperature": 0.7},
            "tier": tier,
        }
        if revision and revision.strip():
            body["revision"] = revision.strip()
        if not target.startswith(("http://", "https://")):
            raise InputError(f"the URL must start with http:// or https://, not {url!r}")
        token = (token or "").strip()
        if not token.isascii() or not token.isprintable():
            raise InputError("the token must be printable ASCII (an HTTP header carries it)")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        start = time.perf_counter()
        try:
            response = httpx.post(target, json=body, headers=headers, timeout=120)
        except (httpx.HTTPError, httpx.InvalidURL, UnicodeError) as e:
            return f"❌ {target}: cannot connect ({type(e).__name__}: {e})"
        ms = (time.perf_counter() - start) * 1000
        if response.status_code != 200:
            try:
                error = response.json().get("error", response.text)
            except ValueError:
                error = response.text[:300]
            return f"❌ {target}: HTTP {response.status_code} in {ms:.0f} ms: {error}"
        try:
            text = response.json()["generated_text"]
        except (ValueError, KeyError, TypeError):
            return f"❌ {target}: HTTP 200 but no `generated_text` in {response.text[:200]!r}"
        return f"✅ {target}: tier `{tier}` answered in {ms:.0f} ms: {text!r}"

    with gr.Blocks(title="LLM tiers") as demo:
        gr.Markdown(
            "# LLM tiers\nFour text-generation tiers (base, company, abstraction, user) behind "
            "TGI-, OpenAI- and `/api/generate`-compatible HTTP APIs. See the README for curl and "
            "client examples."
        )
        banner = demo_banner(generator)
        if banner:
            gr.Markdown(banner)
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column():
                    prompt = gr.Textbox(label="Prompt", lines=4)
                    tier = gr.Dropdown(tiers, value=default, label="Tier")
                    max_new = gr.Slider(
                        1, 512, value=DEFAULT_MAX_NEW_TOKENS, step=1, label="max_new_tokens"
                    )
                    temperature = gr.Slider(
                        0, 2, value=DEFAULT_TEMPERATURE, step=0.05, label="temperature (0 = greedy)"
                    )
                    context = gr.Code(
                        value="", label="Context (JSON object, optional)", language="json"
                    )
                    run = gr.Button("Generate", variant="primary")
                output = gr.Textbox(label="Output", lines=12)
            run.click(
                predict,
                [prompt, tier, max_new, temperature, context],
                output,
                api_name="predict",
                concurrency_limit=16,
            )
        with gr.Tab("Variations"):
            with gr.Row():
                with gr.Column():
                    v_prompt = gr.Textbox(label="Prompt", lines=3)
                    v_n = gr.Slider(1, 8, value=3, step=1, label="n")
                    v_tier = gr.Dropdown(tiers, value=default, label="Tier")
                    v_run = gr.Button("Generate variations", variant="primary")
                v_out = gr.JSON(label="Completions")
            v_run.click(
                variations,
                [v_prompt, v_n, v_tier],
                v_out,
                api_name="variations",
                concurrency_limit=8,
            )
        with gr.Tab("Tiers"):
            table = gr.Dataframe(
                value=tier_table(generator),
                headers=["tier", "model", "revision", "adapter", "loaded", "weights"],
                interactive=False,
            )
            refresh = gr.Button("Refresh")
            refresh.click(lambda: tier_table(generator), None, table, api_visibility="private")
            gr.Markdown("### Test connection\nSends a short `/api/generate` request to a Space.")
            with gr.Row():
                c_url = gr.Textbox(value=self_url, label="Space URL")
                c_path = gr.Textbox(value="/api/generate", label="Endpoint path")
                c_token = gr.Textbox(value="", label="Auth token (optional)", type="password")
                c_revision = gr.Textbox(value="", label="Model revision (optional)")
            c_tier = gr.Dropdown(tiers, value=default, label="Tier")
            c_run = gr.Button("Test connection")
            c_out = gr.Markdown()
            c_run.click(
                test_connection,
                [c_url, c_path, c_token, c_revision, c_tier],
                c_out,
                api_name="test_connection",
            )
            demo.load(lambda: tier_table(generator), None, table, api_visibility="private")
    return demo
