"""Benchmark of the llm-tiers engine against a ``pipeline("text-generation")`` baseline.

Builds a ~0.5B-parameter Mistral-shaped model with random weights in a temp dir, loads it for all
four tiers through the Space's own registry (they share the weights), and measures, in one run:

- time to first token (TTFT) and tokens/s for one stream,
- aggregate tokens/s with 8 concurrent streams,
- the same for the baseline: ``pipeline("text-generation")`` per request, no streaming, no
  batching, one request at a time (Gradio's default ``concurrency_limit=1``),
- transformers' own continuous batching (``model.generate_batch``) on 8 prompts, to show
  whether it fits this CPU,
- llama.cpp (llama-cpp-python, when the ``bench-llm`` dependency group is installed, as
  ``make bench-llm`` does) on the same checkpoint converted to GGUF f32, bf16 and Q8_0, fed the
  same token ids at 1 and 8 streams (``llamacpp.py``),
- peak RSS with all four tiers loaded.

Every request generates exactly ``--new-tokens`` tokens (end-of-sequence ignored) from the same
prompt length, greedy. Prints a markdown table and, with ``--write``, puts it, with the machine,
the date and the command, into ``benchmarks/results/llm-tiers.md`` between the ``bench:start`` /
``bench:end`` markers (the text around them is written by people and kept).

Run: ``.venv/bin/python benchmarks/llm_tiers/bench.py --write`` from the repo root.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import platform
import resource
import shlex
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPACE = ROOT / "spaces" / "llm-tiers"
sys.path.insert(0, str(SPACE))
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.llm_tiers import llamacpp  # noqa: E402
from benchmarks.models import build_random_mistral  # noqa: E402
from benchmarks.models import machine as models_machine  # noqa: E402
from shared.llm import CausalLMRegistry, GenerationRequest, LoadedModel, ModelSpec  # noqa: E402
from tiers import TierRegistry, load_space_config  # noqa: E402

logger = logging.getLogger("bench")

RESULTS = ROOT / "benchmarks" / "results" / "llm-tiers.md"

PROMPT = "Write a short summary of the quarterly report for our customers."

ENGINE = "llm-tiers engine (batched, streaming)"


@dataclass(frozen=True)
class Row:
    """One line of the results table."""

    # What was measured.
    name: str
    # Concurrent streams.
    streams: int
    # Mean time to first token, seconds (for the baseline: the whole request).
    ttft_s: float | None
    # Tokens per second of one stream (streams == 1) or of all streams together.
    tokens_per_s: float
    # Free text (errors, notes).
    note: str = ""
    # Weights read per second over the decode steps after the first token (GB/s): each step
    # reads every weight once, so this is the rate the memory-bound steps reach.
    decode_gbs: float | None = None


def rss_peak_mb() -> float:
    """Peak resident set size of this process so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def engine_run(
    loaded: list[LoadedModel], ids: tuple[int, ...], new: int, name: str = ENGINE
) -> Row:
    """``len(loaded)`` concurrent streams, one per model given (the tiers' are one engine)."""
    streams = []
    start = time.perf_counter()
    firsts: list[float] = []
    for model in loaded:
        streams.append(model.engine.submit(GenerationRequest(ids, new, ignore_eos=True)))

    def consume(stream: object) -> None:
        first = None
        for _ in stream:  # type: ignore[attr-defined]
            if first is None:
                first = time.perf_counter() - start
        firsts.append(first or 0.0)

    threads = [threading.Thread(target=consume, args=(s,)) for s in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    total = sum(s.result.generated_tokens for s in streams)
    assert total == new * len(loaded), total
    ttft = sum(firsts) / len(firsts)
    steps_per_s = (new - 1) / (wall - ttft)
    gbs = loaded[0].nbytes * steps_per_s / 1e9
    return Row(name, len(loaded), ttft, total / wall, decode_gbs=gbs)


def baseline_run(pipe: object, n: int, new: int) -> Row:
    """``n`` requests through ``pipeline`` one at a time (no streaming, no batching)."""
    start = time.perf_counter()
    latencies = []
    for _ in range(n):
        t = time.perf_counter()
        pipe(PROMPT, max_new_tokens=new, min_new_tokens=new, do_sample=False,  # type: ignore[operator]
             return_full_text=False)  # fmt: skip
        latencies.append(time.perf_counter() - t)
    wall = time.perf_counter() - start
    # Requests queue behind each other: the k-th waits for all before it.
    ttft = latencies[0] if n == 1 else None
    return Row('baseline: pipeline("text-generation")', n, ttft, n * new / wall)


def llamacpp_run(gguf: Path, outtype: str, ids: tuple[int, ...], streams: int, new: int) -> Row:
    """llama.cpp on ``gguf``: ``streams`` sequences prefilled together, then batched decoding."""
    found = llamacpp.measure(gguf, ids, streams, new, torch.get_num_threads())
    gbs = found["model_bytes"] * found["steps_per_s"] / 1e9
    name = f"llama.cpp {outtype} (llama-cpp-python {llamacpp.installed_version()})"
    return Row(name, streams, found["ttft_s"], found["tokens_per_s"], decode_gbs=gbs)


def continuous_batching_run(model: object, ids: tuple[int, ...], n: int, new: int,
                            timeout: float) -> Row:  # fmt: skip
    """transformers' ``generate_batch`` on ``n`` prompts (in a thread, with a time limit)."""
    from transformers import GenerationConfig

    outcome: dict[str, object] = {}

    def go() -> None:
        try:
            config = GenerationConfig(max_new_tokens=new, do_sample=False, eos_token_id=-1)
            start = time.perf_counter()
            out = model.generate_batch(  # type: ignore[attr-defined]
                inputs=[list(ids)] * n, generation_config=config, progress_bar=False
            )
            outcome["wall"] = time.perf_counter() - start
            outcome["tokens"] = sum(len(o.generated_tokens) for o in out.values())
        except Exception as e:  # report, don't crash the benchmark
            outcome["error"] = f"{type(e).__name__}: {str(e)[:120]}"

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    thread.join(timeout)
    name = "transformers continuous batching (generate_batch)"
    if thread.is_alive():
        return Row(name, n, None, 0.0, f"did not finish in {timeout:.0f} s")
    if "error" in outcome:
        return Row(name, n, None, 0.0, f"failed: {outcome['error']}")
    tokens, wall = int(outcome["tokens"]), float(outcome["wall"])  # type: ignore[arg-type]
    return Row(name, n, None, tokens / wall, "no streaming; includes warmup")


def table(rows: list[Row], meta: dict[str, str]) -> str:
    """The markdown results table, with the run's facts above it."""
    lines = [
        f"Model: {meta['model']}; {meta['machine']}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; prompt {meta['prompt_tokens']} tokens, "
        f"{meta['new_tokens']} new tokens per request, greedy; best of {meta['repeats']} "
        "alternating runs per configuration.",
        "",
        "| configuration | streams | TTFT (s) | tokens/s | vs baseline | decode GB/s | note |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    base = {r.streams: r.tokens_per_s for r in rows if r.name.startswith("baseline")}
    for r in rows:
        ratio = (f"{r.tokens_per_s / base[r.streams]:.2f}x"
                 if r.streams in base and r.tokens_per_s else "")  # fmt: skip
        ttft = f"{r.ttft_s:.2f}" if r.ttft_s is not None else "n/a"
        gbs = f"{r.decode_gbs:.1f}" if r.decode_gbs is not None else ""
        lines.append(f"| {r.name} | {r.streams} | {ttft} | {r.tokens_per_s:.2f} | {ratio} | "
                     f"{gbs} | {r.note} |")  # fmt: skip
    lines += [
        "",
        "decode GB/s: the weights' bytes times the decode steps per second after the first "
        "token (each step reads every weight once).",
        "",
        f"Peak RSS with all four tiers loaded (shared weights): {meta['rss']}.",
    ]
    return "\n".join(lines)


def machine() -> str:
    """The CPU, its vector ISA and core count, e.g. ``AMD EPYC (AVX512, native bf16), 2 CPU
    cores (x86_64)``: whether bf16 is native decides this table."""
    meta = models_machine()
    return f"{meta['cpu']}, {meta['cores']} CPU cores ({platform.machine()})"


def write_results(text: str, command: str, path: Path = RESULTS) -> None:
    """Replace the block between the benchmark markers of the results file (made if missing)."""
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    stamp = (
        f"Measured {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} on {machine()}.\n\n"
        f"Command: `{command}`\n\n"
    )
    content = (
        path.read_text(encoding="utf-8")
        if path.is_file()
        else f"# llm-tiers: benchmark results\n\n{start}\n{end}\n"
    )
    if start not in content or end not in content:
        raise SystemExit(f"{path} lacks the {start} / {end} markers")
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{head}{start}\n{stamp}{text}\n{end}{tail}", encoding="utf-8")


def main() -> None:
    """Build the model, run every configuration, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=28, help="decoder layers (28: ~0.5B)")
    parser.add_argument("--hidden", type=int, default=1024, help="hidden size")
    parser.add_argument("--new-tokens", type=int, default=24, help="tokens per request")
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration (best kept)")
    parser.add_argument("--streams", type=int, default=8, help="concurrent streams")
    parser.add_argument("--cb-timeout", type=float, default=150, help="seconds for generate_batch")
    parser.add_argument(
        "--gguf",
        nargs="*",
        default=["f32", "bf16", "q8_0"],
        choices=["f32", "bf16", "q8_0"],
        help="llama.cpp rows: the GGUF types to convert to and run (none: skip)",
    )
    parser.add_argument("--write", action="store_true", help=f"update {RESULTS.relative_to(ROOT)}")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    folder = Path(tempfile.mkdtemp(prefix="llm-tiers-bench-"))
    try:
        t = time.perf_counter()
        params = build_random_mistral(folder, layers=args.layers, hidden=args.hidden)
        print(f"built {params / 1e6:.0f}M-parameter model in {time.perf_counter() - t:.0f}s",
              flush=True)  # fmt: skip
        tiers = ["base", "company", "abstraction", "user"]
        overrides = {f"TIER_{name.upper()}_MODEL": str(folder) for name in tiers}
        config = load_space_config(SPACE / "config.yaml", overrides)
        registry = TierRegistry(
            config, CausalLMRegistry(memory_budget_gb=config.memory_budget_gb, device="cpu")
        )
        for name in tiers:
            registry.get(name)
        rss = rss_peak_mb()
        loaded = registry.get("base")
        # The same weights in the other precision (fp32 where the CPU has native bf16 and
        # `auto` picks bf16; bf16 where it does not), beside it.
        other_dtype = "float32" if loaded.dtype == "bfloat16" else "bfloat16"
        other_registry = CausalLMRegistry(device="cpu")
        other = other_registry.get(ModelSpec(str(folder), dtype=other_dtype))
        other_name = f"{ENGINE}, {other.precision}"
        tokenizer = loaded.tokenizer
        ids = tuple(tokenizer(PROMPT)["input_ids"])
        new = args.new_tokens

        from transformers import pipeline

        model = loaded.engine.model
        pipe = pipeline("text-generation", model=model, tokenizer=tokenizer, device="cpu")
        # Warm up (first calls allocate and pick kernels).
        engine_run([loaded], ids, 4)
        engine_run([other], ids, 4)
        baseline_run(pipe, 1, 4)
        # The 8 streams spread over the tiers (one engine: they share the weights).
        streams = [registry.get(tier) for tier in (tiers * args.streams)[: args.streams]]
        llama_runs = {}
        if args.gguf and llamacpp.installed_version() is None:
            print("llama-cpp-python is not installed: no llama.cpp rows (make bench-llm "
                  "installs it)", flush=True)  # fmt: skip
        elif args.gguf:
            for outtype in args.gguf:
                t = time.perf_counter()
                gguf = llamacpp.convert(folder, outtype, folder / f"model-{outtype}.gguf")
                print(f"converted to {gguf.name} in {time.perf_counter() - t:.0f}s", flush=True)
                for n, suffix in ((1, "1"), (args.streams, "n")):
                    llama_runs[f"llamacpp-{outtype}-{suffix}"] = lambda g=gguf, o=outtype, n=n: (
                        llamacpp_run(g, o, ids, n, new)
                    )
        # Configurations alternate and each keeps its best of --repeats runs, so a burst of load
        # from other processes on a shared machine does not land on one side only.
        runs: dict[str, list[Row]] = {}
        for _ in range(args.repeats):
            for key, run in (
                ("engine-1", lambda: engine_run([loaded], ids, new)),
                ("other-1", lambda: engine_run([other], ids, new, other_name)),
                ("baseline-1", lambda: baseline_run(pipe, 1, new)),
                ("engine-n", lambda: engine_run(streams, ids, new)),
                ("other-n", lambda: engine_run([other] * args.streams, ids, new, other_name)),
                ("baseline-n", lambda: baseline_run(pipe, args.streams, new)),
                *llama_runs.items(),
            ):
                runs.setdefault(key, []).append(run())
                print(runs[key][-1], flush=True)
        best = {key: max(found, key=lambda r: r.tokens_per_s) for key, found in runs.items()}
        order = ("engine-1", "engine-n", "other-1", "other-n", *llama_runs,
                 "baseline-1", "baseline-n")  # fmt: skip
        rows = [best[key] for key in order]
        registry.shutdown()
        other_registry.shutdown()
        rows.append(continuous_batching_run(model, ids, args.streams, new, args.cb_timeout))
        print(rows[-1], flush=True)

        meta = {
            "model": f"random MistralForCausalLM, {params / 1e6:.0f}M parameters, served in "
            f"{loaded.dtype} (the engine's `auto` on this CPU; the baseline uses the same weights)",
            "machine": machine(),
            "prompt_tokens": str(len(ids)),
            "new_tokens": str(new),
            "repeats": str(args.repeats),
            "rss": f"{rss:.0f} MiB ({loaded.nbytes / 2**20:.0f} MiB of weights)",
        }
        text = table(rows, meta)
        print()
        print(text)
        if args.write:
            command = shlex.join(
                [".venv/bin/python", "benchmarks/llm_tiers/bench.py", *sys.argv[1:]]
            )
            write_results(text, command)
            print(f"\nwrote the table into {RESULTS}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
