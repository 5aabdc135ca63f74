"""``Calibration``: fits a calibrator and a decision threshold on validation data after training, stores
them in the checkpoints, and reports reliability and label shift at test time."""

from __future__ import annotations

import os
import warnings
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DistributedSampler
from torchmetrics.utilities.distributed import gather_all_tensors

from deepfake_lightning.callbacks._console import PrintsResults
from deepfake_lightning.callbacks._figures import publish_figure
from deepfake_lightning.calibration import (
    CalibrationMethod,
    Calibrator,
    calibration_metrics,
    choose_threshold,
    label_shift_report,
    plot_reliability,
    sigmoid,
)
from deepfake_lightning.files import atomic_path, write_json


@torch.inference_mode()
def collect_logits(
    model: L.LightningModule, dataloader, trainer: L.Trainer | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Runs ``model`` over ``dataloader`` in eval mode; returns (logits, labels) as NumPy arrays.

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
                batch.pop("skipped", None)
                if "image" not in batch:
                    continue
                images = batch["image"].to(model.device)
                # The model's evaluation logits (test-time views, tta_flip), as validation, test and predict use.
                predict = getattr(model, "predict_logits", model)
                logits.append(predict(images).float())
                labels.append(batch["label"].to(model.device).long())
    finally:
        model.train(was_training)
    z, y = torch.cat(logits), torch.cat(labels)
    if isinstance(getattr(dataloader, "sampler", None), DistributedSampler) and torch.distributed.is_initialized():
        z, y = torch.cat(gather_all_tensors(z)), torch.cat(gather_all_tensors(y))
    return z.cpu().numpy(), y.cpu().numpy()


def fit_calibration(
    logits: np.ndarray, labels: np.ndarray, method: CalibrationMethod = "temperature", threshold: str = "f1"
) -> dict:
    """The calibration state stored in a checkpoint: calibrator, threshold (chosen on the calibrated
    validation probabilities), and the validation probabilities and metrics before and after."""
    calibrator = Calibrator.fit(logits, labels, method)
    probs = calibrator(logits)
    return {
        "calibrator": calibrator.state_dict(),
        "threshold": choose_threshold(probs, labels, threshold),
        "criterion": threshold,
        "val_probs": torch.from_numpy(probs).float(),
        "val_labels": torch.from_numpy(np.asarray(labels)).to(torch.int8),
        "val_before": calibration_metrics(sigmoid(logits), labels),
        "val_after": calibration_metrics(probs, labels),
        "adapted_thresholds": {},
    }


def write_calibration(ckpt_path: str | os.PathLike, state: dict, out_path: str | os.PathLike | None = None) -> Path:
    """Adds ``state`` to a checkpoint file (in place, or as ``out_path``), atomically."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    ckpt["calibration"] = state
    out = Path(out_path or ckpt_path)
    with atomic_path(out) as tmp:
        torch.save(ckpt, tmp)
    return out


def summary(state: dict) -> dict:
    """Scalar view of a calibration state, for logs and ``calibration.json``."""
    cal = state["calibrator"]
    out = {"method": cal["method"], "threshold": state["threshold"], "criterion": state["criterion"]}
    if cal["method"] == "temperature":
        out["temperature"] = cal["temperature"]
    if cal["method"] == "platt":
        out["platt_a"], out["platt_b"] = cal["platt"]
    out |= {f"val/{k}_before": v for k, v in state["val_before"].items()}
    out |= {f"val/{k}": v for k, v in state["val_after"].items()}
    return out


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
    prior-adapted threshold, stored in the module's calibration for prediction.

    Args:
        method: ``temperature`` (default), ``platt``, ``isotonic`` or ``none``.
        threshold: Criterion for the decision threshold: ``f1``, ``youden``, ``eer``, ``target_fpr=<a>``, ``fixed=<t>``.
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
    ):
        Calibrator(method)  # validates the name early
        if threshold.partition("=")[0] not in ("f1", "youden", "eer", "target_fpr", "fixed"):
            raise ValueError(f"calibration.threshold: unknown criterion {threshold!r}")
        self.method = method
        self.threshold = threshold
        self.adapt_splits = list(adapt_splits or [])
        self.shift_tolerance = shift_tolerance
        self.n_bins = n_bins

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
        state = None
        for path in paths or [None]:
            if path is not None:
                weights = torch.load(path, map_location=pl_module.device, weights_only=False)["state_dict"]
                pl_module.load_state_dict(weights)
            z, y = collect_logits(pl_module, loader, trainer)
            try:
                state = fit_calibration(z, y, self.method, self.threshold)
            except ValueError as e:
                # Training finished; do not throw the run away. The checkpoint stays uncalibrated, loudly.
                rank_zero_warn(f"Calibration failed for {path or 'the final weights'}: {e}. The checkpoint is left "
                               "uncalibrated (threshold 0.5); `deepfake calibrate` can retry with another method.")
                state = None
                continue
            if path is not None and trainer.is_global_zero:
                write_calibration(path, state)
            trainer.strategy.barrier()
        pl_module.calibration = state
        if state is None:
            return
        scalars = {k: v for k, v in summary(state).items() if isinstance(v, float)}
        scalars = {k if "/" in k else f"calibration/{k}": v for k, v in scalars.items()}
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in scalars.items()})
        self.print_result(
            f"Calibration ({self.method}): val ECE {state['val_before']['ece']:.4f} -> {state['val_after']['ece']:.4f}, "
            f"NLL {state['val_before']['nll']:.4f} -> {state['val_after']['nll']:.4f}; "
            f"threshold ({self.threshold}) {state['threshold']:.4f}"
        )
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask
        if not trainer.is_global_zero or log_dir is None:
            return
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=trainer.global_step)
        out = Path(log_dir) / "calibration"
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "calibration.json", summary(state) | {"checkpoints": paths})
        self._plot(trainer, log_dir, "val", {"before": (sigmoid(z), y), "after": (state["val_probs"].numpy(), y)})

    # ------------------------------------------------------------------ test
    def on_test_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        outputs = pl_module.gathered_test_outputs()
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask
        state = pl_module.calibration
        if state is None:
            rank_zero_warn(
                "This checkpoint has no calibration: probabilities are uncalibrated and the threshold is 0.5. "
                "Run `deepfake calibrate --config C --ckpt_path P` to add one."
            )
        calibrator, threshold = pl_module.calibrator, pl_module.threshold
        for split, (logits, labels, _) in outputs.items():
            z, y = logits.numpy(), labels.numpy()
            probs = calibrator(z)
            logs = {}
            if (y >= 0).all() and len(np.unique(y)) == 2:
                before, after = calibration_metrics(sigmoid(z), y, self.n_bins), calibration_metrics(probs, y, self.n_bins)
                logs |= {f"test/{split}/{k}_before": v for k, v in before.items()}
                logs |= {f"test/{split}/{k}": v for k, v in after.items()}
                self._plot(trainer, log_dir, split, {"before": (sigmoid(z), y), "after": (probs, y)})
            if state is not None:
                report = label_shift_report(state["val_probs"].numpy(), state["val_labels"].numpy(), probs, threshold,
                                            self.shift_tolerance)
                logs |= {f"test/{split}/ai_share_em": report["ai_share_em"],
                         f"test/{split}/ai_share_bbse": report["ai_share_bbse"],
                         f"test/{split}/shift_disagreement": report["disagreement"]}
                if report["images_changed"]:
                    rank_zero_warn(
                        f"{split}: the estimated AI share disagrees between EM ({report['ai_share_em']:.3f}) and BBSE "
                        f"(largest gap {report['disagreement']:.3f}, bootstrap p = {report['p_value']:.3f}): the images changed "
                        "(e.g. a new generator or post-processing), not only the share of AI images. Prior-corrected "
                        "thresholds do not fix that; labeled data from this distribution is needed to recalibrate."
                    )
                if split in self.adapt_splits:
                    t = report["adapted_threshold"]
                    state.setdefault("adapted_thresholds", {})[split] = t
                    logs[f"test/{split}/adapted_threshold"] = t
                    if (y >= 0).all():
                        pred = probs >= t
                        tp = float(np.sum(pred & (y == 1)))
                        logs[f"test/{split}/adapted/acc"] = float(np.mean(pred == y))
                        logs[f"test/{split}/adapted/f1"] = 2 * tp / max(1.0, float(pred.sum() + (y == 1).sum()))
            pl_module.log_dict({k: float(v) for k, v in logs.items()}, add_dataloader_idx=False, rank_zero_only=True)

    # ------------------------------------------------------------------ helpers
    def _plot(self, trainer: L.Trainer, log_dir: str | None, split: str, curves: dict) -> None:
        if not trainer.is_global_zero or log_dir is None:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig = plot_reliability(curves, title=f"Reliability: {split}", n_bins=self.n_bins)
        publish_figure(trainer, fig, Path(log_dir) / "calibration" / f"reliability_{split}.png",
                       f"calibration/reliability_{split}")
