"""llama.cpp beside the shared engine in the llm-tiers benchmark (issue 17).

The rival CPU runtime, run on the benchmark's own checkpoint:

- ``convert``: the transformers folder to a GGUF file with llama.cpp's ``convert_hf_to_gguf.py``
  (``f32``, ``bf16`` or ``q8_0``). The script comes from the installed llama-cpp-python's sdist
  (the one ``uv.lock`` pins, fetched once, its sha256 checked, kept under
  ``build/llama.cpp/<version>/``), so converter and runtime are the same llama.cpp.
- ``measure``: the same prompt token ids for ``streams`` sequences, prefilled together in one
  ``llama_decode`` and then decoded greedily one token per sequence per step through the
  low-level batch API, as a server batching requests would. Prints one JSON line: TTFT,
  aggregate tokens/s, decode steps/s and the weights' bytes.

Each measurement runs in its own process (``python -m benchmarks.llm_tiers.llamacpp ...``):
llama.cpp and torch each bring an OpenMP thread pool, and two pools spinning in one process
would slow whichever runs second. ``bench.py`` calls both through :func:`convert` and
:func:`measure`; llama-cpp-python is in the ``bench-llm`` dependency group (``make bench-llm``
installs it; it builds from source).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "build" / "llama.cpp"
# The parts of the sdist's vendor/llama.cpp the converter imports.
CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def installed_version() -> str | None:
    """The installed llama-cpp-python's version, or None when it is not installed."""
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return None


def converter_source(version: str) -> Path:
    """The folder holding ``convert_hf_to_gguf.py`` of llama-cpp-python ``version``'s llama.cpp.

    Extracted on first use from the sdist that ``uv.lock`` pins (the file uv built the runtime
    from; its sha256 checked), then reused from ``build/llama.cpp/<version>/``.
    """
    folder = CACHE / version
    if (folder / "convert_hf_to_gguf.py").is_file():
        return folder
    import tomllib

    import httpx

    lock = tomllib.loads((ROOT / "uv.lock").read_text(encoding="utf-8"))
    sdist = next(
        (
            p["sdist"]
            for p in lock["package"]
            if p["name"] == "llama-cpp-python" and p["version"] == version
        ),
        None,
    )
    if sdist is None:
        raise RuntimeError(
            f"llama-cpp-python {version} is installed but uv.lock pins another version: "
            "run make bench-llm"
        )
    data = httpx.get(sdist["url"], timeout=600, follow_redirects=True).raise_for_status().content
    if "sha256:" + hashlib.sha256(data).hexdigest() != sdist["hash"]:
        raise RuntimeError(f"{sdist['url']}: sha256 differs from uv.lock's")
    CACHE.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=CACHE, prefix=f"{version}."))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            for member in archive.getmembers():
                _, _, inner = member.name.partition("/vendor/llama.cpp/")
                if member.isfile() and inner.startswith(CONVERTER_PARTS):
                    member.name = inner
                    archive.extract(member, staging, filter="data")
        if not (staging / "convert_hf_to_gguf.py").is_file():
            raise RuntimeError(f"{sdist['url']} has no vendor/llama.cpp/convert_hf_to_gguf.py")
        shutil.rmtree(folder, ignore_errors=True)  # an incomplete copy from an earlier run
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def convert(checkpoint: Path, outtype: str, out: Path) -> Path:
    """Write ``checkpoint`` (a transformers folder) as a GGUF file of ``outtype`` to ``out``."""
    version = installed_version()
    if version is None:
        raise RuntimeError("llama-cpp-python is not installed (make bench-llm installs it)")
    source = converter_source(version)
    command = [sys.executable, "-m", "benchmarks.llm_tiers.llamacpp", "convert",
               str(source), str(checkpoint), outtype, str(out)]  # fmt: skip
    _run(command)
    return out


def measure(gguf: Path, ids: tuple[int, ...], streams: int, new: int, threads: int) -> dict:
    """One timed run of ``streams`` greedy sequences of ``new`` tokens (after a warm-up run).

    Returns:
        ``ttft_s`` (the prefill, until every sequence has its first token), ``tokens_per_s``
        (all streams together), ``steps_per_s`` (decode steps after the first token) and
        ``model_bytes`` (the weights llama.cpp holds).
    """
    command = [sys.executable, "-m", "benchmarks.llm_tiers.llamacpp", "measure", str(gguf),
               ",".join(map(str, ids)), str(streams), str(new), str(threads)]  # fmt: skip
    return json.loads(_run(command).strip().splitlines()[-1])


def _run(command: list[str]) -> str:
    """Run a step of this module in its own process; its stderr is shown only if it fails."""
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[3:5])} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def _convert_main(source: Path, checkpoint: Path, outtype: str, out: Path) -> None:
    """Run ``convert_hf_to_gguf.py`` in this process.

    One change to it: a byte-level BPE tokenizer whose pre-tokenizer hash the script does not
    know (the benchmark's demo tokenizer, trained by this project) is written as GPT-2's, which
    is what its ``ByteLevel`` pre-tokenizer with the default regex is. The benchmark feeds
    token ids, so the tokenizer only has to load.
    """
    sys.path.insert(0, str(source))
    sys.path.insert(1, str(source / "gguf-py"))
    import convert_hf_to_gguf
    from conversion.base import TextModel

    known = TextModel.get_vocab_base_pre

    def vocab_base_pre(self: TextModel, tokenizer: object) -> str:
        try:
            return known(self, tokenizer)
        except NotImplementedError:
            return "gpt-2"

    TextModel.get_vocab_base_pre = vocab_base_pre  # type: ignore[method-assign]
    sys.argv = ["convert_hf_to_gguf.py", str(checkpoint), "--outtype", outtype,
                "--outfile", str(out)]  # fmt: skip
    convert_hf_to_gguf.main()


def _silent(level: int, text: bytes, data: object) -> None:
    """llama.cpp's log callback: its model-loading chatter is not the benchmark's output."""


# The ctypes callback llama.cpp holds on to: module-level, so it outlives every call into it.
_QUIET = None


def _measure_main(gguf: Path, ids: tuple[int, ...], streams: int, new: int, threads: int) -> None:
    """Load ``gguf``, warm up, time one run and print its figures as JSON."""
    import ctypes

    import llama_cpp as ll
    import numpy as np

    global _QUIET
    _QUIET = ll.llama_log_callback(_silent)
    ll.llama_log_set(_QUIET, None)
    ll.llama_backend_init()
    model = ll.llama_model_load_from_file(str(gguf).encode(), ll.llama_model_default_params())
    if not model:
        raise SystemExit(f"llama.cpp could not load {gguf}")
    params = ll.llama_context_default_params()
    params.n_seq_max = streams
    params.n_ctx = streams * 256 * -(-(len(ids) + new) // 256)
    params.n_batch = params.n_ubatch = max(512, streams * len(ids))
    params.n_threads = params.n_threads_batch = threads
    context = ll.llama_init_from_model(model, params)
    if not context:
        raise SystemExit(f"llama.cpp could not make a context for {gguf}")
    n_vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(model))
    batch = ll.llama_batch_init(params.n_batch, 0, 1)  # one sequence id per token

    def put(i: int, token: int, position: int, sequence: int, logits: bool) -> None:
        batch.token[i] = token
        batch.pos[i] = position
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = sequence
        batch.logits[i] = logits

    def greedy(i: int) -> int:
        row = ll.llama_get_logits_ith(context, i)
        return int(np.argmax(np.ctypeslib.as_array(ctypes.cast(row, ctypes.POINTER(
            ctypes.c_float)), shape=(n_vocab,))))  # fmt: skip

    def run(tokens: int) -> tuple[float, float]:
        ll.llama_memory_clear(ll.llama_get_memory(context), True)
        start = time.perf_counter()
        n = len(ids)
        for s in range(streams):
            for p, token in enumerate(ids):
                put(s * n + p, token, p, s, p == n - 1)
        batch.n_tokens = streams * n
        if ll.llama_decode(context, batch) != 0:
            raise SystemExit("llama_decode failed on the prefill")
        last = [greedy(s * n + n - 1) for s in range(streams)]
        ttft = time.perf_counter() - start
        for step in range(1, tokens):
            for s in range(streams):
                put(s, last[s], n + step - 1, s, True)
            batch.n_tokens = streams
            if ll.llama_decode(context, batch) != 0:
                raise SystemExit("llama_decode failed on a decode step")
            last = [greedy(s) for s in range(streams)]
        return ttft, time.perf_counter() - start

    run(4)
    ttft, wall = run(new)
    print(json.dumps({
        "ttft_s": ttft,
        "tokens_per_s": streams * new / wall,
        "steps_per_s": (new - 1) / (wall - ttft),
        "model_bytes": ll.llama_model_size(model),
    }))  # fmt: skip
    ll.llama_batch_free(batch)
    ll.llama_free(context)
    ll.llama_model_free(model)
    ll.llama_backend_free()


def main() -> None:
    """``convert SOURCE CHECKPOINT OUTTYPE OUT`` or ``measure GGUF IDS STREAMS NEW THREADS``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    steps = parser.add_subparsers(dest="step", required=True)
    c = steps.add_parser("convert", help="a transformers folder to GGUF")
    c.add_argument("source", type=Path, help="folder of convert_hf_to_gguf.py")
    c.add_argument("checkpoint", type=Path)
    c.add_argument("outtype", choices=["f32", "bf16", "q8_0"])
    c.add_argument("out", type=Path)
    m = steps.add_parser("measure", help="time greedy decoding of a GGUF file")
    m.add_argument("gguf", type=Path)
    m.add_argument("ids", help="prompt token ids, comma-separated")
    m.add_argument("streams", type=int)
    m.add_argument("new", type=int)
    m.add_argument("threads", type=int)
    args = parser.parse_args()
    if args.step == "convert":
        _convert_main(args.source, args.checkpoint, args.outtype, args.out)
    else:
        ids = tuple(int(t) for t in args.ids.split(","))
        _measure_main(args.gguf, ids, args.streams, args.new, args.threads)


if __name__ == "__main__":
    main()
