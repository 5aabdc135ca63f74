"""Benchmark: `deepfake predict` against a plain PyTorch inference loop over the same files.

Same model (weights from the same seed), images, batch size, workers and preprocessing; the two are timed
alternately in one process (imports already done for both), best of ``--repeats``. The framework's time covers
the whole `deepfake predict` call: config parsing, model and data set-up, inference, and writing the CSVs.

    python benchmarks/predict_throughput.py [--repeats 3]

Prints a table and writes benchmarks/results/predict_throughput.csv.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import timm
import torch
from _images import write_random_jpegs  # benchmarks/_images.py, beside this script
from _results import publish  # benchmarks/_results.py, beside this script
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from deepfake_lightning.cli import cli_main

CASES = [  # backbone, image size, number of images, batch size
    ("test_resnet", 64, 4000, 64),
    ("convnext_tiny", 224, 192, 32),
]


def make_images(root: Path, n: int, size: int) -> None:
    ids = write_random_jpegs(root, "test_data_v2", n, size)
    pd.DataFrame({"id": ids}).to_csv(root / "test.csv", index=False)
    pd.DataFrame({"file_name": ids[:20], "label": [0, 1] * 10}).to_csv(root / "train.csv")  # unused by predict


class PlainDataset(Dataset):
    """What the seed notebook wrote: PIL open, convert, torchvision transforms."""

    def __init__(self, root: Path, ids: list[str], transform):
        self.root, self.ids, self.transform = root, ids, transform

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        return self.transform(Image.open(self.root / self.ids[i]).convert("RGB"))


def plain_loop(root: Path, backbone: str, size: int, batch: int, workers: int) -> float:
    torch.manual_seed(42)
    model = timm.create_model(backbone, pretrained=False, num_classes=1).eval()
    cfg = timm.data.resolve_model_data_config(model)
    tf = transforms.Compose(
        [transforms.Resize((size, size)), transforms.ToTensor(), transforms.Normalize(cfg["mean"], cfg["std"])]
    )
    ids = pd.read_csv(root / "test.csv")["id"].tolist()
    loader = DataLoader(PlainDataset(root, ids, tf), batch_size=batch, num_workers=workers)
    start = time.perf_counter()
    probs = []
    with torch.inference_mode():
        for x in loader:
            probs.append(torch.sigmoid(model(x).squeeze(1)))
    torch.cat(probs)
    return time.perf_counter() - start


def framework(root: Path, out: Path, backbone: str, size: int, batch: int, workers: int) -> float:
    start = time.perf_counter()
    cli_main(
        [
            "predict",
            f"--model.backbone={backbone}",
            "--model.pretrained=false",
            f"--data.root={root}",
            "--data.predict_split=test_v2",
            f"--data.img_size={size}",
            "--data.mode=resize",
            f"--data.batch_size={batch}",
            f"--data.num_workers={workers}",
            f"--trainer.default_root_dir={out}",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
        ]
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--out", type=Path, default=None, help="CSV (default: benchmarks/results/predict_throughput.csv)"
    )
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backbone, size, n, batch in CASES:
            root = Path(tmp) / backbone
            make_images(root, n, size)
            plain_t, fw_t = [], []
            for _r in range(args.repeats):  # alternate, so drifts in machine load hit both
                plain_t.append(plain_loop(root, backbone, size, batch, args.workers))
                fw_t.append(framework(root, Path(tmp) / f"runs_{backbone}", backbone, size, batch, args.workers))
            rows.append(
                {
                    "backbone": backbone,
                    "px": size,
                    "images": n,
                    "batch": batch,
                    "workers": args.workers,
                    "plain_img_s": round(n / min(plain_t), 1),
                    "deepfake_predict_img_s": round(n / min(fw_t), 1),
                    "ratio": round(min(plain_t) / min(fw_t), 3),
                }
            )
    table = pd.DataFrame(rows)
    print(f"CPU threads: {torch.get_num_threads()}, cores: {os.cpu_count()}")
    publish(table, "predict_throughput", args.out)


if __name__ == "__main__":
    main()
