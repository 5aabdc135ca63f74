"""The one transform factory for training and evaluation.

Two geometric modes:

* ``resize``: the whole image squashed to ``img_size`` x ``img_size`` (what the seed notebook did).
* ``crop``: a random ``img_size`` crop at native resolution for training, a centre crop for evaluation.
  Resizing is a low-pass filter that erases the high-frequency traces generators leave; cropping keeps them.

``aug_strength`` in [0, 1] scales every augmentation at once, so a sweep tunes a single number. At 1 it
matches the recipe of Wang et al. 2020 ("CNN-generated images are surprisingly easy to spot... for now"):
Gaussian blur with probability 0.5 and sigma up to 3, JPEG re-compression with probability 0.5 and quality
down to 30, plus horizontal flips and a mild colour jitter. At 0 training sees only the geometric transform.
The distribution and its two executors (a loader worker's CPU, or the device on batches) are in ``data/augment.py``.

The data module's loaders ship uint8 pixels (``normalize=False``): a quarter of float32's bytes between processes
and to the device, where the model normalizes them (``DeepfakeClassifier.normalize_input``). Callers that feed a
network or an ONNX session directly (served and explained images) keep the default, normalized float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torchvision.transforms import v2

from deepfake_lightning.data.augment import CpuAugment
from deepfake_lightning.data.reshare import RandomReshare, RandomReshareCrop
from deepfake_lightning.data.tiles import TileTransform
from deepfake_lightning.errors import ConfigError
from deepfake_lightning.settings import DEFAULTS, InferenceSettings, check_views

TransformMode = Literal["resize", "crop"]

# The inference settings and their check live in settings.py (written once); named here too for the data side.
check_eval_views = check_views


def create_transform(
    img_size: int,
    train: bool,
    mode: TransformMode = DEFAULTS.mode,
    aug_strength: float = 0.0,
    mean: Sequence[float] = DEFAULTS.mean,
    std: Sequence[float] = DEFAULTS.std,
    eval_views: int | str = DEFAULTS.eval_views,
    tile_stride: int | None = DEFAULTS.tile_stride,
    max_tiles: int = DEFAULTS.max_tiles,
    aug_reshare: float = 0.0,
    normalize: bool = True,
    augment_on: Literal["cpu", "device"] = "cpu",
):
    """Builds the transform from a PIL RGB image to a normalized float tensor of shape (3, img_size, img_size)
    (uint8 pixels with ``normalize=False``).

    Args:
        img_size: Output side length in pixels.
        train: Training transform (random crop, augmentation) or evaluation transform (deterministic).
        mode: ``resize`` or ``crop``, see the module docstring.
        aug_strength: Augmentation strength in [0, 1]; ignored when ``train`` is False.
        mean: Normalization mean, normally from the backbone's timm data config.
        std: Normalization std, likewise.
        eval_views: Evaluation only, ``crop`` mode: 5 returns the four corner crops and the centre crop stacked,
            (5, 3, img_size, img_size), for multi-crop test-time augmentation; 1 the centre crop alone; ``tiles``
            the whole image as ``img_size`` tiles (a :class:`~deepfake_lightning.data.tiles.TileTransform`, whose
            output is a dict, see ``data/tiles.py``).
        tile_stride: With ``tiles``: pixels between tile starts (default ``img_size``).
        max_tiles: With ``tiles``: most tiles scored per image; larger grids thin out evenly.
        aug_reshare: Training only: probability that an image is first re-shared by a random chain of 1-3
            operations (JPEG, WebP, PNG, down-scaling, cropping, sharpening: ``data/reshare.py``); in ``crop``
            mode the chain runs on the window of the photograph the random crop needs.
        normalize: Scale to float and normalize with ``mean`` and ``std``; False returns uint8 pixels.
        augment_on: Training only: ``cpu`` augments here (``data/augment.py``'s ``CpuAugment``); ``device`` leaves
            flip, jitter, blur and JPEG to ``augment_batch`` on the device (the re-share chains stay here).
    """
    _check_settings(aug_strength, mode, aug_reshare, augment_on)
    check_eval_views(eval_views, mode, tile_stride, max_tiles)
    if eval_views == "tiles" and not train:
        return TileTransform(img_size, tile_stride, max_tiles, mean, std, normalize=normalize)
    if train:
        eval_views = 1
    # Geometry first, on the PIL image (PIL's resampling is the fastest path on CPU), then the augmentation on the
    # small PIL image (data/augment.py), then a uint8 tensor.
    # The re-share chains come first, on the PIL image: before the resize on the whole image; in crop mode, on the
    # window the random crop needs (RandomReshareCrop: the same pixels, at the cost of a crop, data/reshare.py).
    reshare = train and aug_reshare > 0
    ops: list = [RandomReshare(aug_reshare)] if reshare and mode == "resize" else []
    if mode == "resize":
        ops += [v2.Resize((img_size, img_size), antialias=True)]
    elif train and reshare:
        ops += [RandomReshareCrop(aug_reshare, img_size)]
    elif train:
        ops += [v2.RandomCrop(img_size, pad_if_needed=True)]  # zero padding, as CenterCrop pads
    elif eval_views == 1:
        ops += [v2.CenterCrop(img_size)]
    if train and aug_strength > 0 and augment_on == "cpu":
        ops.append(CpuAugment(aug_strength))
    ops.append(v2.ToImage())
    if eval_views == 5:
        ops += [_PadTo(img_size), v2.FiveCrop(img_size)]
    if normalize:
        ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    if eval_views > 1:
        ops.append(_StackViews())
    return v2.Compose(ops)


def evaluation_transform(settings: InferenceSettings, normalize: bool = False):
    """A model's evaluation transform, from its inference settings (``settings.py``): its views (one, five or tiles)
    as uint8 (the model normalizes) unless ``normalize``. The data module's evaluation loaders and the
    ``Detector`` both build theirs here."""
    s = settings
    return create_transform(
        s.img_size,
        train=False,
        mode=s.mode,
        mean=s.mean,
        std=s.std,
        eval_views=s.eval_views,
        tile_stride=s.tile_stride,
        max_tiles=s.max_tiles,
        normalize=normalize,
    )


def _check_settings(aug_strength: float, mode: str, aug_reshare: float, augment_on: str) -> None:
    if not 0.0 <= aug_strength <= 1.0:
        raise ConfigError(f"aug_strength must be in [0, 1], got {aug_strength}")
    if augment_on not in ("cpu", "device"):
        raise ConfigError(f"augment_on must be 'cpu' or 'device', got {augment_on!r}")
    if not 0.0 <= aug_reshare <= 1.0:
        raise ConfigError(f"data.aug_reshare must be a probability in [0, 1], got {aug_reshare}")


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
