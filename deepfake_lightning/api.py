"""Loading a trained detector for inference outside the CLI (notebooks, scripts, ``deepfake explain``)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torchvision.transforms import v2

from deepfake_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD, create_transform
from deepfake_lightning.models import DeepfakeClassifier


@dataclass
class Detector:
    """A trained, calibrated model in eval mode with the evaluation transform it was trained with.

    ``model.calibrated_probs(logits)`` gives calibrated AI probabilities and ``threshold`` the decision threshold
    chosen on validation data (0.5 for an uncalibrated checkpoint).
    """

    model: DeepfakeClassifier
    transform: v2.Compose
    img_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def threshold(self) -> float:
        return self.model.threshold


def load_detector(ckpt_path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Detector:
    """Loads a ``.ckpt`` written by ``deepfake fit`` with its own preprocessing (image size, resize/crop mode,
    normalization) taken from the data-module hyperparameters stored in the checkpoint.

    Checkpoints are pickles: load only files you trust.
    """
    if not os.path.isfile(ckpt_path):
        raise FileNotFoundError(f"checkpoint not found: {ckpt_path}")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    model = DeepfakeClassifier.load_from_checkpoint(ckpt_path, map_location=map_location, pretrained=False, weights=None)
    model.eval()
    data = ckpt.get("datamodule_hyper_parameters", {})
    cfg = model.data_config
    img_size = int(data.get("img_size", cfg["input_size"][-1]))
    mean = tuple(data.get("mean", cfg.get("mean", IMAGENET_MEAN)))
    std = tuple(data.get("std", cfg.get("std", IMAGENET_STD)))
    transform = create_transform(img_size, train=False, mode=data.get("mode", "resize"), mean=mean, std=std)
    return Detector(model, transform, img_size, mean, std)
