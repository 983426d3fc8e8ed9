"""Model sources: name a model, resolve it to a local folder, validate it, load weights safely.

A model is named by a Hub repo id (with an optional revision) or by a local directory. Before
anything is loaded the folder is checked: required files present, and no weight file that is a Git
LFS pointer instead of the weights (the classic failed upload). Device and dtype choice live here
too, so every Space makes it the same way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from shared.errors import ModelLoadError

logger = logging.getLogger(__name__)

LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/v1"
# Real LFS pointers are ~130 bytes; anything past this is content, not a pointer.
_LFS_POINTER_MAX_BYTES = 1024
WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".onnx",
    ".gguf",
    ".h5",
    ".msgpack",
)
# Any one of these makes a transformers checkpoint loadable; safetensors is preferred.
TRANSFORMERS_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# Written by scripts/build_demo_models.py into every demo model folder.
DEMO_MARKER = "demo_weights.json"


@dataclass(frozen=True)
class ModelSource:
    """Where a model lives."""

    # A Hub repo id ("owner/name") or a path to a local directory.
    location: str
    # A Hub branch, tag or commit; ignored for local directories.
    revision: str | None = None

    @classmethod
    def parse(cls, spec: str, revision: str | None = None) -> ModelSource:
        """Build a source from ``"owner/name"``, ``"owner/name@rev"`` or a local path.

        Args:
            spec: Hub repo id, optionally suffixed with ``@revision``, or a directory path.
            revision: Explicit revision; wins over one given in ``spec``.

        Returns:
            The parsed source.
        """
        spec = spec.strip()
        if not spec:
            raise ModelLoadError("model location is empty: give a Hub repo id or a local path")
        if not _looks_local(spec) and "@" in spec:
            spec, _, spec_revision = spec.partition("@")
            revision = revision or spec_revision or None
        return cls(location=spec, revision=revision or None)

    @property
    def is_local(self) -> bool:
        """True when the location is a local directory rather than a Hub repo id."""
        return _looks_local(self.location)

    def __str__(self) -> str:
        if self.is_local:
            return self.location
        return f"{self.location}@{self.revision or 'main'}"


def _looks_local(location: str) -> bool:
    return location.startswith(("/", ".", "~")) or Path(location).expanduser().exists()


def is_lfs_pointer(path: Path) -> bool:
    """Tell whether ``path`` holds a Git LFS pointer instead of the file's content."""
    try:
        if path.stat().st_size > _LFS_POINTER_MAX_BYTES:
            return False
        with path.open("rb") as f:
            return f.read(len(LFS_POINTER_PREFIX)) == LFS_POINTER_PREFIX
    except OSError:
        return False


def find_lfs_pointers(folder: Path, suffixes: Iterable[str] = WEIGHT_SUFFIXES) -> list[Path]:
    """List the weight files under ``folder`` that are LFS pointers, not weights."""
    wanted = tuple(suffixes)
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.name.endswith(wanted) and is_lfs_pointer(p)
    )


def lfs_pointer_message(path: Path) -> str:
    """The error text for a weight file that is an LFS pointer."""
    size = path.stat().st_size
    return (
        f"{path.name} is a Git LFS pointer ({size} bytes), not weights: "
        "run `git lfs pull` or re-upload the file"
    )


def validate_model_dir(folder: Path, required: Sequence[str | Sequence[str]] = ()) -> None:
    """Check a model folder before loading it.

    Args:
        folder: The local model directory.
        required: File names that must exist; an entry that is a sequence is satisfied by any
            one of its names (e.g. ``TRANSFORMERS_WEIGHTS``).

    Raises:
        ModelLoadError: naming the missing file or the LFS pointer.
    """
    if not folder.is_dir():
        raise ModelLoadError(f"model directory {folder} does not exist")
    present = {p.name for p in folder.iterdir()}
    for entry in required:
        choices = [entry] if isinstance(entry, str) else list(entry)
        if not present.intersection(choices):
            wanted = choices[0] if len(choices) == 1 else f"one of {choices}"
            raise ModelLoadError(
                f"model directory {folder} lacks {wanted}; it holds {sorted(present)}"
            )
    pointers = find_lfs_pointers(folder)
    if pointers:
        raise ModelLoadError(lfs_pointer_message(pointers[0]))


def resolve_model(
    source: ModelSource,
    *,
    required: Sequence[str | Sequence[str]] = (),
    token: str | None = None,
    cache_dir: Path | None = None,
) -> Path:
    """Resolve a model source to a validated local directory.

    Hub sources are fetched with ``huggingface_hub.snapshot_download`` (which honours
    ``HF_HUB_OFFLINE`` and the local cache); local sources are used in place.

    Args:
        source: The model to resolve.
        required: Files the caller needs; see :func:`validate_model_dir`.
        token: Hub token for private repos (from the environment, never logged).
        cache_dir: Hub cache directory; the library default when None.

    Returns:
        The local directory holding the model.

    Raises:
        ModelLoadError: when the model cannot be fetched or fails validation.
    """
    if source.is_local:
        folder = Path(source.location).expanduser().resolve()
    else:
        from huggingface_hub import snapshot_download

        try:
            folder = Path(
                snapshot_download(
                    source.location, revision=source.revision, token=token, cache_dir=cache_dir
                )
            )
        except Exception as e:  # the hub client raises many types; all mean "not available"
            reason = " ".join(str(e).split())  # its messages run over several lines
            raise ModelLoadError(
                f"could not fetch {source} from the Hugging Face Hub ({type(e).__name__}: "
                f"{reason}); "
                "check the repo id and revision, HF_TOKEN for private repos, or point the Space "
                "at a local directory"
            ) from e
    validate_model_dir(folder, required)
    logger.info("model %s resolved to %s", source, folder)
    return folder


def load_state_dict(path: Path) -> dict[str, object]:
    """Load a weights file safely: safetensors, else ``torch.load(weights_only=True)``.

    Args:
        path: A ``.safetensors`` file, or a PyTorch checkpoint of plain tensors.

    Returns:
        The state dict.

    Raises:
        ModelLoadError: for a missing file, an LFS pointer or a checkpoint that needs pickle.
    """
    if not path.is_file():
        raise ModelLoadError(f"weights file {path} does not exist")
    if is_lfs_pointer(path):
        raise ModelLoadError(lfs_pointer_message(path))
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ModelLoadError(
            f"{path.name} holds objects other than tensors and will not be unpickled; "
            "convert it to safetensors"
        ) from e


def demo_info(folder: Path) -> dict[str, object] | None:
    """Return the demo-model marker of a model folder, or None for real weights."""
    marker = folder / DEMO_MARKER
    if not marker.is_file():
        return None
    return json.loads(marker.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class DeviceChoice:
    """Where and in which precision a model runs."""

    # torch device string: "cpu" or "cuda".
    device: str
    # torch dtype name: "float32", "bfloat16" or "float16".
    dtype: str

    def torch_dtype(self) -> object:
        """The ``torch.dtype`` object for :attr:`dtype`."""
        import torch

        return getattr(torch, self.dtype)


@lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (empty where /proc/cpuinfo is not there)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return frozenset(flag for line in text.splitlines() if line.startswith("flags")
                     for flag in line.split(":", 1)[1].split())  # fmt: skip


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 arithmetic (AVX-512 BF16 or AMX)."""
    return not _cpu_flags().isdisjoint({"avx512_bf16", "amx_bf16"})


def cpu_supports_vnni() -> bool:
    """True when this CPU has VNNI int8 dot products (AVX-512 VNNI or AVX-VNNI)."""
    return not _cpu_flags().isdisjoint({"avx512_vnni", "avx_vnni"})


def select_device(
    device: Literal["auto", "cpu", "cuda"] = "auto",
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto",
    *,
    cpu_bf16: bool = False,
) -> DeviceChoice:
    """Choose the device and dtype for a model in one place.

    ``auto`` picks CUDA when available; the dtype then defaults to bf16 on GPUs that support it,
    fp16 on others, and fp32 on CPU. bf16 on CPU is opt-in (``cpu_bf16``): it is fast only
    where the CPU has native bf16, and callers should measure scores against fp32 before
    enabling it.

    Args:
        device: "auto", "cpu" or "cuda".
        dtype: "auto" or an explicit dtype name.
        cpu_bf16: With ``dtype="auto"`` on a CPU with native bf16 (AVX-512 BF16 or AMX), pick
            bf16 instead of fp32.

    Returns:
        The device and dtype to use.
    """
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' was requested but no GPU is visible")
    if dtype == "auto":
        if device == "cuda":
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            dtype = "bfloat16" if cpu_bf16 and cpu_supports_bf16() else "float32"
    if dtype == "bfloat16" and device == "cpu" and not cpu_supports_bf16():
        logger.warning("bfloat16 requested but this CPU has no native bf16; it will be slow")
    return DeviceChoice(device=device, dtype=dtype)
