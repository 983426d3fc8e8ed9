"""The project's own package, vendored into every Space at deploy time.

Small and flat: ``config`` (config.yaml + environment overrides), ``errors``, ``labels`` (raw
model labels to a Space's labels), ``models`` (sources, validation, safe loading, device),
``serving`` (the serving contract: Service, /health, /stats, errors, batching), ``guard``
(request limits before any work), ``text``; and,
imported by module because they pull in heavy libraries, ``audio`` (ffmpeg), ``documents``
(PDF/images), ``quantize`` (int8 ONNX) and ``llm`` (the batched generation engine, torch).
"""

from shared.config import ConfigError, Override, env_overrides, load_config, load_or_exit
from shared.errors import InputError, ModelLoadError, Overloaded
from shared.guard import MAX_BODY_BYTES, RequestGuard, check_json
from shared.labels import LABEL_MAP_FILENAME, LabelMapper, LabelMappingError, load_label_map
from shared.models import (
    DeviceChoice,
    ModelSource,
    demo_info,
    find_lfs_pointers,
    is_lfs_pointer,
    load_state_dict,
    resolve_model,
    select_device,
    validate_model_dir,
)
from shared.serving import (
    BatchedPredictor,
    DynamicBatcher,
    ErrorKind,
    ModelInfo,
    ModelNotReady,
    Predictor,
    RequestStats,
    Service,
    install_routes,
    mount_gradio,
    predict,
    serve,
)
from shared.text import TextInputError, TextLimits, check_text, clean_text, normalize_arabic

__all__ = [
    "LABEL_MAP_FILENAME",
    "MAX_BODY_BYTES",
    "BatchedPredictor",
    "ConfigError",
    "DeviceChoice",
    "DynamicBatcher",
    "ErrorKind",
    "InputError",
    "LabelMapper",
    "LabelMappingError",
    "ModelInfo",
    "ModelLoadError",
    "ModelNotReady",
    "ModelSource",
    "Overloaded",
    "Override",
    "Predictor",
    "RequestGuard",
    "RequestStats",
    "Service",
    "TextInputError",
    "TextLimits",
    "check_json",
    "check_text",
    "clean_text",
    "demo_info",
    "env_overrides",
    "find_lfs_pointers",
    "install_routes",
    "is_lfs_pointer",
    "load_config",
    "load_label_map",
    "load_or_exit",
    "load_state_dict",
    "mount_gradio",
    "normalize_arabic",
    "predict",
    "resolve_model",
    "select_device",
    "serve",
    "validate_model_dir",
]
