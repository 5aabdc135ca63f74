"""``Throughput``: training images per second, for sweeps and benchmarks."""

from __future__ import annotations

import time

from lightning.pytorch.callbacks import Callback


class Throughput(Callback):
    """Training images per second (time spent in training epochs only)."""

    def __init__(self):
        self.images, self.seconds, self._start, self.epochs = 0, 0.0, 0.0, 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()
        self.epochs += 1  # epochs started: a pruned trial stops after its epoch's validation

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if isinstance(batch, dict) and "label" in batch:
            self.images += len(batch["label"])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds += time.perf_counter() - self._start

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds else float("nan")
