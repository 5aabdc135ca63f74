"""Image decoding and the map-style dataset used for every split."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO, Literal

import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset, default_collate

from deepfake_lightning.data.device import ENCODED_KEY, device_decodable, read_encoded
from deepfake_lightning.data.tiles import collate_tiles
from deepfake_lightning.errors import BadImageError

BadImagePolicy = Literal["fail", "skip"]


def load_image(path: str | os.PathLike | BinaryIO, draft_size: int | None = None) -> Image.Image:
    """Opens any image PIL can read (a path or a binary file object) as 8-bit RGB, honouring EXIF orientation.

    Grayscale, palette, CMYK, 16-bit, PNG and WebP inputs all come back as RGB. Transparent images
    are composited onto white, so the hidden colour under transparent pixels is no cue.

    ``draft_size``: for JPEGs, let libjpeg decode at a reduced DCT scale (1/2, 1/4 or 1/8) as long as both
    sides stay at least ``draft_size`` pixels. Only for callers that resize to that size anyway (``resize``
    mode): a 3000x2000 photograph then costs a fraction of a full decode.

    Raises:
        BadImageError: For a missing, empty, truncated or undecodable file, or a decompression bomb.
    """
    try:
        with warnings.catch_warnings():
            # A DecompressionBombWarning means a suspiciously huge image: treat it as bad.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if draft_size and im.format == "JPEG":
                    im.draft(None, (draft_size, draft_size))
                im = ImageOps.exif_transpose(im)  # also forces a full decode (truncation surfaces here)
                im.load()
                return _to_rgb(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        where = os.fspath(path) if isinstance(path, (str, os.PathLike)) else getattr(path, "name", "upload")
        raise BadImageError(f"cannot read image {where!r}: {e}") from e


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bit instead of clipping.
        im = im.point(lambda v: v / 256).convert("L")
    return im.convert("RGB") if im.mode != "RGB" else im


class ImageDataset(Dataset):
    """Images listed by path with 0/1 labels (-1 when unknown).

    Each item is a dict ``{"image": Tensor, "label": float Tensor, "index": int}`` (with a tiling transform, also
    the tile keys of ``data/tiles.py``). With a ``cache``
    (``data/cache.py``), cached paths are read from it instead of being decoded. Under the ``skip``
    policy an unreadable image yields ``None`` (dropped by :func:`collate_skip_bad`, which records the
    path so the data module can warn and count); under ``fail`` it raises :class:`BadImageError`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        paths: Sequence[str],
        labels: Sequence[int],
        transform: Callable[[Image.Image], torch.Tensor],
        bad_images: BadImagePolicy = "fail",
        draft_size: int | None = None,
        cache=None,
        encoded: bool = False,
    ):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.root = os.fspath(root)
        # Plain lists of str/int: cheap to pickle into workers, no per-worker copy-on-read growth of objects.
        self.paths = list(paths)
        self.labels = [int(v) for v in labels]
        self.transform = transform
        self.bad_images = bad_images
        self.draft_size = draft_size
        self.cache = cache  # a data.cache.ResizedCache: pre-resized pixels, identical to decoding + resizing
        self.encoded = encoded  # data.decode=device: JPEG bytes for the device to decode (data/device.py)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict | tuple[None, str]:
        path = os.path.join(self.root, self.paths[i])
        label = torch.tensor(float(self.labels[i]))
        if self.encoded and device_decodable(path):
            return {ENCODED_KEY: read_encoded(path), "path": self.paths[i], "label": label, "index": i}
        try:
            image = self.cache.image(self.paths[i]) if self.cache is not None else None
            image = load_image(path, self.draft_size) if image is None else image
        except BadImageError:
            if self.bad_images == "skip":
                return (None, self.paths[i])
            raise
        out = self.transform(image)
        if self.encoded:  # not a JPEG the device decodes: its pixels travel beside the others' bytes
            return {ENCODED_KEY: out, "path": self.paths[i], "label": label, "index": i}
        item = dict(out) if isinstance(out, dict) else {"image": out}  # a dict: tiles (data/tiles.py)
        return {**item, "label": label, "index": i}


def collate_skip_bad(items: list) -> dict:
    """Collates good samples (tiled images with :func:`~deepfake_lightning.data.tiles.collate_tiles`; JPEG bytes
    for the device as a list under ``encoded``); bad ones (``(None, path)``) go to ``batch["skipped"]``."""
    good = [x for x in items if isinstance(x, dict)]
    skipped = [x[1] for x in items if not isinstance(x, dict)]
    if good and ENCODED_KEY in good[0]:  # sizes differ until decoded: a list
        encoded = [x.pop(ENCODED_KEY) for x in good]
        batch = {**default_collate(good), ENCODED_KEY: encoded}
    else:
        batch = ((collate_tiles if "tile_xy" in good[0] else default_collate)(good)) if good else {}
    batch["skipped"] = skipped
    return batch


def expand_inputs(inputs: list[str], keep_missing: bool = False) -> list[Path]:
    """Files named directly, plus every (non-hidden) file under the named directories, sorted. A path that does not
    exist raises, or with ``keep_missing`` stays in the list, to become a row with its error (predict, explain: one
    missing file does not stop the others)."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
        elif p.is_file() or keep_missing:
            files.append(p)
        else:
            raise FileNotFoundError(f"no such file or directory: {item}")
    return files


def read_error(path: str | os.PathLike) -> str:
    """Why an image cannot be read (the reason ``load_image`` gives), or "" when it can."""
    try:
        load_image(path)
    except BadImageError as e:
        return str(e.__cause__ or e)
    return ""
