"""The inference settings of a trained detector: what turns an image into the model's verdict, written once.

Every command that scores images (``test``, ``predict``, ``explain``, ``export``, ``serve``) and the notebooks'
``load_detector`` read a model's settings with :meth:`InferenceSettings.from_stored` (of
``checkpoints.stored_settings``). The defaults below are the only ones: the data module's and the classifier's
signatures take theirs from :data:`DEFAULTS`.

Where each value comes from, lowest to highest (one merge, :meth:`InferenceSettings.merged`):

1. these defaults (and the backbone's timm data config for ``img_size``, ``mean``, ``std``);
2. what the model stored: a checkpoint's ``datamodule_hyper_parameters`` and ``hyper_parameters``, or an export's
   ``detector.json``;
3. the evaluation its calibration was fitted on (``deepfake calibrate --data.eval_views tiles``): a calibration
   and threshold fit only logits computed that way, so they override what training used;
4. the command line (``--data.eval_views 5``, ``--model.tta_flip true``...), which always wins.

This module imports nothing from the package, so that every layer can use it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from deepfake_lightning.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

TILE_POOLINGS = ("max", "topk", "mean")

UNCALIBRATED_THRESHOLD = 0.5
"""The decision threshold of a model without calibration, on the plain sigmoid of its logit (scoring.py decides)."""


@dataclass(frozen=True)
class InferenceSettings:
    """How a model turns an image into its verdict.

    Attributes:
        img_size: The network's input side in pixels.
        mode: ``resize`` (the whole image squashed to ``img_size``) or ``crop`` (native-resolution crops).
        mean: Normalization mean (the backbone's timm data config).
        std: Normalization std.
        eval_views: The verdict's views: 1 (one view), 5 (four corners and the centre, logits averaged; ``crop``
            only) or ``tiles`` (the whole image as ``img_size`` tiles, logits pooled; ``crop`` only).
        tile_stride: With tiles: pixels between tile starts (``None``: ``img_size``, no overlap).
        max_tiles: With tiles: most tiles scored per image; larger grids thin out evenly.
        tile_pooling: With tiles: ``max``, ``topk`` (mean of the ``tile_topk`` share of highest) or ``mean``.
        tile_topk: Share of tiles ``topk`` pools, in (0, 1].
        tta_flip: Average each view's logit with its mirror's.
        frontend: The fixed input filter before the backbone (``rgb``, ``npr``, ``highpass``: models/frontends.py).
        jpeg_draft: ``resize`` mode: JPEGs are decoded at the smallest DCT scale that still covers ``img_size``
            (the image is squashed to it anyway); every entry point decodes a file this way.
    """

    img_size: int = 224
    mode: Literal["resize", "crop"] = "resize"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    eval_views: int | str = 1
    tile_stride: int | None = None
    max_tiles: int = 64
    tile_pooling: Literal["max", "topk", "mean"] = "max"
    tile_topk: float = 0.25
    tta_flip: bool = False
    frontend: str = "rgb"
    jpeg_draft: bool = True

    # Which section of a run's config each setting belongs to (``--data.img_size``, ``--model.tta_flip``).
    DATA_KEYS = ("img_size", "mode", "mean", "std", "eval_views", "tile_stride", "max_tiles", "jpeg_draft")
    MODEL_KEYS = ("tile_pooling", "tile_topk", "tta_flip", "frontend")
    # What a calibration records of the evaluation it was fitted on (calibration/state.py).
    EVALUATION_KEYS = {"data": ("eval_views", "tile_stride", "max_tiles"), "model": ("tile_pooling", "tile_topk")}

    def __post_init__(self) -> None:
        object.__setattr__(self, "img_size", int(self.img_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "max_tiles", int(self.max_tiles))
        object.__setattr__(self, "tile_topk", float(self.tile_topk))
        if str(self.eval_views).isdigit():
            object.__setattr__(self, "eval_views", int(self.eval_views))
        check_views(self.eval_views, self.mode, self.tile_stride, self.max_tiles)
        if self.tile_pooling not in TILE_POOLINGS:
            raise ConfigError(f"model.tile_pooling must be max, topk or mean, got {self.tile_pooling!r}")
        if not 0.0 < self.tile_topk <= 1.0:
            raise ConfigError(f"model.tile_topk must be in (0, 1], got {self.tile_topk}")

    @property
    def tiled(self) -> bool:
        """Whether the verdict scores the whole image as tiles."""
        return self.eval_views == "tiles"

    @property
    def draft_size(self) -> int | None:
        """The ``draft_size`` of ``data.dataset.load_image`` for this model: ``img_size`` in resize mode with
        ``jpeg_draft``, else None (full decoding)."""
        return self.img_size if self.jpeg_draft and self.mode == "resize" else None

    @property
    def stride(self) -> int:
        """Pixels between tile starts."""
        return int(self.tile_stride or self.img_size)

    @classmethod
    def from_stored(cls, stored: dict[str, dict], data_config: dict | None = None) -> InferenceSettings:
        """From ``{"model": ..., "data": ...}`` (``checkpoints.stored_settings``: a checkpoint's or an export's, the
        calibration's evaluation merged in); ``data_config`` (the backbone's timm one) fills ``img_size``, ``mean``
        and ``std`` when the model did not store them."""
        values: dict[str, Any] = {}
        if data_config:
            values |= {"img_size": data_config["input_size"][-1], "mean": data_config["mean"]}
            values |= {"std": data_config["std"]}
        values |= {k: v for k, v in stored.get("data", {}).items() if k in cls.DATA_KEYS and v is not None}
        values |= {k: v for k, v in stored.get("model", {}).items() if k in cls.MODEL_KEYS and v is not None}
        if "tile_stride" in stored.get("data", {}):
            values["tile_stride"] = stored["data"]["tile_stride"]
        return cls(**values)

    def merged(self, **overrides) -> InferenceSettings:
        """These settings with ``overrides`` (the command line's; ``None`` means not given) in their place.

        Raises:
            ConfigError: For a key that is not an inference setting, or a combination that cannot work.
        """
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"not an inference setting: {', '.join(unknown)}")
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def section(self, name: Literal["data", "model"]) -> dict[str, Any]:
        """The settings of one config section (``data`` or ``model``), JSON-ready."""
        keys = self.DATA_KEYS if name == "data" else self.MODEL_KEYS
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.to_json().items() if k in keys}

    def to_json(self) -> dict[str, Any]:
        """Every setting, JSON-ready (an export's ``detector.json`` keeps them at its top level)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def describe(self) -> str:
        """The verdict's views in a few words: ``one view``, ``5 views``, ``tiles (stride 64, max pooling)``."""
        if self.tiled:
            return f"tiles (stride {self.stride}, {self.tile_pooling} pooling)"
        views = "one view" if self.eval_views == 1 else f"{self.eval_views} views"
        return views + (", mirrored" if self.tta_flip else "")


def check_views(
    eval_views, mode: str, tile_stride: int | None = None, max_tiles: int = InferenceSettings.max_tiles
) -> None:
    """One error line for an evaluation-view setting that cannot work (the keys named as on the command line)."""
    if mode not in ("resize", "crop"):
        raise ConfigError(f"mode must be 'resize' or 'crop', got {mode!r}")
    if eval_views not in (1, 5, "tiles"):
        raise ConfigError(f"data.eval_views must be 1, 5 or tiles, got {eval_views!r}")
    if eval_views != 1 and mode != "crop":
        what = "tiles score the whole image at native resolution" if eval_views == "tiles" else "five crops"
        raise ConfigError(
            f"data.eval_views={eval_views} needs data.mode=crop ({what}), but data.mode={mode}: a resize-mode "
            "model sees whole images squashed to img_size, so its verdict is already on the whole image"
        )
    if tile_stride is not None and tile_stride < 1:
        raise ConfigError(f"data.tile_stride must be a positive number of pixels, got {tile_stride}")
    if max_tiles < 1:
        raise ConfigError(f"data.max_tiles must be at least 1, got {max_tiles}")


DEFAULTS = InferenceSettings()  # every default, once
