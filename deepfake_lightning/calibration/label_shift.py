"""Label-shift adaptation for an unlabeled split: the EM prior estimate of Saerens et al. 2002 with the source prior
taken as the mean calibrated validation probability (Alexandari et al. 2020), black-box shift estimation (BBSE,
Lipton et al. 2018) as a cross-check, and the prior-corrected threshold."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from deepfake_lightning.calibration.calibrators import _EPS, logit, sigmoid


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
    n_bootstrap: int = 999,
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
    noisy; the bootstrap keeps that noise from raising false alarms. ``n_bootstrap`` is 999 so that the Monte Carlo
    p-value resolves ``alpha``: with 200, p < 0.01 meant at most one simulated gap at or above the observed one,
    and the demo's test_v1 (the training generators; true p about 0.016) was declared changed.

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
