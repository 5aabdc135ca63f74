from deepfake_lightning.models.backbones import PretrainedWeightsUnavailable, create_backbone
from deepfake_lightning.models.classifier import DeepfakeClassifier

__all__ = ["DeepfakeClassifier", "PretrainedWeightsUnavailable", "create_backbone"]
