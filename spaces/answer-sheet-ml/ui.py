"""The Gradio UI and its API: ``predict`` (a sheet file -> the ``/extract`` JSON)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from predictor import FIELDS, Settings, SheetReader, corrected_page, draw_fields
from shared.documents import load_pages
from shared.errors import InputError
from shared.serving import Service, loading_banner

SheetService = Service[SheetReader]
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
LABELS = {"register_number": "Register number", "subject_code": "Subject code"}


def summary(result: dict[str, Any] | None) -> str:
    """The values read, their confidence and the review flag, as Markdown."""
    if not result:
        return ""
    lines = []
    for name in FIELDS:
        f = result[name]
        if f["value"] is None:
            lines.append(f"- **{LABELS[name]}**: not found")
            continue
        mark = (
            "✅" if f["accepted"] else ("⚠️ low confidence" if f["valid"] else "❌ breaks the rule")
        )
        lines.append(
            f"- **{LABELS[name]}**: `{f['value'] or '(nothing read)'}` · confidence "
            f"{f['confidence']:.2f} · {mark}"
        )
    flag = "🔎 **Needs review**" if result["needs_review"] else "✅ **Accepted without review**"
    turned = f"turned {result['rotation']}°" if result["rotation"] else "upright"
    lines.append(
        f"\n{flag} · page {result['page']} of {result['page_count']} · {turned}, deskewed "
        f"{result['deskew']:+.1f}° · {result['processing_ms']:.0f} ms"
    )
    return "\n".join(lines)


def annotated(
    path: str | None, result: dict[str, Any] | None, settings: Settings
) -> Image.Image | None:
    """The page as it was read (turned and deskewed), with the fields' boxes drawn."""
    if not path or not result:
        return None
    page = load_pages(path, limits=settings.limits, first=result["page"])[result["page"] - 1]
    image = draw_fields(corrected_page(np.asarray(page), result), result)
    image.thumbnail((1400, 1400))
    return image


def banner(service: Service[Any], settings: Settings) -> tuple[str, bool]:
    """The note above the UI (which models run) and whether they are still loading."""
    _, body = service.health()
    if body["status"] == "error":
        return f"❌ The models failed to load: {body.get('error', '')}", False
    if body["status"] != "ok":
        return f"⏳ Loading `{settings.detector_model}` and the readers…", True
    files = body["models"]["model"]["files"]
    names = " · ".join(f"{k} `{v['name']}` ({v['sha256'][:10]})" for k, v in files.items())
    return f"Models: {names}", False


def build_ui(service: SheetService, *, settings: Settings) -> gr.Blocks:
    """The Space's Blocks, its ``predict`` API wired to ``service``.

    Args:
        service: The Space's service; its model is the :class:`SheetReader`.
        settings: The Space's settings (exam types for the dropdown, limits).

    Returns:
        The Blocks (not yet queued or mounted).
    """

    @service.endpoint("predict")
    def predict(
        file: str | None, exam_type: str = settings.default_exam_type, pages: str = "first"
    ) -> dict[str, Any]:
        """Register number and subject code of an answer sheet.

        Args:
            file: The sheet (PDF, PNG, JPEG, TIFF, BMP or WebP; at most 20 MiB):
                ``handle_file(path)`` from gradio_client.
            exam_type: The validation rules (config.yaml exam_types).
            pages: ``first`` (the first page only) or ``all`` (each page as its own sheet).

        Returns:
            What ``POST /extract`` answers: register_number and subject_code (value,
            confidence, characters, box, valid, accepted), needs_review, page, rotation,
            deskew, page_count, exam_type, processing_ms, models; and ``pages`` for all.
        """
        if not file:
            raise InputError("no file: upload an answer sheet (PDF or image)")
        data = Path(file).read_bytes()
        return service.model.extract(data, exam_type=exam_type, pages=pages).to_json(pages)

    examples = sorted(
        str(p) for p in EXAMPLES_DIR.glob("*") if p.suffix in (".png", ".jpg", ".pdf")
    )
    with gr.Blocks(title="Answer sheet reader") as demo:
        gr.Markdown(
            "# Answer sheet reader\nUpload a scanned answer sheet (PDF or image): the Space"
            " finds the **register number** and the **subject code**, reads them, and says"
            " whether they need a human to check."
        )
        loading_banner(demo, lambda: banner(service, settings))
        with gr.Row():
            with gr.Column(scale=1):
                file = gr.File(
                    label="Answer sheet",
                    file_types=[".pdf", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"],
                    type="filepath",
                )
                exam_type = gr.Dropdown(
                    sorted(settings.exam_types),
                    value=settings.default_exam_type,
                    label="Exam type (validation rules)",
                )
                pages = gr.Radio(["first", "all"], value="first", label="Pages")
                button = gr.Button("Read the sheet", variant="primary")
                if examples:
                    gr.Examples(examples, inputs=file, label="Generated sheets")
            with gr.Column(scale=2):
                result_md = gr.Markdown()
                image = gr.Image(
                    label="As read: boxes found, values read", type="pil", interactive=False
                )
                details = gr.JSON(label="Response (what the API returns)")

        cleared = gr.on(
            [button.click, file.upload],
            lambda: ("", None, None),
            outputs=[result_md, image, details],
            api_visibility="private",
            queue=False,
            show_progress="hidden",
        )
        event = cleared.then(
            predict,
            inputs=[file, exam_type, pages],
            outputs=details,
            api_name="predict",
            concurrency_limit=8,
        )
        event.success(summary, details, result_md, api_visibility="private", queue=False)
        event.success(
            lambda path, result: annotated(path, result, settings),
            [file, details],
            image,
            api_visibility="private",
        )
    return demo
