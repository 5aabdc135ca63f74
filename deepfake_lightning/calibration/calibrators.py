"""Calibrators (temperature, Platt, isotonic) and reliability measures (NLL, Brier, ECE, MCE, diagrams) on NumPy
arrays of one-logit scores (1 = AI-generated)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from deepfake_lightning.errors import ConfigError

CalibrationMethod = Literal["temperature", "platt", "isotonic", "none"]
_EPS = 1e-12
MAX_SCALED_LOGIT = 30.0  # sigmoid(30) = 1 - 9e-14: still below 1.0 in float64 (sigmoid(37) rounds to 1.0)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))  # overflow-free


def logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


# --------------------------------------------------------------------------- calibrators
SMALL_VALIDATION = 1000  # below this many images, a temperature is bounded (see temperature_bound)


def temperature_bound(logits: np.ndarray, labels: np.ndarray) -> float | None:
    """The largest logit scale ``w = 1 / T`` that a validation set supports, or None when it is large and its
    classes overlap (then the NLL optimum is trusted).

    n validation images cannot support a probability nearer 0 or 1 than about 1 / (n + 1) (Laplace's rule of
    succession), yet on a small or separable set the NLL keeps falling as T -> 0 (the demo's fell to T = 0.16 and
    printed probabilities of exactly 0 and 1). So there the scaled logit of the 99th percentile of ``|z|`` may
    reach ``log(n + 1)``, no further (the percentile, not the maximum: one extreme image does not set the scale),
    unless the model's own logits reach further: calibration is then kept from sharpening them (T >= 1).
    """
    z, y = _check(logits, labels)
    n = len(z)
    separated = z[y == 0].max() < z[y == 1].min()
    if n >= SMALL_VALIDATION and not separated:
        return None
    scale = max(float(np.quantile(np.abs(z), 0.99)), _EPS)
    # It bounds sharpening only: logits that are already sharper than that are left as the model gives them.
    return max(1.0, min(math.log(n + 1), MAX_SCALED_LOGIT) / scale)


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, max_iter: int = 100, tol: float = 1e-10, bounded: bool = True
) -> float:
    """Temperature T > 0 minimising the NLL of ``sigmoid(logits / T)``, within :func:`temperature_bound` (unless
    ``bounded`` is False: then only ``|z / T| <= MAX_SCALED_LOGIT`` on separated logits, so that no probability
    saturates to exactly 0 or 1).

    The NLL is convex in ``w = 1 / T``; Newton's method with step halving runs until the gradient vanishes
    (|grad| / n < ``tol``) or the scale reaches its bound, so the answer does not depend on an early stop.

    Raises:
        ValueError: If the optimum is not a positive temperature (logits anti-correlated with the labels),
            or the inputs are empty or single-class.
    """
    z, y = _check(logits, labels)
    n = len(z)

    def nll(w: float) -> float:
        return float(np.mean(np.logaddexp(0.0, w * z) - y * w * z))

    separated = z[y == 0].max() < z[y == 1].min()
    w_max = MAX_SCALED_LOGIT / max(float(np.abs(z).max()), _EPS) if separated else math.inf
    if bounded:
        w_max = min(w_max, temperature_bound(z, y) or math.inf)
    w = min(1.0, w_max)
    for _ in range(max_iter):
        p = sigmoid(w * z)
        grad = float(np.dot(p - y, z)) / n
        if abs(grad) < tol:
            break
        hess = float(np.dot(p * (1 - p), z * z)) / n
        step = grad / max(hess, _EPS)
        f0 = nll(w)
        while nll(min(w - step, w_max)) > f0 and abs(step) > 1e-15:
            step /= 2
        if min(w - step, w_max) == w:  # at the bound and the NLL still falls beyond it
            break
        w = min(w - step, w_max)
    if not w > 0:
        raise ValueError(
            f"temperature scaling failed: the fitted logit scale is {w:.4g} <= 0 (logits anti-correlated with labels?)"
        )
    return 1.0 / w


@dataclass
class Calibrator:
    """A fitted map from logits to calibrated AI probabilities. ``state_dict()`` goes into the checkpoint."""

    method: CalibrationMethod = "none"
    temperature: float = 1.0
    platt: tuple[float, float] = (1.0, 0.0)  # a, b in sigmoid(a * z + b)
    isotonic_x: list[float] = field(default_factory=list)  # knots on the uncalibrated probability
    isotonic_y: list[float] = field(default_factory=list)
    # Set when temperature_bound stopped the fit: the validation images, and the temperature the NLL wanted (None:
    # none, the set was separable and the NLL fell without end).
    bounded_on: int | None = None
    unbounded_temperature: float | None = None

    @classmethod
    def fit(cls, logits: np.ndarray, labels: np.ndarray, method: CalibrationMethod = "temperature") -> Calibrator:
        z, y = _check(logits, labels)
        if method == "none":
            return cls("none")
        if method == "temperature":
            t = fit_temperature(z, y)
            wanted = fit_temperature(z, y, bounded=False)
            if wanted < t * (1 - 1e-6):  # the bound stopped the fit
                separated = z[y == 0].max() < z[y == 1].min()
                return cls("temperature", temperature=t, bounded_on=len(z),
                           unbounded_temperature=None if separated else wanted)  # fmt: skip
            return cls("temperature", temperature=t)
        if method == "platt":
            lr = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(z[:, None], y)
            return cls("platt", platt=(float(lr.coef_[0, 0]), float(lr.intercept_[0])))
        if method == "isotonic":
            iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(sigmoid(z), y)
            return cls("isotonic", isotonic_x=iso.X_thresholds_.tolist(), isotonic_y=iso.y_thresholds_.tolist())
        raise ConfigError(f"unknown calibration method {method!r}; choose temperature, platt, isotonic or none")

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

    def bound_line(self) -> str | None:
        """One line saying that the temperature was bounded and why, or None."""
        if self.bounded_on is None:
            return None
        n = self.bounded_on
        wanted = (
            "the validation set is separable: the fit would sharpen without end"
            if self.unbounded_temperature is None
            else f"the fit wanted {self.unbounded_temperature:.3g}"
        )
        return (
            f"temperature bounded at {self.temperature:.3g} ({wanted}): {n} validation images support no "
            f"probability nearer 0 or 1 than about 1/{n + 1}; more validation data lifts the bound"
        )

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict) -> Calibrator:
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
