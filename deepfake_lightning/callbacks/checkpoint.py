"""``RunCheckpoint``: Lightning's ModelCheckpoint, plus a ``last.ckpt`` refreshed every N training steps and the
random-number-generator states, so that ``deepfake fit --ckpt_path last`` resumes a killed run."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from deepfake_lightning.errors import ConfigError


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint (best checkpoints by the monitored metric at validation, ``last.ckpt`` at every validation,
    which Lightning 2.6 does only when a best checkpoint was saved) that also rewrites ``last.ckpt`` every
    ``last_every_n_steps`` optimizer steps, mid-epoch included: a kill loses at most that many
    steps. Its state in the checkpoint carries the Python, NumPy and torch RNG states, restored on resume.
    Weights that are no longer finite are never written over ``last.ckpt``: after a numerical fault the last
    good checkpoint stays, and the error says where it is.

    Args:
        last_every_n_steps: Refresh ``last.ckpt`` this often (optimizer steps); None or 0 only at validation.
        *args, **kwargs: ``ModelCheckpoint``'s.
    """

    def __init__(self, *args, last_every_n_steps: int | None = 500, **kwargs):
        super().__init__(*args, **kwargs)
        if last_every_n_steps is not None and last_every_n_steps < 0:
            raise ConfigError(f"checkpoint.last_every_n_steps must be >= 0, got {last_every_n_steps}")
        self.last_every_n_steps = last_every_n_steps

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        n, step = self.last_every_n_steps, trainer.global_step
        if (
            not n
            or not self.save_last
            or step == 0
            or step % n
            or self._last_global_step_saved == step
            or trainer.sanity_checking
            or trainer.fast_dev_run
        ):
            return
        if not all(torch.isfinite(p).all() for p in pl_module.parameters()):
            rank_zero_warn(
                f"Non-finite weights at global step {step}: last.ckpt not refreshed, keeping "
                f"{self.last_model_path or 'no checkpoint yet'}"
            )
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    # Lightning (2.6) rewrites last.ckpt only when a top-k checkpoint was saved at the same step, so after the best
    # epoch last.ckpt would stop following training. It is the latest state: once ModelCheckpoint has done its
    # end-of-epoch (or end-of-validation) saving, last.ckpt is rewritten if it was not already.
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer, pl_module)

    def _refresh_last(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.save_last or self._should_skip_saving_checkpoint(trainer):  # also: already saved at this step
            return
        if not all(torch.isfinite(p).all() for p in pl_module.parameters()):
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        if isinstance(exception, KeyboardInterrupt) and trainer.state.fn == "fit":  # Ctrl+C: say how to go on
            kept = self.last_model_path or self.best_model_path
            rank_zero_info(
                f"Interrupted. The latest checkpoint is {kept}: resume this run with the same command plus "
                f"--ckpt_path last (or --ckpt_path {kept})"
                if kept
                else "Interrupted before the first checkpoint was written: nothing to resume."
            )
        if isinstance(exception, FloatingPointError) and exception.args:
            kept = self.last_model_path or self.best_model_path
            note = (
                f"; the last good checkpoint is kept: {kept} (resume with --ckpt_path last)"
                if kept
                else "; no checkpoint had been written yet"
            )
            exception.args = (str(exception.args[0]) + note, *exception.args[1:])

    def state_dict(self) -> dict[str, Any]:
        states = _collect_rng_states()
        # NumPy's state holds an ndarray, which torch.load(weights_only=True) (Lightning's default) refuses:
        # store it as a tensor, so that the checkpoint stays loadable without unpickling arbitrary objects.
        kind, keys, pos, has_gauss, gauss = states["numpy"]
        states["numpy"] = (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))
        return {**super().state_dict(), "rng_states": states}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "rng_states" in state_dict:
            states = dict(state_dict["rng_states"])
            kind, keys, pos, has_gauss, gauss = states["numpy"]
            states["numpy"] = (kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss)
            _set_rng_states(states)
