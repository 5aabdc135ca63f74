"""Calibration, reliability and decision thresholds for a one-logit detector (1 = AI-generated), on NumPy arrays.

* ``calibrators``: temperature scaling (Newton's method on the NLL to a ~0 gradient), Platt scaling and isotonic
  regression, serialisable; NLL, Brier score, ECE and MCE over equal-width bins with the positive-class definition
  of torchmetrics' ``BinaryCalibrationError``; the reliability diagram.
* ``thresholds``: thresholds chosen on validation data by a criterion (``f1``, ``youden``, ``eer``,
  ``target_fpr=a``, ``fixed=t``), the metrics at a threshold, and the package's one EER definition.
* ``label_shift``: EM and BBSE estimates of the AI share of an unlabeled split, and the prior-corrected threshold.
* ``state``: ``CalibrationState``, the typed result shared by the model, checkpoints, exports, sweeps and the CLI.
"""

from deepfake_lightning.calibration.calibrators import (
    CalibrationMethod,
    Calibrator,
    calibration_metrics,
    fit_temperature,
    logit,
    plot_reliability,
    reliability_bins,
    sigmoid,
)
from deepfake_lightning.calibration.label_shift import (
    PriorEstimate,
    adapt_threshold,
    bbse_prior,
    em_prior,
    joint_confusion,
    label_shift_report,
)
from deepfake_lightning.calibration.state import CalibrationState, evaluation_of
from deepfake_lightning.calibration.thresholds import (
    THRESHOLD_CRITERIA,
    check_criterion,
    check_fpr_bound,
    choose_threshold,
    equal_error_point,
    equal_error_rate,
    thresholded_metrics,
)

__all__ = [
    "evaluation_of",
    "THRESHOLD_CRITERIA",
    "CalibrationMethod",
    "CalibrationState",
    "Calibrator",
    "PriorEstimate",
    "adapt_threshold",
    "bbse_prior",
    "calibration_metrics",
    "check_criterion",
    "check_fpr_bound",
    "choose_threshold",
    "em_prior",
    "equal_error_point",
    "equal_error_rate",
    "fit_temperature",
    "joint_confusion",
    "label_shift_report",
    "logit",
    "plot_reliability",
    "reliability_bins",
    "sigmoid",
    "thresholded_metrics",
]
