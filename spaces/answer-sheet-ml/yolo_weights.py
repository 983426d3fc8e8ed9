"""Read an Ultralytics YOLO checkpoint (``.pt``) without running pickled code.

Ultralytics saves whole model objects, and its own loader unpickles them with
``weights_only=False`` (any code in the file runs). Here ``torch.load(weights_only=True)`` reads
the file, with only the classes a YOLO checkpoint is made of allowed: the network modules of
Ultralytics and torch, and the plain containers. Anything else in the file is refused.
"""

from __future__ import annotations

import collections
import inspect
import pickle
import types
from functools import cache
from pathlib import Path
from typing import Any

from shared.errors import ModelLoadError


@cache
def allowed_globals() -> tuple[Any, ...]:
    """The classes a YOLO checkpoint may hold: nn modules of Ultralytics and torch, and the
    containers and namespaces its training arguments are kept in."""
    import torch
    import ultralytics.nn.modules as modules
    import ultralytics.nn.tasks as tasks
    from ultralytics.utils import IterableSimpleNamespace

    found: set[Any] = set()
    packages = [tasks, modules, torch.nn.modules]
    for package in packages:
        for module_name in dir(package):
            candidate = getattr(package, module_name)
            sources = [candidate] if inspect.ismodule(candidate) else [package]
            for source in sources:
                for value in vars(source).values():
                    if inspect.isclass(value) and issubclass(value, torch.nn.Module):
                        found.add(value)
    found |= {
        IterableSimpleNamespace,
        types.SimpleNamespace,
        collections.OrderedDict,
        set,
        getattr,
        torch.Size,
    }
    return tuple(sorted(found, key=lambda c: f"{c.__module__}.{c.__qualname__}"))


def load_yolo_checkpoint(path: Path) -> tuple[Any, int]:
    """The detection network of an Ultralytics checkpoint, float32, in eval mode, with its head
    set to the export layout (``(batch, 4 + classes, anchors)``, boxes as cx, cy, w, h), and
    the image size it was trained at (640 when the checkpoint does not say).

    Raises:
        ModelLoadError: the file holds something other than a YOLO network and its metadata.
    """
    import torch

    try:
        with torch.serialization.safe_globals(list(allowed_globals())):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ModelLoadError(
            f"{path.name} is not a plain Ultralytics YOLO checkpoint: it holds objects that "
            f"will not be unpickled ({' '.join(str(e).split())[:300]})"
        ) from e
    model = None
    if isinstance(checkpoint, dict):  # the EMA weights are the ones Ultralytics evaluates
        model = (
            checkpoint.get("ema") if checkpoint.get("ema") is not None else checkpoint.get("model")
        )
    if not isinstance(model, torch.nn.Module):
        raise ModelLoadError(f"{path.name} has no YOLO network under 'model' or 'ema'")
    model = model.float().eval()
    for module in model.modules():
        if hasattr(module, "export") and hasattr(module, "format"):
            module.export, module.format = True, "onnx"
    args = checkpoint.get("train_args") or {}
    imgsz = args.get("imgsz", 640) if isinstance(args, dict) else 640
    return model, int(imgsz if isinstance(imgsz, int) else max(imgsz))
