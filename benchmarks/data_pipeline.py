"""Benchmark: decoded and transformed images per second (one process = one loader worker) on camera-size JPEGs.

Compares the naive path the seed notebook used (PIL open, convert("RGB"), resize to 224x224, ToTensor,
Normalize) with the data module's ``resize`` mode (JPEG draft decoding + the same resize) and ``crop`` mode
(native-resolution centre crop), on generated photographs of 3000x2000 and 768x512 pixels at JPEG quality 95,
and reading from the pre-resized cache (``data.cache_dir``; its one-off build runs at the draft path's rate).

    python benchmarks/data_pipeline.py [--n 40]

Prints a table and writes benchmarks/results/data_pipeline.csv.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _results import publish  # benchmarks/_results.py, beside this script
from PIL import Image
from torchvision import transforms

from deepfake_lightning.data.cache import ensure_cache
from deepfake_lightning.data.dataset import load_image
from deepfake_lightning.data.transforms import create_transform


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
    parser.add_argument("--n", type=int, default=40, help="images per size")
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
