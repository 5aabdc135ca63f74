"""One detector, one verdict: a trained model with its settings, calibration and threshold, on PyTorch or ONNX Runtime.

``deepfake explain``, ``deepfake export``, ``deepfake serve`` and the notebooks' :func:`load_detector` score images
here; ``deepfake test|predict`` score them through the LightningModule, which computes the same logits
(``DeepfakeClassifier.predict_logits``) from the same settings (settings.py). An image's verdict is:

1. its views, by the model's :class:`~deepfake_lightning.settings.InferenceSettings`: one view, five crops, or the
   whole image as tiles;
2. one batched pass of the network over every view (a backend: the PyTorch weights, or an export's ``model.onnx``);
   ``tta_flip`` averages each view with its mirror inside the network;
3. the views' logits made one: five crops averaged, tiles pooled (``tile_pooling``);
4. the calibration (temperature...) to a probability, and the threshold chosen on validation data to a label.

Steps 3 and 4 are the model's :class:`~deepfake_lightning.scoring.Scorer`, the one the LightningModule uses too.

Grad-CAM needs gradients and so the PyTorch weights: on ONNX Runtime they are read from the export's
``model.safetensors`` when it is asked for (:attr:`Detector.model`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from deepfake_lightning.calibration import CalibrationState, Calibrator
from deepfake_lightning.checkpoints import is_export
from deepfake_lightning.data.dataset import load_image
from deepfake_lightning.data.tiles import TileTransform
from deepfake_lightning.data.transforms import create_transform, evaluation_transform
from deepfake_lightning.errors import ConfigError, ExportError
from deepfake_lightning.model_file import read_model_file
from deepfake_lightning.provenance import ModelFacts
from deepfake_lightning.scoring import Scorer
from deepfake_lightning.settings import InferenceSettings

RUNTIMES = ("torch", "onnx")


@dataclass
class Detector:
    """A trained detector ready to score images (build it with :func:`load_detector`).

    Attributes:
        settings: How an image becomes the verdict (views, tiles, pooling, normalization...).
        calibration: Temperature (or other) scaling and threshold fitted on validation data; None if uncalibrated.
        facts: What the model was trained on, its metrics and versions (provenance.py).
        backbone: The timm backbone's name.
        source: The checkpoint file or export folder it was read from.
        runtime: ``torch`` or ``onnx``.
        device: Where the network runs (``cpu``, ``cuda``...).
    """

    settings: InferenceSettings
    calibration: CalibrationState | None
    facts: ModelFacts = field(default_factory=ModelFacts)
    backbone: str = ""
    source: str = ""
    runtime: str = "torch"
    device: str = "cpu"
    _model: object = None  # the DeepfakeClassifier (eval mode): loaded with the detector on torch, on demand on onnx
    _onnx: object = None  # export.onnx.OnnxModel on the onnx runtime
    _formats: tuple = ("safetensors",)

    @classmethod
    def from_model(cls, model, settings: InferenceSettings, source: str = "") -> Detector:
        """A detector around a ``DeepfakeClassifier`` in memory (e.g. one just trained) with ``settings``; its
        calibration and threshold are the model's."""
        return cls(settings, model.calibration, model.facts or ModelFacts(), model.hparams.backbone, source,
                   _model=model.eval(), _formats=())  # fmt: skip

    # ------------------------------------------------------------------ the model
    @property
    def model(self):
        """The PyTorch ``DeepfakeClassifier`` (eval mode, calibrated); on the ONNX runtime read from the export's
        ``model.safetensors`` on first use (Grad-CAM)."""
        if self._model is None:
            self._model = read_model_file(self.source).build(self.device)
        return self._model

    @property
    def can_explain(self) -> bool:
        """Grad-CAM needs the PyTorch weights: a ``.ckpt``, or an export with ``model.safetensors``."""
        return self._model is not None or "safetensors" in self._formats

    @property
    def scorer(self) -> Scorer:
        """The model's one scorer (scoring.py): pooling, calibration and threshold."""
        return Scorer(self.settings, self.calibration)

    @property
    def calibrator(self) -> Calibrator:
        return self.scorer.calibrator

    @property
    def threshold(self) -> float:
        """The decision threshold on calibrated probabilities (``UNCALIBRATED_THRESHOLD`` for an uncalibrated model)."""
        return self.scorer.threshold

    @property
    def guarantee(self) -> dict:
        """The false-positive-rate guarantee the threshold was chosen for, if any (calibration/thresholds.py)."""
        return dict(self.calibration.guarantee) if self.calibration else {}

    # Settings under their old names, for notebooks and scripts written against them.
    img_size = property(lambda self: self.settings.img_size)
    mode = property(lambda self: self.settings.mode)
    mean = property(lambda self: self.settings.mean)
    std = property(lambda self: self.settings.std)
    tiled = property(lambda self: self.settings.tiled)
    views = property(lambda self: self.settings.eval_views)

    # ------------------------------------------------------------------ preprocessing
    def evaluation_transform(self, normalize: bool = False):
        """The verdict's preprocessing: a PIL image to its views as ``deepfake predict`` computes them (one view
        (3, H, W), five (5, 3, H, W), or a dict of tiles), uint8 (the network normalizes) unless ``normalize``."""
        return evaluation_transform(self.settings, normalize)

    @property
    def transform(self):
        """One normalized view (the centre crop, or the whole image resized): what Grad-CAM explains."""
        s = self.settings
        return create_transform(s.img_size, train=False, mode=s.mode, mean=s.mean, std=s.std)

    @property
    def verdict_transform(self):
        return self.evaluation_transform(normalize=True)

    def tile_transform(
        self, stride: int | None = None, max_tiles: int | None = None, normalize: bool = True
    ) -> TileTransform:
        """The whole image as tiles (the model's ``tile_stride`` and ``max_tiles`` unless given): a tiled verdict's
        views, and the cells of a score map.

        Raises:
            ConfigError: For a ``resize``-mode model, which sees whole images already.
        """
        s = self.settings.merged(tile_stride=stride, max_tiles=max_tiles)
        if s.mode != "crop":
            s.merged(eval_views="tiles")  # the one error line: tiles need a crop-mode model
        return TileTransform(s.img_size, s.tile_stride, s.max_tiles, s.mean, s.std, normalize=normalize)

    def read(self, source) -> Image.Image:
        """A file (a path or a binary file object) decoded as every entry point decodes it for this model: RGB, EXIF
        orientation, and in resize mode JPEG draft decoding (``settings.draft_size``), as the data module does.

        Raises:
            BadImageError: For a missing, empty, truncated or undecodable file, or a decompression bomb.
        """
        return load_image(source, self.settings.draft_size)

    # ------------------------------------------------------------------ scoring
    @torch.inference_mode()
    def view_logits(self, images: torch.Tensor) -> np.ndarray:
        """The network's logit of each of (N, 3, H, W) images (uint8, or normalized float), ``tta_flip``
        included: float32 (N,)."""
        if len(images) == 0:
            return np.zeros(0, np.float32)
        if self.runtime == "onnx":
            return self._onnx.logits(images)
        model = self._model
        return model.tile_logits(images.to(model.device)).float().cpu().numpy()

    def pool(self, tile_logits: np.ndarray) -> float:
        """One image's logit from its tile logits, by the model's ``tile_pooling``."""
        return self.scorer.combine(True, tile_logits)

    def view_logits_of(self, inputs: list) -> list[np.ndarray]:
        """Every view's logit of each preprocessed input (what :meth:`evaluation_transform` or
        :meth:`tile_transform` give: (3, H, W), (V, 3, H, W) or a dict of tiles, mixed freely), all inputs' views in
        one pass of the network."""
        views = [x["image"] if isinstance(x, dict) else x if x.ndim == 4 else x.unsqueeze(0) for x in inputs]
        if not views:
            return []
        flat = self.view_logits(torch.cat(views))
        return np.split(flat, np.cumsum([len(v) for v in views])[:-1])

    def combine(self, x, view_logits: np.ndarray) -> float:
        """One input's image logit from its views' logits: a dict of tiles pooled, several views averaged."""
        return self.scorer.combine(isinstance(x, dict), view_logits)

    def logits(self, inputs: list) -> np.ndarray:
        """Image logits of preprocessed inputs (see :meth:`view_logits_of`), in one pass of the network."""
        parts = self.view_logits_of(inputs)
        return np.asarray([self.combine(x, p) for x, p in zip(inputs, parts, strict=True)], dtype=np.float32)

    def probs(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated AI probabilities (float64) of image logits."""
        return self.scorer.probs(logits)

    def score_images(self, images: list, batch_size: int = 8) -> np.ndarray:
        """The verdict probability (calibrated) of each image, a PIL image or an (H, W, 3) uint8 RGB array: its
        views, one pass, pooling and calibration, as ``deepfake predict`` gives it for the same pixels."""
        images = [im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im, np.uint8)) for im in images]
        transform = self.evaluation_transform()
        probs = []
        for start in range(0, len(images), batch_size):
            probs.append(self.probs(self.logits([transform(image) for image in images[start : start + batch_size]])))
        return np.concatenate(probs) if probs else np.zeros(0)

    def score_files(self, paths: list, batch_size: int = 8) -> np.ndarray:
        """The verdict probability of each image file (decoded by :meth:`read`): what ``deepfake predict`` gives."""
        return self.score_images([self.read(p) for p in paths], batch_size)

    def predict_files(
        self,
        paths: list,
        stability: int = 0,
        tolerance: float | None = None,
        evidence: bool = True,
        trust_anchors: str | None = None,
    ) -> pd.DataFrame:
        """``deepfake predict``'s ``files.csv`` for image files, in their order: ``id, prob_ai, label``; with
        ``stability=K`` the stability columns (``prob_min, prob_max, flip_rate, verdict``: K seeded re-shared copies
        of each image, ``stability.py``); with ``evidence`` what each file's metadata says (``evidence_*``,
        ``evidence.py``, beside the verdict, never in it); an unreadable file gets its ``error`` and no
        probability."""
        from deepfake_lightning.data.dataset import BadImageError
        from deepfake_lightning.data.reshare import ReshareCopies
        from deepfake_lightning.evaluation import predictions_table
        from deepfake_lightning.evidence import evidence_columns, evidence_of
        from deepfake_lightning.stability import DEFAULT_TOLERANCE, check_stability, stability_table

        tolerance = DEFAULT_TOLERANCE if tolerance is None else tolerance
        if stability:
            check_stability(stability, tolerance)
        pictures, errors = {}, {}
        for path in map(str, paths):
            try:
                pictures[path] = self.read(path)
            except BadImageError as e:
                errors[path] = str(e.__cause__ or e)
        ids, transform = list(pictures), self.evaluation_transform()
        inputs = [transform(p) for p in pictures.values()]
        logits = [self.logits(inputs[i : i + 8]) for i in range(0, len(inputs), 8)]
        probs = self.probs(np.concatenate(logits)) if logits else np.zeros(0)
        extra: dict = {}
        if self.settings.tiled:  # as predict reports a tiled verdict: tiles scored, and of how many
            extra["n_tiles"] = [len(x["image"]) for x in inputs]
            extra["tiles_total"] = [int(x["tiles_total"]) for x in inputs]
        if stability and ids:
            copies = ReshareCopies(stability, self.evaluation_transform())
            logits = np.stack([self.logits_of_copies(copies(p), stability) for p in pictures.values()])
            copy_probs = self.probs(logits.ravel()).reshape(logits.shape)
            stable = stability_table(probs, copy_probs, self.threshold, tolerance)
            extra |= {column: stable[column].to_numpy() for column in stable.columns}
        if evidence:
            extra |= evidence_columns(evidence_of(ids, trust_anchors))
        return predictions_table(ids, probs, self.threshold, extra, errors, order=list(map(str, paths)))

    def logits_of_copies(self, copies: dict, k: int) -> np.ndarray:
        """The k image logits of one image's re-shared copies (``data/reshare.py``: ``ReshareCopies``' output)."""
        if "copies" in copies:
            return self.logits(list(copies["copies"]))
        parts = np.split(self.view_logits(copies["image"]), np.cumsum(copies["copy_tiles"].tolist())[:-1])
        return np.asarray([self.pool(p) for p in parts], dtype=np.float32)

    def labels(self, probs: np.ndarray) -> np.ndarray:
        """1 (AI-generated) where a calibrated probability reaches the threshold."""
        return self.scorer.labels(probs)


def load_detector(
    source: str | os.PathLike, map_location: str | torch.device = "cpu", runtime: str = "torch"
) -> Detector:
    """The detector in ``source``, with its own settings, calibration and threshold, from either

    * a folder written by ``deepfake export`` (safetensors or ONNX + JSON: nothing is unpickled, safe to share), or
    * a ``.ckpt`` written by ``deepfake fit``, read with ``torch.load(weights_only=True)``: a file holding anything
      beyond plain values and tensors is refused with a :class:`~deepfake_lightning.errors.CheckpointError`.

    ``runtime="onnx"`` runs an export's ``model.onnx`` with ONNX Runtime (CUDA when ``map_location`` is one).
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime {runtime!r}: choose torch or onnx")
    device = str(map_location)
    if runtime == "onnx":
        return _onnx_detector(source, device)
    model_file = read_model_file(source)  # read once; weights_only: a crafted pickle is refused, never run
    model = model_file.build(device)
    facts = replace(model_file.facts, source=str(source))
    return Detector(
        model_file.settings(model.data_config), model_file.calibration, facts, model_file.backbone, str(source),
        "torch", device, model, None, model_file.formats,
    )  # fmt: skip


def _onnx_detector(source: str | os.PathLike, device: str) -> Detector:
    from deepfake_lightning.export.onnx import OnnxModel

    if not is_export(source):
        raise ExportError(
            f"--runtime onnx runs an export folder with a model.onnx, not {str(source)!r}: "
            f"deepfake export --ckpt_path {source} --out DIR --format safetensors onnx"
        )
    model_file = read_model_file(source)
    onnx = OnnxModel(source, model_file.config, ["CUDAExecutionProvider"] if device.startswith("cuda") else None)
    return Detector(
        model_file.settings(), model_file.calibration, model_file.facts, model_file.backbone, str(source), "onnx",
        device, None, onnx, model_file.formats,
    )  # fmt: skip


def source_name(detector: Detector) -> str:
    """The file or folder name a detector was read from (for pages and reports)."""
    return Path(detector.source).name
