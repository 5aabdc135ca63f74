"""Evaluation outputs: the logits a model gives on a whole loader (``collect_logits``) and the per-split test
outputs that report callbacks read (``TestOutputs``)."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DistributedSampler
from torchmetrics.utilities.distributed import gather_all_tensors


@torch.inference_mode()
def collect_logits(model, dataloader, trainer=None) -> tuple[np.ndarray, np.ndarray]:
    """Runs ``model.predict_logits`` (test-time views and ``tta_flip`` included) over ``dataloader`` in eval mode;
    returns (logits, labels) as NumPy arrays.

    The model's train/eval mode is restored afterwards. Under a trainer, its precision context (autocast on GPU)
    is used; logits are returned as float32 either way. Under DDP the data module's evaluation loaders give each
    rank its own shard of the images; the shards are gathered here, so every rank returns every image's logits
    (in rank order) and all ranks fit the same calibration.
    """
    was_training = model.training
    model.eval()
    context = trainer.precision_plugin.forward_context() if trainer is not None else nullcontext()
    logits = [torch.empty(0, device=model.device)]
    labels = [torch.empty(0, dtype=torch.long, device=model.device)]
    try:
        with context:
            for batch in dataloader:
                if "image" not in batch:  # every image of the batch was unreadable and skipped
                    continue
                n_tiles = batch.get("n_tiles")
                logits.append(model.predict_logits(batch["image"].to(model.device), n_tiles=n_tiles).float())
                labels.append(batch["label"].to(model.device).long())
    finally:
        model.train(was_training)
    z, y = torch.cat(logits), torch.cat(labels)
    if isinstance(getattr(dataloader, "sampler", None), DistributedSampler) and torch.distributed.is_initialized():
        z, y = torch.cat(gather_all_tensors(z)), torch.cat(gather_all_tensors(y))
    return z.cpu().numpy(), y.cpu().numpy()


@dataclass
class SplitOutputs:
    """One test split's outputs, one entry per image in dataset order: ``labels`` is -1 where unknown."""

    logits: np.ndarray
    labels: np.ndarray
    index: np.ndarray

    @property
    def labeled(self) -> bool:
        """Every label known and both classes present (what reports and reliability need)."""
        return bool((self.labels >= 0).all() and len(np.unique(self.labels)) == 2)


class TestOutputs:
    """Test logits, labels and dataset indices per split, filled by the model's ``test_step``.

    ``gathered()`` returns every rank's outputs on the CPU (duplicates from a padding sampler removed). Under
    DDP the first call gathers across ranks and caches the result, so callbacks just read it from their
    ``on_test_epoch_end`` (which Lightning runs on every rank); later reads are local.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, splits: list[str] | None = None):
        self.reset(splits or [])

    def reset(self, splits: list[str]) -> None:
        self._parts: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {s: [] for s in splits}
        self._gathered: dict[str, SplitOutputs] | None = None

    def add(self, split: str, logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> None:
        self._parts[split].append((logits.detach().float(), labels.long(), index.long()))
        self._gathered = None

    def gathered(self, world_size: int = 1) -> dict[str, SplitOutputs]:
        if self._gathered is None:
            out = {}
            for split, parts in self._parts.items():
                if not parts:
                    continue
                logits, labels, index = (torch.cat([p[k] for p in parts]) for k in range(3))
                if world_size > 1:  # shards may differ in length by one image: torchmetrics' gather pads
                    logits, labels, index = (torch.cat(gather_all_tensors(t)) for t in (logits, labels, index))
                index, first = np.unique(index.cpu().numpy(), return_index=True)
                out[split] = SplitOutputs(logits.cpu().numpy()[first], labels.cpu().numpy()[first], index)
            self._gathered = out
        return self._gathered
