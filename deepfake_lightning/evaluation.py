"""Evaluation reports, plots, robustness curves and Kaggle submissions, as plain functions on predictions."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter
from sklearn.metrics import average_precision_score, roc_auc_score

from deepfake_lightning.calibration import calibration_metrics, equal_error_rate, thresholded_metrics

# equal_error_rate and thresholded_metrics are re-exported here for reports; they live in calibration.thresholds.
from deepfake_lightning.errors import ConfigError
from deepfake_lightning.files import atomic_path
from deepfake_lightning.scoring import decide
from deepfake_lightning.settings import UNCALIBRATED_THRESHOLD


# --------------------------------------------------------------------------- reports
def split_report(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """Everything ``report.json`` holds for one labelled split: threshold-free metrics (AUROC, AP, EER, ECE,
    image counts) and thresholded ones at 0.5 (``at_0.5``) and at the tuned threshold (``at_tuned``)."""
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(labels).astype(int)
    both = len(np.unique(y)) == 2
    return {
        "n_images": int(len(y)),
        "n_ai": int(y.sum()),
        "n_human": int((1 - y).sum()),
        "auroc": float(roc_auc_score(y, p)) if both else None,
        "ap": float(average_precision_score(y, p)) if both else None,
        "eer": equal_error_rate(p, y) if both else None,
        "ece": calibration_metrics(p, y)["ece"],
        "at_0.5": thresholded_metrics(p, y, UNCALIBRATED_THRESHOLD),
        "at_tuned": thresholded_metrics(p, y, threshold),
    }


def group_report(probs: np.ndarray, labels: np.ndarray, groups: np.ndarray, threshold: float) -> dict[str, dict]:
    """Per group of one split (e.g. each ``generator``): ``n_images``, ``n_ai``, ``auroc`` of the group's AI images
    against all of the split's human images (None for a group without AI images, such as ``real``), and ``acc``, the
    group's accuracy at ``threshold``. How AIGCDetectBenchmark and the NPR/UnivFD papers report generators."""
    p, y, g = np.asarray(probs, dtype=np.float64), np.asarray(labels).astype(int), np.asarray(groups).astype(str)
    human = y == 0
    out = {}
    for name in sorted(set(g)):
        member = g == name
        ai = member & (y == 1)
        auroc = None
        if ai.any() and human.any():
            auroc = float(roc_auc_score(np.r_[np.zeros(human.sum()), np.ones(ai.sum())], np.r_[p[human], p[ai]]))
        out[name] = {
            "n_images": int(member.sum()),
            "n_ai": int(ai.sum()),
            "auroc": auroc,
            "acc": float(np.mean(decide(p[member], threshold) == y[member])),
        }
    return out


def format_groups(groups: dict[str, dict[str, dict]]) -> str:
    """The per-group table of a report: one row per split and group."""
    rows = [
        {
            "split": split,
            "group": name,
            "images": r["n_images"],
            "AI images": r["n_ai"],
            "AUROC": r["auroc"],
            "acc@tuned": r["acc"],
        }
        for split, table in groups.items()
        for name, r in table.items()
    ]
    return pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-")


def plot_groups(groups: dict[str, dict[str, dict]], column: str):
    """Bar charts, one panel per split: AUROC (AI images of the group vs the split's human images) and accuracy at
    the tuned threshold, per group. A matplotlib Figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 4), squeeze=False)
    for ax, (split, table) in zip(axes[0], groups.items(), strict=False):
        names = list(table)
        x = np.arange(len(names))
        auroc = [table[n]["auroc"] if table[n]["auroc"] is not None else np.nan for n in names]
        ax.bar(x - 0.2, auroc, 0.4, label="AUROC vs human")
        ax.bar(x + 0.2, [table[n]["acc"] for n in names], 0.4, label="accuracy (tuned)")
        ax.set_xticks(x, [f"{n}\n({table[n]['n_images']})" for n in names], fontsize=8, rotation=20)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{split} by {column}")
        ax.axhline(0.5, ls="--", c="grey", lw=1)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)  # below the bars, not on them
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def format_report(report: dict) -> str:
    """A short human-readable table of a report: one row per split."""
    rows = []
    for split, r in report["splits"].items():
        t = r["at_tuned"]
        rows.append(
            {
                "split": split,
                "images": r["n_images"],
                "AUROC": r["auroc"],
                "AP": r["ap"],
                "EER": r["eer"],
                "ECE": r["ece"],
                "acc@0.5": r["at_0.5"]["acc"],
                "F1@0.5": r["at_0.5"]["f1"],
                f"acc@{t['threshold']:.3f}": t["acc"],
                "macroF1@tuned": t["f1_macro"],
                "acc human": t["acc_human"],
                "acc AI": t["acc_ai"],
                "FPR@tuned": t["fpr"],
            }
        )
    return pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4f}")


def plot_split(probs: np.ndarray, labels: np.ndarray, threshold: float, title: str):
    """ROC, precision-recall and confusion-matrix (at ``threshold``) panels for one split; a matplotlib Figure."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay

    y = np.asarray(labels).astype(int)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    RocCurveDisplay.from_predictions(y, probs, ax=axes[0], name="detector")
    axes[0].plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    axes[0].set_title("ROC")
    PrecisionRecallDisplay.from_predictions(y, probs, ax=axes[1], name="detector")
    axes[1].set_title("Precision-recall (AI = positive)")
    ConfusionMatrixDisplay.from_predictions(
        y, decide(probs, threshold), ax=axes[2], display_labels=["human", "AI"], colorbar=False
    )
    axes[2].set_title(f"Confusion matrix at threshold {threshold:.3f}")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_threshold_tradeoff(probs: np.ndarray, labels: np.ndarray, threshold: float | None = None):
    """Precision, recall and F1 (AI = positive) against the decision threshold, the tuned one marked."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(labels, probs)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(thresholds, precision[:-1], label="precision")
    ax.plot(thresholds, recall[:-1], label="recall")
    ax.plot(thresholds, f1[:-1], label="F1")
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", lw=1, label=f"tuned threshold {threshold:.3f}")
    ax.set_xlabel("threshold on the calibrated AI probability")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- submissions
def predictions_table(
    ids: list[str],
    probs: np.ndarray,
    threshold: float,
    extra: dict[str, np.ndarray] | None = None,
    failed: dict[str, str] | None = None,
    order: list[str] | None = None,
) -> pd.DataFrame:
    """The predictions of ``deepfake predict`` (``files.csv``, ``predictions/<split>.csv``) and of
    ``Detector.predict_files``: ``id, prob_ai, label``, then the ``extra`` columns (``n_tiles``, the stability and
    ``evidence_*`` columns...); ``failed`` (id -> reason: unreadable images) adds a row per image with its
    ``error`` and no probability; ``order`` (ids) sorts the rows into it."""
    table = pd.DataFrame({"id": list(ids), "prob_ai": np.asarray(probs, dtype=np.float64)})
    table["label"] = decide(table["prob_ai"], threshold)
    for column, values in (extra or {}).items():
        table[column] = values
    if failed:  # unreadable images: a row each, with why, and no probability
        table["error"] = ""
        rows = pd.DataFrame({"id": list(failed), "error": list(failed.values())})
        table = pd.concat([table, rows], ignore_index=True).astype({"label": "Int64"})
    if order is not None:
        rank = {str(p): i for i, p in enumerate(order)}
        table = table.sort_values("id", key=lambda c: c.map(rank)).reset_index(drop=True)
    return table


def write_predictions(
    out_dir: str | os.PathLike,
    split: str,
    ids: list[str],
    probs: np.ndarray,
    threshold: float,
    all_ids: list[str] | None = None,
    extra: dict[str, np.ndarray] | None = None,
    failed: dict[str, str] | None = None,
) -> dict[str, Path]:
    """Writes ``predictions/<split>.csv`` (``id,prob_ai,label``, then the ``extra`` columns, e.g. ``n_tiles`` and
    ``tiles_total`` of a tiled evaluation) and, when every id of the split has a prediction,
    ``submission_<split>.csv`` in Kaggle's format (``id,label``; the split's ids, in its order, one row each).

    Returns the paths written. ``failed`` (id -> reason: unreadable images) adds a row per image with its ``error``
    and no probability. A split with unpredicted ids gets no submission file; the missing ids are listed in the
    returned dict under ``missing`` instead of being filled in silently.
    """
    out_dir = Path(out_dir)
    (out_dir / "predictions").mkdir(parents=True, exist_ok=True)
    table = predictions_table(ids, probs, threshold, extra, failed)
    written: dict = {"predictions": out_dir / "predictions" / f"{split}.csv"}
    with atomic_path(written["predictions"]) as tmp:
        table.to_csv(tmp, index=False)
    if all_ids is not None:
        by_id = table.dropna(subset=["prob_ai"]).set_index("id")["label"]
        missing = [i for i in all_ids if i not in by_id.index]
        if missing:
            written["missing"] = missing
        else:
            written["submission"] = out_dir / f"submission_{split}.csv"
            with atomic_path(written["submission"]) as tmp:
                pd.DataFrame({"id": all_ids, "label": by_id.loc[all_ids].to_numpy()}).to_csv(tmp, index=False)
    return written


# --------------------------------------------------------------------------- robustness
ROBUSTNESS_GRID: dict[str, list[float]] = {
    "jpeg_quality": [100, 90, 75, 50, 30],
    "blur_sigma": [0, 1, 2, 3],
    "downscale": [1.0, 0.75, 0.5],
    # re-share chains (data/reshare.py) of 1, 2 and 3 operations, seeded per image: what sharing does to an image
    "reshare_chain": [0, 1, 2, 3],
}


def perturbation(kind: str, level: float) -> Callable[[Image.Image], Image.Image]:
    """A PIL-to-PIL perturbation. The clean level of each kind (JPEG quality 100, blur sigma 0, scale 1.0) is
    the identity: the original file, not re-encoded, so it reproduces the clean metrics exactly."""
    if kind == "jpeg_quality":
        if level >= 100:
            return lambda im: im

        def jpeg(im: Image.Image) -> Image.Image:
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=int(level))
            return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

        return jpeg
    if kind == "blur_sigma":
        return (lambda im: im) if level <= 0 else (lambda im: im.filter(ImageFilter.GaussianBlur(radius=level)))
    if kind == "downscale":
        if level >= 1.0:
            return lambda im: im
        return lambda im: im.resize(
            (max(1, round(im.width * level)), max(1, round(im.height * level))), Image.Resampling.BICUBIC
        )
    if kind == "reshare_chain":
        from deepfake_lightning.data.reshare import Reshare

        return (lambda im: im) if level <= 0 else Reshare(seed=int(level), length=int(level), salt_with_image=True)
    raise ConfigError(f"unknown perturbation {kind!r}; choose from {list(ROBUSTNESS_GRID)}")


def plot_robustness(table: pd.DataFrame):
    """AUROC and accuracy against each perturbation's level; one panel per perturbation."""
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(table["perturbation"]))
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.6), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=False):
        rows = table[table["perturbation"] == kind]
        ax.plot(rows["level"], rows["auroc"], marker="o", label="AUROC")
        ax.plot(rows["level"], rows["acc"], marker="s", label="accuracy (tuned threshold)")
        ax.set_xlabel(kind.replace("_", " "))
        ax.set_ylim(0, 1.02)
        if kind in ("jpeg_quality", "downscale"):
            ax.invert_xaxis()  # stronger perturbation to the right
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("metric")
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig
