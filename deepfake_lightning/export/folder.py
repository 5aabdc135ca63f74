"""``deepfake export``: a checkpoint as a model directory that loads without unpickling anything.

Lightning checkpoints are pickles, and unpickling a stranger's file can run arbitrary code. An export holds
only tensors and JSON:

* ``model.safetensors``: the backbone's weights under timm's own names, so that
  ``timm.create_model(backbone, num_classes=1).load_state_dict(safetensors.torch.load_file(...))`` works too;
* ``model.onnx`` (with ``--format onnx``): the same network for ONNX Runtime, see ``export/onnx.py``;
* ``detector.json``: everything else inference needs: backbone name, image size, transform mode, normalization,
  calibration (method and parameters, temperature, the validation probabilities behind adaptive thresholds),
  decision threshold, the data module's settings (to re-create its splits), and the package version that wrote it.

``deepfake predict|test|explain --ckpt_path DIR``, :func:`deepfake_lightning.load_detector` and the notebooks
accept such a directory wherever they accept a ``.ckpt``.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepfake_lightning.checkpoints import (
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    is_export,
)
from deepfake_lightning.errors import ExportError
from deepfake_lightning.export.card import model_card
from deepfake_lightning.export.onnx import ONNX_FILE, write_onnx
from deepfake_lightning.files import atomic_path
from deepfake_lightning.model_file import WEIGHTS_FILE, read_model_file
from deepfake_lightning.scoring import Scorer
from deepfake_lightning.settings import InferenceSettings

CARD_FILE = "README.md"


def _plain(value: Any) -> Any:
    """JSON-ready copy of calibration values (tensors, NumPy scalars and arrays become numbers and lists)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


FORMATS = ("safetensors", "onnx")


def export_checkpoint(
    ckpt_path: str | os.PathLike, out_dir: str | os.PathLike, formats: tuple[str, ...] | list[str] = ("safetensors",)
) -> Path:
    """Writes the weights in ``formats`` (``out_dir/model.safetensors`` and/or ``out_dir/model.onnx``),
    ``out_dir/detector.json`` and a model card ``out_dir/README.md`` (Hugging Face format, see
    ``export/card.py``) from a ``deepfake fit`` checkpoint (a pickle: export only checkpoints you trust; the
    export is then safe to share). Returns ``out_dir``."""
    from safetensors.torch import save_file

    from deepfake_lightning import __version__

    formats = list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"--format {' '.join(unknown or formats)!s}: choose one or more of {', '.join(FORMATS)}")
    ckpt_path, out = Path(ckpt_path), Path(out_dir)
    if is_export(ckpt_path):
        raise ExportError(f"--ckpt_path {ckpt_path} is an export folder already: export the checkpoint it came from")
    model_file = read_model_file(ckpt_path)  # weights_only: a crafted pickle is refused, never run
    ckpt, settings, calibration = model_file.checkpoint, model_file.stored, model_file.calibration
    hp, data = settings["model"], settings["data"]
    if "backbone" not in hp:
        raise ExportError(f"{ckpt_path}: not a deepfake-lightning checkpoint (no backbone in its hyper_parameters)")
    weights = {k.removeprefix("net."): v.contiguous() for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "backbone": hp["backbone"],
        "num_classes": 1,
        "channels_last": bool(hp.get("channels_last", True)),
        # The inference settings (settings.py), at the top level where ONNX Runtime callers read them. With
        # eval_views "tiles", the caller tiles the whole image (data/tiles.py: TileTransform) and pools the tile
        # logits (tile_pooling, tile_topk); the network (and model.onnx) sees tiles only.
        **InferenceSettings.from_stored(settings).to_json(),
        "temperature": (
            calibration.calibrator.temperature
            if calibration and calibration.calibrator.method == "temperature"
            else None
        ),
        # The one decision threshold (PyTorch and ONNX Runtime both read it); "calibration" holds the rest.
        "threshold": Scorer(calibration=calibration).threshold,
        "calibration": calibration.to_json(threshold=False) if calibration else None,
        "data": _plain(dict(data)),  # the data module's settings, for re-creating its splits (datamodule_for)
        "source": {"checkpoint": ckpt_path.name, "epoch": ckpt.get("epoch"), "global_step": ckpt.get("global_step")},
        # training data, split, metrics, versions, and the test results of the run's evaluation folders (provenance.py)
        "provenance": _plain(model_file.provenance),
        "formats": formats,
        "onnx": None,
    }
    out.mkdir(parents=True, exist_ok=True)
    if "safetensors" in formats:
        with atomic_path(out / WEIGHTS_FILE) as tmp:
            save_file(weights, str(tmp), metadata={"format": FORMAT, "backbone": hp["backbone"]})
    if "onnx" in formats:
        config["onnx"] = write_onnx(model_file.build(), out / ONNX_FILE, config["img_size"])
    with atomic_path(out / CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps(config, indent=2))
    with atomic_path(out / CARD_FILE) as tmp:  # the Hugging Face model card
        tmp.write_text(model_card(replace(model_file.facts, source=str(out))))
    return out
