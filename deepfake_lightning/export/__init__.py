"""Model folders that load without unpickling anything: writing them (``folder.py``; model_file.py reads them) and the
``deepfake export`` command (``commands/export.py``). ONNX files are ``onnx.py``'s.

The names are imported from here on first use (PEP 562), so that ``deepfake export --help`` does not pay for torch.
"""

from importlib import import_module

_FOLDER = ("CARD_FILE", "FORMATS", "export_checkpoint")
_READER = ("WEIGHTS_FILE", "load_export")  # reading is model_file.py's, the one reader
__all__ = [*_FOLDER, *_READER, "load_onnx"]


def __getattr__(name: str):
    if name in _FOLDER:
        return getattr(import_module("deepfake_lightning.export.folder"), name)
    if name == "load_onnx":
        return getattr(import_module("deepfake_lightning.export.onnx"), name)
    if name in _READER:
        return getattr(import_module("deepfake_lightning.model_file"), name)
    raise AttributeError(f"module 'deepfake_lightning.export' has no attribute {name!r}")
