"""The pre-resized image cache of resize mode (data/cache.py)."""

import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from deepfake_lightning.data import DataError, DeepfakeDataModule
from tests.helpers import make_kaggle_root


def _dm(root, cache_dir, **kw) -> DeepfakeDataModule:
    dm = DeepfakeDataModule(root=str(root), img_size=32, batch_size=8, num_workers=0, cache_dir=str(cache_dir), **kw)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_cached_items_equal_decoded_items(kaggle_root, tmp_path):
    cached = _dm(kaggle_root, tmp_path / "cache")
    plain = DeepfakeDataModule(root=str(kaggle_root), img_size=32, num_workers=0)
    plain.setup("fit")
    assert cached.cache is not None and len(cached.cache.rows) == 40  # every train.csv image, train and val
    for split in ("train", "val"):
        a, b = cached.dataset(split), plain.dataset(split)
        assert a.cache is cached.cache
        for i in range(len(b)):
            assert torch.equal(a[i]["image"], b[i]["image"]), (split, i)
    pixels = np.load(tmp_path / "cache" / "resized_32px_draft" / "pixels.npy", mmap_mode="r")
    assert pixels.shape == (40, 32, 32, 3) and pixels.dtype == np.uint8 and pixels.max() > 0


def test_cache_is_reused_and_rebuilt_when_an_image_changes(tmp_path):
    root = make_kaggle_root(tmp_path / "data", n_train=12, n_test=2)
    _dm(root, tmp_path / "cache")
    pixels = tmp_path / "cache" / "resized_32px_draft" / "pixels.npy"
    built = pixels.stat().st_mtime_ns
    _dm(root, tmp_path / "cache")  # a later run (or sweep trial): nothing is decoded again
    assert pixels.stat().st_mtime_ns == built
    # Replace one image with another picture: the cache notices (size/mtime) and rebuilds.
    victim = pd.read_csv(root / "train.csv")["file_name"][0]
    shutil.copy(root / pd.read_csv(root / "train.csv")["file_name"][1], root / victim)
    os.utime(root / victim, ns=(built + 10**9, built + 10**9))
    dm = _dm(root, tmp_path / "cache")
    assert pixels.stat().st_mtime_ns != built
    row = dm.cache.rows[victim]
    assert np.array_equal(
        np.load(pixels)[row], np.load(pixels)[dm.cache.rows[pd.read_csv(root / "train.csv")["file_name"][1]]]
    )
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["resized_32px_draft"]  # no temporary leftovers


def test_cache_with_unreadable_images(tmp_path):
    root = make_kaggle_root(tmp_path / "data", n_train=12, n_test=2)
    bad = pd.read_csv(root / "train.csv")["file_name"][3]
    (root / bad).write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="(?s)1 unreadable image.*" + bad.split("/")[-1]):
        _dm(root, tmp_path / "cache")
    assert not any((tmp_path / "cache").iterdir())  # nothing half-built is left behind
    dm = _dm(root, tmp_path / "cache", bad_images="skip")
    assert bad not in dm.cache.rows and len(dm.cache.rows) == 11
    split = "train" if bad in set(dm.indexes["train"]["path"]) else "val"
    i = dm.indexes[split]["path"].tolist().index(bad)
    assert dm.dataset(split)[i] == (None, bad)  # still counted as a skipped image, as without the cache


def test_cache_needs_resize_mode(tmp_path):
    with pytest.raises(DataError, match="cache_dir needs data.mode=resize"):
        DeepfakeDataModule(root=str(tmp_path), mode="crop", cache_dir=str(tmp_path / "c"))


def test_a_concurrent_build_that_finishes_first_is_used(tmp_path, monkeypatch):
    """Two sweep trials (or two nodes) build the same cache: the one that loses the final rename keeps the
    winner's cache instead of failing."""
    import deepfake_lightning.data.cache as cache

    root = make_kaggle_root(tmp_path / "data", n_train=8, n_test=2)
    paths = pd.read_csv(root / "train.csv")["file_name"].tolist()
    real_replace = os.replace

    def rival_wins(src, dst):
        if str(dst).endswith("resized_32px_draft") and not os.path.exists(dst):
            monkeypatch.setattr(cache.os, "replace", real_replace)
            cache.ensure_cache(tmp_path / "cache", root, paths, 32, True)  # the rival finishes its build first
            raise OSError(39, "Directory not empty")  # what our rename onto its folder then meets
        return real_replace(src, dst)

    monkeypatch.setattr(cache.os, "replace", rival_wins)
    built = cache.ensure_cache(tmp_path / "cache", root, paths, 32, True)
    assert len(built.rows) == 8 and [p.name for p in (tmp_path / "cache").iterdir()] == ["resized_32px_draft"]
