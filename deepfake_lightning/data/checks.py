"""Checks a data module runs before it reads anything: the data root is there, the device settings can work together,
and (``data.check_images``) every image decodes."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from lightning.pytorch.utilities import rank_zero_warn

from deepfake_lightning.data.dataset import BadImageError, load_image
from deepfake_lightning.data.index import DataError
from deepfake_lightning.data.layouts import check_layout
from deepfake_lightning.provenance import KAGGLE_DATASET


def check_data_root(root: str | os.PathLike, train_csv: str = "train.csv", layout: str = "auto") -> None:
    """Raises a FileNotFoundError that says how to get the Kaggle data, or how to run the demo instead, when the data
    root is not there (or, in the Kaggle layout, has no training CSV)."""
    check_layout(layout)
    root = Path(root)
    if layout in ("folders", "csv") and root.exists():
        return
    if layout == "auto" and (root.is_file() or (root.is_dir() and not (root / train_csv).is_file())):
        return  # a CSV file, or a folders layout: read (and checked) by data/layouts.py
    if root.is_dir() and (root / train_csv).is_file():
        return
    what = "does not exist" if not root.exists() else f"has no {train_csv}"
    raise FileNotFoundError(
        f"data root '{root}' {what}: get the Kaggle data with `kaggle datasets download -d {KAGGLE_DATASET}` and "
        f"unzip it into {root}, pass --data.root PATH to your own data (a folder of class folders, a CSV: see "
        f"docs/datasets.md), or try everything offline with --config configs/demo.yaml"
    )


def check_device_work(augment_on: str, decode: str, aug_reshare: float, cache_dir: str | None) -> None:
    """One error line for ``data.augment_on`` / ``data.decode`` settings that cannot work together."""
    if augment_on not in ("auto", "cpu", "device"):
        raise DataError(f"data.augment_on must be auto, cpu or device, got {augment_on!r}")
    if decode not in ("cpu", "device"):
        raise DataError(f"data.decode must be cpu or device, got {decode!r}")
    if decode == "cpu":
        return
    if augment_on == "cpu":
        raise DataError(
            "data.decode=device leaves no pixels in the loader workers to augment: data.augment_on=cpu "
            "cannot work with it (use auto or device)"
        )
    if aug_reshare > 0:
        raise DataError(
            "data.aug_reshare re-shares decoded images in the loader workers, which data.decode=device "
            "leaves undecoded: use data.decode=cpu with it"
        )
    if cache_dir is not None:
        raise DataError("data.cache_dir holds decoded pixels already: data.decode=device has nothing to decode")


def check_images(indexes: dict[str, pd.DataFrame], root: Path, policy: str) -> dict[str, pd.DataFrame]:
    """Decodes every image of every split once: with ``policy`` ``fail`` one error lists every unreadable image;
    with ``skip`` one warning lists them and the returned indexes leave them out."""
    bad: list[tuple[str, str, str]] = []  # (split, path, reason)
    for split, df in indexes.items():
        for p in df["path"]:
            try:
                load_image(root / p)
            except BadImageError as e:
                bad.append((split, p, str(e.__cause__ or e)))
    if not bad:
        return indexes
    listing = "\n  ".join(f"{split}: {p}: {reason}" for split, p, reason in bad)
    if policy == "fail":
        raise DataError(f"{len(bad)} unreadable image(s) under {root}:\n  {listing}")
    rank_zero_warn(f"Skipping {len(bad)} unreadable image(s) under {root}:\n  {listing}")
    out = dict(indexes)
    for split in {b[0] for b in bad}:
        drop = {p for s, p, _ in bad if s == split}
        out[split] = out[split][~out[split]["path"].isin(drop)].reset_index(drop=True)
    return out
