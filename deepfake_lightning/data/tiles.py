"""Tiled evaluation: a whole image scored as ``img_size`` tiles at native resolution (``data.eval_views: tiles``).

A crop-mode model judges one ``img_size`` crop; for a large photograph that is a sliver of it. Here the image is
covered by a grid of tiles (``stride`` apart, the last row and column shifted inward so the edges are covered);
above ``max_tiles`` the grid thins out evenly over the image. The model scores every tile and pools the tile logits
into the image's (``scoring.Scorer.pool``). Tiling stays outside the network, so an ONNX export needs no
change: the same :class:`TileTransform` feeds it.

One image gives a dict: ``image`` (N, 3, size, size) normalized tiles, ``tile_xy`` (N, 2) the tiles' top-left
corners in the original image's pixels (negative on a side shorter than a tile, which is padded with zeros and
centred, as the centre crop pads), ``tiles_total`` the tiles a full grid would have, and ``image_wh``.
:func:`collate_tiles` concatenates the tiles of a batch and records ``n_tiles`` per image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import default_collate
from torchvision.transforms.v2 import functional as TF

from deepfake_lightning.settings import DEFAULTS


def tile_origins(length: int, size: int, stride: int) -> list[int]:
    """Tile starts along one side: every ``stride`` pixels, plus one flush with the far edge; one centred (negative)
    start when the side is shorter than a tile."""
    if length <= size:
        return [-((size - length) // 2)]
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def _spread(starts: list[int], k: int) -> list[int]:
    """``k`` starts spread evenly over the span of ``starts`` (its first and last kept when k >= 2)."""
    if k >= len(starts):
        return starts
    if k == 1:
        return [(starts[0] + starts[-1]) // 2]
    return [int(round(v)) for v in np.linspace(starts[0], starts[-1], k)]


def tile_grid(width: int, height: int, size: int, stride: int | None = None, max_tiles: int = DEFAULTS.max_tiles):
    """``(origins, total)``: the (x, y) top-left corners of the tiles to score, row by row, and how many tiles
    the full grid has. Above ``max_tiles`` the grid keeps its aspect and thins out evenly to at most that many."""
    stride = stride or size
    xs, ys = tile_origins(width, size, stride), tile_origins(height, size, stride)
    total = len(xs) * len(ys)
    if total > max_tiles:
        scale = math.sqrt(max_tiles / total)
        kx = max(1, min(len(xs), max_tiles, math.floor(len(xs) * scale)))
        ky = max(1, min(len(ys), max_tiles // kx))
        kx = max(1, min(len(xs), max_tiles // ky))  # use what the rounding of ky left over
        xs, ys = _spread(xs, kx), _spread(ys, ky)
    return [(x, y) for y in ys for x in xs], total


class TileTransform:
    """PIL RGB image -> the dict of tiles described in the module docstring, normalized like the other
    evaluation transforms (``x / 255``, then ``(x - mean) / std``), or uint8 pixels with ``normalize=False``."""

    def __init__(
        self,
        size: int,
        stride: int | None = None,
        max_tiles: int = DEFAULTS.max_tiles,
        mean: Sequence[float] = DEFAULTS.mean,
        std: Sequence[float] = DEFAULTS.std,
        normalize: bool = True,
    ):
        self.size, self.stride, self.max_tiles = int(size), int(stride or size), int(max_tiles)
        self.normalize = normalize
        self.mean_std = [float(v) for v in mean], [float(v) for v in std]

    def __call__(self, image: Image.Image) -> dict:
        w, h = image.size
        origins, total = tile_grid(w, h, self.size, self.stride, self.max_tiles)
        s = self.size
        # PIL crops one tile at a time (no full-size tensor copy of a 16 MP photograph) and fills the area outside
        # the image with zeros: a short side is zero-padded, the image centred, as the centre crop pads.
        tiles = torch.stack([TF.pil_to_tensor(image.crop((x, y, x + s, y + s))) for x, y in origins])
        if self.normalize:  # the model's normalize_input, to the bit
            tiles = TF.normalize(TF.to_dtype(tiles, torch.float32, scale=True), self.mean_std[0], self.mean_std[1])
        return {
            "image": tiles,
            "tile_xy": torch.tensor(origins, dtype=torch.long).view(-1, 2),
            "tiles_total": total,
            "image_wh": torch.tensor([w, h], dtype=torch.long),
        }

    def __repr__(self) -> str:
        return f"TileTransform(size={self.size}, stride={self.stride}, max_tiles={self.max_tiles})"


def collate_tiles(items: list[dict]) -> dict:
    """One batch of tiled images: ``image`` (sum of N, 3, s, s), ``tile_xy`` (sum of N, 2), ``n_tiles`` (B,), and
    the per-image ``tiles_total``, ``image_wh``, ``label``, ``index``."""
    batch = default_collate([{k: v for k, v in x.items() if k not in ("image", "tile_xy")} for x in items])
    batch["image"] = torch.cat([x["image"] for x in items])
    batch["tile_xy"] = torch.cat([x["tile_xy"] for x in items])
    batch["n_tiles"] = torch.tensor([len(x["image"]) for x in items], dtype=torch.long)
    return batch


def pool_tile_logits(
    logits: torch.Tensor, n_tiles: torch.Tensor, pooling: str = DEFAULTS.tile_pooling, topk: float = DEFAULTS.tile_topk
):
    """Per-image logits from the logits of their tiles (``n_tiles`` per image, in order): ``mean``, ``max``, or
    ``topk``, the mean of the ``ceil(topk * n)`` highest."""
    parts = torch.split(logits, [int(n) for n in n_tiles])
    if pooling == "mean":
        pooled = [p.mean() for p in parts]
    elif pooling == "max":
        pooled = [p.max() for p in parts]
    elif pooling == "topk":
        pooled = [p.topk(max(1, math.ceil(topk * len(p)))).values.mean() for p in parts]
    else:
        raise ValueError(f"tile pooling must be mean, max or topk, got {pooling!r}")
    return torch.stack(pooled) if pooled else logits.new_empty(0)


def mask_coverage(mask: np.ndarray, origins: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """For each tile (top-left ``origins``, (N, 2)), the share of its pixels inside a boolean ``mask`` (H, W) and
    whether its centre lies in the mask. Pixels outside the image count as outside."""
    h, w = mask.shape
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    share, centre = np.zeros(len(origins)), np.zeros(len(origins), dtype=bool)
    for i, (x, y) in enumerate(np.asarray(origins)):
        x0, y0, x1, y1 = max(0, x), max(0, y), min(w, x + size), min(h, y + size)
        share[i] = (integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]) / size**2
        cx, cy = min(w - 1, max(0, x + size // 2)), min(h - 1, max(0, y + size // 2))
        centre[i] = bool(mask[cy, cx])
    return share, centre
