"""Where in an image: tile scores of whole images, and how well they locate edited regions.

``deepfake test`` scores every test split whose CSV has a ``mask`` column (the demo's ``test_edited``: partly edited
photographs and their originals) with :func:`localization_report`:

* ``pointing_game``: over edited images, the share whose most suspicious tile has its centre inside the edited
  region (the pointing game of Zhang et al. 2016, at tile resolution);
* ``tile_auroc``: over edited images' tiles, AUROC of tiles mostly inside the region (at least half their pixels)
  against tiles wholly outside it (tiles partly inside are left out);
* ``image_auroc_tiles`` and ``image_auroc_centre``: AUROC of edited images against their unedited originals (the
  split's label 0 images), from the pooled tile logits and from the centre crop: what tiling adds to the verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from deepfake_lightning.data.tiles import mask_coverage


@dataclass
class TileScores:
    """One image's tiles: top-left corners ``xy`` (N, 2) in the image's pixels, tile ``size``, ``logits`` (N,), the
    pooled image ``logit``, the scored and full-grid tile counts and the image's ``(width, height)``."""

    xy: np.ndarray
    size: int
    logits: np.ndarray
    logit: float
    tiles_total: int
    image_wh: tuple[int, int]

    @property
    def n_tiles(self) -> int:
        return len(self.logits)

    @classmethod
    def of(cls, tiles: dict, logits: np.ndarray, logit: float) -> TileScores:
        """From one image's tile dict (``data/tiles.py``), its tiles' logits and their pooled ``logit``."""
        wh = tuple(int(v) for v in tiles["image_wh"])
        return cls(np.asarray(tiles["tile_xy"]), tiles["image"].shape[-1], logits, logit, int(tiles["tiles_total"]), wh)

    def table(self, probs: np.ndarray) -> pd.DataFrame:
        """``x,y,size,prob_ai``: the ``<stem>_tiles.csv`` of ``deepfake explain --map``."""
        return pd.DataFrame({"x": self.xy[:, 0], "y": self.xy[:, 1], "size": self.size, "prob_ai": probs})


@torch.inference_mode()
def score_tiles(model, batch: dict) -> list[TileScores]:
    """The :class:`TileScores` of each image of a tiled batch (``data/tiles.py``), with ``model``'s pooling."""
    images = batch["image"].to(model.device)
    logits = model.tile_logits(images).float()
    pooled = model.scorer.pool(logits, batch["n_tiles"]).cpu().numpy()
    size = images.shape[-1]
    parts = torch.split(logits.cpu(), [int(n) for n in batch["n_tiles"]])
    xys = torch.split(batch["tile_xy"], [int(n) for n in batch["n_tiles"]])
    return [
        TileScores(
            xy.numpy(),
            size,
            part.numpy(),
            float(pooled[i]),
            int(batch["tiles_total"][i]),
            tuple(int(v) for v in batch["image_wh"][i]),
        )
        for i, (part, xy) in enumerate(zip(parts, xys, strict=True))
    ]


def read_mask(path: Path, image_wh: tuple[int, int]) -> np.ndarray:
    """A mask PNG as a boolean array (True where edited, any non-zero pixel), checked against the image's size.

    Raises:
        ValueError: For an unreadable mask or one whose size is not the image's (naming the file).
    """
    try:
        with Image.open(path) as im:
            mask = np.asarray(im.convert("L")) > 0
    except OSError as e:
        raise ValueError(f"mask {path}: cannot read it ({e})") from e
    if mask.shape[::-1] != tuple(image_wh):
        raise ValueError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]}, its image {image_wh[0]}x{image_wh[1]}")
    return mask


def check_masks(images: list[Path], masks: list[Path | None]) -> list[str]:
    """Problems with a split's masks, read from the files' headers only: a missing or unreadable mask, or one whose
    size is not its image's. One ``path: problem`` string each; empty when all is well."""
    problems = []
    for image, mask in zip(images, masks, strict=True):
        if mask is None:
            continue
        try:
            with Image.open(mask) as m:
                mask_size = m.size
        except OSError as e:
            problems.append(f"{mask}: {'does not exist' if not mask.exists() else f'cannot be read ({e})'}")
            continue
        try:
            with Image.open(image) as im:
                image_size = im.size
        except OSError:
            continue  # the image itself is the data module's to report (bad_images)
        if mask_size != image_size:
            problems.append(
                f"{mask}: {mask_size[0]}x{mask_size[1]}, its image {image} is {image_size[0]}x{image_size[1]}"
            )
    return problems


def localization_report(
    tiles: list[TileScores], masks: list[np.ndarray | None], labels: np.ndarray, centre_logits: np.ndarray
) -> dict:
    """The metrics of the module docstring for one split; ``masks[i]`` is None for an unedited image."""
    labels = np.asarray(labels).astype(int)
    hits, inside, outside = [], [], []
    for t, mask in zip(tiles, masks, strict=True):
        if mask is None or not mask.any():
            continue
        share, centre = mask_coverage(mask, t.xy, t.size)
        hits.append(bool(centre[int(np.argmax(t.logits))]))
        inside += list(t.logits[share >= 0.5])
        outside += list(t.logits[share == 0])
    pooled = np.array([t.logit for t in tiles])
    both = len(np.unique(labels)) == 2

    def auroc(y, s):
        return float(roc_auc_score(y, s)) if len(np.unique(y)) == 2 else None

    return {
        "n_edited": len(hits),
        "n_images": len(tiles),
        "pointing_game": float(np.mean(hits)) if hits else None,
        "tile_auroc": auroc(np.r_[np.ones(len(inside)), np.zeros(len(outside))], np.r_[inside, outside]),
        "image_auroc_tiles": auroc(labels, pooled) if both else None,
        "image_auroc_centre": auroc(labels, centre_logits) if both else None,
        "tiles_per_image": float(np.mean([t.n_tiles for t in tiles])) if tiles else 0.0,
    }


def format_localization(reports: dict[str, dict]) -> str:
    """The printed table: one row per split with masks."""
    rows = [
        {
            "split": split,
            "edited": r["n_edited"],
            "pointing game": r["pointing_game"],
            "tile AUROC": r["tile_auroc"],
            "image AUROC tiles": r["image_auroc_tiles"],
            "image AUROC centre": r["image_auroc_centre"],
            "tiles/image": f"{r['tiles_per_image']:.1f}",  # a count: not to four places
        }
        for split, r in reports.items()
    ]
    return pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-")


def plot_score_map(
    image: Image.Image,
    scores: TileScores,
    probs: np.ndarray,
    threshold: float,
    title: str = "",
    mask: np.ndarray | None = None,
    pooling: str = "max",
    max_side: int = 1600,
):
    """The whole image with each tile's calibrated AI probability as a colour overlay (overlapping tiles: the highest
    shows), the most suspicious tile outlined, a colour bar with the threshold marked, and the verdict in the title;
    ``mask`` (edited pixels) is drawn as a contour. Large photographs are drawn at ``max_side`` pixels, small ones
    fill the same figure size. A matplotlib Figure."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    w, h = image.size
    scale = min(1.0, max_side / max(w, h))
    shown = image if scale == 1.0 else image.resize((round(w * scale), round(h * scale)), Image.Resampling.BILINEAR)
    heat = np.full((shown.height, shown.width), np.nan)
    thinned = scores.n_tiles < scores.tiles_total
    cells = _cells(scores, w, h) if thinned else [(x, y, x + scores.size, y + scores.size) for x, y in scores.xy]
    for (x0, y0, x1, y1), p in zip(cells, probs, strict=True):
        x0, y0, x1, y1 = (max(0, round(v * scale)) for v in (x0, y0, x1, y1))
        heat[y0:y1, x0:x1] = np.fmax(heat[y0:y1, x0:x1], p)
    aspect = shown.height / shown.width
    fig, ax = plt.subplots(figsize=(7, max(2.5, 6.2 * aspect) + 0.9), layout="constrained")
    extent = (0, w, h, 0)  # axes in the original image's pixels
    ax.imshow(shown, extent=extent, interpolation="nearest" if scale == 1.0 and max(w, h) < 512 else "antialiased")
    overlay = ax.imshow(
        np.ma.masked_invalid(heat), extent=extent, cmap="inferno", vmin=0, vmax=1, alpha=0.5, interpolation="nearest"
    )
    if thinned:  # the tiles actually scored, outlined thinly
        for x, y in scores.xy:
            ax.add_patch(Rectangle((x, y), scores.size, scores.size, fill=False, ec="white", lw=0.6))
    top = int(np.argmax(probs))
    tx, ty = scores.xy[top]
    ax.add_patch(Rectangle((tx, ty), scores.size, scores.size, fill=False, ec="cyan", lw=2))
    if thinned:  # and the share of the image it stands for
        x0, y0, x1, y1 = cells[top]
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="cyan", lw=1, ls="--"))
    if mask is not None and mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors="lime", linewidths=1.5, extent=(0, w, 0, h), origin="upper")
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    bar = fig.colorbar(overlay, ax=ax, fraction=0.05, pad=0.02)
    bar.set_label("tile P(AI-generated), calibrated")
    bar.ax.axhline(threshold, color="cyan", lw=2.5)
    bar.ax.text(
        -0.3,
        threshold,
        f"threshold {threshold:.2f}",
        transform=bar.ax.get_yaxis_transform(),
        ha="right",
        va="center",
        fontsize=8,
        color="black",
        rotation=90,
    )
    prob = float(max(probs)) if pooling == "max" else None
    verdict = title + ("\n" if title else "")
    counted = f"{scores.n_tiles} tiles of {scores.size} px"
    if thinned:
        counted = f"{scores.n_tiles} of {scores.tiles_total} tiles of {scores.size} px, spread evenly (colour: nearest)"
    ax.set_title(
        f"{verdict}{counted}\n{pooling} pooling; outlined: most suspicious tile"
        + (f" ({prob:.3f})" if prob is not None else ""),
        fontsize=9,
    )
    return fig


def _cells(scores: TileScores, w: int, h: int) -> list[tuple[float, float, float, float]]:
    """For a thinned grid: the share of the image each scored tile stands for (cell borders halfway between tile
    centres), so that a map of a large photograph is coloured all over rather than in specks."""

    def borders(starts: np.ndarray, length: int) -> dict[int, tuple[float, float]]:
        starts = np.unique(starts)
        centres = starts + scores.size / 2
        cuts = np.r_[0, (centres[1:] + centres[:-1]) / 2, length]
        return {int(s): (cuts[i], cuts[i + 1]) for i, s in enumerate(starts)}

    bx, by = borders(scores.xy[:, 0], w), borders(scores.xy[:, 1], h)
    return [(bx[x][0], by[y][0], bx[x][1], by[y][1]) for x, y in scores.xy]


@torch.inference_mode()
def split_localization(model, tile_loader, centre_loader, mask_paths: list[Path | None], labels, context=None):
    """:func:`localization_report` of one split: scores its images as tiles (``tile_loader``) and as centre crops
    (``centre_loader``), both in the split's order, and reads each image's mask (``mask_paths``, None for an unedited
    image). Unreadable images (skipped by the loaders) are left out."""
    from contextlib import nullcontext

    n = len(mask_paths)
    tiles: list[TileScores | None] = [None] * n
    centre = np.full(n, np.nan)
    with context or nullcontext():
        for batch in tile_loader:
            if "image" in batch:
                for i, t in zip(batch["index"].tolist(), score_tiles(model, batch), strict=True):
                    tiles[i] = t
        for batch in centre_loader:
            if "image" in batch:
                centre[batch["index"].numpy()] = model.predict_logits(batch["image"].to(model.device)).float().cpu()
    kept = [i for i in range(n) if tiles[i] is not None and np.isfinite(centre[i])]
    masks = [None if mask_paths[i] is None else read_mask(mask_paths[i], tiles[i].image_wh) for i in kept]
    return localization_report([tiles[i] for i in kept], masks, np.asarray(labels)[kept], centre[kept])
