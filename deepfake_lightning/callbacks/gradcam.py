"""``GradCamExport``: Grad-CAM overlays of fixed and mistaken samples, during validation and at test time."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from deepfake_lightning.callbacks._figures import publish_figure
from deepfake_lightning.data.dataset import BadImageError
from deepfake_lightning.explain.cam import CamExplainer, cam_grid, centre_view, denormalize
from deepfake_lightning.scoring import decide


class GradCamExport(Callback):
    """Every ``every_n_epochs`` validation epochs, and at test time, explains a fixed, seeded, class-balanced set
    of ``num_samples`` images plus the ``num_mistakes`` most confident mistakes of that epoch. Writes overlay
    grids as PNG files under ``<run>/gradcam/epoch=<e>/`` (``gradcam/<split>/`` when testing) and as
    TensorBoard figures; each tile shows the label, the AI probability and the prediction. With several test-time
    views per image (``data.eval_views: 5``) the centre view is shown and explained, with tiles
    (``data.eval_views: tiles``) each image's most suspicious tile, and the probability is the
    image's own (over every view, or pooled over the tiles), as in the metrics.

    It never changes training: CAMs run in eval mode with frozen parameters and a forked RNG, on images read
    straight from the dataset (no extra loader), and only rank 0 computes and writes them.

    Args:
        every_n_epochs: Export after every N-th validation epoch.
        num_samples: Fixed samples to explain (half human, half AI), chosen once with ``seed``.
        num_mistakes: Most confident mistakes of the epoch to add.
        method: CAM method (see ``deepfake_lightning.explain.CAM_METHODS``).
        layers: Module names to explain; default by backbone family.
        n_layers: Multi-layer mode when > 1: each stage's map is shown beside the combined one.
        target: ``ai`` or ``human``: the class whose evidence is shown.
        seed: Seed for the fixed sample set.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_samples: int = 8,
        num_mistakes: int = 4,
        method: str = "gradcam",
        layers: list[str] | None = None,
        n_layers: int = 1,
        target: str = "ai",
        seed: int = 0,
    ):
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self.num_mistakes = num_mistakes
        self.explainer_args = {"method": method, "layers": layers, "n_layers": n_layers, "target": target}
        self.seed = seed
        self._seen: dict[str, list[tuple[int, float, int]]] = {}

    # ---------------------------------------------------------------- collecting predictions
    def _collect(self, pl_module, split: str, outputs, batch) -> None:
        if isinstance(outputs, dict) and "logits" in outputs and "index" in batch:
            probs = pl_module.calibrated_probs(outputs["logits"]).cpu().tolist()
            self._seen.setdefault(split, []).extend(
                zip(batch["index"].cpu().tolist(), probs, batch["label"].long().cpu().tolist(), strict=False)
            )

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._seen = {}

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._seen = {}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(pl_module, "val", outputs, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(pl_module, pl_module.test_splits[dataloader_idx], outputs, batch)

    # ---------------------------------------------------------------- exporting
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self._export(trainer, pl_module, "val", f"epoch={trainer.current_epoch}")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        for split in pl_module.test_splits:
            self._export(trainer, pl_module, split, split)

    def _choose(self, labels: list[int], split: str, threshold: float) -> tuple[list[int], list[int]]:
        rng = np.random.default_rng(self.seed)
        labels_arr = np.asarray(labels)
        fixed = []
        for cls in (0, 1):
            pool = np.flatnonzero(labels_arr == cls)
            k = min(len(pool), self.num_samples // 2 + (cls == 1) * (self.num_samples % 2))
            fixed += sorted(rng.choice(pool, k, replace=False).tolist()) if k else []
        if (labels_arr < 0).all():  # unlabeled split: just a seeded sample
            fixed = sorted(rng.choice(len(labels), min(len(labels), self.num_samples), replace=False).tolist())
        wrong = [
            (abs(p - 0.5), i) for i, p, y in self._seen.get(split, []) if y in (0, 1) and decide(p, threshold) != y
        ]
        mistakes = [i for _, i in sorted(wrong, reverse=True) if i not in fixed][: self.num_mistakes]
        return fixed, mistakes

    def _export(self, trainer: L.Trainer, pl_module, split: str, folder: str) -> None:
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask
        if not trainer.is_global_zero or log_dir is None or trainer.datamodule is None:
            return
        dm = trainer.datamodule
        dataset = dm.dataset(split)
        fixed, mistakes = self._choose(dataset.labels, split, pl_module.threshold)
        out = Path(log_dir) / "gradcam" / folder
        with CamExplainer(pl_module, **self.explainer_args) as explainer:
            for name, indices in (("samples", fixed), ("mistakes", mistakes)):
                items = []
                for i in indices:
                    try:
                        items.append(dataset[i])
                    except BadImageError:
                        continue
                items = [it for it in items if isinstance(it, dict)]
                if not items:
                    continue
                labels = [int(it["label"]) for it in items]
                if "tile_xy" in items[0]:  # tiled evaluation: each image's most suspicious tile, with its verdict
                    images, pooled = _top_tiles(pl_module, items)
                    result = explainer(images)
                    result = replace(result, logits=pooled.numpy(), probs=pl_module.calibrated_probs(pooled).numpy())
                else:
                    images = torch.stack([it["image"] for it in items])
                    result = explainer(images)
                fig = cam_grid(
                    denormalize(centre_view(images), dm.hparams.mean, dm.hparams.std),
                    result,
                    labels,
                    threshold=pl_module.threshold,
                    per_layer=True,
                )
                publish_figure(
                    trainer, fig, out / f"{name}.png", f"gradcam/{split}/{name}", step=trainer.current_epoch, dpi=90
                )


@torch.inference_mode()
def _top_tiles(pl_module, items: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """The most suspicious tile of each tiled image (what decides a max-pooled verdict) and the images' pooled
    logits, on the CPU."""
    tiles, pooled = [], []
    for it in items:
        logits = pl_module.tile_logits(it["image"].to(pl_module.device)).float().cpu()
        tiles.append(it["image"][int(logits.argmax())])
        pooled.append(pl_module.scorer.pool(logits, torch.tensor([len(logits)])))
    return torch.stack(tiles), torch.cat(pooled)
