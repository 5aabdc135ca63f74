"""Model files: the one module that reads checkpoints and merges the settings a model was trained with.

A Lightning checkpoint is a pickle, and unpickling a stranger's file can run arbitrary code. Nothing here ever
unpickles: every read is ``torch.load(weights_only=True)``, which accepts plain Python values (dicts, lists,
strings, numbers) and tensors and refuses anything else, with no fallback. A refused or unreadable file is a
:class:`CheckpointError` naming the file and what was refused; the ``deepfake`` command prints it as one line.

* :func:`load_checkpoint`: the checkpoint dict (``metadata_only=True`` memory-maps it: tensors are not read);
* :func:`update_checkpoint`: changes some entries and writes the file (or a copy) atomically;
* :func:`stored_settings`: the ``model`` / ``data`` settings of a checkpoint or an export folder (one merge for
  the CLI, the notebook loaders and the model card);
* :class:`SafeCheckpointIO`: Lightning's checkpoint plugin, reading through :func:`load_checkpoint` (so ``fit``
  resuming, ``validate``, ``test`` and ``predict`` refuse what the rest refuses) and writing atomically.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from deepfake_lightning.errors import CheckpointError, ExportError
from deepfake_lightning.files import AtomicCheckpointIO, atomic_path
from deepfake_lightning.settings import InferenceSettings

# An export folder (see export/folder.py): its settings file, and the format that file declares.
CONFIG_FILE = "detector.json"
FORMAT = "deepfake-lightning-detector"
FORMAT_VERSION = 1


def is_export(path: str | os.PathLike | None) -> bool:
    """Whether ``path`` is a folder written by ``deepfake export``."""
    return path is not None and Path(path).is_dir() and (Path(path) / CONFIG_FILE).is_file()


def _refusal(error: Exception) -> str:
    """torch's reason in a few words ("Unsupported global: GLOBAL posix.system") rather than its page of advice."""
    text = str(error)
    found = re.search(r"GLOBAL ([\w.]+)", text) if isinstance(error, pickle.UnpicklingError) else None
    if found:
        return (
            f"refused to unpickle it (Unsupported global: GLOBAL {found.group(1)}): only plain values and "
            "tensors are loaded"
        )
    if text.startswith("Weights only load failed"):  # torch's paragraphs: advice, the reason, a documentation link
        text = " ".join(text.split("\n\n")[1:2])
    return f"not a PyTorch checkpoint ({type(error).__name__}: {' '.join(text.split())[:160]})"


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", metadata_only: bool = False) -> dict:
    """The checkpoint dict of a ``deepfake fit`` file, loaded with ``weights_only=True``; ``metadata_only`` maps the
    file into memory instead of reading its tensors (for hyperparameters and calibration). Raises
    :class:`CheckpointError` for a file that is not a checkpoint or holds anything beyond plain values and tensors,
    and ``FileNotFoundError`` for a missing one."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a folder without {CONFIG_FILE}: pass a .ckpt file or a folder written by `deepfake export`"
        )
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint file or export folder: {str(path)!r}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=metadata_only)
    except OSError as e:  # the file system's answer (permissions, I/O), not the file's content
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or e})") from None
    except Exception as e:  # garbage makes the unpickler raise almost anything (KeyError, EOFError, RuntimeError...)
        raise CheckpointError(f"{path}: {_refusal(e)}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a checkpoint written by deepfake fit (no state_dict)")
    return ckpt


def update_checkpoint(
    path: str | os.PathLike, edit: Callable[[dict], None], out: str | os.PathLike | None = None
) -> Path:
    """Loads the checkpoint at ``path``, lets ``edit`` change its dict in place, and writes it back (or to ``out``)
    atomically: a crash leaves the old file. Returns the path written."""
    ckpt = load_checkpoint(path)
    edit(ckpt)
    target = Path(out or path)
    with atomic_path(target) as tmp:
        torch.save(ckpt, tmp)
    return target


def read_export_config(export_dir: str | os.PathLike) -> dict:
    """``detector.json`` of an export folder, checked."""
    path = Path(export_dir) / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ExportError(f"{path}: cannot be read as JSON ({e})") from e
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ExportError(f'{path}: not a deepfake-lightning export ("format" must be {FORMAT!r})')
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise ExportError(
            f"{path}: format_version {config['format_version']} is newer than this package reads "
            f"({FORMAT_VERSION}); upgrade deepfake-lightning"
        )
    missing = [k for k in ("backbone", "img_size", "mode", "mean", "std", "threshold") if k not in config]
    if missing:
        raise ExportError(f"{path}: missing key(s) {missing}")
    return config


def stored_settings(source: str | os.PathLike | dict) -> dict[str, dict]:
    """``{"model": ..., "data": ...}``: the settings a model was trained with, from a checkpoint file, an already
    loaded checkpoint dict, or an export folder (whose ``detector.json`` keeps the preprocessing at its top level).
    ``model`` holds the classifier's hyperparameters, ``data`` every data-module setting that was stored."""
    if isinstance(source, dict):
        ckpt = source
    elif is_export(source):
        return export_settings(read_export_config(source))
    else:
        ckpt = load_checkpoint(source, metadata_only=True)
    model = {k: v for k, v in ckpt.get("hyper_parameters", {}).items() if not k.startswith("_")}
    data = dict(ckpt.get("datamodule_hyper_parameters", {}))
    # The evaluation the calibration was fitted on (e.g. tiles, calibrated by `deepfake calibrate` after training)
    # is the one the model's verdicts use: its calibration and threshold fit only logits computed that way.
    evaluation = (ckpt.get("calibration") or {}).get("evaluation") or {}
    return {"model": model | evaluation.get("model", {}), "data": data | evaluation.get("data", {})}


def export_settings(config: dict) -> dict[str, dict]:
    """:func:`stored_settings` of an export folder's ``detector.json`` (already read)."""
    model_keys = ("backbone", "channels_last", *InferenceSettings.MODEL_KEYS)
    model = {k: config[k] for k in model_keys if k in config}
    top = {k: config[k] for k in InferenceSettings.DATA_KEYS if k in config}
    return {"model": model, "data": {**config.get("data", {}), **top}}


def export_calibration(config: dict) -> dict | None:
    """The calibration state in an export's ``detector.json``, with the folder's one decision threshold (its
    top-level ``threshold``, which ONNX Runtime serving reads too; older exports also kept a copy inside)."""
    calibration = config.get("calibration")
    return None if calibration is None else {**calibration, "threshold": config["threshold"]}


class SafeCheckpointIO(AtomicCheckpointIO):
    """Lightning's checkpoint plugin: reads with :func:`load_checkpoint` (plain values and tensors only, one clear
    error otherwise) and writes atomically (``files.AtomicCheckpointIO``: a kill mid-write keeps the previous file)."""

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(path, map_location=map_location)
