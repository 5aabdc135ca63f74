"""The one transform factory for training and evaluation.

Two geometric modes:

* ``resize``: the whole image squashed to ``img_size`` x ``img_size`` (what the seed notebook did).
* ``crop``: a random ``img_size`` crop at native resolution for training, a centre crop for evaluation.
  Resizing is a low-pass filter that erases the high-frequency traces generators leave; cropping keeps them.

``aug_strength`` in [0, 1] scales every augmentation at once, so a sweep tunes a single number. At 1 it
matches the recipe of Wang et al. 2020 ("CNN-generated images are surprisingly easy to spot... for now"):
Gaussian blur with probability 0.5 and sigma up to 3, JPEG re-compression with probability 0.5 and quality
down to 30, plus horizontal flips and a mild colour jitter. At 0 training sees only the geometric transform.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torchvision.transforms import v2

from deepfake_lightning.errors import ConfigError

TransformMode = Literal["resize", "crop"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def create_transform(
    img_size: int,
    train: bool,
    mode: TransformMode = "resize",
    aug_strength: float = 0.0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    eval_views: int = 1,
) -> v2.Compose:
    """Builds the transform from a PIL RGB image to a normalized float tensor of shape (3, img_size, img_size).

    Args:
        img_size: Output side length in pixels.
        train: Training transform (random crop, augmentation) or evaluation transform (deterministic).
        mode: ``resize`` or ``crop``, see the module docstring.
        aug_strength: Augmentation strength in [0, 1]; ignored when ``train`` is False.
        mean: Normalization mean, normally from the backbone's timm data config.
        std: Normalization std, likewise.
        eval_views: Evaluation only, ``crop`` mode: 5 returns the four corner crops and the centre crop stacked,
            (5, 3, img_size, img_size), for multi-crop test-time augmentation; 1 the centre crop alone.
    """
    if not 0.0 <= aug_strength <= 1.0:
        raise ConfigError(f"aug_strength must be in [0, 1], got {aug_strength}")
    if mode not in ("resize", "crop"):
        raise ConfigError(f"mode must be 'resize' or 'crop', got {mode!r}")
    if eval_views not in (1, 5) or (eval_views == 5 and (train or mode != "crop")):
        raise ConfigError(
            f"eval_views must be 1, or 5 for evaluation in crop mode; got {eval_views} ({mode=}, {train=})"
        )
    # Geometry first, on the PIL image (PIL's resampling is the fastest path on CPU), then to a uint8 tensor.
    if mode == "resize":
        ops: list = [v2.Resize((img_size, img_size), antialias=True), v2.ToImage()]
    elif train:
        ops = [v2.RandomCrop(img_size, pad_if_needed=True), v2.ToImage()]  # zero padding, as CenterCrop pads
    elif eval_views == 5:
        ops = [v2.ToImage(), _PadTo(img_size), v2.FiveCrop(img_size)]
    else:
        ops = [v2.CenterCrop(img_size), v2.ToImage()]
    if train and aug_strength > 0:
        s = aug_strength
        max_sigma = 3.0 * s
        kernel = 2 * math.ceil(3 * max_sigma) + 1  # covers +-3 sigma of the widest blur
        ops += [
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomApply([v2.ColorJitter(brightness=0.2 * s, contrast=0.2 * s, saturation=0.2 * s)], p=0.5 * s),
            v2.RandomApply([v2.GaussianBlur(kernel_size=kernel, sigma=(0.1, max(0.1, max_sigma)))], p=0.5 * s),
            v2.RandomApply([v2.JPEG(quality=(round(100 - 70 * s), 100))], p=0.5 * s),
        ]
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    if eval_views > 1:
        ops.append(_StackViews())
    return v2.Compose(ops)


class _StackViews(torch.nn.Module):
    """Stacks the tuple of views FiveCrop produces into one (V, 3, H, W) tensor."""

    def forward(self, *views) -> torch.Tensor:
        views = views[0] if len(views) == 1 else views
        return torch.stack(list(views))


class _PadTo(torch.nn.Module):
    """Zero-pads an image tensor to at least ``size`` on each side (FiveCrop needs it; CenterCrop pads itself)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        ph, pw = max(0, self.size - h), max(0, self.size - w)
        if ph or pw:
            img = v2.functional.pad(img, [pw // 2, ph // 2, pw - pw // 2, ph - ph // 2])
        return img
