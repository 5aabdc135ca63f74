"""torchmetrics collections for validation and test steps (the report path uses ``calibration.thresholds``; both
predict AI when ``prob >= threshold``)."""

from __future__ import annotations

import math

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryAveragePrecision,
    BinaryConfusionMatrix,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
    BinarySpecificity,
)

from deepfake_lightning.settings import UNCALIBRATED_THRESHOLD


def make_metrics(threshold: float = UNCALIBRATED_THRESHOLD) -> MetricCollection:
    """Per-stage metrics; thresholded ones predict AI when the probability is >= ``threshold`` (scikit-learn's
    convention, which tuned thresholds follow; torchmetrics compares with >, hence the one-ulp nudge).
    ``acc_human`` is the accuracy on human images (specificity), ``acc_ai`` the accuracy on AI images
    (recall); ``tn/fp/fn/tp`` come from ``confmat``."""
    t = math.nextafter(float(threshold), -math.inf)
    return MetricCollection(
        {
            "acc": BinaryAccuracy(threshold=t),
            "precision": BinaryPrecision(threshold=t),
            "recall": BinaryRecall(threshold=t),
            "f1": BinaryF1Score(threshold=t),
            "auroc": BinaryAUROC(),
            "ap": BinaryAveragePrecision(),
            "acc_human": BinarySpecificity(threshold=t),
            "acc_ai": BinaryRecall(threshold=t),
            "confmat": BinaryConfusionMatrix(threshold=t),
        },
        compute_groups=False,
    )


def flatten_metrics(values: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Names metric values ``<prefix>/<name>`` and splits the confusion matrix into four counts."""
    out = {}
    for name, v in values.items():
        if name == "confmat":
            (tn, fp), (fn, tp) = v.float()
            out.update({f"{prefix}/tn": tn, f"{prefix}/fp": fp, f"{prefix}/fn": fn, f"{prefix}/tp": tp})
        else:
            out[f"{prefix}/{name}"] = v.float()
    return out
