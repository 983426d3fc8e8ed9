"""Train the YOLO field detector (Ultralytics YOLO11n, from scratch) and export it to ONNX.

Two stages: from scratch at 320 px, then a few epochs at 416 px from those weights. The
detector sees pages as the Space gives them to it: upright (the orientation and deskew
steps run first, so only a residual skew of a degree or two is left), letterboxed to
``--imgsz``. Classes: ``register_number`` and ``subject_code``, each the box around the row of
character boxes. Sheets come from :func:`sheets.make_sheet` (train styles); the validation set
is train-style sheets with other seeds, and recall on held-out styles is printed at the end.

Usage:
    python training/train_detector.py [--count 1000] [--epochs 16] [--imgsz 320]
        [--finetune-imgsz 416] [--finetune-epochs 6]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

SPACE = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(SPACE), str(SPACE / "training")]

import sheets  # noqa: E402

CACHE = SPACE.parents[1] / "build" / "answer-sheet"
CLASSES = sheets.FIELDS
LONG_SIDE = 640  # stored image size: above every --imgsz the detector is trained at


def _page(seed: int, split: str, key: str, rotation: int) -> tuple[sheets.Sheet, Any, float]:
    """A sheet at a detector's resolution (100-150 dpi, ±1.5° residual skew), downscaled to
    :data:`LONG_SIDE`: (sheet, image, scale applied)."""
    rng = random.Random(key)
    sheet = sheets.make_sheet(
        seed, split, dpi=rng.choice((100, 120, 150)), skew=rng.uniform(-1.5, 1.5), rotation=rotation
    )
    scale = LONG_SIDE / max(sheet.image.size)
    size = (round(sheet.image.width * scale), round(sheet.image.height * scale))
    return sheet, sheet.image.resize(size), scale


def _write(job: tuple[int, str, Path]) -> None:
    seed, split, folder = job
    sheet, image, scale = _page(seed, split, f"detector-{split}-{seed}", 0)
    name = f"{split}-{seed:06d}"
    image.save(folder / "images" / f"{name}.jpg", quality=90)
    w, h = image.size
    lines = []
    for cls, kind in enumerate(CLASSES):
        x0, y0, x1, y1 = (c * scale for c in sheet.fields[kind].box)
        cx, cy = (x0 + x1) / 2 / w, (y0 + y1) / 2 / h
        lines.append(f"{cls} {cx:.6f} {cy:.6f} {(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}")
    (folder / "labels" / f"{name}.txt").write_text("\n".join(lines) + "\n")


def _write_negative(job: tuple[int, Path]) -> None:
    seed, folder = job
    # Upside down: what the detector is shown when the Space tries the wrong one of a portrait
    # page's two turns (a sideways page, once turned, is either upright or upside down too).
    _, image, _ = _page(seed, "train", f"detector-negative-{seed}", 180)
    name = f"negative-{seed:06d}"
    image.save(folder / "images" / f"{name}.jpg", quality=90)
    (folder / "labels" / f"{name}.txt").write_text("")  # no fields: a background image


def _draw(write: Any, jobs: list[Any], workers: int, desc: str) -> None:
    """Run ``write`` on every job in ``workers`` processes, with a progress bar."""
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for _ in tqdm(
            pool.imap_unordered(write, jobs, chunksize=8), total=len(jobs), desc=desc, unit="sheet"
        ):
            pass


def with_negatives(data: Path, count: int, seed: int, workers: int, cache: Path) -> Path:
    """The dataset plus ``count`` background pages (cached): sheets upside down, with no
    labels, so that the detector finds nothing on a page the wrong way up (the Space's
    orientation step relies on that)."""
    root = cache / f"yolo-negatives-{seed}-{count}"
    done = root / "dataset.yaml"
    if done.exists():
        return done
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    jobs = [(60_000_000 + seed + i, root) for i in range(count)]
    _draw(_write_negative, jobs, workers, "negatives")
    base = data.parent
    train = f"train: [{base / 'train' / 'images'}, {root / 'images'}]"
    done.write_text(data.read_text().replace("train: train/images", train))
    return done


def dataset(count: int, val_count: int, seed: int, workers: int, cache: Path) -> Path:
    """The Ultralytics dataset (cached): ``train`` (train styles), ``val`` (train styles, other
    seeds) and ``heldout`` (held-out styles) folders and the dataset YAML."""
    root = cache / f"yolo-{seed}-{count}-{val_count}"
    done = root / "dataset.yaml"
    if done.exists():
        return done
    jobs = []
    for part, split, first, n in (
        ("train", "train", seed, count),
        ("val", "train", 10_000_000 + seed, val_count),
        ("heldout", "heldout", 20_000_000 + seed, val_count),
    ):
        folder = root / part
        for sub in ("images", "labels"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        jobs += [(first + i, split, folder) for i in range(n)]
    _draw(_write, jobs, workers, "sheets")
    names = "\n".join(f"  {i}: {name}" for i, name in enumerate(CLASSES))
    done.write_text(f"path: {root}\ntrain: train/images\nval: val/images\nnames:\n{names}\n")
    return done


def main(argv: list[str] | None = None) -> None:
    """Build the dataset, train, report held-out recall, export ONNX."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="training sheets")
    parser.add_argument("--val-count", type=int, default=150)
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument(
        "--finetune-imgsz",
        type=int,
        default=416,
        help="second stage at this size, from the first's weights (0: none)",
    )
    parser.add_argument("--finetune-epochs", type=int, default=6)
    parser.add_argument(
        "--negatives",
        type=int,
        default=250,
        help="pages the wrong way up, without labels, added in the second stage",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=SPACE / "models" / "detector.onnx")
    parser.add_argument("--cache", type=Path, default=CACHE, help="data, runs and checkpoints")
    args = parser.parse_args(argv)
    cache = args.cache

    os.environ.setdefault("YOLO_CONFIG_DIR", str(cache / "ultralytics"))
    from ultralytics import YOLO

    data = dataset(args.count, args.val_count, args.seed, args.workers, cache)
    started = time.monotonic()
    common = {
        "data": str(data),
        "batch": args.batch_size,
        "workers": args.workers,
        "device": "cpu",
        "seed": args.seed,
        "deterministic": True,
        "amp": False,
        "plots": False,
        "project": str(cache / "runs"),
        "exist_ok": True,
        # Mirrored text is not a sheet; the pages come upright from the orientation step.
        "fliplr": 0.0,
        "degrees": 1.0,
        "mosaic": 0.5,
        "scale": 0.3,
        "translate": 0.1,
        "verbose": False,
    }
    # Stage 1, from scratch at --imgsz (the architecture only: no pretrained weights exist here).
    stage1 = {"epochs": args.epochs, "imgsz": args.imgsz, "close_mosaic": max(1, args.epochs // 5)}
    best = train_stage(
        YOLO, "yolo11n.yaml", "detector", cache, {**common, **stage1, "pretrained": False}
    )
    imgsz = args.imgsz
    if args.finetune_imgsz:
        # Stage 2, the same sheets at a larger size from stage 1's weights (the labels that tell
        # a register number from a seat number are a few pixels high at 320), and pages the
        # wrong way up as backgrounds.
        stage2 = {
            "epochs": args.finetune_epochs,
            "imgsz": args.finetune_imgsz,
            # A fine-tune: a tenth of the rate Ultralytics picks for stage 1 (its "auto" would
            # pick that rate again and undo stage 1 in the first epoch), no warm-up.
            "optimizer": "AdamW",
            "lr0": 0.0002,
            "momentum": 0.9,
            "warmup_epochs": 0,
            "close_mosaic": max(1, args.finetune_epochs // 3),
        }
        tuned = {
            **common,
            "data": str(with_negatives(data, args.negatives, args.seed, args.workers, cache)),
        }
        best = train_stage(YOLO, str(best), "detector-finetune", cache, {**tuned, **stage2})
        imgsz = args.finetune_imgsz
    model = YOLO(str(best))
    heldout = model.val(
        data=str(_heldout_yaml(data)),
        split="val",
        imgsz=imgsz,
        batch=args.batch_size,
        plots=False,
        verbose=False,
        project=str(cache / "runs"),
        name="heldout",
        exist_ok=True,
    )
    exported = Path(
        model.export(format="onnx", imgsz=imgsz, opset=17, simplify=False, dynamic=False)
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(exported, args.out)
    shutil.copyfile(best, cache / "detector.pt")
    report = {
        "minutes": round((time.monotonic() - started) / 60, 1),
        "heldout_recall": float(heldout.box.mr),
        "heldout_map50": float(heldout.box.map50),
        "heldout_map50_95": float(heldout.box.map),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    (cache / "detector-training.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}: {json.dumps(report)}")


def train_stage(yolo: Any, weights: str, name: str, cache: Path, options: dict[str, Any]) -> Path:
    """Train one stage into ``runs/NAME`` and return its best checkpoint; a stage already
    trained with the same options (``stage.json``) is not trained again."""
    folder = cache / "runs" / name
    best = folder / "weights" / "best.pt"
    record = json.dumps({"weights": weights, **options}, sort_keys=True, default=str)
    stage = folder / "stage.json"
    if best.exists() and stage.exists() and stage.read_text() == record:
        print(f"{name}: trained already with these options ({best})")
        return best
    yolo(weights).train(name=name, **options)
    (folder / "stage.json").write_text(record)
    return best


def _heldout_yaml(data: Path) -> Path:
    """A dataset YAML whose ``val`` is the held-out-style sheets."""
    path = data.with_name("heldout.yaml")
    path.write_text(data.read_text().replace("val: val/images", "val: heldout/images"))
    return path


if __name__ == "__main__":
    main()
