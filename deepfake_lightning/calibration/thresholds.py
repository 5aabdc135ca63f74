"""Decision thresholds and the metrics at a threshold: the one implementation behind ``report.json``, calibration
summaries and sweep objectives (torchmetrics computes the same figures during training).

Convention throughout: predict AI-generated when ``prob >= threshold`` (scikit-learn's ``roc_curve`` convention).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_curve,
)

from deepfake_lightning.calibration.calibrators import _check
from deepfake_lightning.errors import ConfigError

THRESHOLD_CRITERIA = ("f1", "youden", "eer", "target_fpr", "fixed")


def thresholded_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (binary and macro), accuracy on human and on AI images, and the
    confusion counts, predicting AI when ``prob >= threshold``."""
    y = np.asarray(labels).astype(int)
    pred = (np.asarray(probs) >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return {
        "threshold": float(threshold),
        "acc": float(accuracy_score(y, pred)),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "f1_macro": float(f1_score(y, pred, average="macro", zero_division=0)),
        "acc_human": float(tn / max(1, tn + fp)),
        "acc_ai": float(tp / max(1, tp + fn)),
        "tn": int(tn),
        "fp": int(fp),
        "fn": int(fn),
        "tp": int(tp),
    }


def equal_error_point(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The equal error rate and the threshold that comes closest to it.

    The one EER definition of the package: walk scikit-learn's ROC curve (every distinct score a threshold) to
    where the false-negative rate ``1 - TPR`` crosses the false-positive rate; the EER is the rate at the crossing,
    linearly interpolated between the two ROC points around it. The threshold is the one of those two points with
    the smaller ``|FNR - FPR|`` (a real score, so that ``prob >= threshold`` reproduces its rates).
    """
    p, y = _check(probs, labels)
    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    fpr, fnr, thresholds = fpr[1:], 1 - tpr[1:], thresholds[1:]  # the first point (threshold +inf) predicts nothing AI
    gap = fnr - fpr  # non-increasing along the curve
    i = int(np.argmax(gap <= 0)) if (gap <= 0).any() else len(gap) - 1
    if i == 0 or gap[i] == gap[i - 1]:
        eer = (fpr[i] + fnr[i]) / 2
    else:
        w = gap[i - 1] / (gap[i - 1] - gap[i])
        eer = fpr[i - 1] + w * (fpr[i] - fpr[i - 1])
    best = i if i == 0 or abs(gap[i]) <= abs(gap[i - 1]) else i - 1
    return float(eer), float(thresholds[best])


def equal_error_rate(probs: np.ndarray, labels: np.ndarray) -> float:
    """The equal error rate of :func:`equal_error_point`."""
    return equal_error_point(probs, labels)[0]


def choose_threshold(probs: np.ndarray, labels: np.ndarray, criterion: str = "f1") -> float:
    """Decision threshold on AI probabilities, chosen on labelled validation data.

    Criteria: ``f1`` (maximum F1 over sklearn's precision-recall curve), ``youden`` (maximum TPR - FPR over
    sklearn's ROC curve), ``eer`` (the threshold of :func:`equal_error_point`), ``target_fpr=<a>`` (the lowest
    threshold whose FPR is at most a, i.e. the highest recall allowed), ``fixed=<t>``.
    """
    name, _, arg = criterion.partition("=")
    if name == "fixed":
        return float(arg)
    p, y = _check(probs, labels)
    if name == "f1":
        precision, recall, thresholds = precision_recall_curve(y, p)
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        return float(thresholds[int(np.argmax(f1[:-1]))])
    if name == "eer":
        return equal_error_point(p, y)[1]
    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    finite = np.isfinite(thresholds)  # sklearn's first threshold is +inf (predict nothing positive)
    fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
    if name == "youden":
        return float(thresholds[int(np.argmax(tpr - fpr))])
    if name == "target_fpr":
        alpha = float(arg)
        ok = np.flatnonzero(fpr <= alpha)
        return float(thresholds[ok[-1]]) if ok.size else float(np.nextafter(p.max(), np.inf))
    raise ConfigError(f"unknown threshold criterion {criterion!r}; use f1, youden, eer, target_fpr=<a> or fixed=<t>")


def check_criterion(criterion: str) -> str:
    """``criterion`` if it names a known criterion, else a ValueError listing them."""
    if criterion.partition("=")[0] not in THRESHOLD_CRITERIA:
        raise ConfigError(
            f"unknown threshold criterion {criterion!r}; use f1, youden, eer, target_fpr=<a> or fixed=<t>"
        )
    return criterion
