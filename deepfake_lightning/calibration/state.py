"""``CalibrationState``: what calibrating a detector produced, the one object that the model, checkpoints, exports,
evaluation, sweeps and the CLI share."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepfake_lightning.calibration.calibrators import CalibrationMethod, Calibrator, calibration_metrics, sigmoid
from deepfake_lightning.calibration.label_shift import label_shift_report
from deepfake_lightning.calibration.thresholds import choose_threshold, fpr_bound_threshold
from deepfake_lightning.settings import DEFAULTS, InferenceSettings


@dataclass
class CalibrationState:
    """A fitted calibration, stored under ``"calibration"`` in checkpoints and in an export's ``detector.json``.

    Fields:
        calibrator: Maps logits to calibrated AI probabilities (method and parameters).
        threshold: Decision threshold on calibrated probabilities (predict AI when ``prob >= threshold``).
        criterion: How ``threshold`` was chosen on validation data (``f1``, ``youden``, ``eer``,
            ``target_fpr=<a>``, ``fixed=<t>``).
        val_probs: Calibrated probabilities of every validation image (float32), the reference for label-shift
            estimation on unlabeled splits.
        val_labels: Their labels (int8, 1 = AI-generated).
        val_before: NLL, Brier, ECE and MCE of the uncalibrated validation probabilities.
        val_after: The same after calibration.
        guarantee: With ``fpr_bound=<a>``: the false-positive guarantee the threshold carries, ``certified_fpr`` (the
            one-sided Clopper-Pearson upper bound on the validation human images), ``target``, ``confidence``,
            ``n_human`` and ``false_positives`` (``thresholds.fpr_bound_threshold``); empty otherwise.
        evaluation: How the validation logits were computed: ``data`` (``eval_views``, ``tile_stride``,
            ``max_tiles``) and ``model`` (``tile_pooling``, ``tile_topk``) settings. A model's verdicts use them by
            default (``checkpoints.stored_settings`` lays them over the stored training settings), since the
            calibration and threshold fit only logits computed that way: pooled tile logits sit higher than those
            of one crop.

    In a checkpoint the state is a plain dict of these fields (the calibrator as its ``state_dict()``, the
    validation arrays as torch tensors); in JSON the arrays are lists. Older files with an extra
    ``adapted_thresholds`` key load unchanged (the key is ignored).
    """

    calibrator: Calibrator
    threshold: float
    criterion: str
    val_probs: np.ndarray
    val_labels: np.ndarray
    val_before: dict[str, float] = field(default_factory=dict)
    val_after: dict[str, float] = field(default_factory=dict)
    evaluation: dict[str, dict] = field(default_factory=dict)
    guarantee: dict[str, float] = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        logits: np.ndarray,
        labels: np.ndarray,
        method: CalibrationMethod = "temperature",
        criterion: str = "f1",
        evaluation: dict[str, dict] | None = None,
        confidence: float = 0.95,
    ) -> CalibrationState:
        """Fits the calibrator on validation logits, then the threshold on the calibrated probabilities;
        ``evaluation`` records how the logits were computed (see the class docstring, and :func:`evaluation_of`).

        Raises:
            ValueError: On single-class or non-finite inputs, or a calibrator that cannot be fitted.
        """
        calibrator = Calibrator.fit(logits, labels, method)
        probs = calibrator(logits)
        guarantee = {}
        if criterion.startswith("fpr_bound="):
            guarantee = fpr_bound_threshold(probs, labels, float(criterion.partition("=")[2]), confidence)
            threshold = guarantee.pop("threshold")
        else:
            threshold = choose_threshold(probs, labels, criterion)
        return cls(
            calibrator=calibrator,
            threshold=threshold,
            criterion=criterion,
            val_probs=probs.astype(np.float32),
            val_labels=np.asarray(labels).astype(np.int8),
            val_before=calibration_metrics(sigmoid(logits), labels),
            val_after=calibration_metrics(probs, labels),
            evaluation=dict(evaluation or {}),
            guarantee=guarantee,
        )

    # ------------------------------------------------------------------ use
    def probs(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated AI probabilities (float64) of ``logits``."""
        return self.calibrator(logits)

    def label_shift(self, target_probs: np.ndarray, tolerance: float = 0.05) -> dict:
        """:func:`label_shift_report` of an unlabeled split's calibrated probabilities against validation."""
        return label_shift_report(
            self.val_probs.astype(np.float64), self.val_labels, target_probs, self.threshold, tolerance
        )

    def summary(self) -> dict[str, Any]:
        """Scalar view for logs and ``calibration.json``: method, its parameters, threshold, criterion, and the
        validation metrics before (``val/<m>_before``) and after (``val/<m>``)."""
        cal = self.calibrator
        out: dict[str, Any] = {"method": cal.method, "threshold": self.threshold, "criterion": self.criterion}
        if cal.method == "temperature":
            out["temperature"] = cal.temperature
            if cal.bounded_on is not None:  # temperature_bound stopped the fit (calibrators.py)
                out["temperature_bounded_on"] = cal.bounded_on
                out["temperature_unbounded"] = cal.unbounded_temperature
        if cal.method == "platt":
            out["platt_a"], out["platt_b"] = cal.platt
        out |= {f"fpr_guarantee/{k}": v for k, v in self.guarantee.items()}
        out |= {f"val/{k}_before": v for k, v in self.val_before.items()}
        out |= {f"val/{k}": v for k, v in self.val_after.items()}
        return out

    # ------------------------------------------------------------------ storage
    def to_checkpoint(self) -> dict:
        import torch

        return {
            "calibrator": self.calibrator.state_dict(),
            "threshold": float(self.threshold),
            "criterion": self.criterion,
            "val_probs": torch.from_numpy(np.asarray(self.val_probs, dtype=np.float32)),
            "val_labels": torch.from_numpy(np.asarray(self.val_labels, dtype=np.int8)),
            "val_before": dict(self.val_before),
            "val_after": dict(self.val_after),
            "evaluation": {k: dict(v) for k, v in self.evaluation.items()},
            "guarantee": dict(self.guarantee),
        }

    @classmethod
    def from_checkpoint(cls, state: dict | None) -> CalibrationState | None:
        """The state stored by :meth:`to_checkpoint` (or :meth:`to_json`); None for None."""
        if state is None:
            return None
        missing = [k for k in ("calibrator", "threshold", "criterion", "val_probs", "val_labels") if k not in state]
        if missing:
            raise ValueError(f"calibration state without {missing}")
        return cls(
            calibrator=Calibrator.from_state_dict(state["calibrator"]),
            threshold=float(state["threshold"]),
            criterion=str(state["criterion"]),
            val_probs=np.asarray(state["val_probs"], dtype=np.float32),
            val_labels=np.asarray(state["val_labels"], dtype=np.int8),
            val_before={k: float(v) for k, v in state.get("val_before", {}).items()},
            val_after={k: float(v) for k, v in state.get("val_after", {}).items()},
            evaluation={k: dict(v) for k, v in state.get("evaluation", {}).items()},
            guarantee=dict(state.get("guarantee", {})),
        )

    def to_json(self, threshold: bool = True) -> dict:
        """JSON-ready :meth:`to_checkpoint`; ``threshold=False`` leaves the threshold out (an export folder keeps
        its one threshold at the top level of ``detector.json``)."""
        out = self.to_checkpoint()
        if not threshold:
            del out["threshold"]
        out["calibrator"]["platt"] = list(out["calibrator"]["platt"])
        out["val_probs"], out["val_labels"] = self.val_probs.tolist(), self.val_labels.astype(int).tolist()
        return out

    from_json = from_checkpoint

    def evaluation_differs(self, data: dict, model: dict) -> list[str]:
        """The evaluation settings of ``data`` / ``model`` hyperparameters that differ from those calibrated on, as
        ``section.key=value (calibrated with value)``; empty when they agree or nothing was recorded (older files)."""
        now = evaluation_of(data, model)
        return [
            f"{section}.{key}={value} (calibrated with {self.evaluation[section][key]})"
            for section, values in now.items()
            for key, value in values.items()
            if key in self.evaluation.get(section, {}) and self.evaluation[section][key] != value
        ]

    def write_into(self, ckpt_path: str | os.PathLike, out_path: str | os.PathLike | None = None) -> Path:
        """Stores this state in a checkpoint file (in place, or as a copy at ``out_path``), atomically. Test results
        that an earlier version recorded in the file are dropped: they were measured with another calibration."""
        from deepfake_lightning.checkpoints import update_checkpoint

        def calibrate(ckpt: dict) -> None:
            ckpt["calibration"] = self.to_checkpoint()
            for key in ("test", "test_settings", "test_report"):
                ckpt.get("provenance", {}).pop(key, None)

        return update_checkpoint(ckpt_path, calibrate, out_path)


EVALUATION_KEYS = InferenceSettings.EVALUATION_KEYS


def _tiles(data: dict) -> bool:
    return data.get("eval_views") == "tiles"


def evaluation_of(data: dict, model: dict) -> dict[str, dict]:
    """The :attr:`CalibrationState.evaluation` record of data-module and model hyperparameters: the settings that
    change validation logits (the tile settings only matter, and are only kept, with ``eval_views: tiles``)."""
    out = {"data": {"eval_views": data.get("eval_views", DEFAULTS.eval_views)}}
    if _tiles(data):
        out["data"] |= {k: data.get(k) for k in EVALUATION_KEYS["data"][1:]}
        out["model"] = {k: model.get(k) for k in EVALUATION_KEYS["model"] if k in model}
    return out


def guarantee_line(state: CalibrationState | None) -> str:
    """``"; false-positive rate <= 0.98 % at 95 % confidence (certified on 957 human images, 4 above the
    threshold)"`` for a state with an ``fpr_bound`` guarantee, else empty."""
    g = state.guarantee if state is not None else {}
    if not g:
        return ""
    return (
        f"; false-positive rate <= {g['certified_fpr']:.2%} at {g['confidence']:.0%} confidence (certified on "
        f"{g['n_human']} human validation images, {g['false_positives']} at or above the threshold)"
    )
