"""Generated images for the throughput benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_random_jpegs(root: Path, folder: str, n: int, size: int) -> list[str]:
    """``n`` random-noise JPEGs of (size + 32) pixels square under ``root/folder`` (so that resizing to ``size``
    has real work); returns their paths relative to ``root``."""
    rng = np.random.default_rng(0)
    (root / folder).mkdir(parents=True)
    files = []
    for i in range(n):
        files.append(f"{folder}/{i:032x}.jpg")
        Image.fromarray(rng.integers(0, 256, (size + 32, size + 32, 3), dtype=np.uint8)).save(
            root / files[-1], quality=90
        )
    return files
