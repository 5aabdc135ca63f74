"""``Calibration``: fits a calibrator and a decision threshold on validation data after training, stores
them in the checkpoints, and reports reliability and label shift at test time."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from deepfake_lightning.calibration import (
    CalibrationMethod,
    CalibrationState,
    Calibrator,
    calibration_metrics,
    check_criterion,
    check_fpr_bound,
    evaluation_of,
    plot_reliability,
    sigmoid,
    thresholded_metrics,
)
from deepfake_lightning.calibration.state import guarantee_line
from deepfake_lightning.callbacks._console import PrintsResults
from deepfake_lightning.callbacks._figures import publish_figure
from deepfake_lightning.checkpoints import load_checkpoint
from deepfake_lightning.errors import ConfigError
from deepfake_lightning.files import write_json
from deepfake_lightning.models.outputs import collect_logits
from deepfake_lightning.settings import UNCALIBRATED_THRESHOLD


class Calibration(PrintsResults):
    """Calibrates the detector on validation data when fitting ends, and reports calibration when testing.

    After ``fit``: for the best and the last checkpoint, collects the validation logits of those weights (every
    validation image, on every rank under DDP), fits the
    calibrator and picks the decision threshold, and writes both into the checkpoint file; the module ends with
    the best weights and their calibration. Writes ``calibration/calibration.json`` and a before/after
    reliability diagram (PNG and TensorBoard) to the run directory.

    At ``test``: logs NLL, Brier, ECE and MCE before (``..._before``) and after calibration per labeled split,
    with a reliability diagram each; for every split, the estimated AI share (EM) and BBSE cross-check, warning
    when they disagree (the images changed, not just the share); for splits in ``adapt_splits``, the
    prior-adapted threshold and the accuracy and F1 at it (``test/<split>/adapted_threshold``, ``.../adapted/acc``,
    ``.../adapted/f1``). At ``predict``, ``PredictionWriter`` applies the same adaptation: the CLI links
    ``calibration.adapt_splits`` and ``calibration.shift_tolerance`` to its arguments.

    Args:
        method: ``temperature`` (default), ``platt``, ``isotonic`` or ``none``.
        threshold: Criterion for the decision threshold: ``f1``, ``youden``, ``eer``, ``target_fpr=<a>``,
            ``fpr_bound=<a>`` (the lowest threshold whose false-positive rate is certified at most a: a one-sided
            Clopper-Pearson bound on the validation human images, at ``confidence``), ``fixed=<t>``.
        confidence: Confidence of the ``fpr_bound`` guarantee, in (0, 1).
        adapt_splits: Test splits whose threshold is adapted to their estimated AI share.
        shift_tolerance: Smallest |BBSE - EM| share gap that counts as "the images changed" (if also significant).
        n_bins: Bins of the ECE and the reliability diagrams.
    """

    def __init__(
        self,
        method: CalibrationMethod = "temperature",
        threshold: str = "f1",
        adapt_splits: list[str] | None = None,
        shift_tolerance: float = 0.05,
        n_bins: int = 15,
        confidence: float = 0.95,
    ):
        Calibrator(method)  # validates the name early
        if not 0.0 < confidence < 1.0:
            raise ConfigError(f"calibration.confidence must be in (0, 1), got {confidence}")
        try:
            check_criterion(threshold)
        except ValueError as e:
            raise ConfigError(f"calibration.threshold: {e}") from None
        self.method = method
        self.threshold = threshold
        self.adapt_splits = list(adapt_splits or [])
        self.shift_tolerance = shift_tolerance
        self.n_bins = n_bins
        self.confidence = confidence

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        name, _, arg = self.threshold.partition("=")
        dm = trainer.datamodule
        if stage == "fit" and name == "fpr_bound" and dm is not None and "val" in getattr(dm, "indexes", {}):
            # Before training, not after it: too few human validation images cannot certify the bound.
            check_fpr_bound(float(arg), self.confidence, int((dm.indexes["val"]["label"] == 0).sum()))

    # ------------------------------------------------------------------ after fit
    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.datamodule is None or trainer.interrupted:
            return
        if trainer.fast_dev_run:
            self.print_result("Calibration skipped under fast_dev_run (one batch says nothing about calibration).")
            return
        loader = trainer.datamodule.val_dataloader()
        ckpt = trainer.checkpoint_callback
        paths = [p for p in (getattr(ckpt, "last_model_path", ""), getattr(ckpt, "best_model_path", "")) if p]
        paths = list(dict.fromkeys(p for p in paths if os.path.isfile(p)))  # last first, best last
        state, failed = None, []
        for path in paths or [None]:
            if path is not None:
                weights = load_checkpoint(path, map_location=pl_module.device)["state_dict"]
                pl_module.load_state_dict(weights)
            z, y = collect_logits(pl_module, loader, trainer)
            try:
                evaluation = evaluation_of(trainer.datamodule.hparams, pl_module.hparams)
                state = CalibrationState.fit(z, y, self.method, self.threshold, evaluation, self.confidence)
            except ConfigError:
                raise  # e.g. too few human images to certify an fpr_bound: the user's setting, not a failed fit
            except ValueError as e:
                # Training finished; do not throw the run away. The checkpoint stays uncalibrated, loudly.
                # One line after the progress bar, not a Python warning with this file's path in front of it.
                self.print_result(
                    f"deepfake: warning: calibration failed for {Path(path).name if path else 'the final weights'}: "
                    f"{e}. That checkpoint is left uncalibrated (threshold 0.5); `deepfake calibrate` can retry "
                    "with another method or more validation data."
                )
                state = None
                failed.append(Path(path).name if path else "the final weights")
                continue
            if path is not None and trainer.is_global_zero:
                state.write_into(path)
            trainer.strategy.barrier()
        pl_module.calibration = state
        if state is None:
            return
        scalars = {k: v for k, v in state.summary().items() if isinstance(v, float)}
        scalars = {k if "/" in k else f"calibration/{k}": v for k, v in scalars.items()}
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in scalars.items()})
        self.print_result(
            f"Calibration ({self.method}): val ECE {state.val_before['ece']:.4f} -> {state.val_after['ece']:.4f}, "
            f"NLL {state.val_before['nll']:.4f} -> {state.val_after['nll']:.4f}; "
            f"threshold ({self.threshold}) {state.threshold:.4f}"
            # which weights these figures are for (the best checkpoint; the others get the same calibration)
            + (f" (for {Path(paths[-1]).name}" if paths else "")
            + (f"; {', '.join(failed)} left uncalibrated)" if failed else ")" if paths else "")
            + guarantee_line(state)
        )
        if state.calibrator.bound_line():
            self.print_result(f"Calibration: {state.calibrator.bound_line()}")
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask
        if not trainer.is_global_zero or log_dir is None:
            return
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=trainer.global_step)
        out = Path(log_dir) / "calibration"
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "calibration.json", state.summary() | {"checkpoints": paths})
        self._plot(trainer, log_dir, "val", {"before": (sigmoid(z), y), "after": (state.val_probs, y)})

    # ------------------------------------------------------------------ test
    def on_test_start(self, trainer: L.Trainer, pl_module) -> None:
        state, dm = pl_module.calibration, trainer.datamodule
        differs = state.evaluation_differs(dm.hparams, pl_module.hparams) if state and dm is not None else []
        if differs:
            rank_zero_warn(
                f"this evaluation uses {', '.join(differs)}: the calibration and threshold were fitted on logits "
                "computed otherwise, so probabilities and verdicts are off (pooled tiles score higher than one "
                "crop). Refit them for these settings: deepfake calibrate --config C --ckpt_path P "
                + " ".join(f"--{d.split(' ')[0]}" for d in differs)
            )

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        outputs = pl_module.test_outputs.gathered(trainer.world_size)
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask
        state = pl_module.calibration
        if state is None:
            rank_zero_warn(
                "This checkpoint has no calibration: probabilities are uncalibrated and the threshold is "
                f"{UNCALIBRATED_THRESHOLD}. "
                "Run `deepfake calibrate --config C --ckpt_path P` to add one."
            )
        scorer = pl_module.scorer
        for split, out in outputs.items():
            z, y = out.logits, out.labels
            probs = scorer.probs(z)
            logs = {}
            if out.labeled:
                before, after = (
                    calibration_metrics(sigmoid(z), y, self.n_bins),
                    calibration_metrics(probs, y, self.n_bins),
                )
                logs |= {f"test/{split}/{k}_before": v for k, v in before.items()}
                logs |= {f"test/{split}/{k}": v for k, v in after.items()}
                self._plot(trainer, log_dir, split, {"before": (sigmoid(z), y), "after": (probs, y)})
            if state is not None:
                report = state.label_shift(probs, self.shift_tolerance)
                logs |= {
                    f"test/{split}/ai_share_em": report["ai_share_em"],
                    f"test/{split}/ai_share_bbse": report["ai_share_bbse"],
                    f"test/{split}/shift_disagreement": report["disagreement"],
                }
                if report["images_changed"]:
                    rank_zero_warn(
                        f"{split}: the estimated AI share disagrees between EM ({report['ai_share_em']:.3f}) and BBSE "
                        f"(largest gap {report['disagreement']:.3f}, bootstrap p = {report['p_value']:.3f}): "
                        "the images changed (e.g. a new generator or post-processing), not only the share of AI "
                        "images. Prior-corrected thresholds do not fix that; labeled data from this distribution is "
                        "needed to recalibrate."
                    )
                if split in self.adapt_splits:
                    t = report["adapted_threshold"]
                    logs[f"test/{split}/adapted_threshold"] = t
                    if (y >= 0).all():
                        adapted = thresholded_metrics(probs, y, t)
                        logs[f"test/{split}/adapted/acc"] = adapted["acc"]
                        logs[f"test/{split}/adapted/f1"] = adapted["f1"]
            pl_module.log_dict({k: float(v) for k, v in logs.items()}, add_dataloader_idx=False, rank_zero_only=True)

    # ------------------------------------------------------------------ helpers
    def _plot(self, trainer: L.Trainer, log_dir: str | None, split: str, curves: dict) -> None:
        if not trainer.is_global_zero or log_dir is None:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig = plot_reliability(curves, title=f"Reliability: {split}", n_bins=self.n_bins)
        publish_figure(
            trainer, fig, Path(log_dir) / "calibration" / f"reliability_{split}.png", f"calibration/reliability_{split}"
        )
