"""deepfake-lightning: train, explain, calibrate and tune detectors of AI-generated images.

The public names below are imported on first use (PEP 562), so that ``import deepfake_lightning`` and the
``deepfake`` command's help do not pay for torch, Lightning and timm until something needs them.
"""

from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {
    "DeepfakeClassifier": "deepfake_lightning.models",
    "DeepfakeDataModule": "deepfake_lightning.data",
    "Detector": "deepfake_lightning.api",
    "build_demo_dataset": "deepfake_lightning.data",
    "create_transform": "deepfake_lightning.data",
    "load_detector": "deepfake_lightning.api",
}
__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'deepfake_lightning' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
