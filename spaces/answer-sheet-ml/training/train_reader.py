"""Train the CRNN field reader on synthetic field crops and export it to ONNX.

Crops come from :func:`sheets.make_field_crop` (train styles only), cached under
``build/answer-sheet/``. Validation is on new crops of the train styles and on crops of the
held-out styles (fonts, layouts and labels never trained on); both exact-match rates are
printed per epoch, and the weights of the best train-style epoch are exported.

Usage:
    python training/train_reader.py [--count 24000] [--epochs 6] [--out models/reader.onnx]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

SPACE = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(SPACE), str(SPACE / "training"), str(SPACE.parents[1])]

import sheets  # noqa: E402

from crnn import CRNN, export_onnx  # noqa: E402
from ctc import ALPHABET, DIGITS_ONLY, DOWNSAMPLE, HEIGHT, MAX_WIDTH, greedy_decode  # noqa: E402
from shared.models import cpu_supports_bf16  # noqa: E402

CACHE = SPACE.parents[1] / "build" / "answer-sheet"
#: bf16 autocast where the CPU computes bf16 natively; elsewhere it is emulated and several
#: times slower than fp32, so fp32 (the weights differ a little between the two).
BF16 = cpu_supports_bf16()
ALLOWED = {"register_number": DIGITS_ONLY, "subject_code": ALPHABET}


def _crop(job: tuple[int, str]) -> tuple[np.ndarray, str, str]:
    seed, split = job
    return sheets.make_field_crop(seed, split, height=HEIGHT)


def crops(count: int, split: str, seed: int, workers: int, cache: Path) -> dict[str, np.ndarray]:
    """``count`` crops of a split (cached in ``cache``): images ``(n, HEIGHT, MAX_WIDTH)``
    padded white, their widths, texts and field kinds."""
    path = cache / f"reader-{split}-{seed}-{count}.npz"
    if path.exists():
        data = np.load(path)
        return {k: data[k] for k in data.files}
    images = np.full((count, HEIGHT, MAX_WIDTH), 255, np.uint8)
    widths = np.zeros(count, np.int32)
    texts, kinds = [], []
    jobs = [(seed + i, split) for i in range(count)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        results = pool.imap(_crop, jobs, chunksize=64)
        for i, (image, text, kind) in enumerate(
            tqdm(results, total=count, desc=f"crops {split}", unit="crop")
        ):
            if image.shape[1] > MAX_WIDTH:  # squeezed: the model reads it narrower
                image = np.asarray(
                    sheets.Image.fromarray(image).resize((MAX_WIDTH, HEIGHT), sheets.Image.BILINEAR)
                )
            images[i, :, : image.shape[1]] = image
            widths[i] = image.shape[1]
            texts.append(text)
            kinds.append(kind)
    cache.mkdir(parents=True, exist_ok=True)
    data = {"images": images, "widths": widths, "texts": np.array(texts), "kinds": np.array(kinds)}
    np.savez(path, **data)
    return data


def batches(widths: np.ndarray, size: int, rng: random.Random) -> list[np.ndarray]:
    """Index batches of similar widths (little padding), in random order."""
    order = np.array(rng.sample(range(len(widths)), len(widths)))
    chunks = [order[i : i + size * 20] for i in range(0, len(order), size * 20)]
    out = []
    for chunk in chunks:
        chunk = chunk[np.argsort(widths[chunk], kind="stable")]
        out.extend(chunk[i : i + size] for i in range(0, len(chunk), size))
    rng.shuffle(out)
    return out


def tensor(data: dict[str, np.ndarray], index: np.ndarray) -> torch.Tensor:
    width = int(data["widths"][index].max())
    width = min(MAX_WIDTH, -(-width // DOWNSAMPLE) * DOWNSAMPLE)
    x = data["images"][index, :, :width].astype(np.float32) / 255.0
    return torch.from_numpy(x)[:, None]  # (batch, 1, HEIGHT, width)


def targets(texts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    labels = [torch.tensor([1 + ALPHABET.index(c) for c in t]) for t in texts]
    return torch.cat(labels), torch.tensor([len(t) for t in labels])


@torch.inference_mode()
def evaluate(model: CRNN, data: dict[str, np.ndarray]) -> dict[str, float]:
    """Exact match per field kind (greedy decoding with the field's alphabet)."""
    model.eval()
    hits: dict[str, list[bool]] = {k: [] for k in ALLOWED}
    for index in batches(data["widths"], 128, random.Random(0)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=BF16):
            out = model(tensor(data, index)).float().numpy()
        for row, i in enumerate(index):
            kind = str(data["kinds"][i])
            text, _ = greedy_decode(out[row], ALLOWED[kind])
            hits[kind].append(text == str(data["texts"][i]))
    model.train()
    return {k: float(np.mean(v)) for k, v in hits.items() if v}


def main(argv: list[str] | None = None) -> None:
    """Train, validate per epoch, export the best epoch."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=24000, help="training crops")
    parser.add_argument("--val-count", type=int, default=1000, help="crops per validation set")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="processes drawing crops")
    parser.add_argument("--out", type=Path, default=SPACE / "models" / "reader.onnx")
    parser.add_argument("--cache", type=Path, default=CACHE, help="data and checkpoints")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    train = crops(args.count, "train", args.seed, args.workers, args.cache)
    val = crops(args.val_count, "train", 10_000_000 + args.seed, args.workers, args.cache)
    heldout = crops(args.val_count, "heldout", 20_000_000 + args.seed, args.workers, args.cache)

    model = CRNN()
    steps = args.epochs * len(batches(train["widths"], args.batch_size, random.Random(0)))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=steps, pct_start=0.15
    )
    ctc = nn.CTCLoss(blank=0, zero_infinity=True)
    best, best_state, history = -1.0, None, []
    started = time.monotonic()
    with tqdm(total=steps, desc="reader", unit="step") as bar:
        for epoch in range(args.epochs):
            for index in batches(train["widths"], args.batch_size, rng):
                x = tensor(train, index)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=BF16):
                    out = model(x)  # (batch, time, classes)
                log_probs = out.float().transpose(0, 1)  # (time, batch, classes)
                labels, lengths = targets(train["texts"][index])
                inputs = torch.full((len(index),), log_probs.shape[0], dtype=torch.long)
                loss = ctc(log_probs, labels, inputs, lengths)
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                opt.step()
                sched.step()
                bar.update()
                bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
            scores = {
                "train_styles": evaluate(model, val),
                "heldout_styles": evaluate(model, heldout),
            }
            history.append({"epoch": epoch, **scores})
            tqdm.write(f"epoch {epoch}: {json.dumps(scores)}")
            score = float(np.mean(list(scores["train_styles"].values())))
            if score > best:
                best = score
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(model, args.out)
    torch.save(model.state_dict(), args.cache / "reader.pth")
    report = {
        "minutes": round((time.monotonic() - started) / 60, 1),
        "args": vars(args) | {"out": str(args.out), "cache": str(args.cache)},
        "autocast": "bfloat16" if BF16 else "off (float32)",
        "history": history,
    }
    (args.cache / "reader-training.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out} (best train-style exact match {best:.4f})")


if __name__ == "__main__":
    main()
