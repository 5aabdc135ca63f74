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

THRESHOLD_CRITERIA = ("f1", "youden", "eer", "target_fpr", "fpr_bound", "fixed")
CRITERIA_HELP = "f1, youden, eer, target_fpr=<a>, fpr_bound=<a> or fixed=<t>"


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
        "fpr": float(fp / max(1, tn + fp)),  # human images called AI: the costly error
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


def clopper_pearson_upper(false_positives: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper confidence bound on a rate from ``false_positives`` of ``n``."""
    from scipy.stats import beta

    return 1.0 if false_positives >= n else float(beta.ppf(confidence, false_positives + 1, n - false_positives))


def humans_needed(target: float, confidence: float = 0.95) -> int:
    """The fewest human images that certify a false-positive rate of ``target`` at ``confidence`` (with no false
    positive among them): 299 for 1 % at 95 %, 59 for 5 %."""
    n = int(np.ceil(np.log(1 - confidence) / np.log1p(-target)))
    while clopper_pearson_upper(0, n, confidence) > target:  # guard the floating-point edge
        n += 1
    return n


def check_fpr_bound(target: float, confidence: float, n_human: int) -> None:
    """A ConfigError saying how many human images are needed, when ``n_human`` cannot certify ``target``."""
    needed = humans_needed(target, confidence)
    if n_human < needed:
        raise ConfigError(
            f"calibration.threshold fpr_bound={target:g}: certifying a false-positive rate of {target:.2%} at "
            f"{confidence:.0%} confidence needs at least {needed} human validation images (with no false positive "
            f"among them); validation has {n_human}. Use more validation data (data.val_fraction), a larger "
            "bound, or a lower calibration.confidence"
        )


def fpr_bound_threshold(probs: np.ndarray, labels: np.ndarray, target: float, confidence: float = 0.95) -> dict:
    """The lowest threshold whose one-sided Clopper-Pearson upper bound (at ``confidence``) on the false-positive
    rate, computed on the human images of ``probs``, is at most ``target``.

    The number of false positives allowed, ``k``, is fixed by the count of human images alone (the largest k whose
    bound is at most the target), and the threshold sits just above the (k+1)-th highest human score. The true
    false-positive rate at such a threshold exceeds the bound with probability at most 1 - ``confidence`` (the
    exceedance of an order statistic is Beta(k+1, n-k) distributed; ``tests/test_reshare_and_bounds.py`` checks it by
    simulation). Returns ``threshold``, ``certified_fpr`` (the bound), ``target``, ``confidence``, ``n_human`` and
    ``false_positives`` (on these images, at the threshold).

    Raises:
        ConfigError: When the human images are too few to certify ``target`` at all (saying how many are needed).
    """
    p, y = _check(probs, labels)
    human = np.sort(p[y == 0])[::-1]
    n = len(human)
    check_fpr_bound(target, confidence, n)
    k = 0
    while k + 1 < n and clopper_pearson_upper(k + 1, n, confidence) <= target:
        k += 1
    threshold = float(np.nextafter(human[k], np.inf))
    false_positives = int((human >= threshold).sum())  # k or fewer (ties)
    return {
        "threshold": threshold,
        "certified_fpr": clopper_pearson_upper(false_positives, n, confidence),
        "target": float(target),
        "confidence": float(confidence),
        "n_human": int(n),
        "false_positives": false_positives,
    }


def choose_threshold(probs: np.ndarray, labels: np.ndarray, criterion: str = "f1", confidence: float = 0.95) -> float:
    """Decision threshold on AI probabilities, chosen on labelled validation data.

    Criteria: ``f1`` (maximum F1 over sklearn's precision-recall curve), ``youden`` (maximum TPR - FPR over
    sklearn's ROC curve), ``eer`` (the threshold of :func:`equal_error_point`), ``target_fpr=<a>`` (the lowest
    threshold whose FPR is at most a, i.e. the highest recall allowed), ``fpr_bound=<a>`` (the lowest threshold
    whose false-positive rate is certified at most a at ``confidence``: :func:`fpr_bound_threshold`),
    ``fixed=<t>``.
    """
    name, _, arg = criterion.partition("=")
    if name == "fixed":
        return float(arg)
    if name == "fpr_bound":
        return fpr_bound_threshold(probs, labels, float(arg), confidence)["threshold"]
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
    raise ConfigError(f"unknown threshold criterion {criterion!r}; use {CRITERIA_HELP}")


def check_criterion(criterion: str) -> str:
    """``criterion`` if it names a known criterion with a valid argument, else a ConfigError saying why."""
    name, eq, arg = criterion.partition("=")
    if name not in THRESHOLD_CRITERIA:
        raise ConfigError(f"unknown threshold criterion {criterion!r}; use {CRITERIA_HELP}")
    if name in ("target_fpr", "fpr_bound", "fixed"):
        try:
            value = float(arg)
        except ValueError:
            value = float("nan")
        inside = 0.0 <= value <= 1.0 if name == "fixed" else 0.0 < value < 1.0
        if not inside:
            raise ConfigError(f"threshold criterion {criterion!r}: {name} needs a number in (0, 1), e.g. {name}=0.01")
    elif eq:
        raise ConfigError(f"threshold criterion {criterion!r}: {name} takes no value")
    return criterion
