"""The re-share simulator: what happens to an image between its maker and an analyst.

Images reach an analyst re-shared: re-encoded, scaled, cropped, often several times. :func:`reshare` applies a
seeded chain of 1 to ``max_ops`` such operations to a PIL image, each drawn from:

* ``jpeg``: JPEG re-encoding at quality 60-95 with 4:2:0 chroma subsampling (what platforms do);
* ``webp``: WebP re-encoding at quality 60-95;
* ``png``: a PNG round trip (lossless: a format change that must change nothing);
* ``downscale``: scaling by 0.5-0.9 with an area (box), bicubic or Lanczos filter;
* ``crop``: a crop keeping 80-95 % of each side, anywhere in the image;
* ``sharpen``: mild unsharp masking (radius 1-2, 30-80 %), as phone galleries and platforms apply.

Three consumers use it: training (``data.aug_reshare``, a probability per image), the robustness curves
(``report.robustness``: re-share chains of 1, 2 and 3 operations beside the single operations) and the stability
check (``report.stability K``: each image scored on K seeded re-shared copies). A chain depends only on its seed,
so the same seed gives the same copy on every machine and in every process.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFilter

OPERATIONS = ("jpeg", "webp", "png", "downscale", "crop", "sharpen")
FILTERS = {"area": Image.Resampling.BOX, "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
MIN_SIDE = 16  # a chain never shrinks an image below this (a downscale or crop that would, is skipped)


def _encode(image: Image.Image, fmt: str, **options) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    buffer.seek(0)
    out = Image.open(buffer)
    out.load()
    return out.convert("RGB")


def apply_operation(image: Image.Image, name: str, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """One operation with parameters drawn from ``rng``; returns the image and a short description of what was
    done, e.g. ``jpeg(q=72)``."""
    w, h = image.size
    if name == "jpeg":
        q = int(rng.integers(60, 96))
        return _encode(image, "JPEG", quality=q, subsampling=2), f"jpeg(q={q})"  # subsampling 2 = 4:2:0
    if name == "webp":
        q = int(rng.integers(60, 96))
        return _encode(image, "WEBP", quality=q), f"webp(q={q})"
    if name == "png":
        # lossless: the pixels are the same at every compression level; level 0 spends no time compressing
        return _encode(image, "PNG", compress_level=0), "png"
    if name == "downscale":
        scale = float(rng.uniform(0.5, 0.9))
        kind = list(FILTERS)[int(rng.integers(len(FILTERS)))]
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        if min(size) < MIN_SIDE:
            return image, "downscale(skipped)"
        return image.resize(size, FILTERS[kind]), f"downscale({scale:.2f},{kind})"
    if name == "crop":
        keep = float(rng.uniform(0.8, 0.95))
        cw, ch = round(w * keep), round(h * keep)
        if min(cw, ch) < MIN_SIDE:
            return image, "crop(skipped)"
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return image.crop((x, y, x + cw, y + ch)), f"crop({keep:.2f})"
    if name == "sharpen":
        radius, percent = float(rng.uniform(1, 2)), int(rng.integers(30, 81))
        sharpened = image.filter(ImageFilter.UnsharpMask(radius=radius, percent=percent, threshold=2))
        return sharpened, f"sharpen({radius:.1f},{percent}%)"
    raise ValueError(f"unknown re-share operation {name!r}; choose from {OPERATIONS}")


@dataclass(frozen=True)
class Reshare:
    """A seeded re-share chain as a PIL-to-PIL transform: ``Reshare(seed)(image)``. ``length`` fixes the number of
    operations (1 to 3); None draws it uniformly from 1 to ``max_ops``. ``salt_with_image``: mix a hash of the
    image's pixels into the seed, so that one ``Reshare`` gives each image its own chain (the stability check and
    the robustness curves), reproducibly."""

    seed: int
    length: int | None = None
    max_ops: int = 3
    salt_with_image: bool = False

    def chain(self, image: Image.Image | None = None, salt: int | None = None) -> tuple[np.random.Generator, int]:
        """The chain's generator and length; ``salt`` is the image's hash when the caller has it already."""
        if salt is None:
            salt = zlib.crc32(image.tobytes()) if self.salt_with_image and image is not None else 0
        rng = np.random.default_rng([self.seed, salt])
        n = self.length or int(rng.integers(1, self.max_ops + 1))
        return rng, n

    def __call__(self, image: Image.Image) -> Image.Image:
        return reshare(image, *self.chain(image))[0]


class ReshareCopies:
    """The stability check's k copies of one decoded image (copy j is ``Reshare(j, salt_with_image=True)``'s chain,
    j = 1..k), each through ``transform``: the file is read, decoded and hashed once instead of once per copy.

    Returns ``{"copies": (k, ...)}`` (the views of each copy stacked), or for a tiled ``transform`` every copy's tiles
    one after the other, ``{"image", "tile_xy", "copy_tiles": (k,) tiles per copy}`` (``collate_tiles`` batches it).
    """

    def __init__(self, k: int, transform):
        self.k, self.transform = int(k), transform

    def __call__(self, image: Image.Image) -> dict:
        salt = zlib.crc32(image.tobytes())  # what Reshare(j, salt_with_image=True) hashes, once
        outs = [
            self.transform(reshare(image, *Reshare(j, salt_with_image=True).chain(salt=salt))[0])
            for j in range(1, self.k + 1)
        ]
        if not isinstance(outs[0], dict):
            return {"copies": torch.stack(outs)}
        return {
            "image": torch.cat([o["image"] for o in outs]),
            "tile_xy": torch.cat([o["tile_xy"] for o in outs]),
            "copy_tiles": torch.tensor([len(o["image"]) for o in outs], dtype=torch.long),
        }

    def __repr__(self) -> str:
        return f"ReshareCopies(k={self.k}, {self.transform!r})"


def reshare(image: Image.Image, rng: np.random.Generator, length: int) -> tuple[Image.Image, list[str]]:
    """``length`` operations drawn from ``rng`` (without repeating one in a row), applied in order; returns the image
    (RGB) and what was done."""
    image = image.convert("RGB")
    done, last = [], None
    for _ in range(length):
        name = last
        while name == last:
            name = OPERATIONS[int(rng.integers(len(OPERATIONS)))]
        image, what = apply_operation(image, name, rng)
        done.append(what)
        last = name
    return image, done


class RandomReshare:
    """Training augmentation: with probability ``p`` an image is re-shared by a random chain (1-3 operations).
    Randomness comes from torch's generator, which Lightning seeds per worker, so runs are reproducible."""

    def __init__(self, p: float):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"data.aug_reshare must be a probability in [0, 1], got {p}")
        self.p = p

    def __call__(self, image: Image.Image) -> Image.Image:
        import torch

        if self.p == 0 or torch.rand(()).item() >= self.p:
            return image
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        return Reshare(seed)(image)

    def __repr__(self) -> str:
        return f"RandomReshare(p={self.p})"
