"""Benchmark: CAM throughput on CPU, one batched call against one image at a time.

    python benchmarks/gradcam_throughput.py [--batch 16] [--repeats 3]

Prints a table (images per second) and writes benchmarks/results/gradcam_throughput.csv.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pandas as pd
import torch
from _results import publish  # benchmarks/_results.py, beside this script

from deepfake_lightning import DeepfakeClassifier
from deepfake_lightning.explain import CamExplainer

CASES = [("resnet50", 224), ("convnext_tiny", 224), ("test_resnet", 64)]


def rate(explainer: CamExplainer, images: torch.Tensor, batched: bool, repeats: int) -> float:
    explainer(images[:2])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        if batched:
            explainer(images)
        else:
            for i in range(len(images)):
                explainer(images[i : i + 1])
        best = min(best, time.perf_counter() - start)
    return len(images) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=None, help="CSV (default: benchmarks/results/gradcam_throughput.csv)"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for name, size in CASES:
        model = DeepfakeClassifier(name, pretrained=False).eval()
        images = torch.randn(args.batch, 3, size, size)
        for method, n_layers in (("gradcam", 1), ("gradcam", 3), ("gradcam++", 1)):
            with CamExplainer(model, method=method, n_layers=n_layers) as explainer:
                one = rate(explainer, images, batched=False, repeats=args.repeats)
                batched = rate(explainer, images, batched=True, repeats=args.repeats)
            rows.append(
                {
                    "backbone": name,
                    "px": size,
                    "method": method,
                    "layers": n_layers,
                    "one_at_a_time_img_s": round(one, 1),
                    f"batched_{args.batch}_img_s": round(batched, 1),
                    "speedup": round(batched / one, 2),
                }
            )
    table = pd.DataFrame(rows)
    print(f"CPU threads: {torch.get_num_threads()}, cores: {os.cpu_count()}")
    publish(table, "gradcam_throughput", args.out)


if __name__ == "__main__":
    main()
