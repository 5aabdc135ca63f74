"""Class activation maps: the CAM engine (``cam.py``: :class:`CamExplainer`, target layers, overlays and grids,
``explain_files``) and the ``deepfake explain`` command (``command.py``).

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
    "explain_files",
    "overlay",
    "resolve_layers",
)
__all__ = list(_ENGINE)


def __getattr__(name: str):
    if name in _ENGINE:
        return getattr(import_module("deepfake_lightning.explain.cam"), name)
    raise AttributeError(f"module 'deepfake_lightning.explain' has no attribute {name!r}")
