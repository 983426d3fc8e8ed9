"""The project's own package, vendored into every Space at deploy time.

Small and flat: ``models`` (sources, validation, safe loading, device choice), ``labels`` (raw
model labels to a Space's canonical labels), ``text`` (cleanup, limits, Arabic normalisation),
``audio`` (any container to 16 kHz mono), ``documents`` (PDF/images to page images),
``quantize`` (int8 ONNX export, ONNX Runtime inference) and ``serving`` (background loading,
/health, /stats, errors, batching).
Names are re-exported lazily: ``import shared`` costs nothing, and a Space pays only for
the modules it uses (pypdf, torch and gradio load on first use).
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "AudioError": "shared.audio",
    "AudioInputError": "shared.audio",
    "AudioLimits": "shared.audio",
    "audio_duration": "shared.audio",
    "decode_audio": "shared.audio",
    "DocumentError": "shared.documents",
    "DocumentInputError": "shared.documents",
    "DocumentLimits": "shared.documents",
    "load_pages": "shared.documents",
    "page_count": "shared.documents",
    "InputError": "shared.errors",
    "ModelLoadError": "shared.errors",
    "LABEL_MAP_FILENAME": "shared.labels",
    "LabelMapper": "shared.labels",
    "LabelMappingError": "shared.labels",
    "TOXICITY_ALIASES": "shared.labels",
    "load_label_map": "shared.labels",
    "DeviceChoice": "shared.models",
    "ModelSource": "shared.models",
    "TRANSFORMERS_WEIGHTS": "shared.models",
    "demo_info": "shared.models",
    "find_lfs_pointers": "shared.models",
    "is_lfs_pointer": "shared.models",
    "load_state_dict": "shared.models",
    "resolve_model": "shared.models",
    "select_device": "shared.models",
    "validate_model_dir": "shared.models",
    "OnnxModel": "shared.quantize",
    "cached_int8_onnx": "shared.quantize",
    "default_cache_dir": "shared.quantize",
    "export_int8_onnx": "shared.quantize",
    "DynamicBatcher": "shared.serving",
    "ModelInfo": "shared.serving",
    "ModelNotReady": "shared.serving",
    "RequestStats": "shared.serving",
    "Service": "shared.serving",
    "configure_gradio": "shared.serving",
    "gradio_endpoint": "shared.serving",
    "install_routes": "shared.serving",
    "serve": "shared.serving",
    "ARABIC_PLACEHOLDERS": "shared.text",
    "ArabicNormalization": "shared.text",
    "TextInputError": "shared.text",
    "TextLimits": "shared.text",
    "check_text": "shared.text",
    "clean_text": "shared.text",
    "normalize_arabic": "shared.text",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'shared' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
