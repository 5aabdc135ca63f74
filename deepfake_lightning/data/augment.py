"""Training augmentation at full strength for little more than the price of none, on the CPU or on the device.

One distribution, two executors. :func:`sample_plan` draws every random choice for a batch of images (one row per
image): a horizontal flip with probability 0.5, and with ``aug_strength`` s (the recipe of Wang et al. 2020,
"CNN-generated images are surprisingly easy to spot... for now", at s = 1):

* colour jitter with probability 0.5 s: brightness, contrast and saturation factors each uniform in
  [1 - 0.2 s, 1 + 0.2 s], applied in a random order (as torchvision's ``ColorJitter``);
* Gaussian blur with probability 0.5 s, sigma uniform in [0.1, max(0.1, 3 s)];
* JPEG re-compression with probability 0.5 s, quality uniform over the integers [round(100 - 70 s), 100];

in that order. :class:`CpuAugment` carries a plan out on one PIL image in a loader worker with the fastest tools a
core has: the blends of PIL's ``ImageEnhance`` (what torchvision runs for PIL images) as OpenCV lookup tables and
NumPy, OpenCV's separable fixed-point Gaussian blur (0.1-0.5 ms at 224 px where the 19-tap ``torchvision`` blur on
a tensor took 9 ms), and a libjpeg-turbo round trip through PIL. :func:`augment_batch` carries the same plan out on
a batch of uint8 tensors on the device (batched tensor operations, JPEG through torchvision's batched CUDA codec).
Both truncate to uint8 after each jitter step as PIL does, and both blur with the sampled Gaussian cut where OpenCV
cuts it for 8-bit images (round(6 sigma + 1) taps, made odd), so the two paths give the same pixels within one grey
level (``tests/test_augment.py`` checks both against each other and against a reference Gaussian).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, fields

import cv2
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

FLIP_P = 0.5
JITTER_P, JITTER_AMPLITUDE = 0.5, 0.2  # times aug_strength
BLUR_P, BLUR_MIN_SIGMA, BLUR_MAX_SIGMA = 0.5, 0.1, 3.0
JPEG_P, JPEG_MIN_QUALITY = 0.5, 30  # quality down to 30 at full strength
BRIGHTNESS, CONTRAST, SATURATION = 0, 1, 2  # columns of AugmentPlan.factors, values of AugmentPlan.order


@dataclass
class AugmentPlan:
    """Every random choice for n images (tensors with n rows): what :func:`sample_plan` draws and both executors
    obey."""

    flip: torch.Tensor  # (n,) bool
    jitter: torch.Tensor  # (n,) bool
    factors: torch.Tensor  # (n, 3) brightness, contrast, saturation factors
    order: torch.Tensor  # (n, 3) a permutation of BRIGHTNESS, CONTRAST, SATURATION per image
    blur: torch.Tensor  # (n,) bool
    sigma: torch.Tensor  # (n,) float
    jpeg: torch.Tensor  # (n,) bool
    quality: torch.Tensor  # (n,) int

    def row(self, i: int) -> AugmentPlan:
        return AugmentPlan(**{f.name: getattr(self, f.name)[i : i + 1] for f in fields(self)})


def quality_range(strength: float) -> tuple[int, int]:
    """Lowest and highest JPEG quality at ``strength``."""
    return round(100 - (100 - JPEG_MIN_QUALITY) * strength), 100


def sigma_range(strength: float) -> tuple[float, float]:
    """Smallest and largest blur sigma at ``strength``."""
    return BLUR_MIN_SIGMA, max(BLUR_MIN_SIGMA, BLUR_MAX_SIGMA * strength)


def sample_plan(n: int, strength: float, generator: torch.Generator | None = None) -> AugmentPlan:
    """Draws the augmentation of ``n`` images at ``strength`` in [0, 1] (from torch's random state: seeded per
    loader worker by ``seed_everything(workers=True)``). One call of the generator: it runs once per image in a
    loader worker, where every microsecond counts."""
    s = float(strength)
    u = torch.rand(n, 12, generator=generator)
    amplitude = JITTER_AMPLITUDE * s
    low, high = max(0.0, 1 - amplitude), 1 + amplitude
    sigma_low, sigma_high = sigma_range(s)
    q_low, q_high = quality_range(s)
    return AugmentPlan(
        flip=u[:, 0] < FLIP_P,
        jitter=u[:, 1] < JITTER_P * s,
        factors=low + (high - low) * u[:, 2:5],
        order=u[:, 5:8].argsort(dim=1),
        blur=u[:, 8] < BLUR_P * s,
        sigma=sigma_low + (sigma_high - sigma_low) * u[:, 9],
        jpeg=u[:, 10] < JPEG_P * s,
        quality=(q_low + (u[:, 11] * (q_high - q_low + 1)).long()).clamp(max=q_high),
    )


# ----------------------------------------------------------------------------------------------- CPU (one image)
class CpuAugment:
    """PIL RGB image -> the augmented image as a uint8 (3, H, W) tensor, one :func:`sample_plan` row per call (in a
    loader worker)."""

    def __init__(self, strength: float):
        self.strength = float(strength)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return apply_plan(image, sample_plan(1, self.strength))

    def __repr__(self) -> str:
        return f"CpuAugment(strength={self.strength})"


def apply_plan(image: Image.Image, plan: AugmentPlan) -> torch.Tensor:
    """Carries out a one-row plan on a PIL RGB image; a uint8 (3, H, W) tensor out."""
    if plan.flip[0]:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = np.array(image)  # (H, W, 3) uint8, writable
    if plan.jitter[0]:
        factors = plan.factors[0].tolist()
        for op in plan.order[0].tolist():
            pixels = _enhance(pixels, op, factors[op])
    if plan.blur[0]:
        pixels = gaussian_blur_cv2(pixels, float(plan.sigma[0]))
    if plan.jpeg[0]:
        return jpeg_roundtrip(pixels, int(plan.quality[0]))
    return torch.from_numpy(pixels).permute(2, 0, 1)


def _enhance(pixels: np.ndarray, op: int, factor: float) -> np.ndarray:
    """PIL's ``ImageEnhance`` on (H, W, 3) uint8 with OpenCV: a blend with a degenerate image (black for brightness,
    the mean grey level for contrast, the greyscale image for saturation). Brightness and contrast blend with one
    grey level: a lookup table, PIL's pixels exactly; saturation within one grey level of PIL's."""
    if op == SATURATION:
        grey = cv2.cvtColor(cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        return cv2.addWeighted(pixels, factor, grey, 1 - factor, -0.5)  # -0.5: truncates as PIL, not rounds
    level = 0 if op == BRIGHTNESS else int(cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY).mean() + 0.5)
    levels = np.float32(level) + np.float32(factor) * (np.arange(256, dtype=np.float32) - np.float32(level))
    return cv2.LUT(pixels, np.clip(levels, 0, 255).astype(np.uint8))


def gaussian_blur_cv2(pixels: np.ndarray, sigma: float) -> np.ndarray:
    """OpenCV's Gaussian blur of an (H, W, C) uint8 array: round(6 sigma + 1) taps made odd (OpenCV's choice for
    8-bit images), mirrored borders (``BORDER_REFLECT_101``, torch's ``reflect`` padding)."""
    return cv2.GaussianBlur(pixels, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)


def jpeg_roundtrip(pixels: np.ndarray, quality: int) -> torch.Tensor:
    """Encodes (H, W, 3) uint8 RGB as JPEG at ``quality`` with PIL (libjpeg-turbo, 4:2:0 chroma subsampling) and
    decodes it with torchvision's libjpeg-turbo (PIL's pixels, in half PIL's time): a uint8 (3, H, W) tensor."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    return decode_jpeg(torch.frombuffer(bytearray(buffer.getbuffer()), dtype=torch.uint8), mode=ImageReadMode.RGB)


# ------------------------------------------------------------------------------------------ device (a batch)
def augment_batch(images: torch.Tensor, plan: AugmentPlan) -> torch.Tensor:
    """Carries out a plan on a batch of uint8 images (B, 3, H, W) on whatever device they are; uint8 out."""
    plan = AugmentPlan(**{f.name: getattr(plan, f.name).to(images.device) for f in fields(plan)})
    x = torch.where(plan.flip.view(-1, 1, 1, 1), images.flip(-1), images)
    if plan.jitter.any():
        x = _jitter(x, plan)
    if plan.blur.any():
        x = _blur(x, plan)
    if plan.jpeg.any():
        x = _jpeg(x, plan)
    return x


def _luma(x: torch.Tensor) -> torch.Tensor:
    """PIL's ``convert("L")`` of float RGB in [0, 255]: ITU-R 601-2 luma rounded to integers, (B, 1, H, W)."""
    r, g, b = x.unbind(1)
    return (r * 0.299 + g * 0.587 + b * 0.114).round().unsqueeze(1)


def _jitter(images: torch.Tensor, plan: AugmentPlan) -> torch.Tensor:
    # PIL's ImageEnhance blends each image with a degenerate one (black; its mean grey; its greyscale copy) and
    # truncates to uint8 after each step: the same here, one step at a time, per image in its own order.
    x = images.float()
    selected = plan.jitter.view(-1, 1, 1, 1)
    for step in range(3):
        for op in (BRIGHTNESS, CONTRAST, SATURATION):
            chosen = selected & (plan.order[:, step] == op).view(-1, 1, 1, 1)
            if not chosen.any():
                continue
            f = plan.factors[:, op].view(-1, 1, 1, 1)
            if op == BRIGHTNESS:
                degenerate = torch.zeros_like(x[:, :1])
            elif op == CONTRAST:
                degenerate = _luma(x).mean(dim=(2, 3), keepdim=True).add(0.5).floor()
            else:
                degenerate = _luma(x)
            blended = (degenerate + f * (x - degenerate)).clamp(0, 255).trunc()
            x = torch.where(chosen, blended, x)
    return x.to(torch.uint8)


def gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """One normalized 1-D Gaussian per sigma, each as long as OpenCV's for 8-bit images (``round(6 sigma + 1)``
    taps, made odd) and zero-padded to 2 radius + 1 taps: (n, 2 radius + 1)."""
    sigma = sigma.view(-1, 1).float()
    taps = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    own_radius = (6 * sigma + 1).round().int().bitwise_or(1) // 2
    kernels = torch.exp(-(taps**2) / (2 * sigma**2)) * (taps.abs() <= own_radius)
    return kernels / kernels.sum(dim=1, keepdim=True)


def _blur(images: torch.Tensor, plan: AugmentPlan) -> torch.Tensor:
    idx = plan.blur.nonzero().squeeze(1)
    x = images[idx].float()
    n, c, h, w = x.shape
    radius = min(int(round(6 * float(plan.sigma[idx].max()) + 1)) // 2, h - 1, w - 1)
    k = gaussian_kernels(plan.sigma[idx], radius).repeat_interleave(c, dim=0)  # one kernel per image channel
    x = x.reshape(1, n * c, h, w)
    x = torch.nn.functional.pad(x, (radius, radius, 0, 0), mode="reflect")
    x = torch.nn.functional.conv2d(x, k.view(n * c, 1, 1, -1), groups=n * c)
    x = torch.nn.functional.pad(x, (0, 0, radius, radius), mode="reflect")
    x = torch.nn.functional.conv2d(x, k.view(n * c, 1, -1, 1), groups=n * c)
    out = images.clone()
    out[idx] = x.view(n, c, h, w).round().clamp(0, 255).to(torch.uint8)
    return out


_JPEG_NOTE: list[str] = []  # the one-line note about the JPEG fallback, printed once per process


def _jpeg(images: torch.Tensor, plan: AugmentPlan) -> torch.Tensor:
    """JPEG round trips grouped by quality: each group one batched call of torchvision's codec (nvJPEG on CUDA)."""
    out = images.clone()
    for quality in plan.quality[plan.jpeg].unique().tolist():
        idx = (plan.jpeg & (plan.quality == quality)).nonzero().squeeze(1).tolist()
        batch = [images[i].contiguous() for i in idx]
        try:
            decoded = decode_jpeg([e.cpu() for e in encode_jpeg(batch, quality=quality)], device=images.device)
        except RuntimeError as e:  # a torchvision built without nvJPEG, or a codec error on this device
            if not _JPEG_NOTE:
                _JPEG_NOTE.append(str(e).splitlines()[0] if str(e) else type(e).__name__)
                rank_zero_info(
                    f"JPEG augmentation runs on the CPU: torchvision's codec on {images.device}: {_JPEG_NOTE[0]}"
                )
            decoded = [decode_jpeg(encode_jpeg(img.cpu(), quality=quality)).to(images.device) for img in batch]
        for i, img in zip(idx, decoded, strict=True):
            out[i] = img
    return out
