"""Forensic front-ends: fixed transforms in front of the backbone, part of the network (so they run on the device,
in exports, under Grad-CAM, with channels-last and mixed precision). Each maps a normalized (B, 3, H, W) image to
(B, 3, H, W), so any timm backbone (and its pretrained stem) takes the result unchanged. None has parameters.

* ``rgb``: the image itself.
* ``npr``: neighbouring pixel relationships (Tan et al., CVPR 2024, "Rethinking the up-sampling operations in
  CNN-based generative network for generalizable deepfake detection"): the residual between the image and its
  nearest-neighbour down-then-up-sampled copy, which keeps the local correlations up-sampling layers leave.
* ``highpass``: SRM high-pass residuals (the rich-model filters of Fridrich and Kodovsky 2012, as in DeepfakeBench's
  SRM detector): three fixed 5x5 kernels (first, second and third order) on the image's mean channel.

Both residual front-ends rely on pixel-level traces, which resizing interpolates away: use ``data.mode: crop``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from deepfake_lightning.errors import ConfigError

Frontend = Literal["rgb", "npr", "highpass"]
PIXEL_LEVEL = ("npr", "highpass")


class NPR(nn.Module):
    """``x - up(down(x))`` with nearest-neighbour resampling by a factor of 2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        down = F.interpolate(x, scale_factor=0.5, mode="nearest")
        return x - F.interpolate(down, size=x.shape[-2:], mode="nearest")


def srm_kernels() -> torch.Tensor:
    """The three SRM kernels (3, 5, 5): first-order (horizontal), second-order (3x3) and the 5x5 "KV" kernel."""
    first = torch.zeros(5, 5)
    first[2, 1:4] = torch.tensor([1.0, -2.0, 1.0]) / 2
    second = torch.zeros(5, 5)
    second[1:4, 1:4] = torch.tensor([[-1.0, 2, -1], [2, -4, 2], [-1, 2, -1]]) / 4
    kv = (
        torch.tensor(
            [[-1.0, 2, -2, 2, -1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2], [2, -6, 8, -6, 2], [-1, 2, -2, 2, -1]]
        )
        / 12
    )
    return torch.stack([first, second, kv])


class HighPass(nn.Module):
    """SRM residuals of the channel mean: output channel k is kernel k applied to the mean of R, G and B."""

    def __init__(self):
        super().__init__()
        weight = srm_kernels()[:, None].repeat(1, 3, 1, 1) / 3  # (out=3, in=3, 5, 5): kernel k on the channel mean
        self.register_buffer("weight", weight, persistent=False)  # fixed: not in state dicts or exports

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), self.weight.to(x.dtype))


def create_frontend(name: str) -> nn.Module:
    if name == "rgb":
        return nn.Identity()
    if name == "npr":
        return NPR()
    if name == "highpass":
        return HighPass()
    raise ConfigError(f"unknown model.frontend {name!r}; choose rgb, npr or highpass")
