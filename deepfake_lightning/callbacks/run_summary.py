"""``FitSummary``: says why ``fit`` stopped when it is not the obvious reason (``max_epochs``)."""

from __future__ import annotations

from lightning.pytorch.callbacks import Timer

from deepfake_lightning.callbacks._console import PrintsResults


class FitSummary(PrintsResults):
    """After ``fit``, one line when ``trainer.max_time`` ended it, saying where: Lightning's timer stops in the middle
    of an epoch, so the last epoch was neither finished nor validated, and the checkpoints and the calibration come
    from the last validation before it."""

    def on_fit_end(self, trainer, pl_module) -> None:
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        remaining = timer.time_remaining("train") if timer is not None else None
        if remaining is None or remaining > 0:
            return
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
        self.print_result(
            f"Stopped by trainer.max_time after {timer.time_elapsed('train'):.0f} s of training, in {where}{source}."
        )
