"""The one reader of model files: a ``deepfake fit`` checkpoint or a ``deepfake export`` folder, read once into a
:class:`ModelFile`.

A :class:`ModelFile` holds everything a command needs of a trained model, each parsed once per load:

* how to build the network and load its weights (:meth:`ModelFile.build`, :meth:`ModelFile.load_into`);
* the settings it was trained and calibrated with (:attr:`ModelFile.stored`, :meth:`ModelFile.settings`);
* its calibration (:attr:`ModelFile.calibration`);
* the facts of its model card (:attr:`ModelFile.facts`, with the test results of its run's evaluation folders).

Nothing is ever unpickled (checkpoints.py reads checkpoints with ``torch.load(weights_only=True)``; an export is
safetensors and JSON), and nothing is ever written: reading a model file leaves its bytes as they were. Every
command, :func:`~deepfake_lightning.detector.load_detector` and the notebooks' API read models through here; export
folders are written by export/folder.py alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from deepfake_lightning.calibration import CalibrationState
from deepfake_lightning.checkpoints import (
    CONFIG_FILE,
    export_calibration,
    export_settings,
    is_export,
    load_checkpoint,
    read_export_config,
    stored_settings,
)
from deepfake_lightning.errors import ExportError
from deepfake_lightning.provenance import ModelFacts, with_recorded_evaluation
from deepfake_lightning.settings import InferenceSettings

WEIGHTS_FILE = "model.safetensors"


@dataclass
class ModelFile:
    """A trained model as read from its file (build one with :func:`read_model_file`).

    Attributes:
        source: The checkpoint file or export folder.
        kind: ``checkpoint`` or ``export``.
        stored: ``{"model": ..., "data": ...}``: the settings it was trained with, the evaluation its calibration
            was fitted on laid over them (``checkpoints.stored_settings``).
        calibration: Its calibration and threshold; None when it is uncalibrated.
        provenance: What it was trained on, its metrics and versions, and the test results of its run's
            evaluation folders (provenance.py).
        facts: The facts of its model card.
        formats: An export's weight formats (``safetensors``, ``onnx``); empty for a checkpoint.
        checkpoint: The checkpoint dict (plain values and tensors), or None for an export.
        config: An export's ``detector.json``, or None for a checkpoint.
    """

    source: str
    kind: Literal["checkpoint", "export"]
    stored: dict[str, dict]
    calibration: CalibrationState | None
    provenance: dict = field(default_factory=dict)
    facts: ModelFacts = field(default_factory=ModelFacts)
    formats: tuple[str, ...] = ()
    checkpoint: dict | None = None
    config: dict | None = None

    @property
    def backbone(self) -> str:
        return self.stored["model"].get("backbone", "")

    def settings(self, data_config: dict | None = None) -> InferenceSettings:
        """Its inference settings; ``data_config`` (the backbone's timm one) fills what it did not store."""
        return InferenceSettings.from_stored(self.stored, data_config)

    def build(self, map_location: Any = "cpu"):
        """The eval-mode ``DeepfakeClassifier`` with its weights, calibration and facts, on ``map_location``;
        pretrained weights are never fetched. An export without PyTorch weights (ONNX only) is an ExportError."""
        from deepfake_lightning.models import DeepfakeClassifier

        if self.checkpoint is not None:
            model = DeepfakeClassifier.from_checkpoint(self.checkpoint, map_location)
        else:
            model = DeepfakeClassifier(
                self.config["backbone"],
                pretrained=False,
                channels_last=self.config.get("channels_last", True),
                **self.settings().section("model"),
            )
            self.load_into(model)
        model.calibration, model.facts = self.calibration, self.facts
        return model.to(map_location).eval()

    def load_into(self, model) -> None:
        """Loads an export's weights, calibration and facts into a ``DeepfakeClassifier`` of its backbone (the
        CLI builds the model from the configuration first)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(self.source) / WEIGHTS_FILE
        if "safetensors" not in self.formats:
            raise ExportError(
                f"{Path(self.source) / CONFIG_FILE}: this export holds only {', '.join(self.formats)} weights, not "
                f"PyTorch ones ({WEIGHTS_FILE}): serve it with `deepfake serve --runtime onnx`, or export again "
                "with --format safetensors onnx"
            )
        try:
            weights = load_file(str(path))
        except (OSError, SafetensorError) as e:
            raise ExportError(f"{path}: cannot be read as safetensors ({e})") from e
        try:
            model.net.load_state_dict(weights)
        except RuntimeError as e:
            raise ExportError(f"{path} does not fit backbone {self.backbone!r}: {e}") from e
        model.calibration, model.facts = self.calibration, self.facts


def read_model_file(source: str | os.PathLike, metadata_only: bool = False) -> ModelFile:
    """The checkpoint file or export folder ``source``, read once. ``metadata_only`` maps a checkpoint into memory
    without reading its tensors (settings, calibration and facts only: :meth:`ModelFile.build` then needs a full
    read).

    Raises:
        CheckpointError: For a file that is not a checkpoint, or holds anything beyond plain values and tensors.
        ExportError: For an export folder whose ``detector.json`` or calibration cannot be read.
        FileNotFoundError: For a missing file.
    """
    if is_export(source):
        config = read_export_config(source)
        try:
            calibration = CalibrationState.from_json(export_calibration(config))
        except (ValueError, TypeError, KeyError) as e:
            raise ExportError(f'{Path(source) / CONFIG_FILE}: "calibration" cannot be read ({e})') from e
        provenance = dict(config.get("provenance") or {})
        stored = export_settings(config)
        formats = tuple(config.get("formats", ["safetensors"]))
        cal = export_calibration(config)
        return ModelFile(
            str(source), "export", stored, calibration, provenance,
            ModelFacts.from_parts(stored["model"], stored["data"], cal, provenance, str(source)), formats, None, config,
        )  # fmt: skip
    ckpt = load_checkpoint(source, metadata_only=metadata_only)
    stored = stored_settings(ckpt)
    calibration = CalibrationState.from_checkpoint(ckpt.get("calibration"))
    if calibration is not None and not calibration.evaluation:
        # Calibrated before the evaluation was recorded: on the validation views the run was trained with.
        from deepfake_lightning.calibration import evaluation_of

        calibration.evaluation = evaluation_of(ckpt.get("datamodule_hyper_parameters", {}), stored["model"])
    provenance = with_recorded_evaluation(ckpt.get("provenance"), source)
    facts = ModelFacts.from_parts(stored["model"], stored["data"], ckpt.get("calibration"), provenance, str(source))
    return ModelFile(str(source), "checkpoint", stored, calibration, provenance, facts, (), ckpt, None)


def load_export(export_dir: str | os.PathLike, map_location: Any = "cpu"):
    """The ``DeepfakeClassifier`` (eval mode, calibrated) and ``detector.json`` of an export folder."""
    model_file = read_model_file(export_dir)
    if model_file.kind != "export":
        raise ExportError(f"{export_dir}: not a folder written by `deepfake export` (no {CONFIG_FILE})")
    return model_file.build(map_location), model_file.config
