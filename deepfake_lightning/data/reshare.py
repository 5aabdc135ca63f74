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

Training runs the same chains a cheaper way (``run_step(..., training=True)``): WebP at libwebp's effort 2 instead of
its default 4, and the unsharp mask's Gaussian from OpenCV instead of PIL's three box passes. The robustness curves
and the stability check keep the reference way. docs/stability.md states how far apart the two are.
"""

from __future__ import annotations

import io
import math
import zlib
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision.transforms import v2

OPERATIONS = ("jpeg", "webp", "png", "downscale", "crop", "sharpen")
FILTERS = {"area": Image.Resampling.BOX, "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
MIN_SIDE = 16  # a chain never shrinks an image below this (a downscale or crop that would, is skipped)
WEBP_METHOD = 4  # libwebp's effort (0-6): 4 is the default of Pillow, cwebp and libvips
# Training encodes WebP at effort 2, which skips the rate-distortion search: 2.2x faster, with the same strength of
# artefacts at every quality (mean |encoded - input| within 2 %, size within 7 % of effort 4's on camera-like
# photographs); pixel for pixel it differs from effort 4 about as much as one quality step does.
TRAINING_WEBP_METHOD = 2
SHARPEN_THRESHOLD = 2


def _encode(image: Image.Image, fmt: str, **options) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    buffer.seek(0)
    out = Image.open(buffer)
    out.load()
    return out.convert("RGB")


@dataclass(frozen=True)
class Step:
    """One drawn operation of a chain: its name, its parameters, the image size it takes and gives, and a short
    description (``jpeg(q=72)``). A step depends on the image's size only, never on its pixels, which is what lets
    :func:`reshare_window` work out which pixels a crop of the result needs before touching any."""

    name: str
    size_in: tuple[int, int]
    size_out: tuple[int, int]
    what: str
    quality: int = 0  # jpeg, webp
    kind: str = ""  # downscale: area, bicubic or lanczos
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # crop
    radius: float = 0.0  # sharpen
    percent: int = 0  # sharpen


def draw_step(name: str, rng: np.random.Generator, size: tuple[int, int]) -> Step:
    """Draws the parameters of operation ``name`` for an image of ``size`` (w, h) from ``rng``."""
    w, h = size
    if name in ("jpeg", "webp"):
        q = int(rng.integers(60, 96))
        return Step(name, size, size, f"{name}(q={q})", quality=q)
    if name == "png":
        return Step(name, size, size, "png")
    if name == "downscale":
        scale = float(rng.uniform(0.5, 0.9))
        kind = list(FILTERS)[int(rng.integers(len(FILTERS)))]
        out = (max(1, round(w * scale)), max(1, round(h * scale)))
        if min(out) < MIN_SIDE:
            return Step(name, size, size, "downscale(skipped)")
        return Step(name, size, out, f"downscale({scale:.2f},{kind})", kind=kind)
    if name == "crop":
        keep = float(rng.uniform(0.8, 0.95))
        cw, ch = round(w * keep), round(h * keep)
        if min(cw, ch) < MIN_SIDE:
            return Step(name, size, size, "crop(skipped)")
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return Step(name, size, (cw, ch), f"crop({keep:.2f})", box=(x, y, x + cw, y + ch))
    if name == "sharpen":
        radius, percent = float(rng.uniform(1, 2)), int(rng.integers(30, 81))
        return Step(name, size, size, f"sharpen({radius:.1f},{percent}%)", radius=radius, percent=percent)
    raise ValueError(f"unknown re-share operation {name!r}; choose from {OPERATIONS}")


def _unsharp_opencv(image: Image.Image, radius: float, percent: int) -> Image.Image:
    """PIL's ``UnsharpMask(radius, percent, SHARPEN_THRESHOLD)`` with OpenCV's Gaussian instead of PIL's three box
    passes (the blur: 0.3 ms instead of 4.9 at 260 px, and 0.24 grey levels apart on average; the whole step about 3x
    faster): where a pixel differs from its blur by more than the threshold, it moves away from it by ``percent`` of
    the difference, truncated, as PIL does."""
    pixels = np.asarray(image, dtype=np.uint8)
    blur = cv2.GaussianBlur(pixels, (0, 0), radius, borderType=cv2.BORDER_REPLICATE)
    diff = cv2.subtract(pixels, blur, dtype=cv2.CV_16S)
    moved = diff * np.int16(percent)  # |diff| <= 255, percent <= 100: int16 holds it
    quotient = moved // 100
    quotient += (moved < 0) & (quotient * 100 != moved)  # C's division truncates towards zero, numpy's floors
    out = np.where(np.abs(diff) > SHARPEN_THRESHOLD, pixels + quotient, pixels)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def run_step(image: Image.Image, step: Step, training: bool = False) -> Image.Image:
    """Carries out ``step`` on ``image``; ``training``: the cheaper way (WebP at :data:`TRAINING_WEBP_METHOD`, the
    unsharp mask through OpenCV)."""
    if step.what.endswith("(skipped)") or step.name == "png":
        return image  # PNG is lossless: the round trip gives the same pixels, so it is not carried out
    if step.name == "jpeg":
        return _encode(image, "JPEG", quality=step.quality, subsampling=2)  # subsampling 2 = 4:2:0
    if step.name == "webp":
        return _encode(image, "WEBP", quality=step.quality, method=TRAINING_WEBP_METHOD if training else WEBP_METHOD)
    if step.name == "downscale":
        return image.resize(step.size_out, FILTERS[step.kind])
    if step.name == "crop":
        return image.crop(step.box)
    if training:
        return _unsharp_opencv(image, step.radius, step.percent)
    return image.filter(ImageFilter.UnsharpMask(radius=step.radius, percent=step.percent, threshold=SHARPEN_THRESHOLD))


def apply_operation(image: Image.Image, name: str, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """One operation with parameters drawn from ``rng``; returns the image and a short description of what was
    done, e.g. ``jpeg(q=72)``."""
    step = draw_step(name, rng, image.size)
    return run_step(image, step), step.what


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


def plan_chain(rng: np.random.Generator, length: int, size: tuple[int, int]) -> list[Step]:
    """``length`` operations drawn from ``rng`` (without repeating one in a row) for an image of ``size``."""
    steps, last = [], None
    for _ in range(length):
        name = last
        while name == last:
            name = OPERATIONS[int(rng.integers(len(OPERATIONS)))]
        steps.append(draw_step(name, rng, size))
        size, last = steps[-1].size_out, name
    return steps


def reshare(
    image: Image.Image, rng: np.random.Generator, length: int, training: bool = False
) -> tuple[Image.Image, list[str]]:
    """``length`` operations drawn from ``rng`` (without repeating one in a row), applied in order; returns the image
    (RGB) and what was done; ``training``: see :func:`run_step`."""
    image = image.convert("RGB")
    steps = plan_chain(rng, length, image.size)
    for step in steps:
        image = run_step(image, step, training)
    return image, [step.what for step in steps]


# ------------------------------------------------------------------------------ a chain on a window of the image
# A training crop needs a few hundred pixels of a chain's result, not all of it: reshare_window works out, step by
# step from the last, which pixels of each step's input the crop depends on, and runs the chain on those alone.
# JPEG codes independent 8x8 blocks (16x16 with 4:2:0 chroma; the DC prediction is lossless coding), so a window
# aligned to the 16-pixel grid of the image it encodes gives the same pixels inside it, except the 2 pixels at its
# edges where the decoder's chroma upsampling reads a neighbour's samples: JPEG_MARGIN covers them. A rescale reads
# its filter's support around each output pixel (PIL's resize of the window's box gives the full image's sampling
# grid); the unsharp mask, PIL's three-pass box blur. WebP predicts across its 16x16 macroblocks and filters them,
# so a window changes its pixels a little: WEBP_MARGIN keeps that small (tests/test_reshare_and_bounds.py measures
# it, docs/stability.md states it).
GRID = 16  # JPEG's minimum coded unit with 4:2:0 chroma; WebP's macroblock
JPEG_MARGIN = 8
WEBP_MARGIN = 8  # beyond 8 pixels a wider margin changes nothing measurable: the differences are global
FILTER_SUPPORT = {"area": 0.5, "bicubic": 2.0, "lanczos": 3.0}  # PIL's, in input pixels at scale 1


def _needs(step: Step, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The pixels of ``step``'s input that its output pixels in ``box`` (x0, y0, x1, y1) depend on."""
    x0, y0, x1, y1 = box
    w, h = step.size_in
    if step.what.endswith("(skipped)") or step.name == "png":
        return box
    if step.name == "crop":
        cx, cy = step.box[:2]
        return x0 + cx, y0 + cy, x1 + cx, y1 + cy
    if step.name == "downscale":
        sx, sy = w / step.size_out[0], h / step.size_out[1]  # input pixels per output pixel
        mx, my = FILTER_SUPPORT[step.kind] * sx + 2, FILTER_SUPPORT[step.kind] * sy + 2
        x0, y0 = math.floor(x0 * sx - mx), math.floor(y0 * sy - my)
        x1, y1 = math.ceil(x1 * sx + mx), math.ceil(y1 * sy + my)
    else:
        m = {"jpeg": JPEG_MARGIN, "webp": WEBP_MARGIN}.get(step.name) or 3 * math.ceil(step.radius) + 4
        x0, y0, x1, y1 = x0 - m, y0 - m, x1 + m, y1 + m
        if step.name in ("jpeg", "webp"):  # out to the coding grid of the image this step encodes
            x0, y0 = x0 // GRID * GRID, y0 // GRID * GRID
            x1, y1 = -(-x1 // GRID) * GRID, -(-y1 // GRID) * GRID
    return max(0, x0), max(0, y0), min(w, x1), min(h, y1)


def reshare_window(
    image: Image.Image, steps: list[Step], box: tuple[int, int, int, int], training: bool = False
) -> Image.Image:
    """The pixels ``box`` (x0, y0, x1, y1) of the chain ``steps``'s result, computed from the window of ``image``
    they depend on: exactly the full chain's for JPEG, PNG and crops, within a grey level for rescaling and
    sharpening, within WebP's stated tolerance for WebP; ``training``: each step run the training way (see
    :func:`run_step`)."""
    regions = [box]  # regions[i]: the pixels of step i's output that are needed (regions[-1]: of the input)
    for step in reversed(steps):
        regions.append(_needs(step, regions[-1]))
    regions.reverse()  # regions[0]: the input window; regions[i + 1]: step i's output window
    window = image.crop(regions[0])
    window = window if window.mode == "RGB" else window.convert("RGB")
    for step, (ix0, iy0, _, _), (ox0, oy0, ox1, oy1) in zip(steps, regions[:-1], regions[1:], strict=True):
        if step.name == "downscale" and not step.what.endswith("(skipped)"):
            sx, sy = step.size_in[0] / step.size_out[0], step.size_in[1] / step.size_out[1]
            # PIL's resize of the window's box (fractional, in the window's pixels): the full image's sampling grid
            box = (ox0 * sx - ix0, oy0 * sy - iy0, ox1 * sx - ix0, oy1 * sy - iy0)
            window = window.resize((ox1 - ox0, oy1 - oy0), FILTERS[step.kind], box=box)
        elif step.name == "crop":
            pass  # a crop only moves the origin: the window is the same pixels
        else:
            window = run_step(window, step, training)
            dx, dy = ox0 - ix0, oy0 - iy0
            window = window.crop((dx, dy, dx + ox1 - ox0, dy + oy1 - oy0))
    return window


class RandomReshareCrop:
    """Training in ``crop`` mode: with probability ``p`` a random re-share chain (1-3 operations), then a random
    ``size`` crop, as ``RandomReshare(p)`` followed by ``RandomCrop(size, pad_if_needed=True)`` but with the chain
    run on the crop's window (:func:`reshare_window`) instead of the whole photograph, the training way (see
    :func:`run_step`). Randomness comes from torch's generator, which Lightning seeds per worker."""

    def __init__(self, p: float, size: int):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"data.aug_reshare must be a probability in [0, 1], got {p}")
        self.p, self.size = p, int(size)
        self._crop = v2.RandomCrop(self.size, pad_if_needed=True)  # zero padding, as CenterCrop pads

    def __call__(self, image: Image.Image) -> Image.Image:
        if self.p == 0 or torch.rand(()).item() >= self.p:
            return self._crop(image)
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        steps = plan_chain(*Reshare(seed).chain(), image.size)
        w, h = steps[-1].size_out
        if w < self.size or h < self.size:  # smaller than the crop: the whole chain, then the padded crop
            for step in steps:
                image = run_step(image.convert("RGB"), step, training=True)
            return self._crop(image)
        x, y = int(torch.randint(0, w - self.size + 1, ())), int(torch.randint(0, h - self.size + 1, ()))
        return reshare_window(image, steps, (x, y, x + self.size, y + self.size), training=True)

    def __repr__(self) -> str:
        return f"RandomReshareCrop(p={self.p}, size={self.size})"


class RandomReshare:
    """Training augmentation: with probability ``p`` an image is re-shared by a random chain (1-3 operations).
    The chain runs the training way (see :func:`run_step`). Randomness comes from torch's generator, which Lightning
    seeds per worker, so runs are reproducible."""

    def __init__(self, p: float):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"data.aug_reshare must be a probability in [0, 1], got {p}")
        self.p = p

    def __call__(self, image: Image.Image) -> Image.Image:
        if self.p == 0 or torch.rand(()).item() >= self.p:
            return image
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        return reshare(image, *Reshare(seed).chain(), training=True)[0]

    def __repr__(self) -> str:
        return f"RandomReshare(p={self.p})"
