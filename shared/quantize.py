"""CPU int8 inference: a transformers model exported to ONNX, quantized, run by ONNX Runtime.

Why not torch's own int8: ``torch.ao.quantization.quantize_dynamic`` is deprecated, and an eager
forward pass drops and retakes the GIL at every operator, so in a server whose event loop lives
in the same process it queues behind that loop hundreds of times per batch. Measured with
``python -m benchmarks.toxic_classifier.gil`` (BERT-base, 16 short texts): beside a thread holding
the GIL 20% / 50% of the time, torch int8 kept 78% / 53% of its throughput and ONNX Runtime, which
runs the whole graph in one call without the GIL, 97% / 74%.

The export (``torch.onnx.export`` with ``torch.export``) and the quantization (dynamic int8
MatMuls, per-channel int8 weights) take tens of seconds for a BERT-base model, so the result is
cached on disk, keyed by the model's files and the library versions (:func:`cached_int8_onnx`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import ModelLoadError

logger = logging.getLogger(__name__)

INT8_FILENAME = "model.int8.onnx"
# Bump when the export or quantization recipe changes: older cache entries are then ignored.
RECIPE = "dynamo-export/dynamic-int8-per-channel/v2"
# Libraries whose versions shape the exported graph; each is part of the cache key.
EXPORTERS = ("torch", "transformers", "onnx", "onnxscript", "onnxruntime")


def reduce_range() -> bool:
    """Whether to quantize weights to 7 bits: on x86 CPUs without VNNI, ONNX Runtime's u8s8
    kernels (VPMADDUBSW) saturate 16-bit sums of 8-bit products, and 7-bit weights keep them in
    range (ONNX Runtime's quantization guide). Measured on an AVX2-only EPYC: a random BERT's
    int8 logits were off by 43% of their spread with 8-bit weights."""
    import platform

    from shared.models import cpu_supports_vnni

    return platform.machine() in ("x86_64", "AMD64") and not cpu_supports_vnni()


def default_cache_dir() -> Path:
    """``onnx`` under the Hugging Face cache home (``$HF_HOME``, ``~/.cache/huggingface``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "onnx"


def model_fingerprint(folder: Path) -> str:
    """A hash of a model folder's config and weights and of the exporting libraries' versions.

    Two folders with the same files share a cache entry; a changed weight file, a new version
    of any of :data:`EXPORTERS`, or a new :data:`RECIPE` gets a new one.
    """
    from importlib.metadata import version

    variant = f"reduce_range={reduce_range()}"
    digest = hashlib.sha256("|".join([RECIPE, variant, *map(version, EXPORTERS)]).encode())
    weights = [*folder.glob("*.safetensors"), *folder.glob("*.bin")]
    files = [folder / "config.json", *sorted(weights)]
    for path in files:
        if not path.is_file():
            continue
        digest.update(path.name.encode())
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:24]


def export_int8_onnx(model: Any, example: Mapping[str, Any], out: Path) -> Path:
    """Export a transformers model to ONNX and quantize its MatMuls to dynamic int8.

    Every input gets a dynamic batch and sequence axis, so one file serves any batch of padded
    texts. Weights are int8 per output channel; activations are quantized on the fly per batch
    (ONNX Runtime's ``DynamicQuantizeLinear`` + ``MatMulInteger``, VNNI kernels on x86).

    The model is switched to eager attention first: the SDPA path exports a NaN guard (``IsNaN``
    and ``Where`` over every attention matrix) that made the int8 graph ~10% slower on both
    short and long texts (benchmark model, interleaved runs); the arithmetic is the same.

    Args:
        model: A transformers model in eval mode (fp32); its attention implementation changes.
        example: Example inputs by name, e.g. a padded tokenizer batch of two texts (batch and
            sequence sizes of at least 2, so neither axis is specialised to 1).
        out: Where to write the quantized model; written atomically.

    Returns:
        ``out``.
    """
    import warnings

    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    names = list(example)
    batch = torch.export.Dim("batch")
    longest = int(getattr(model.config, "max_position_embeddings", 512))
    sequence = torch.export.Dim("sequence", max=longest)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as tmp:
        fp32, quantized = Path(tmp) / "model.onnx", Path(tmp) / INT8_FILENAME
        with warnings.catch_warnings():
            # The exporter warns about axis names it merges; nothing a caller can act on.
            warnings.simplefilter("ignore", UserWarning)
            program = torch.onnx.export(
                model,
                (),
                kwargs=dict(example),
                input_names=names,
                output_names=["logits"],
                dynamic_shapes={name: {0: batch, 1: sequence} for name in names},
                dynamo=True,
                optimize=True,
                verbose=False,
            )
        program.save(str(fp32))
        # The exporter's value_info carries shapes that the quantizer's own shape inference
        # contradicts ("Inferred shape and existing shape differ"); it recomputes them anyway.
        graph = onnx.load(str(fp32))
        del graph.graph.value_info[:]
        onnx.save(graph, str(fp32))
        quantize_dynamic(fp32, quantized, weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=reduce_range())  # fmt: skip
        os.replace(quantized, out)
    return out


def cached_int8_onnx(
    folder: Path,
    load_model: Callable[[], Any],
    example: Callable[[], Mapping[str, Any]],
    cache_dir: Path | None = None,
) -> Path:
    """The int8 ONNX file for the model in ``folder``: from the cache, or exported and cached.

    Args:
        folder: The resolved model folder (``shared.models.resolve_model``).
        load_model: Loads the fp32 transformers model; called only on a cache miss.
        example: Builds the example inputs for the export; called only on a cache miss.
        cache_dir: The cache root; :func:`default_cache_dir` when None.

    Returns:
        The path of the quantized model.

    Raises:
        ModelLoadError: the export or the quantization failed (the message says which model).
    """
    entry = (cache_dir or default_cache_dir()) / model_fingerprint(folder)
    path = entry / INT8_FILENAME
    if path.is_file():
        logger.info("int8 ONNX model from the cache: %s", path)
        return path
    logger.info("exporting %s to int8 ONNX in %s (once; cached afterwards)", folder, entry)
    start = time.monotonic()
    try:
        export_int8_onnx(load_model(), example(), path)
    except Exception as e:
        # The export's own temporary folder is gone already; drop the entry only if it is empty
        # (another process may be exporting the same model into it, or may have finished).
        with contextlib.suppress(OSError):
            entry.rmdir()
        raise ModelLoadError(
            f"could not export {folder} to int8 ONNX in {entry} ({type(e).__name__}: {e})"
        ) from e
    (entry / "source.json").write_text(
        json.dumps({"model": str(folder), "recipe": RECIPE}, indent=2) + "\n", encoding="utf-8"
    )
    logger.info("int8 ONNX export took %.1fs", time.monotonic() - start)
    return path


@dataclass(frozen=True)
class OnnxOutput:
    """What :class:`OnnxModel` returns, shaped like a transformers model output."""

    # (batch, num_labels) float32
    logits: Any


class OnnxModel:
    """An ONNX Runtime session that is called like a transformers model: ``model(**inputs)``.

    Args:
        path: The ``.onnx`` file.
        config: The model's transformers config (labels, problem type, maximum length).
        threads: Intra-op threads; ONNX Runtime's default (one per physical core) when None.
        spin: Let idle worker threads spin for the next operator. Off by default: in a Space
            the cores are shared with the web server, and a spinning thread takes one of them.
    """

    device = "cpu"
    runtime = "onnxruntime"

    def __init__(
        self, path: Path, config: Any, *, threads: int | None = None, spin: bool = False
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.config = config
        self.path = path
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # a truncated or foreign file in the cache
            raise ModelLoadError(
                f"ONNX Runtime cannot load {path} ({type(e).__name__}: {e}); delete "
                f"{path.parent} and the model is exported again at the next start"
            ) from e
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, **inputs: Any) -> OnnxOutput:
        """Run the graph on torch tensors or numpy arrays; logits come back as a torch tensor.

        ``token_type_ids`` default to zeros when the graph takes them and the caller has none
        (as transformers models do); any other missing input is an error.
        """
        import numpy as np
        import torch

        feed = {}
        for name in self.input_names:
            value = inputs.get(name)
            if value is None and name == "token_type_ids":
                value = np.zeros_like(np.asarray(inputs["input_ids"]))
            if value is None:
                raise TypeError(f"missing model input {name!r}; the graph takes {self.input_names}")
            feed[name] = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        (logits,) = self.session.run(["logits"], feed)
        return OnnxOutput(logits=torch.from_numpy(logits))  # (batch, num_labels)
