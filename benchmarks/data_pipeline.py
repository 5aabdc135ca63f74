"""Benchmark: the training data pipeline, per loader core and end to end, on camera-size JPEGs.

``--part decode`` (data_pipeline.csv): evaluation decoding and transforms per second in one process (= one loader
worker): the naive path the seed notebook used (PIL open, convert("RGB"), resize to 224x224, ToTensor, Normalize)
against the data module's ``resize`` mode (JPEG draft decoding + the same resize) and ``crop`` mode
(native-resolution centre crop), on generated photographs of 3000x2000 and 768x512 pixels at JPEG quality 95, and
reading from the pre-resized cache (``data.cache_dir``; its one-off build runs at the draft path's rate).

``--part augment`` (data_pipeline_augment.csv): training transforms per second in one process at ``aug_strength``
0, 0.5 and 1 for both modes on 768x512 photographs, as the loader worker runs them (``create_transform(train=True,
normalize=False)`` after ``load_image``), beside the pipeline this replaced (torchvision's tensor ops for flip,
jitter, a 19-tap Gaussian blur and JPEG, then float32 normalization in the worker), the device executor
(``augment_batch``) run on CPU tensors, and the re-share chains (``data.aug_reshare``). The transforms of a mode
take turns on each image and each image's time is the best of 4, so the costs against aug 0 hold on a machine
whose speed drifts.

``--part bytes`` (data_pipeline_bytes.csv): bytes one training batch carries from a worker to the main process and
to the device: float32 normalized (before), uint8 (now), JPEG bytes (``data.decode device``).

``--part fit`` (data_pipeline_fit.csv): ``deepfake fit`` training images per second on a loader-bound setting (a
tiny network, 224 px, one loader worker, 768x512 photographs) at aug 0 and 1, epochs 2-3 (epoch 1 is warm-up).

    python benchmarks/data_pipeline.py [--part decode augment bytes fit] [--n 40]

Prints each table and writes it under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _results import publish  # benchmarks/_results.py, beside this script
from PIL import Image
from torchvision import transforms
from torchvision.transforms import v2

from deepfake_lightning.data.augment import augment_batch, sample_plan
from deepfake_lightning.data.cache import ensure_cache
from deepfake_lightning.data.dataset import load_image
from deepfake_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD, create_transform


def make_photos(folder: Path, size: tuple[int, int], n: int) -> list[Path]:
    """Photograph-like JPEGs: smooth structure plus fine sensor-like noise (so the encoder has real work)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        base = Image.fromarray(rng.integers(0, 255, (size[1] // 40, size[0] // 40, 3), dtype=np.uint8))
        img = np.asarray(base.resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
        img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
        paths.append(folder / f"{size[0]}x{size[1]}_{i}.jpg")
        Image.fromarray(img).save(paths[-1], "JPEG", quality=95)
    return paths


PATHS = (
    "before, torchvision tensor ops, float32 out",
    "now, PIL + OpenCV in the worker, uint8 out",
    "now (+ re-share chains, aug_reshare 0.5)",
)


def interleaved_rates(fns: dict, paths: list[Path], rounds: int) -> dict:
    """Images per second of each function, the functions taking turns on each image (so a machine whose speed drifts
    slows them alike) and each image's time the best of ``rounds`` (torch seeded by the image's index before every
    call, so every call on an image does the same work)."""
    best = {key: [float("inf")] * len(paths) for key in fns}
    for _ in range(rounds):
        for i, p in enumerate(paths):
            for key, fn in fns.items():
                torch.manual_seed(i)
                start = time.perf_counter()
                fn(p)
                best[key][i] = min(best[key][i], time.perf_counter() - start)
    return {key: len(paths) / sum(seconds) for key, seconds in best.items()}


def rate(fn, paths: list[Path], repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for p in paths:
            fn(p)
        best = min(best, time.perf_counter() - start)
    return len(paths) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", nargs="+", default=["decode", "augment", "bytes", "fit"])
    parser.add_argument("--n", type=int, default=40, help="images per size")
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # the CLI of --part fit reads its own arguments, not this script's
    torch.set_num_threads(1)  # one loader worker = one core
    parts = {"decode": decode_table, "augment": augment_table, "bytes": bytes_table, "fit": fit_table}
    for part in args.part:
        parts[part](args)


def decode_table(args) -> None:
    s = args.size
    naive_tf = transforms.Compose(
        [
            transforms.Resize((s, s)),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    resize_tf = create_transform(s, train=False, mode="resize")
    crop_tf = create_transform(s, train=False, mode="crop")
    paths_by = {
        "naive PIL open/convert/resize": lambda p: naive_tf(Image.open(p).convert("RGB")),
        "resize mode, no draft": lambda p: resize_tf(load_image(p)),
        "resize mode (JPEG draft)": lambda p: resize_tf(load_image(p, draft_size=s)),
        "crop mode (native pixels)": lambda p: crop_tf(load_image(p)),
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in ((3000, 2000), (768, 512)):
            photos = make_photos(Path(tmp), size, args.n)
            cache = ensure_cache(Path(tmp) / f"cache{size[0]}", tmp, [p.name for p in photos], s, jpeg_draft=True)
            cached = {"resize mode, pre-resized cache": lambda p, cache=cache: resize_tf(cache.image(p.name))}
            naive = None
            for name, fn in (paths_by | cached).items():
                r = rate(fn, photos)
                naive = naive or r
                rows.append(
                    {
                        "images": f"{size[0]}x{size[1]}",
                        "path": name,
                        "img_per_s": round(r, 1),
                        "vs_naive": round(r / naive, 2),
                    }
                )
    table = pd.DataFrame(rows)
    print(f"one process, output {s}x{s}")
    publish(table, "data_pipeline")


def before_transform(img_size: int, mode: str, strength: float):
    """The training transform this pipeline replaced: torchvision tensor ops after the geometry, float32 out."""
    geometry = v2.Resize((img_size, img_size), antialias=True) if mode == "resize" else v2.RandomCrop(img_size)
    ops = [geometry, v2.ToImage()]
    if strength > 0:
        sigma = 3.0 * strength
        ops += [
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomApply([v2.ColorJitter(0.2 * strength, 0.2 * strength, 0.2 * strength)], p=0.5 * strength),
            v2.RandomApply([v2.GaussianBlur(2 * math.ceil(3 * sigma) + 1, (0.1, max(0.1, sigma)))], p=0.5 * strength),
            v2.RandomApply([v2.JPEG((round(100 - 70 * strength), 100))], p=0.5 * strength),
        ]
    return v2.Compose([*ops, v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(IMAGENET_MEAN), IMAGENET_STD)])


def augment_table(args) -> None:
    s, rows = args.size, []
    with tempfile.TemporaryDirectory() as tmp:
        photos = make_photos(Path(tmp), (768, 512), args.n)
        for mode in ("resize", "crop"):
            draft = s if mode == "resize" else None
            decoded = [load_image(p, draft) for p in photos]  # for the device executor's row
            before, now, chains = PATHS
            transforms_by = {}
            for strength in (0.0, 0.5, 1.0):
                transforms_by[strength, before] = before_transform(s, mode, strength)
                transforms_by[strength, now] = create_transform(
                    s, train=True, mode=mode, aug_strength=strength, normalize=False
                )
                # the re-share chains beside each strength (crop mode: on the crop's window), against "now" at aug 0
                transforms_by[strength, chains] = create_transform(
                    s, train=True, mode=mode, aug_strength=strength, aug_reshare=0.5, normalize=False
                )
            # every transform of the mode timed in turn, best of 4 rounds: ratios that hold while the machine drifts
            rate_of = interleaved_rates(
                {key: lambda p, t=t, d=draft: t(load_image(p, d)) for key, t in transforms_by.items()}, photos, 4
            )
            for strength in (0.0, 0.5, 1.0):
                for name in PATHS:
                    r, aug0 = rate_of[strength, name], rate_of[0.0, before if name == before else now]
                    rows.append(
                        {
                            "mode": mode,
                            "aug": strength,
                            "path": name,
                            "img_per_s": round(r, 1),
                            "cost_vs_aug0": round(aug0 / r, 2),
                        }
                    )
                if strength > 0:  # geometry in the worker, then augment_batch on batches of 64 CPU tensors
                    geometry = create_transform(s, train=True, mode=mode, normalize=False, augment_on="device")
                    r = device_rate(geometry, decoded, strength)
                    rows.append(
                        {
                            "mode": mode,
                            "aug": strength,
                            "path": "device executor on CPU tensors (batch 64)",
                            "img_per_s": round(r, 1),
                            "cost_vs_aug0": float("nan"),
                        }
                    )
    print(f"one process (one loader worker), 768x512 JPEGs -> {s}x{s}; cost_vs_aug0 = seconds per image / aug 0's")
    publish(pd.DataFrame(rows), "data_pipeline_augment")


def device_rate(geometry, images: list, strength: float, batch: int = 64) -> float:
    """Images per second of ``augment_batch`` alone, over batches of already-cut uint8 images."""
    x = torch.stack([geometry(im) for im in images])
    x = x.repeat((batch + len(x) - 1) // len(x), 1, 1, 1)[:batch]
    torch.manual_seed(0)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        augment_batch(x, sample_plan(len(x), strength))
        best = min(best, time.perf_counter() - start)
    return len(x) / best


def bytes_table(args) -> None:
    s, batch = args.size, 64
    with tempfile.TemporaryDirectory() as tmp:
        photos = make_photos(Path(tmp), (768, 512), 8)
        before = before_transform(s, "crop", 1.0)(load_image(photos[0]))
        now = create_transform(s, train=True, mode="crop", aug_strength=1.0, normalize=False)(load_image(photos[0]))
        jpeg = sum(p.stat().st_size for p in photos) / len(photos)
    rows = [
        {"batch": batch, "carries": "float32 normalized (before)", "bytes_per_image": before.nbytes},
        {"batch": batch, "carries": "uint8 pixels (now)", "bytes_per_image": now.nbytes},
        {"batch": batch, "carries": "JPEG bytes, data.decode device (768x512, q95)", "bytes_per_image": round(jpeg)},
    ]
    for row in rows:
        row["mb_per_batch"] = round(row["bytes_per_image"] * batch / 2**20, 2)
    print(f"{s}x{s} images, batches of {batch}")
    publish(pd.DataFrame(rows), "data_pipeline_bytes")


def fit_table(args) -> None:
    from train_throughput import EpochMarks  # benchmarks/train_throughput.py, beside this script

    from deepfake_lightning.cli import cli_main

    rows, epochs = [], 3
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        (root / "train_data").mkdir(parents=True)
        photos = make_photos(root / "train_data", (768, 512), 384)
        names = [f"train_data/{p.name}" for p in photos]
        pd.DataFrame({"file_name": names, "label": [i % 2 for i in range(len(names))]}).to_csv(root / "train.csv")
        for mode in ("resize", "crop"):
            for strength in (0.0, 1.0):
                cli = cli_main(
                    [
                        f"--data.root={root}",
                        "--data.test_v2_csv=null",
                        f"--data.mode={mode}",
                        f"--data.img_size={args.size}",
                        f"--data.aug_strength={strength}",
                        "--data.num_workers=1",
                        "--data.batch_size=32",
                        "--model.backbone=test_resnet",
                        "--model.pretrained=false",
                        f"--trainer.max_epochs={epochs}",
                        "--trainer.limit_val_batches=0",
                        "--trainer.logger=false",
                        "--trainer.enable_checkpointing=false",
                        "--trainer.enable_progress_bar=false",
                        "--trainer.enable_model_summary=false",
                        f"--trainer.default_root_dir={tmp}",
                    ],
                    run=False,
                )
                marks = EpochMarks()
                cli.trainer.callbacks.append(marks)
                cli.trainer.fit(cli.model, datamodule=cli.datamodule)
                per_epoch = cli.trainer.num_training_batches * 32
                seconds = marks.marks[-1] - marks.marks[1]  # epochs 2..3: epoch 1 starts the worker
                rows.append(
                    {"mode": mode, "aug": strength, "fit_img_per_s": round(per_epoch * (epochs - 1) / seconds, 1)}
                )
    print(f"deepfake fit, test_resnet, {args.size} px, one loader worker, 768x512 JPEGs, epochs 2-{epochs}")
    publish(pd.DataFrame(rows), "data_pipeline_fit")


if __name__ == "__main__":
    main()
