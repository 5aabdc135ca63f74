"""The test and predict steps of ``DeepfakeClassifier`` (a mixin): each split's logits collected for the report
callbacks, its metrics at the uncalibrated and the tuned threshold, and the calibrated predictions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepfake_lightning.models.metrics import flatten_metrics, make_metrics
from deepfake_lightning.settings import UNCALIBRATED_THRESHOLD


class EvaluationSteps:
    """``test`` and ``predict`` over the model's ``predict_logits``, ``calibrated_probs`` and ``threshold``."""

    # ------------------------------------------------------------------ test
    def on_test_start(self) -> None:
        dm = self.trainer.datamodule
        self.test_splits = dm.test_splits() if hasattr(dm, "test_splits") else ["test"]
        labeled = dm.labeled_test_splits() if hasattr(dm, "labeled_test_splits") else self.test_splits
        metrics = {s: make_metrics(UNCALIBRATED_THRESHOLD) for s in labeled} | {
            f"{s}/tuned": make_metrics(self.threshold) for s in labeled
        }
        self.test_metrics = nn.ModuleDict(metrics).to(self.device)
        self.test_outputs.reset(self.test_splits)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict | None:
        if "image" not in batch:
            return None
        split = self.test_splits[dataloader_idx]
        logits = self.predict_logits(batch["image"], n_tiles=batch.get("n_tiles"))
        self.test_outputs.add(split, logits, batch["label"], batch["index"])
        if split not in self.test_metrics:  # unlabeled split: logits only (for share estimation)
            return {"logits": logits}
        labels = batch["label"].long()
        probs = self.calibrated_probs(logits)
        self.test_metrics[split].update(probs, labels)
        self.test_metrics[f"{split}/tuned"].update(probs, labels)
        loss = F.binary_cross_entropy_with_logits(logits, labels.float())
        self.log(
            f"test/{split}/loss", loss, on_epoch=True, batch_size=len(labels), add_dataloader_idx=False, sync_dist=True
        )
        return {"logits": logits}

    def on_test_epoch_end(self) -> None:
        for name, metrics in self.test_metrics.items():
            self.log_dict(flatten_metrics(metrics.compute(), f"test/{name}"), add_dataloader_idx=False, sync_dist=True)
            metrics.reset()

    # ------------------------------------------------------------------ predict
    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        if "image" not in batch:
            return {"index": torch.empty(0, dtype=torch.long), "logit": torch.empty(0), "prob_ai": torch.empty(0)}
        logits = self.predict_logits(batch["image"], n_tiles=batch.get("n_tiles"))
        out = {"index": batch["index"], "logit": logits, "prob_ai": self.calibrated_probs(logits)}
        if "n_tiles" in batch:  # how many tiles were scored, of how many the full grid has
            out |= {"n_tiles": batch["n_tiles"], "tiles_total": batch["tiles_total"]}
        return out
