"""Is this verdict fragile? Each image scored again on K seeded re-shared copies (``data/reshare.py``).

``--report.stability K`` (``deepfake test`` and ``predict``; ``?stability=K`` in ``deepfake serve``): copy ``k`` of
an image is ``Reshare(seed=k, salt_with_image=True)`` of it, the same chain for the same image on every run and
machine, scored exactly as the image itself (views, tiles and pooling included). Per image:

* ``prob_min``, ``prob_max``: the lowest and highest calibrated probability over the image and its copies;
* ``flip_rate``: the share of copies whose verdict differs from the image's own;
* ``verdict``: ``ai`` or ``human`` (the image's own verdict at the threshold), or ``uncertain`` when ``flip_rate``
  exceeds the tolerance (``--report.stability_tolerance``).

An uncertain verdict is one that a harmless re-encode, scale or crop would overturn: it cannot be defended.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pandas as pd
import torch

from deepfake_lightning.calibration import thresholded_metrics
from deepfake_lightning.scoring import decide

DEFAULT_TOLERANCE = 0.25  # more than 2 of 8 copies flipping: chosen on the demo's validation split (README)


def check_stability(k: int, tolerance: float) -> None:
    """One error line for a bad setting, naming the key."""
    from deepfake_lightning.errors import ConfigError

    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ConfigError(f"report.stability must be a number of re-shared copies per image (0: off), got {k!r}")
    if not 0.0 <= tolerance <= 1.0:
        raise ConfigError(f"report.stability_tolerance must be a share of copies in [0, 1], got {tolerance}")


@torch.inference_mode()
def copy_logits(model, loader, n_images: int, k: int, context=None) -> np.ndarray:
    """(n_images, k) logits of each image's copies 1..k; ``loader`` batches the data module's
    ``dataset(split, copies=k)`` (each image decoded once, its k copies made from its pixels: ``ReshareCopies``), in
    dataset order (``batch["index"]``); every copy of a batch goes through the model in one pass. NaN where an image
    could not be read."""
    out = np.full((n_images, k), np.nan)
    with context or nullcontext():
        for batch in loader:
            if "copies" in batch:  # (B, k, ...): one view per copy, or several (five crops)
                views = batch["copies"]
                logits = model.predict_logits(views.flatten(0, 1).to(model.device)).view(len(views), k)
            elif "copy_tiles" in batch:  # every copy's tiles, pooled per copy
                counts = batch["copy_tiles"]
                logits = model.predict_logits(batch["image"].to(model.device), n_tiles=counts.flatten())
                logits = logits.view(len(counts), k)
            else:
                continue
            out[batch["index"].numpy()] = logits.float().cpu().numpy()
    return out


def stability_table(probs: np.ndarray, copy_probs: np.ndarray, threshold: float, tolerance: float) -> pd.DataFrame:
    """``prob_min, prob_max, flip_rate, verdict`` per image, from its own calibrated probability and its copies'
    ((n, k); NaN copies are left out)."""
    probs = np.asarray(probs, dtype=np.float64)
    own = decide(probs, threshold).astype(bool)
    valid = ~np.isnan(copy_probs)
    flips = (decide(copy_probs, threshold) != own[:, None]) & valid
    flip_rate = flips.sum(1) / np.maximum(1, valid.sum(1))
    every = np.where(valid, copy_probs, np.nan)
    verdict = np.where(flip_rate > tolerance, "uncertain", np.where(own, "ai", "human"))
    return pd.DataFrame(
        {
            "prob_min": np.fmin(probs, np.nanmin(np.where(valid, every, np.inf), axis=1)),
            "prob_max": np.fmax(probs, np.nanmax(np.where(valid, every, -np.inf), axis=1)),
            "flip_rate": flip_rate,
            "verdict": verdict,
        }
    )


def stability_report(table: pd.DataFrame, probs: np.ndarray, labels: np.ndarray, threshold: float, k: int) -> dict:
    """``report.json``'s ``stability`` entry of a labelled split: coverage (the share of certain verdicts), and
    accuracy and macro F1 on the certain images against all images."""
    labels = np.asarray(labels).astype(int)
    certain = (table["verdict"] != "uncertain").to_numpy()
    every = thresholded_metrics(probs, labels, threshold)
    kept = thresholded_metrics(probs[certain], labels[certain], threshold) if certain.any() else None
    return {
        "copies": k,
        "coverage": float(certain.mean()),
        "n_uncertain": int((~certain).sum()),
        "mean_flip_rate": float(table["flip_rate"].mean()),
        "all": {"acc": every["acc"], "f1_macro": every["f1_macro"], "fpr": every["fpr"]},
        "certain": None if kept is None else {"acc": kept["acc"], "f1_macro": kept["f1_macro"], "fpr": kept["fpr"]},
    }


def risk_coverage(table: pd.DataFrame, probs: np.ndarray, labels: np.ndarray, threshold: float):
    """(coverage, risk): keeping images from the most to the least stable (lowest flip rate first, then farthest
    from the threshold), the error rate among those kept."""
    labels = np.asarray(labels).astype(int)
    wrong = (decide(probs, threshold) != labels).astype(float)
    order = np.lexsort((-np.abs(np.asarray(probs) - threshold), table["flip_rate"].to_numpy()))
    kept = np.arange(1, len(order) + 1)
    return kept / len(order), np.cumsum(wrong[order]) / kept


def plot_risk_coverage(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], k: int, tolerance: float):
    """One risk-coverage curve per split, each with its operating point (the coverage of certain verdicts at the
    tolerance) marked. ``curves``: split -> (coverage, risk, operating coverage). A matplotlib Figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), layout="constrained")
    for split, (coverage, risk, point) in curves.items():
        (line,) = ax.plot(coverage, risk, label=split)
        i = max(0, int(round(point * len(coverage))) - 1)
        ax.plot([coverage[i]], [risk[i]], "o", color=line.get_color())
    ax.set_xlabel("coverage (share of images given a verdict)")
    ax.set_ylabel("risk (error rate among them)")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(bottom=0)
    ax.set_title(
        f"Risk vs coverage, most stable verdicts first\n({k} re-shared copies each; dots: tolerance {tolerance:g})",
        fontsize=10,
    )
    ax.legend()
    return fig
