"""``FitSummary``: says why ``fit`` stopped when it is not the obvious reason (``max_epochs``)."""

from __future__ import annotations

import time
from datetime import timedelta

from lightning.pytorch.callbacks import Timer

from deepfake_lightning.callbacks._console import PrintsResults


class FitSummary(PrintsResults):
    """After ``fit``, one line when ``trainer.max_time`` ended it, saying where: Lightning's timer stops in the middle
    of an epoch, so the last epoch was neither finished nor validated, and the checkpoints and the calibration come
    from the last validation before it.

    Args:
        max_time: the trainer's ``max_time`` in any of its forms (the CLI passes it): the budget this callback
            compares its own clock with, instead of searching the trainer's callbacks for Lightning's timer.
    """

    def __init__(self, max_time: str | timedelta | dict[str, int] | None = None):
        # Lightning's own parsing of the forms max_time takes; this Timer is never registered with a trainer.
        self.budget = Timer(duration=max_time).time_remaining("train") if max_time is not None else None
        self._start = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = time.monotonic()

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.budget is None or self._start is None or not trainer.should_stop:
            return
        elapsed = time.monotonic() - self._start
        if elapsed < self.budget:
            return  # stopped by something else (early stopping, a pruner)
        epoch_loop = trainer.fit_loop.epoch_loop
        done, total = epoch_loop.batch_progress.current.completed, trainer.num_training_batches
        where = f"epoch {trainer.current_epoch} after {done} of {total} batches (global step {trainer.global_step})"
        if done < total:
            where += "; that epoch was not finished or validated"
        source = (
            "; checkpoints and calibration come from the last validation "
            f"({trainer.checkpoint_callback.last_model_path})"
            if getattr(trainer.checkpoint_callback, "last_model_path", "")
            else ""
        )
        self.print_result(f"Stopped by trainer.max_time after {elapsed:.0f} s of training, in {where}{source}.")
