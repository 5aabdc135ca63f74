"""Model folders that load without unpickling anything: writing and reading them (``folder.py``) and the
``deepfake export`` command (``commands/export.py``). ONNX files are ``onnx.py``'s.

The names are imported from here on first use (PEP 562), so that ``deepfake export --help`` does not pay for torch.
"""

from importlib import import_module

_FOLDER = ("CARD_FILE", "FORMATS", "WEIGHTS_FILE", "export_checkpoint", "load_export", "load_onnx", "load_weights")
__all__ = list(_FOLDER)


def __getattr__(name: str):
    if name in _FOLDER:
        return getattr(import_module("deepfake_lightning.export.folder"), name)
    raise AttributeError(f"module 'deepfake_lightning.export' has no attribute {name!r}")
