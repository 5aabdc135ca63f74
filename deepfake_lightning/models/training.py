"""Training schedules: the default learning-rate schedule and ``FreezeBackbone``, the transfer-learning warm-up
(head only, then the whole network)."""

from __future__ import annotations

import math

import torch
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup_steps`` then cosine decay to zero at ``total_steps`` (stepped per optimizer step)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class FreezeBackbone(BaseFinetuning):
    """Trains only the classifier head for the first ``epochs`` epochs, then the whole network.

    Frozen parameters stay in the optimizer with no gradient, which AdamW and SGD skip; unfreezing
    therefore needs no new parameter group and keeps the learning-rate schedule intact.
    """

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    @staticmethod
    def _body(pl_module) -> list[nn.Module]:
        head = pl_module.net.get_classifier()
        return [m for m in pl_module.net.children() if m is not head and head not in list(m.modules())]

    def freeze_before_training(self, pl_module) -> None:
        self.freeze(self._body(pl_module), train_bn=False)

    def finetune_function(self, pl_module, epoch: int, optimizer) -> None:
        if epoch == self.epochs:
            self.make_trainable(self._body(pl_module))


def configure_optimizers(module) -> dict:
    """A ``DeepfakeClassifier``'s optimizer (``model.optimizer``) over all its parameters, frozen ones included
    (they have no gradient while frozen, so the optimizer skips them), with ``model.scheduler`` stepped each epoch,
    or by default :func:`warmup_cosine` over the run's optimizer steps, stepped each step."""
    optimizer = module.optimizer_factory(module.parameters())
    if module.scheduler_factory is not None:
        return {"optimizer": optimizer, "lr_scheduler": module.scheduler_factory(optimizer)}
    trainer = module.trainer
    total = max(1, int(trainer.estimated_stepping_batches))
    epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 1
    scheduler = warmup_cosine(optimizer, min(total - 1, round(module.hparams.warmup_epochs * total / epochs)), total)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
