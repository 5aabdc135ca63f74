"""The one scorer: how the logits of an image's views become its verdict, for every command and entry point.

An image's verdict is computed in three steps, each written here once:

1. its views' logits made one image logit (:meth:`Scorer.pool` for tiles, :meth:`Scorer.combine` for any input:
   tiles pooled by ``tile_pooling``, several views averaged);
2. the image logit calibrated to a probability (:meth:`Scorer.probs`: the model's temperature or other scaling, a
   plain sigmoid when it is not calibrated);
3. the probability compared with the decision threshold chosen on validation data (:func:`decide`; the
   uncalibrated default :data:`UNCALIBRATED_THRESHOLD`).

The LightningModule (validation, test, predict), :class:`~deepfake_lightning.detector.Detector` on PyTorch and ONNX
Runtime, serving, ``explain``, the notebooks' API, the stability check, the reports and ``adapt`` all score through
it; tests/test_architecture.py fails when a probability is compared with a threshold anywhere else in the package
(threshold *selection*, calibration/thresholds.py, excepted).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from deepfake_lightning.calibration.calibrators import Calibrator
from deepfake_lightning.calibration.state import CalibrationState
from deepfake_lightning.data.tiles import pool_tile_logits
from deepfake_lightning.settings import DEFAULTS, UNCALIBRATED_THRESHOLD, InferenceSettings

__all__ = ["UNCALIBRATED_THRESHOLD", "Scorer", "decide"]


def decide(probs, threshold: float) -> np.ndarray:
    """The labels of AI probabilities: 1 (AI-generated) where a probability reaches ``threshold``, else 0. A scalar
    gives a 0-d array (``int(decide(p, t))``)."""
    return (np.asarray(probs) >= threshold).astype(int)


@dataclass(frozen=True)
class Scorer:
    """A model's inference settings and calibration: views' logits in, image logits, probabilities and labels out.

    Attributes:
        settings: How the views are pooled (``tile_pooling``, ``tile_topk``; settings.py).
        calibration: The calibrator and threshold fitted on validation data; None when the model is uncalibrated.
    """

    settings: InferenceSettings = DEFAULTS
    calibration: CalibrationState | None = None

    @property
    def calibrator(self) -> Calibrator:
        """Maps logits to calibrated AI probabilities (a plain sigmoid when the model is not calibrated)."""
        return self.calibration.calibrator if self.calibration is not None else Calibrator()

    @property
    def threshold(self) -> float:
        """The decision threshold on calibrated probabilities (:data:`UNCALIBRATED_THRESHOLD` if uncalibrated)."""
        return float(self.calibration.threshold) if self.calibration is not None else UNCALIBRATED_THRESHOLD

    def pool(self, tile_logits: torch.Tensor, n_tiles: torch.Tensor) -> torch.Tensor:
        """Image logits from consecutive tile logits, ``n_tiles`` per image, by ``tile_pooling``."""
        s = self.settings
        return pool_tile_logits(tile_logits, n_tiles, s.tile_pooling, s.tile_topk)

    def combine(self, tiled: bool, view_logits: np.ndarray) -> float:
        """One image's logit from its views' logits: tiles pooled, several views (five crops) averaged."""
        logits = np.asarray(view_logits, dtype=np.float32)
        if tiled:
            return float(self.pool(torch.from_numpy(logits), torch.tensor([len(logits)]))[0])
        return float(np.mean(logits))

    def probs(self, logits) -> np.ndarray:
        """Calibrated AI probabilities (float64) of image logits (a NumPy array or a tensor on any device)."""
        if isinstance(logits, torch.Tensor):
            logits = logits.detach().float().cpu().numpy()
        return self.calibrator(np.asarray(logits, dtype=np.float32))

    def labels(self, probs) -> np.ndarray:
        """1 (AI-generated) where a calibrated probability reaches the threshold."""
        return decide(probs, self.threshold)

    def verdicts(self, logits) -> tuple[np.ndarray, np.ndarray]:
        """``(probs, labels)`` of image logits."""
        probs = self.probs(logits)
        return probs, self.labels(probs)
