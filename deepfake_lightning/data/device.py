"""Decoding JPEGs on the device (``data.decode: device``), the way NVIDIA DALI and FFCV take it off the CPU.

A training loader's worker then only reads a JPEG's bytes (:func:`read_encoded`); the main process hands a batch of
them to torchvision's batched ``decode_jpeg`` on the training device (nvJPEG on CUDA) and cuts each decoded image to
the network's input there (:func:`decode_batch`): resized whole in ``resize`` mode, cropped at native resolution in
``crop`` mode (a random crop for training; the centre crop with ``train=False``; zero-padded when smaller, as on the
CPU). Evaluation loaders keep decoding in the workers: their batches are also read outside the trainer's loops
(calibration, reports, notebooks), and evaluation is not where a GPU waits for data.

Files that are not plain upright RGB or greyscale JPEGs (PNG, WebP, CMYK JPEG, a photograph with an EXIF
rotation...) are decoded by the worker as before and arrive as pixels beside the bytes of the others. A file that
fails to decode on the device is named and handled by ``data.bad_images`` like one that fails on the CPU.
"""

from __future__ import annotations

import os

import torch
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2

from deepfake_lightning.data.augment import augment_batch, sample_plan
from deepfake_lightning.errors import BadImageError

ENCODED_KEY = "encoded"  # an item's JPEG bytes (1-D uint8) or, for a file decoded by the worker, its pixels


ORIENTATION = 0x0112  # the EXIF tag


def device_decodable(path: str | os.PathLike) -> bool:
    """Whether a file is a JPEG the device decodes: RGB or greyscale, and upright (nvJPEG ignores EXIF orientation,
    which ``load_image`` honours). Only its header is read."""
    try:
        with Image.open(path) as im:
            return im.format == "JPEG" and im.mode in ("RGB", "L") and im.getexif().get(ORIENTATION, 1) == 1
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return False  # the worker's own decoding names the problem


def read_encoded(path: str | os.PathLike) -> torch.Tensor:
    """A file's bytes as a 1-D uint8 tensor."""
    with open(path, "rb") as f:
        return torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)


def decode_batch(
    encoded: list[torch.Tensor],
    paths: list[str],
    size: int,
    mode: str,
    train: bool,
    device: torch.device,
) -> tuple[torch.Tensor, list[int], list[tuple[str, str]]]:
    """Decodes a batch on ``device`` and cuts each image to ``size`` x ``size``.

    Args:
        encoded: Per item, JPEG bytes (1-D) or pixels a worker decoded already ((3, H, W) uint8).
        paths: Per item, its file (for error messages).
        size: Output side.
        mode: ``resize`` or ``crop``.
        train: Random crops (``crop`` mode) instead of centre crops.
        device: Where to decode.

    Returns:
        uint8 images (n, 3, size, size) on ``device``, the positions in the batch they come from, and
        ``(path, reason)`` for each item that could not be decoded.
    """
    jpegs = [i for i, e in enumerate(encoded) if e.ndim == 1]
    decoded: dict[int, torch.Tensor] = {i: encoded[i].to(device) for i, e in enumerate(encoded) if e.ndim != 1}
    bad: list[tuple[str, str]] = []
    if jpegs:
        kwargs = {"mode": ImageReadMode.RGB, "device": device}  # rotated JPEGs were decoded by the worker
        try:
            decoded |= dict(zip(jpegs, decode_jpeg([encoded[i] for i in jpegs], **kwargs), strict=True))
        except RuntimeError:  # one bad file fails the batched call: decode one by one to find it
            for i in jpegs:
                try:
                    decoded[i] = decode_jpeg(encoded[i], **kwargs)
                except RuntimeError as e:
                    bad.append((paths[i], str(e).splitlines()[0] if str(e) else type(e).__name__))
    keep = sorted(decoded)
    if not keep:
        return torch.empty(0, 3, size, size, dtype=torch.uint8, device=device), [], bad
    images = torch.stack([_fit(decoded[i], size, mode, train) for i in keep])
    return images, keep, bad


def _fit(image: torch.Tensor, size: int, mode: str, train: bool) -> torch.Tensor:
    """One decoded (3, H, W) image to (3, size, size): resized (antialiased, as PIL resizes), or cropped."""
    if mode == "resize":
        return v2.functional.resize(image, [size, size], antialias=True)
    h, w = image.shape[-2:]
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:  # zero-padded and centred, as CenterCrop and the tiles pad
        image = v2.functional.pad(image, [pw // 2, ph // 2, pw - pw // 2, ph - ph // 2])
        h, w = image.shape[-2:]
    if train:
        top = int(torch.randint(0, h - size + 1, ()))
        left = int(torch.randint(0, w - size + 1, ()))
    else:  # CenterCrop's rounding
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return image[:, top : top + size, left : left + size]


def raise_or_skip(bad: list[tuple[str, str]], policy: str) -> list[str]:
    """``data.bad_images`` for files the device could not decode: raise for ``fail``, else the paths to report."""
    if bad and policy == "fail":
        path, reason = bad[0]
        raise BadImageError(f"cannot read image {path!r}: {reason} (decoded on the device, data.decode=device)")
    return [path for path, _ in bad]


class DeviceBatches:
    """The data module's batch hooks (a mixin of ``DeepfakeDataModule``, which holds the ``hparams``): skipped images
    counted in the main process, ``data.decode: device`` decoding and ``data.augment_on: device`` augmentation of
    training batches on the training device."""

    def decodes_on_device(self, train: bool, perturb=None) -> bool:
        """Whether a loader's workers ship JPEG bytes for the device to decode: training batches only, since that
        is where a GPU waits for data; evaluation loaders are also read outside the trainer's loops (calibration,
        reports, notebooks), which must see pixels."""
        return self.hparams.decode == "device" and train and perturb is None

    @property
    def augment_location(self) -> str:
        """Where training images are augmented: ``cpu`` (loader workers) or ``device``; see ``augment_on``."""
        hp = self.hparams
        if hp.augment_on != "auto":
            return hp.augment_on
        return "device" if hp.decode == "device" or self.training_device.type == "cuda" else "cpu"

    @property
    def training_device(self) -> torch.device:
        """The training device (the CPU without a trainer)."""
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        # Runs in the main process, so the count of skipped images is exact even with workers.
        if not isinstance(batch, dict):  # the model summary's example input
            return batch
        skipped = batch.pop("skipped", [])
        if ENCODED_KEY in batch:  # data.decode=device: decoded here, straight onto the training device
            skipped = skipped + self._decode(batch)
        if skipped:
            self.skipped_paths = getattr(self, "skipped_paths", []) + list(skipped)
            self.skipped_images = len(self.skipped_paths)
            if self.trainer is not None and self.trainer.predicting:
                return batch  # PredictionWriter lists them after the progress bar, as `deepfake: warning:` lines
            rank_zero_warn(
                f"Skipped {len(skipped)} unreadable image(s) ({self.skipped_images} so far): {skipped} "
                "(data.bad_images=skip)"
            )
        return batch

    def _decode(self, batch: dict) -> list[str]:
        """Decodes ``batch["encoded"]`` into ``batch["image"]`` on the training device; returns skipped paths."""
        hp = self.hparams
        train = self.trainer is not None and self.trainer.training
        encoded, paths = batch.pop(ENCODED_KEY), batch.pop("path")
        images, keep, bad = decode_batch(encoded, paths, hp.img_size, hp.mode, train, self.training_device)
        skipped = raise_or_skip(bad, hp.bad_images)
        if len(keep) < len(encoded):
            for key in ("label", "index"):
                batch[key] = batch[key][keep]
        if keep:
            batch["image"] = images
        return skipped

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        # Training batches, augmented on the device (data.augment_on): the distribution of data/augment.py.
        hp, trainer = self.hparams, self.trainer
        training = trainer is not None and trainer.training
        if isinstance(batch, dict) and "image" in batch and hp.aug_strength > 0 and training:
            if self.augment_location == "device":
                batch["image"] = augment_batch(batch["image"], sample_plan(len(batch["image"]), hp.aug_strength))
        return batch
