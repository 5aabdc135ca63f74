"""deepfake-lightning: train, explain, calibrate and tune detectors of AI-generated images."""

from deepfake_lightning.api import Detector, load_detector
from deepfake_lightning.data import DeepfakeDataModule, build_demo_dataset, create_transform
from deepfake_lightning.models import DeepfakeClassifier

__version__ = "0.1.0"
__all__ = [
    "DeepfakeClassifier",
    "DeepfakeDataModule",
    "Detector",
    "__version__",
    "build_demo_dataset",
    "create_transform",
    "load_detector",
]
