"""Explanations: the CAM engine (``cam.py``: :class:`CamExplainer`, target layers, overlays and grids), the figure of
one image (``figures.py``), ``deepfake explain FILES`` (``files.py``) and its score maps (``maps.py``).

The engine's names are imported from here on first use (PEP 562), so that ``deepfake explain --help`` does not pay
for torch and pytorch-grad-cam.
"""

from importlib import import_module

_ENGINE = (
    "CAM_METHODS",
    "CamExplainer",
    "CamResult",
    "cam_grid",
    "centre_view",
    "default_target_layers",
    "denormalize",
    "overlay",
    "resolve_layers",
)
__all__ = [*_ENGINE, "explain_files"]


def __getattr__(name: str):
    if name == "explain_files":
        return import_module("deepfake_lightning.explain.files").explain_files
    if name in _ENGINE:
        return getattr(import_module("deepfake_lightning.explain.cam"), name)
    raise AttributeError(f"module 'deepfake_lightning.explain' has no attribute {name!r}")
