"""Benchmark of spam-mistral's classification and reply generation against the old backend's way.

In one run, on the same model (a random Mistral-shaped model, ~0.5B parameters by default, built
in a temporary folder; speed does not depend on the weights' values) and the same messages
(``spaces/spam-mistral/data/eval.jsonl``):

- **baseline**: what the old backend did per message: chat-template an instruction, let the
  model generate up to 10 tokens (greedy), parse "spam" / "not_spam" out of the text; one request
  at a time. Its unparseable rate is counted.
- **this Space's classifier**: one forward pass per batch and the label probabilities
  (``SpamClassifier`` behind ``BatchedPredictor``, the served path without HTTP), at
  concurrency 1 and 16, its verdict cache off, so every message runs the model.
- **replies**: time to first token and tokens/s of ``generate_reply``'s engine request at 1 and 4
  concurrent streams (end-of-sequence ignored, so every stream generates ``--new-tokens``).

Writes the table to ``benchmarks/results/spam-mistral.md`` (machine, date, command).

Run: ``make bench-spam`` or ``.venv/bin/python -m benchmarks.spam_mistral.bench [--quick]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from benchmarks.models import ROOT, build_random_mistral, machine

SPACE = ROOT / "spaces" / "spam-mistral"
RESULTS = ROOT / "benchmarks" / "results" / "spam-mistral.md"
sys.path.insert(0, str(SPACE))

import torch  # noqa: E402

from predictor import (  # noqa: E402
    CONFIG_PATH,
    ReplyOptions,
    load_models,
    load_personas,
    load_settings,
)
from shared.config import Override  # noqa: E402
from shared.serving import BatchedPredictor  # noqa: E402

NAIVE_PROMPT = (
    "Classify the following message as spam or not_spam. Answer with exactly one word: "
    "spam or not_spam.\n\nMessage: {text}"
)


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    name: str
    concurrency: int
    requests: int
    per_s: float
    p50_ms: float
    p95_ms: float
    note: str = ""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def parse_answer(text: str) -> str | None:
    """The old backend's parsing: the first word of the answer, or None (unparseable)."""
    words = text.strip().lower().replace(".", " ").replace(":", " ").split()
    if not words:
        return None
    if words[0] in ("not_spam", "not-spam", "ham") or words[:2] == ["not", "spam"]:
        return "not_spam"
    if words[0] == "spam":
        return "spam"
    return None


def baseline(model: object, tokenizer: object, texts: list[str]) -> Row:
    """Generate-and-parse, one message at a time."""
    latencies, unparseable = [], 0
    start = time.perf_counter()
    for text in texts:
        t0 = time.perf_counter()
        messages = [{"role": "user", "content": NAIVE_PROMPT.format(text=text)}]
        ids = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        with torch.inference_mode():
            out = model.generate(  # type: ignore[attr-defined]
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False,
                pad_token_id=tokenizer.eos_token_id,  # type: ignore[attr-defined]
            )  # fmt: skip
        answer = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)  # type: ignore[attr-defined]
        unparseable += parse_answer(answer) is None
        latencies.append(time.perf_counter() - t0)
    wall = time.perf_counter() - start
    return Row("baseline: generate 10 tokens + parse", 1, len(texts), len(texts) / wall,
               1000 * percentile(latencies, 0.5), 1000 * percentile(latencies, 0.95),
               f"{unparseable}/{len(texts)} unparseable")  # fmt: skip


def classify_run(served: BatchedPredictor, texts: list[str], concurrency: int) -> Row:
    """``texts`` through the batched classifier from ``concurrency`` threads."""
    latencies: list[float] = []

    def one(text: str) -> None:
        t0 = time.perf_counter()
        served.predict([text])
        latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, texts))
    wall = time.perf_counter() - start
    return Row("spam-mistral classifier (one forward pass, batched)", concurrency, len(texts),
               len(texts) / wall, 1000 * percentile(latencies, 0.5),
               1000 * percentile(latencies, 0.95), "0 unparseable (no text is parsed)")  # fmt: skip


def reply_run(generator: object, streams: int, new_tokens: int) -> tuple[float, float]:
    """Mean TTFT (s) and aggregate tokens/s of ``streams`` concurrent replies."""
    request, _, _ = generator.prepare(  # type: ignore[attr-defined]
        "Hello, I got a message about a parcel. Who is this?", "scammer", "urgent",
        ReplyOptions(max_new_tokens=new_tokens, seed=1),
    )  # fmt: skip
    request = dataclasses.replace(request, ignore_eos=True)
    engine = generator.loaded.engine  # type: ignore[attr-defined]
    firsts: list[float] = []
    start = time.perf_counter()
    handles = [engine.submit(request) for _ in range(streams)]

    def consume(stream: object) -> None:
        first = None
        for _ in stream:  # type: ignore[attr-defined]
            first = first or time.perf_counter() - start
        firsts.append(first or 0.0)

    threads = [threading.Thread(target=consume, args=(h,)) for h in handles]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    total = sum(h.result.generated_tokens for h in handles)
    return statistics.mean(firsts), total / wall


def table(rows: list[Row], replies: list[tuple[int, float, float]], meta: dict[str, str]) -> str:
    base = next(r for r in rows if r.name.startswith("baseline"))
    lines = [
        "# spam-mistral benchmark",
        "",
        f"- machine: {meta['cpu']}, {meta['cores']} cores, torch {meta['torch']}",
        f"- date: {meta['date']}",
        f"- command: `{meta['command']}`",
        f"- model: random Mistral shape, {meta['params']} parameters, {meta['dtype']}; "
        f"messages from data/eval.jsonl, {meta['tokens']}",
        "",
        "## Classification",
        "",
        "| configuration | concurrency | requests | req/s | vs baseline | p50 ms | p95 ms | note |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.concurrency} | {r.requests} | {r.per_s:.2f} | "
            f"{r.per_s / base.per_s:.1f}x | {r.p50_ms:.0f} | {r.p95_ms:.0f} | {r.note} |"
        )
    lines += [
        "",
        "## Reply generation (generate_reply's engine request)",
        "",
        "| streams | TTFT s | aggregate tokens/s |",
        "|---:|---:|---:|",
    ]
    lines += [f"| {n} | {ttft:.2f} | {tps:.1f} |" for n, ttft, tps in replies]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=28, help="decoder layers (28: ~0.5B)")
    parser.add_argument("--hidden", type=int, default=1024, help="hidden size")
    parser.add_argument("--dtype", default="auto", help="weights' dtype (the Space's setting)")
    parser.add_argument("--requests", type=int, default=64, help="messages per Space run")
    parser.add_argument("--baseline-requests", type=int, default=16, help="baseline messages")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens per reply stream")
    parser.add_argument("--quick", action="store_true", help="a tiny model and few requests")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if args.quick:
        args.layers, args.hidden, args.requests, args.baseline_requests = 2, 256, 16, 4
        args.new_tokens = 8
    data = SPACE / "data" / "eval.jsonl"
    texts = [json.loads(line)["text"] for line in data.read_text(encoding="utf-8").splitlines()]

    with tempfile.TemporaryDirectory(prefix="spam-bench-") as tmp:
        folder = Path(tmp)
        params = build_random_mistral(folder, layers=args.layers, hidden=args.hidden)
        overrides = [
            Override("bench", ("classifier", "model_id"), str(folder)),
            Override("bench", ("generator", "model_id"), str(folder)),
            Override("bench", ("dtype",), args.dtype),
            Override("bench", ("cache_size",), 0),  # every message runs the model
        ]
        settings = load_settings(CONFIG_PATH, overrides)
        classifier, generator = load_models(settings, load_personas(), device="cpu")
        served = BatchedPredictor(classifier, what="message", max_batch_size=16)
        classify_run(served, texts[:4], 4)  # warm-up
        rows = [baseline(classifier.loaded.model, classifier.tokenizer,
                         texts[: args.baseline_requests])]  # fmt: skip
        for concurrency in (1, 16):  # the same messages at both
            rows.append(classify_run(served, texts[: args.requests], concurrency))
        tokens = statistics.mean(
            len(classifier.prompt_ids(t)[0]) for t in texts[: args.requests]
        )  # what each message runs after the shared prefix
        reply_run(generator, 1, 4)  # warm-up
        replies = [(n, *reply_run(generator, n, args.new_tokens)) for n in (1, 4)]
        dtype = classifier.loaded.dtype
    meta = machine() | {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python -m benchmarks.spam_mistral.bench " + " ".join(argv or sys.argv[1:]),
        "params": f"{params / 1e6:.0f}M",
        "tokens": f"{tokens:.0f} tokens per message after a {len(classifier.prefix_ids)}-token "
        "shared prefix (the demo tokenizer's 1,024-token vocabulary)",
        "dtype": dtype,
    }
    text = table(rows, replies, meta)
    print(text)
    if not args.no_write and not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text, encoding="utf-8")
        print(f"written to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
