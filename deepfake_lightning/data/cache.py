"""Pre-resized image cache for ``resize`` mode.

A 3000x2000 JPEG costs tens of milliseconds to decode even in draft mode, and the network sees 224x224 pixels.
The cache decodes and resizes every image of the training CSV once into one memory-mapped uint8 array, which
later epochs, runs and sweep trials read instead of the JPEGs. Its pixels are exactly those of the uncached path
(same decode, same resize); augmentation still runs on top, every epoch.

On disk, under ``cache_dir``, one folder per image size and decoding setting, e.g. ``resized_224px_draft/``:

* ``pixels.npy``: (N, S, S, 3) uint8, a plain NumPy file (``np.load(..., mmap_mode="r")``);
* ``manifest.csv``: ``path, bytes, mtime_ns, ok`` per row of ``pixels.npy``.

The folder is built under a temporary name and renamed into place, so a cache is complete or absent. It is
reused while every requested image is in the manifest with the same size and modification time, and rebuilt
otherwise. It needs N x S x S x 3 bytes of disk: 12 GB for the 80,000 Kaggle training images at 224 px.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from deepfake_lightning.data.dataset import BadImageError, BadImagePolicy, load_image
from deepfake_lightning.data.index import DataError


def resize_for_cache(image: Image.Image, img_size: int) -> Image.Image:
    """The resize of ``resize`` mode (``create_transform``'s first step), applied once at build time."""
    return v2.Resize((img_size, img_size), antialias=True)(image)


class ResizedCache:
    """A built cache: ``image(path)`` returns the pre-resized PIL image, or None if the path is not cached
    (not in the manifest, or unreadable when the cache was built)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        manifest = pd.read_csv(self.folder / "manifest.csv", dtype={"path": str}, keep_default_na=False)
        ok = manifest["ok"].astype(bool)
        self.rows = dict(zip(manifest.loc[ok, "path"], manifest.index[ok], strict=False))
        self._pixels = None  # opened lazily: a memory map must not be pickled into loader workers

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pixels": None}

    def image(self, path: str) -> Image.Image | None:
        row = self.rows.get(path)
        if row is None:
            return None
        if self._pixels is None:
            self._pixels = np.load(self.folder / "pixels.npy", mmap_mode="r")
        return Image.fromarray(np.ascontiguousarray(self._pixels[row]))


def cache_folder(cache_dir: str | os.PathLike, img_size: int, jpeg_draft: bool) -> Path:
    return Path(cache_dir) / f"resized_{img_size}px{'_draft' if jpeg_draft else ''}"


def _stat(root: Path, paths: Sequence[str]) -> pd.DataFrame:
    stats = [os.stat(root / p) for p in paths]
    return pd.DataFrame(
        {"path": list(paths), "bytes": [s.st_size for s in stats], "mtime_ns": [s.st_mtime_ns for s in stats]}
    )


def _is_current(folder: Path, wanted: pd.DataFrame) -> bool:
    try:
        manifest = pd.read_csv(folder / "manifest.csv", dtype={"path": str}, keep_default_na=False)
    except FileNotFoundError:
        return False
    merged = wanted.merge(manifest, on="path", how="left", suffixes=("", "_cached"))
    return bool(((merged["bytes"] == merged["bytes_cached"]) & (merged["mtime_ns"] == merged["mtime_ns_cached"])).all())


class _Resized(Dataset):
    def __init__(self, root: Path, paths: list[str], img_size: int, draft_size: int | None):
        self.root, self.paths, self.img_size, self.draft_size = root, paths, img_size, draft_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str]:
        try:
            image = load_image(self.root / self.paths[i], self.draft_size)
        except BadImageError as e:
            return i, None, str(e)
        return i, np.asarray(resize_for_cache(image, self.img_size)), ""


def _swap_in(new: Path, folder: Path, wanted: pd.DataFrame) -> None:
    """Renames the finished build ``new`` to ``folder``, moving a stale ``folder`` aside first. Another process
    (a concurrent sweep trial, another node) may finish the same build in between: its cache is then used."""
    try:
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
            os.replace(folder, old / "cache")
            shutil.rmtree(old, ignore_errors=True)
        os.replace(new, folder)
    except OSError:
        if not _is_current(folder, wanted):
            raise


def _as_list(items: list) -> list:
    return items


def ensure_cache(
    cache_dir: str | os.PathLike,
    root: str | os.PathLike,
    paths: Sequence[str],
    img_size: int,
    jpeg_draft: bool,
    num_workers: int = 0,
    bad_images: BadImagePolicy = "fail",
) -> ResizedCache:
    """Returns the cache of ``paths`` (relative to ``root``), building it first unless a current one exists.

    Raises:
        DataError: Under ``bad_images="fail"``, listing every unreadable image (nothing is left on disk), or
            when the disk lacks the space the cache needs.
    """
    root = Path(root)
    folder = cache_folder(cache_dir, img_size, jpeg_draft)
    wanted = _stat(root, paths)
    if _is_current(folder, wanted):
        return ResizedCache(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    need = len(paths) * img_size * img_size * 3
    free = shutil.disk_usage(folder.parent).free
    if need > free:
        raise DataError(
            f"data.cache_dir {folder.parent}: the cache of {len(paths)} images at {img_size} px needs "
            f"{need / 1e9:.1f} GB, only {free / 1e9:.1f} GB are free"
        )
    rank_zero_info(
        f"Building the pre-resized image cache {folder} ({len(paths)} images, {need / 1e6:,.0f} MB; "
        "built once, reused while the images are unchanged)"
    )
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        pixels = np.lib.format.open_memmap(
            tmp / "pixels.npy", mode="w+", dtype=np.uint8, shape=(len(paths), img_size, img_size, 3)
        )
        ok = np.zeros(len(paths), dtype=bool)
        errors: list[str] = []
        dataset = _Resized(root, list(paths), img_size, img_size if jpeg_draft else None)
        loader = DataLoader(dataset, batch_size=32, num_workers=num_workers, collate_fn=_as_list)
        from tqdm import tqdm

        for batch in tqdm(loader, desc="Caching resized images", unit="batch", disable=None):
            for i, array, error in batch:
                if array is None:
                    errors.append(error)
                else:
                    pixels[i] = array
                    ok[i] = True
        pixels.flush()
        del pixels
        if errors:
            listing = "\n  ".join(errors[:20]) + (f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else "")
            if bad_images == "fail":
                raise DataError(f"{len(errors)} unreadable image(s) under {root}:\n  {listing}")
            rank_zero_warn(
                f"The image cache leaves out {len(errors)} unreadable image(s) (data.bad_images=skip):\n  {listing}"
            )
        wanted.assign(ok=ok.astype(int)).to_csv(tmp / "manifest.csv", index=False)
        _swap_in(tmp, folder, wanted)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ResizedCache(folder)
