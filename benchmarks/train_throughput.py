"""Benchmark: `deepfake fit` against a plain PyTorch training loop written the way the seed notebook did it.

Both train the same timm model (same seed, no pretrained weights) on the same generated images with the same
batch size, loader workers, image size, optimizer (AdamW, lr 1e-3), precision (32-true: this CPU has no
float16 autocast), and validate once per epoch. The plain loop is a ``Dataset`` with PIL open/convert and
torchvision transforms, a ``DataLoader``, BCE, ``loss.backward()``, a sigmoid + scikit-learn ROC-AUC
validation pass and ``torch.save`` of the state dict every epoch; its loaders keep their workers between epochs
(``persistent_workers``, as the framework does by default). The two run alternately in one process.

Figures:
* ``epoch_img_s``: training images per second over epochs 2..E (one epoch = the training pass, validation and
  checkpointing; epoch 1 is left out as warm-up: worker start, allocator, first-call costs);
* ``total_s``: wall time of the whole run, from parsing the config to the last file written (for the framework
  this includes the sanity-check validation, temperature calibration, metrics.json and TensorBoard files).

    python benchmarks/train_throughput.py [--repeats 2] [--epochs 4]

Prints a table and writes benchmarks/results/train_throughput.csv.
"""

from __future__ import annotations

import argparse
import os
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
from lightning.pytorch.callbacks import Callback
from PIL import Image
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from deepfake_lightning.cli import cli_main

CASES = [  # backbone, image size, train images, val images, batch size, loader workers, extra deepfake fit arguments
    ("test_resnet", 64, 1536, 256, 64, 1, []),
    ("test_resnet", 64, 1536, 256, 64, 1, ["--data.persistent_workers=false"]),
    ("test_resnet", 64, 1536, 256, 64, 0, []),
    ("test_resnet", 64, 1536, 256, 64, 2, []),
    ("test_resnet", 64, 1536, 256, 64, 1, ["--model.compile=true"]),
    ("convnext_tiny", 224, 128, 64, 32, 1, []),
]


def make_images(root: Path, n: int, size: int) -> None:
    """``n`` random JPEGs a little larger than ``size`` (resize mode has real work), half labelled AI."""
    files = write_random_jpegs(root, "train_data", n, size)
    pd.DataFrame({"file_name": files, "label": [i % 2 for i in range(n)]}).to_csv(root / "train.csv")


class PlainDataset(Dataset):
    """What the seed notebook wrote: PIL open, convert, torchvision transforms."""

    def __init__(self, root: Path, files: list[str], labels: list[int], transform):
        self.root, self.files, self.labels, self.transform = root, files, labels, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return self.transform(Image.open(self.root / self.files[i]).convert("RGB")), float(self.labels[i])


def plain_loop(
    root: Path, split: pd.DataFrame, backbone: str, size: int, batch: int, workers: int, epochs: int, out: Path
) -> tuple[list[float], float]:
    start = time.perf_counter()
    torch.manual_seed(42)
    model = timm.create_model(backbone, pretrained=False, num_classes=1)
    cfg = timm.data.resolve_model_data_config(model)
    tf = transforms.Compose(
        [transforms.Resize((size, size)), transforms.ToTensor(), transforms.Normalize(cfg["mean"], cfg["std"])]
    )
    parts = {s: split[split["split"] == s] for s in ("train", "val")}
    loaders = {
        s: DataLoader(
            PlainDataset(root, df["path"].tolist(), df["label"].tolist(), tf),
            batch_size=batch,
            shuffle=s == "train",
            drop_last=s == "train",
            num_workers=workers,
            persistent_workers=workers > 0,
        )
        for s, df in parts.items()
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    marks = []
    for _ in range(epochs):
        marks.append(time.perf_counter())
        model.train()
        for x, y in loaders["train"]:
            loss = F.binary_cross_entropy_with_logits(model(x).squeeze(1), y.float())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        probs, labels = [], []
        with torch.no_grad():
            for x, y in loaders["val"]:
                probs.append(torch.sigmoid(model(x).squeeze(1)))
                labels.append(y)
        roc_auc_score(torch.cat(labels).numpy(), torch.cat(probs).numpy())
        torch.save(model.state_dict(), out / "plain_last.pt")
    marks.append(time.perf_counter())
    return marks, time.perf_counter() - start


class EpochMarks(Callback):
    """Wall-clock marks at each training epoch's start and at the end of training."""

    def __init__(self):
        self.marks: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.marks.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        self.marks.append(time.perf_counter())


def framework(
    root: Path,
    split_file: Path,
    backbone: str,
    size: int,
    batch: int,
    workers: int,
    epochs: int,
    out: Path,
    extra: list[str],
) -> tuple[list[float], float]:
    start = time.perf_counter()
    cli = cli_main(
        [
            f"--model.backbone={backbone}",
            "--model.pretrained=false",
            "--model.warmup_epochs=0",
            f"--data.root={root}",
            "--data.test_v2_csv=null",
            f"--data.split_file={split_file}",
            f"--data.img_size={size}",
            "--data.mode=resize",
            f"--data.batch_size={batch}",
            f"--data.num_workers={workers}",
            f"--trainer.max_epochs={epochs}",
            f"--trainer.default_root_dir={out}",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            *extra,
        ],
        run=False,
    )
    marks = EpochMarks()
    cli.trainer.callbacks.append(marks)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return marks.marks, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--cases", type=int, nargs="+", default=None, help="indices into CASES (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="CSV (default: benchmarks/results/train_throughput.csv)")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # the CLI below reads its own arguments, not this script's
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases if args.cases is not None else range(len(CASES)):
            backbone, size, n_train, n_val, batch, workers, extra = CASES[case]
            root = Path(tmp) / f"{backbone}_{size}"
            if not root.exists():
                make_images(root, n_train + n_val, size)
            index = pd.read_csv(root / "train.csv")
            split = pd.DataFrame(
                {"path": index["file_name"], "label": index["label"], "split": ["train"] * n_train + ["val"] * n_val}
            )
            split_file = root / "split.csv"
            split.to_csv(split_file, index=False)  # both sides train and validate on exactly the same images
            steady = n_train // batch * batch * (args.epochs - 1)
            plain, fw = [], []
            for _ in range(args.repeats):  # alternate, so drifts in machine load hit both
                marks, total = plain_loop(root, split, backbone, size, batch, workers, args.epochs, Path(tmp))
                plain.append((steady / (marks[-1] - marks[1]), total))
                marks, total = framework(
                    root, split_file, backbone, size, batch, workers, args.epochs, Path(tmp) / "runs", extra
                )
                fw.append((steady / (marks[-1] - marks[1]), total))
            p_rate, f_rate = max(r for r, _ in plain), max(r for r, _ in fw)
            p_total, f_total = min(t for _, t in plain), min(t for _, t in fw)
            rows.append(
                {
                    "backbone": backbone,
                    "px": size,
                    "train": n_train,
                    "val": n_val,
                    "batch": batch,
                    "epochs": args.epochs,
                    "workers": workers,
                    "deepfake_args": " ".join(extra) or "-",
                    "plain_epoch_img_s": round(p_rate, 1),
                    "deepfake_epoch_img_s": round(f_rate, 1),
                    "epoch_ratio": round(f_rate / p_rate, 3),
                    "plain_total_s": round(p_total, 1),
                    "deepfake_total_s": round(f_total, 1),
                }
            )
    table = pd.DataFrame(rows)
    print(f"CPU threads: {torch.get_num_threads()}, cores: {os.cpu_count()}, best of {args.repeats} alternating runs")
    publish(table, "train_throughput", args.out, transpose=True)


if __name__ == "__main__":
    main()
