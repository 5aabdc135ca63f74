"""Benchmark (GPU): `16-mixed` against `32-true` training, and whether the data loader keeps the GPU busy.

For each precision:
* ``model_img_s``: training steps of the backbone alone on a batch already on the device (autocast + GradScaler
  for 16-mixed, as Lightning does), channels-last: what the GPU can do when data costs nothing;
* ``fit_img_s``: `deepfake fit` on generated camera-like JPEGs in resize mode (JPEG draft decoding, the data
  module's default workers), images per second over epochs 2..E;
* ``loader_share`` = fit / model: near 1 means the loader keeps the GPU busy; well below 1 means the GPU waits
  for data (more workers, ``data.cache_dir``, or a smaller ``img_size`` then help).

``--pipelines`` adds rows for the data pipeline's settings at ``--aug`` strength: ``cpu`` (augmentation in the loader
workers), ``augment_device`` (``data.augment_on device``: flip, jitter, blur and JPEG on the GPU) and
``decode_device`` (``data.decode device``: nvJPEG decoding and the augmentation on the GPU). The goal for
convnext_tiny at 224 px, 16-mixed, aug 1.0: a loader share of at least 0.9.

    python benchmarks/gpu_precision.py                  # CUDA: convnext_tiny, batch 64, 224 px
    python benchmarks/gpu_precision.py --precisions 16-mixed --aug 1.0 --pipelines cpu augment_device decode_device
    python benchmarks/gpu_precision.py --accelerator cpu --backbone test_resnet --size 64 --images 256 \\
        --precisions 32-true bf16-mixed               # a smoke run of the script itself on CPU

Prints a table (with the device name) and writes benchmarks/results/gpu_precision.csv.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import timm
import torch
import torch.nn.functional as F
from _images import write_random_jpegs  # benchmarks/_images.py, beside this script
from _results import publish  # benchmarks/_results.py, beside this script
from train_throughput import EpochMarks

from deepfake_lightning.cli import cli_main


def model_only(backbone: str, size: int, batch: int, precision: str, device: str, steps: int) -> float:
    torch.manual_seed(0)
    model = timm.create_model(backbone, pretrained=False, num_classes=1).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(precision)
    scaler = torch.amp.GradScaler(device, enabled=dtype is torch.float16)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,), device=device).float()

    def step() -> None:
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.binary_cross_entropy_with_logits(model(x).squeeze(1).float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(5):  # warm-up: cuDNN autotuning, allocator
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def fit(
    root: Path,
    out: Path,
    backbone: str,
    size: int,
    batch: int,
    precision: str,
    accelerator: str,
    epochs: int,
    aug: float = 0.0,
    pipeline: str = "cpu",
) -> float:
    settings = {"cpu": ["--data.augment_on=cpu"], "augment_device": ["--data.augment_on=device"]}
    settings["decode_device"] = ["--data.decode=device"]
    cli = cli_main(
        [
            f"--model.backbone={backbone}",
            "--model.pretrained=false",
            f"--data.root={root}",
            "--data.test_v2_csv=null",
            f"--data.img_size={size}",
            "--data.mode=resize",
            f"--data.batch_size={batch}",
            f"--trainer.accelerator={accelerator}",
            "--trainer.devices=1",
            f"--trainer.precision={precision}",
            f"--trainer.max_epochs={epochs}",
            f"--trainer.default_root_dir={out}",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--data.aug_strength={aug}",
            *settings[pipeline],
        ],
        run=False,
    )
    marks = EpochMarks()
    cli.trainer.callbacks.append(marks)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    train_images = len(cli.datamodule.indexes["train"]) // batch * batch
    return train_images * (epochs - 1) / (marks.marks[-1] - marks.marks[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="convnext_tiny")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--images", type=int, default=4096, help="generated training images (10 %% go to val)")
    parser.add_argument("--photo", type=int, default=768, help="side of the generated JPEGs")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50, help="model-only timed steps")
    parser.add_argument("--precisions", nargs="+", default=["32-true", "16-mixed"])
    parser.add_argument("--accelerator", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--aug", type=float, default=0.0, help="data.aug_strength of the fit rows")
    parser.add_argument("--pipelines", nargs="+", default=["cpu"], choices=["cpu", "augment_device", "decode_device"])
    parser.add_argument("--out", type=Path, default=None, help="CSV (default: benchmarks/results/gpu_precision.csv)")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # the CLI below reads its own arguments, not this script's
    if args.accelerator == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_precision.py: no CUDA device here; use --accelerator cpu for a smoke run of the script")
    device_name = torch.cuda.get_device_name(0) if args.accelerator == "cuda" else "CPU"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        files = write_random_jpegs(root, "train_data", args.images, args.photo - 32)
        pd.DataFrame({"file_name": files, "label": [i % 2 for i in range(len(files))]}).to_csv(root / "train.csv")
        for precision in args.precisions:
            model_rate = model_only(args.backbone, args.size, args.batch, precision, args.accelerator, args.steps)
            for pipeline in args.pipelines:
                fit_rate = fit(
                    root,
                    Path(tmp) / "runs",
                    args.backbone,
                    args.size,
                    args.batch,
                    precision,
                    args.accelerator,
                    args.epochs,
                    args.aug,
                    pipeline,
                )
                rows.append(
                    {
                        "device": device_name,
                        "backbone": args.backbone,
                        "px": args.size,
                        "batch": args.batch,
                        "precision": precision,
                        "aug": args.aug,
                        "pipeline": pipeline,
                        "model_img_s": round(model_rate, 1),
                        "fit_img_s": round(fit_rate, 1),
                        "loader_share": round(fit_rate / model_rate, 3),
                    }
                )
    publish(pd.DataFrame(rows), "gpu_precision", args.out)


if __name__ == "__main__":
    main()
