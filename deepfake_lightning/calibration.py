"""Calibration, reliability and decision thresholds for a one-logit detector (1 = AI-generated).

Plain functions on NumPy arrays, shared by the calibration callback, ``deepfake calibrate`` and notebooks:

* calibrators: temperature scaling (fitted by Newton's method on the NLL to a ~0 gradient), Platt scaling
  and isotonic regression, all serialisable into a checkpoint;
* reliability: NLL, Brier score, ECE and MCE over equal-width bins with the positive-class definition of
  torchmetrics' ``BinaryCalibrationError``, and the reliability diagram;
* thresholds chosen on validation data by a criterion (``f1``, ``youden``, ``eer``, ``target_fpr=a``, ``fixed=t``);
* label-shift adaptation for an unlabeled split: the EM prior estimate of Saerens et al. 2002 with the source
  prior taken as the mean calibrated validation probability (Alexandari et al. 2020), black-box shift
  estimation (BBSE, Lipton et al. 2018) as a cross-check, and the prior-corrected threshold.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import precision_recall_curve, roc_curve

CalibrationMethod = Literal["temperature", "platt", "isotonic", "none"]
_EPS = 1e-12


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))  # overflow-free


def logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


# --------------------------------------------------------------------------- calibrators
def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 100, tol: float = 1e-10) -> float:
    """Temperature T > 0 minimising the NLL of ``sigmoid(logits / T)``.

    The NLL is convex in ``w = 1 / T``; Newton's method with step halving runs until the gradient vanishes
    (|grad| / n < ``tol``), so the answer does not depend on an early stop.

    Raises:
        ValueError: If the optimum is not a positive temperature (logits anti-correlated with the labels),
            or the inputs are empty or single-class.
    """
    z, y = _check(logits, labels)
    n = len(z)

    def nll(w: float) -> float:
        return float(np.mean(np.logaddexp(0.0, w * z) - y * w * z))

    w = 1.0
    for _ in range(max_iter):
        p = sigmoid(w * z)
        grad = float(np.dot(p - y, z)) / n
        if abs(grad) < tol:
            break
        hess = float(np.dot(p * (1 - p), z * z)) / n
        step = grad / max(hess, _EPS)
        f0 = nll(w)
        while nll(w - step) > f0 and abs(step) > 1e-15:
            step /= 2
        w -= step
    if not w > 0:
        raise ValueError(f"temperature scaling failed: the fitted logit scale is {w:.4g} <= 0 (logits anti-correlated with labels?)")
    return 1.0 / w


@dataclass
class Calibrator:
    """A fitted map from logits to calibrated AI probabilities. ``state_dict()`` goes into the checkpoint."""

    method: CalibrationMethod = "none"
    temperature: float = 1.0
    platt: tuple[float, float] = (1.0, 0.0)  # a, b in sigmoid(a * z + b)
    isotonic_x: list[float] = field(default_factory=list)  # knots on the uncalibrated probability
    isotonic_y: list[float] = field(default_factory=list)

    @classmethod
    def fit(cls, logits: np.ndarray, labels: np.ndarray, method: CalibrationMethod = "temperature") -> "Calibrator":
        z, y = _check(logits, labels)
        if method == "none":
            return cls("none")
        if method == "temperature":
            return cls("temperature", temperature=fit_temperature(z, y))
        if method == "platt":
            lr = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(z[:, None], y)
            return cls("platt", platt=(float(lr.coef_[0, 0]), float(lr.intercept_[0])))
        if method == "isotonic":
            iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(sigmoid(z), y)
            return cls("isotonic", isotonic_x=iso.X_thresholds_.tolist(), isotonic_y=iso.y_thresholds_.tolist())
        raise ValueError(f"unknown calibration method {method!r}; choose temperature, platt, isotonic or none")

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of the AI class."""
        z = np.asarray(logits, dtype=np.float64)
        if self.method == "temperature":
            return sigmoid(z / self.temperature)
        if self.method == "platt":
            return sigmoid(self.platt[0] * z + self.platt[1])
        if self.method == "isotonic":
            return np.interp(sigmoid(z), self.isotonic_x, self.isotonic_y)
        return sigmoid(z)

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict) -> "Calibrator":
        state = dict(state)
        state["platt"] = tuple(state.get("platt", (1.0, 0.0)))
        return cls(**state)


# --------------------------------------------------------------------------- reliability
def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Equal-width bins over the AI probability: count, mean probability and AI fraction per bin.

    Bin edges and membership follow torchmetrics' binary calibration error: a probability on an edge belongs
    to the bin above it, and 1.0 to the last bin.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(idx, weights=p, minlength=n_bins) / count
        acc = np.bincount(idx, weights=y, minlength=n_bins) / count
    return {"edges": edges, "count": count, "confidence": conf, "accuracy": acc}


def calibration_metrics(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, float]:
    """NLL, Brier score, ECE and MCE of AI probabilities against 0/1 labels."""
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1 - _EPS)
    y = np.asarray(labels, dtype=np.float64)
    bins = reliability_bins(p, y, n_bins)
    filled = bins["count"] > 0
    gaps = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
    return {
        "nll": float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))),
        "brier": float(np.mean((p - y) ** 2)),
        "ece": float(np.sum(gaps * bins["count"][filled]) / len(p)),
        "mce": float(gaps.max()) if gaps.size else 0.0,
    }


def plot_reliability(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str = "", n_bins: int = 15):
    """Reliability diagram (with a histogram of probabilities below) for one or more named
    ``(probs, labels)`` pairs, e.g. ``{"before": ..., "after": ...}``. Returns a matplotlib Figure."""
    import matplotlib.pyplot as plt

    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect calibration")
    for name, (p, y) in curves.items():
        b = reliability_bins(p, y, n_bins)
        m = calibration_metrics(p, y, n_bins)
        ok = b["count"] > 0
        ax.plot(b["confidence"][ok], b["accuracy"][ok], marker="o", label=f"{name} (ECE {m['ece']:.3f})")
        hist.hist(np.asarray(p), bins=b["edges"], alpha=0.5, label=name)
    ax.set_ylabel("fraction AI-generated")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title or "Reliability diagram")
    hist.set_xlabel("predicted probability of AI-generated")
    hist.set_ylabel("images")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- thresholds
def choose_threshold(probs: np.ndarray, labels: np.ndarray, criterion: str = "f1") -> float:
    """Decision threshold on AI probabilities (predict AI when ``prob >= threshold``), chosen on labelled
    validation data.

    Criteria: ``f1`` (maximum F1 over sklearn's precision-recall curve), ``youden`` (maximum TPR - FPR over
    sklearn's ROC curve), ``eer`` (the ROC point where FPR and FNR are closest), ``target_fpr=<a>`` (the lowest
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
    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    finite = np.isfinite(thresholds)  # sklearn's first threshold is +inf (predict nothing positive)
    fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
    if name == "youden":
        return float(thresholds[int(np.argmax(tpr - fpr))])
    if name == "eer":
        return float(thresholds[int(np.argmin(np.abs(fpr - (1 - tpr))))])
    if name == "target_fpr":
        alpha = float(arg)
        ok = np.flatnonzero(fpr <= alpha)
        return float(thresholds[ok[-1]]) if ok.size else float(np.nextafter(p.max(), np.inf))
    raise ValueError(f"unknown threshold criterion {criterion!r}; use f1, youden, eer, target_fpr=<a> or fixed=<t>")


# --------------------------------------------------------------------------- label shift
@dataclass
class PriorEstimate:
    share: float  # estimated share of AI images in the target split
    iterations: int
    converged: bool


def em_prior(probs: np.ndarray, source_prior: float, max_iter: int = 100, tol: float = 1e-8) -> PriorEstimate:
    """EM estimate of the AI share of an unlabeled split from calibrated probabilities (Saerens et al. 2002)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1 - _EPS)
    pi_s = float(np.clip(source_prior, _EPS, 1 - _EPS))
    pi = pi_s
    for it in range(1, max_iter + 1):
        w1, w0 = pi / pi_s, (1 - pi) / (1 - pi_s)
        post = w1 * p / (w1 * p + w0 * (1 - p))
        new = float(post.mean())
        if abs(new - pi) < tol:
            return PriorEstimate(new, it, True)
        pi = new
    return PriorEstimate(pi, max_iter, False)


def joint_confusion(pred: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``C[i, j] = P(pred = i, y = j)`` on labelled data, the matrix BBSE inverts."""
    yp, y = np.asarray(pred, dtype=int), np.asarray(labels, dtype=int)
    return np.array([[np.mean((yp == i) & (y == j)) for j in (0, 1)] for i in (0, 1)])


def bbse_prior(val_confusion: np.ndarray, target_pred: np.ndarray) -> float:
    """Black-box shift estimate of the AI share (Lipton et al. 2018) from hard predictions.

    Solves ``C w = mu`` with ``C`` the validation :func:`joint_confusion` and ``mu[i] = P_target(pred = i)``;
    the share is ``w[1] * P_val(y = 1)``, clipped to [0, 1].
    """
    c = np.asarray(val_confusion, dtype=np.float64)
    mu = np.array([np.mean(np.asarray(target_pred, dtype=int) == i) for i in (0, 1)])
    try:
        w = np.linalg.solve(c, mu)
    except np.linalg.LinAlgError:
        w = np.linalg.lstsq(c, mu, rcond=None)[0]
    return float(np.clip(w[1] * c[:, 1].sum(), 0.0, 1.0))


def label_shift_report(
    val_probs: np.ndarray,
    val_labels: np.ndarray,
    target_probs: np.ndarray,
    threshold: float,
    tolerance: float = 0.05,
    n_bootstrap: int = 200,
    alpha: float = 0.01,
    seed: int = 0,
) -> dict:
    """Estimates the AI share of an unlabeled split and checks that a change of share explains it.

    The share comes from EM on calibrated probabilities, with the mean calibrated validation probability as the
    source prior. BBSE is computed at the decision threshold and at the validation quartiles: under pure label
    shift every estimate agrees with EM up to sampling noise. The largest |BBSE - EM| gap is compared with its
    distribution under pure label shift, simulated by a bootstrap that draws validation and target sets from
    the validation images at the estimated share; the images are declared changed (e.g. a new generator) when
    the gap exceeds ``tolerance`` and its bootstrap p-value is below ``alpha``. Small validation sets make BBSE
    noisy; the bootstrap keeps that noise from raising false alarms.

    Returns:
        ``ai_share_em``, ``em_iterations``, ``ai_share_bbse`` (at ``threshold``), ``disagreement``, ``p_value``,
        ``images_changed``, ``source_prior`` and ``adapted_threshold``.
    """
    val_probs = np.asarray(val_probs, dtype=np.float64)
    val_labels = np.asarray(val_labels).astype(int)
    target_probs = np.asarray(target_probs, dtype=np.float64)
    cuts = [threshold, *np.quantile(val_probs, [0.25, 0.5, 0.75])]

    def statistic(vp, vy, tp):
        em = em_prior(tp, float(vp.mean()))
        bbse = [bbse_prior(joint_confusion(vp >= t, vy), tp >= t) for t in cuts]
        return em, bbse, max(abs(b - em.share) for b in bbse)

    em, bbse, gap = statistic(val_probs, val_labels, target_probs)
    rng = np.random.default_rng(seed)
    pos, neg = val_probs[val_labels == 1], val_probs[val_labels == 0]
    n_val, n_target = len(val_probs), len(target_probs)
    null = []
    for _ in range(n_bootstrap):
        idx = rng.integers(0, n_val, n_val)
        n_pos = rng.binomial(n_target, em.share)
        sim_target = np.concatenate([rng.choice(pos, n_pos), rng.choice(neg, n_target - n_pos)])
        null.append(statistic(val_probs[idx], val_labels[idx], sim_target)[2])
    p_value = (1 + sum(g >= gap for g in null)) / (1 + n_bootstrap)
    source_prior = float(val_probs.mean())
    return {
        "ai_share_em": em.share,
        "em_iterations": em.iterations,
        "ai_share_bbse": bbse[0],
        "disagreement": gap,
        "p_value": p_value,
        "images_changed": bool(gap > tolerance and p_value < alpha),
        "source_prior": source_prior,
        "adapted_threshold": adapt_threshold(threshold, source_prior, em.share),
    }


def adapt_threshold(threshold: float, source_prior: float, target_prior: float) -> float:
    """Shifts a probability threshold for a new class prior: logit(t*) = logit(t) - log(w1 / w0),
    with w_y = pi'_y / pi_y."""
    s = float(np.clip(source_prior, _EPS, 1 - _EPS))
    t = float(np.clip(target_prior, _EPS, 1 - _EPS))
    shift = math.log(t / s) - math.log((1 - t) / (1 - s))
    return float(sigmoid(logit(threshold) - shift))


def _check(a: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(y).ravel()
    if a.shape != y.shape or a.size == 0:
        raise ValueError(f"need matching non-empty scores and labels, got {a.shape} and {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if len(np.unique(y)) < 2:
        raise ValueError("need both classes among the labels to calibrate or choose a threshold")
    if not np.isfinite(a).all():
        raise ValueError("scores contain NaN or infinity")
    return a, y.astype(np.float64)
