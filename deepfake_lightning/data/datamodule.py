"""``DeepfakeDataModule``: the Kaggle "AI vs. Human-Generated Images" splits as a LightningDataModule."""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any, Literal

import lightning as L
import pandas as pd
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from sklearn.model_selection import StratifiedGroupKFold, train_test_split
from torch.utils.data import DataLoader, WeightedRandomSampler
from torchvision.transforms import v2

from deepfake_lightning.data.augment import augment_batch, sample_plan
from deepfake_lightning.data.cache import ResizedCache, ensure_cache
from deepfake_lightning.data.dataset import (
    BadImageError,
    BadImagePolicy,
    ImageDataset,
    collate_skip_bad,
    expand_inputs,
    load_image,
)
from deepfake_lightning.data.demo import DemoSpec, build_demo_dataset, demo_is_built
from deepfake_lightning.data.device import ENCODED_KEY, decode_batch, raise_or_skip
from deepfake_lightning.data.index import UNLABELED, DataError
from deepfake_lightning.data.layouts import check_layout
from deepfake_lightning.data.manifest import check_manifest
from deepfake_lightning.data.reshare import ReshareCopies
from deepfake_lightning.data.sources import Sources, read_sources, sampling_weights
from deepfake_lightning.data.transforms import TransformMode, check_eval_views, create_transform, evaluation_transform
from deepfake_lightning.files import atomic_path, file_sha256
from deepfake_lightning.provenance import KAGGLE_DATASET, split_sha256
from deepfake_lightning.settings import DEFAULTS, InferenceSettings

SPLIT_FILE = "split.csv"
TEST_SPLITS = ("test_v1", "test_v2", "test_edited")
MASK_COLUMN = "mask"  # a test CSV column naming each image's mask PNG of edited pixels (empty: unedited)


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


def _check_device_work(augment_on: str, decode: str, aug_reshare: float, cache_dir: str | None) -> None:
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


class DeepfakeDataModule(L.LightningDataModule):
    """Train / val / test_v1 / test_v2 / predict loaders over a Kaggle-layout data root.

    ``ROOT/train.csv`` (unnamed index column, ``file_name``, ``label``) is split into train and val,
    stratified by label and seeded; with ``group_column`` set, a group (a photo and its AI counterpart)
    never straddles the two. The split is written to ``split.csv`` in the run directory; pass that file as
    ``split_file`` to reuse it exactly. Test CSVs list images in an ``id`` column and may carry ``label``.

    Args:
        root: Data root holding the CSVs and image folders.
        demo: Build the offline demo dataset into ``root`` on first use (see ``data/demo.py``).
        demo_seed: Seed of the demo build.
        demo_shortcut: ``png`` builds the demo with a planted shortcut, every AI image saved as PNG (for the audits:
            ``deepfake audit`` and ``deepfake test --report.reencode true``); keep it apart with its own ``root``.
        train_csv: Training CSV, relative to ``root``.
        train_query: Keep only the training-CSV rows matching this pandas query, before the train/val split, e.g.
            ``"generator != 'tconv'"`` to hold a generator out (leave-one-generator-out).
        test_v1_csv: CSV of the earlier test set (distributed separately from the Kaggle download), or None.
        test_v2_csv: CSV of the newer test set; Kaggle's ``test.csv``.
        test_edited_csv: CSV of a split of partly edited images and their originals (the demo's
            ``test_edited.csv``), or None. Any test CSV with a ``mask`` column (a PNG per image, white where it was
            edited, empty for an unedited image) is also scored for localization by ``deepfake test``.
        layout: How ``root`` is laid out (``data/layouts.py``): ``kaggle`` (``train_csv``, the test CSVs), ``folders``
            (class folders such as ``0_real``/``1_fake``, ``REAL``/``FAKE``, ``nature``/``ai`` at any depth;
            ``train``/``val``/``test`` folders give the splits, the folder above a class folder its generator),
            ``csv`` (``train_csv``, or ``root`` itself, with the columns below), or ``auto`` (the default: ``kaggle``
            when ``root/train_csv`` exists, ``csv`` when ``root`` is a CSV file, else ``folders``; one line says
            which and why).
        label_dirs: Class folder names to labels (``{"photos": 0, "generated": 1}``), replacing the built-in
            vocabulary of the folders layout; also accepted as label values of a CSV layout.
        path_column: CSV layout: the image path column (default: the first of path, file_name, filepath, id...).
        label_column: CSV layout: the label column, 0/1 or class names (default: label, target, is_fake...).
        generator_column: CSV layout: a column naming each image's generator (default: ``generator`` if present).
        split_column: CSV layout: a column of train/val/test per image (default: ``split`` if present).
        test_sets: Named test sets, any number: name -> a folder or CSV path, or a mapping with ``root`` and any of
            ``layout``, ``split`` (``auto``: the set's test split when it has one, else every image; ``all``,
            ``train``, ``val``, ``test``), ``label_dirs``, ``path_column``, ``label_column``, ``generator_column``,
            ``query``. Reported beside ``test_v1``/``test_v2``/``test_edited``, and in ``cross_dataset.csv``.
        train_sets: More training datasets mixed into this run with ``root``'s: each a path or a mapping with
            ``root``, ``name``, ``weight`` (its images drawn ``weight`` times as often) and the layout keys above.
            Each keeps its own val split (or gets a seeded one); a test split of its own is reported as
            ``<name>_test``, as ``root``'s own is (``<folder name>_test``). ``split.csv`` records each image's
            ``dataset``.
        balance: ``dataset``: each training dataset drawn equally often (times its weight), whatever its size;
            ``generator``: also, within a dataset, each generator's AI images equally often (generator diversity is
            what generalizes: Community Forensics). ``none`` (default) shuffles as usual.
        manifest: A manifest CSV written by ``deepfake data scan``: every image is checked against it (size and
            SHA-256) before training, and every missing or changed file is listed in one error.
        group_column: Column of ``train_csv`` pairing related images, for a group-aware split.
        val_fraction: Share of training rows held out for validation. With ``group_column`` the split uses
            ``round(1 / val_fraction)`` stratified group folds, so the share is approximate.
        split_seed: Seed of the train/val split.
        split_file: A ``split.csv`` from an earlier run, to reuse its train/val split.
        predict_split: Split served by ``predict_dataloader``: ``val``, ``test_v1``, ``test_v2`` or ``train``.
        predict_paths: Image files and/or folders to predict instead of a split; unreadable files are skipped
            and reported whatever ``bad_images`` says.
        img_size: Side of the square network input.
        mode: ``resize`` (whole image scaled) or ``crop`` (native-resolution crops); see ``create_transform``.
        aug_strength: Training augmentation strength in [0, 1].
        aug_reshare: Probability that a training image is first re-shared by a random chain of 1-3 operations
            (re-encoding, scaling, cropping, sharpening: ``data/reshare.py``), so that verdicts hold up on
            re-shared copies.
        eval_views: ``crop`` mode only: 5 evaluates five crops per image (multi-crop test-time augmentation);
            ``tiles`` scores the whole image as ``img_size`` tiles at native resolution, pooled into one verdict
            by ``model.tile_pooling`` (``data/tiles.py``). With tiles, a batch holds ``batch_size // max_tiles``
            images (at least one), so no batch holds more tiles than a training batch has images.
        tile_stride: With tiles: pixels between tile starts; default ``img_size`` (tiles side by side). The last
            row and column are shifted inward so the edges are covered.
        max_tiles: With tiles: most tiles scored per image; a larger grid thins out evenly over the image (the
            ``n_tiles`` and ``tiles_total`` columns of predictions say how many were scored of how many).
        mean: Normalization mean; linked from the backbone's timm data config by the CLI.
        std: Normalization std; likewise.
        batch_size: Images per batch (per device).
        num_workers: Loader worker processes; None picks ``min(8, cpus - 1)``.
        pin_memory: Pin host memory (helps only with a GPU); None pins when CUDA is available.
        persistent_workers: Keep workers alive between epochs.
        bad_images: ``fail`` on the first unreadable image, or ``skip`` it with a warning and a count.
        check_images: Decode every image once in ``setup`` and report all unreadable ones together
            (``fail``) or drop them from the index up front (``skip``).
        jpeg_draft: In ``resize`` mode, decode JPEGs at a reduced DCT scale that still covers ``img_size``
            (PIL's draft mode): large photographs load several times faster. Ignored in ``crop`` mode, which
            needs every native pixel.
        cache_dir: ``resize`` mode only: decode and resize every training-CSV image once into a memory-mapped
            cache in this folder (``data/cache.py``), read by every later epoch, run and sweep trial while the
            images are unchanged. Needs N x img_size^2 x 3 bytes of disk (12 GB for Kaggle's 80,000 at 224 px).
        augment_on: Where training images are augmented (flip, jitter, blur, JPEG: ``data/augment.py``, the same
            distribution either way): ``cpu`` in the loader workers, ``device`` on each batch on the training device,
            ``auto`` on the device when it is a GPU. The re-share chains (``aug_reshare``) always run in the workers.
        decode: ``device`` has the workers read the training JPEGs' bytes only and the training device decode each
            batch (nvJPEG on CUDA; ``data/device.py``); other files, and every evaluation loader, are decoded by the
            workers. Augmentation then runs on the device.

    The loaders deliver uint8 pixels; the model normalizes them on its device (``normalize_input``).
    """

    def __init__(
        self,
        root: str = "data/ai-vs-human-generated-dataset",
        demo: bool = False,
        demo_seed: int = 0,
        demo_shortcut: Literal["none", "png"] = "none",
        train_csv: str = "train.csv",
        train_query: str | None = None,
        test_v1_csv: str | None = None,
        test_v2_csv: str | None = "test.csv",
        test_edited_csv: str | None = None,
        layout: str = "auto",
        label_dirs: dict[str, int] | None = None,
        path_column: str | None = None,
        label_column: str | None = None,
        generator_column: str | None = None,
        split_column: str | None = None,
        test_sets: dict[str, str | dict[str, Any]] | None = None,
        train_sets: list[str | dict[str, Any]] | None = None,
        balance: Literal["none", "dataset", "generator"] = "none",
        manifest: str | None = None,
        group_column: str | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 42,
        split_file: str | None = None,
        predict_split: str = "test_v2",
        predict_paths: list[str] | None = None,
        img_size: int = DEFAULTS.img_size,
        mode: TransformMode = DEFAULTS.mode,
        aug_strength: float = 0.0,
        aug_reshare: float = 0.0,
        eval_views: int | Literal["tiles"] = DEFAULTS.eval_views,
        tile_stride: int | None = DEFAULTS.tile_stride,
        max_tiles: int = DEFAULTS.max_tiles,
        mean: tuple[float, float, float] = DEFAULTS.mean,
        std: tuple[float, float, float] = DEFAULTS.std,
        batch_size: int = 64,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        bad_images: BadImagePolicy = "fail",
        check_images: bool = False,
        jpeg_draft: bool = DEFAULTS.jpeg_draft,
        cache_dir: str | None = None,
        augment_on: Literal["auto", "cpu", "device"] = "auto",
        decode: Literal["cpu", "device"] = "cpu",
    ):
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise DataError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        if not 0.0 <= aug_strength <= 1.0:
            raise DataError(f"data.aug_strength must be in [0, 1], got {aug_strength}")
        if not 0.0 <= aug_reshare <= 1.0:
            raise DataError(f"data.aug_reshare must be a probability in [0, 1], got {aug_reshare}")
        check_layout(layout)
        check_eval_views(eval_views, mode, tile_stride, max_tiles)
        if cache_dir is not None and mode != "resize":
            raise DataError("data.cache_dir needs data.mode=resize: crop mode trains on native pixels")
        _check_device_work(augment_on, decode, aug_reshare, cache_dir)
        self.save_hyperparameters()
        self.root = Path(root)
        self.indexes: dict[str, pd.DataFrame] = {}
        self.cache: ResizedCache | None = None
        self._sources: Sources | None = None
        self._identity: dict | None = None  # data_identity(), computed once after setup

    @property
    def demo_spec(self) -> DemoSpec:
        return DemoSpec(seed=self.hparams.demo_seed, shortcut=self.hparams.demo_shortcut)

    @property
    def num_workers(self) -> int:
        if self.hparams.num_workers is not None:
            return self.hparams.num_workers
        return max(0, min(8, (os.cpu_count() or 1) - 1))

    # ---------------------------------------------------------------- setup
    def prepare_data(self) -> None:
        # Runs once per node before setup: the only place that writes into the data root.
        if self.trainer is not None and self.trainer.predicting and self.hparams.predict_paths:
            return  # predicting files needs no training data, demo or cached
        if self.hparams.demo and not demo_is_built(self.root, self.demo_spec):
            rank_zero_info(f"Building the demo dataset in {self.root} (once; later runs reuse it)")
            build_demo_dataset(self.root, self.demo_spec)
        if self.hparams.cache_dir is not None:
            check_data_root(self.root, self.hparams.train_csv)
            self._ensure_cache()  # built here; opened in setup (Lightning: prepare_data assigns no state)

    def _read_sources(self) -> Sources:
        """Every dataset of the run (``data/sources.py``), read once; one line per dataset says what was read."""
        if self._sources is None:
            hp = self.hparams
            check_data_root(self.root, hp.train_csv, hp.layout)
            self._sources = read_sources(hp)
            self.root = self._sources.primary.root  # a CSV file given as the root: its folder holds the images
            if not hp.demo:
                for line in self._sources.describe():
                    rank_zero_info(f"Data: {line}")
        return self._sources

    def _read_train_index(self) -> pd.DataFrame:
        """Train and val rows of every training dataset (``data.root`` and ``data.train_sets``)."""
        return self._read_sources().pool

    def _ensure_cache(self) -> ResizedCache:
        # Built by prepare_data (once per node, before setup); setup, in every process, finds it current and opens it.
        hp = self.hparams
        return ensure_cache(
            hp.cache_dir,
            self.root,
            self._read_train_index()["path"],
            hp.img_size,
            hp.jpeg_draft,
            self.num_workers,
            hp.bad_images,
        )

    def setup(self, stage: str | None = None) -> None:
        if self.indexes or (stage == "predict" and self.hparams.predict_paths):
            return  # predicting files needs no training data
        hp = self.hparams
        sources = self._read_sources()
        self.indexes.update(self._split_train_val(sources.pool))
        if hp.cache_dir is not None and self.cache is None:
            self.cache = self._ensure_cache()
        self.indexes.update(sources.tests)
        if stage == "predict" and hp.predict_split not in self.indexes:
            raise DataError(
                f"data.predict_split={hp.predict_split!r} is not a configured split; configured: "
                f"{', '.join(self.indexes)}"
            )
        if hp.manifest is not None:
            checked = check_manifest(hp.manifest, self.manifest_rows())
            rank_zero_info(f"Data: all {checked} files match the manifest {hp.manifest} (size and SHA-256)")
        if hp.check_images:
            self._check_images()
        self._save_split()

    def _split_train_val(self, pool: pd.DataFrame) -> dict[str, pd.DataFrame]:
        """Train and val: a ``split_file``'s, else per training dataset its own val split (a ``val`` folder or
        split column) or a seeded, stratified one."""
        hp = self.hparams
        if hp.split_file is not None:
            return self._load_split(pool, Path(hp.split_file))
        parts: dict[str, list[pd.DataFrame]] = {"train": [], "val": []}
        for name, rows in pool.groupby("dataset", sort=False):
            given = rows["split"] == "val"
            if given.any():
                split = {"train": rows[~given], "val": rows[given]}
            else:
                split = self._seeded_split(rows.reset_index(drop=True), self._sources.datasets[name])
            for key in parts:
                parts[key].append(split[key])
        return {k: pd.concat(v, ignore_index=True) for k, v in parts.items()}

    def _seeded_split(self, df: pd.DataFrame, dataset) -> dict[str, pd.DataFrame]:
        hp = self.hparams
        where = dataset.source or dataset.root
        counts = df["label"].value_counts()
        if len(counts) < 2 or counts.min() < 2:
            raise DataError(
                f"{where}: need at least 2 images of each class for a stratified split, got {counts.to_dict()}"
            )
        n_val = int(math.ceil(len(df) * hp.val_fraction))
        if n_val < 2 or len(df) - n_val < 2:
            raise DataError(
                f"{where}: {len(df)} rows cannot be split into train and val with "
                f"data.val_fraction={hp.val_fraction} (each side needs at least 2 images)"
            )
        idx = range(len(df))
        if hp.group_column is None:
            train_idx, val_idx = train_test_split(
                list(idx), test_size=hp.val_fraction, stratify=df["label"], random_state=hp.split_seed
            )
        else:
            n_folds = max(2, round(1 / hp.val_fraction))
            folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=hp.split_seed)
            train_idx, val_idx = next(folds.split(list(idx), df["label"], groups=df["group"]))
        return {
            "train": df.iloc[sorted(train_idx)].reset_index(drop=True),
            "val": df.iloc[sorted(val_idx)].reset_index(drop=True),
        }

    def _load_split(self, df: pd.DataFrame, split_file: Path) -> dict[str, pd.DataFrame]:
        saved = pd.read_csv(split_file, dtype={"path": str})
        if not {"path", "split"} <= set(saved.columns):
            raise DataError(f"{split_file}: a split file needs columns 'path' and 'split', found {list(saved.columns)}")
        where = dict(zip(saved["path"], saved["split"], strict=False))
        missing = df.loc[~df["path"].isin(where.keys()), "path"]
        if len(missing):
            raise DataError(
                f"{split_file} does not match the training data under {self.root}: {len(missing)} training "
                f"image(s) have no split, e.g. {missing.iloc[0]!r}"
                + ("" if self.hparams.train_query else " (if that run used --data.train_query, pass the same query)")
            )
        split = df["path"].map(where)
        return {s: df[split == s].reset_index(drop=True) for s in ("train", "val")}

    def _save_split(self) -> None:
        trainer = self.trainer
        if trainer is None or not (getattr(trainer, "loggers", [None]) or trainer.checkpoint_callback is not None):
            return  # neither logs nor checkpoints, so no run directory: do not litter the working directory
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank asks
        if log_dir is None or not trainer.is_global_zero:
            return
        columns = ["path", "label", *(["group"] if "group" in self.indexes["train"] else []), "generator", "dataset"]
        parts = [self.indexes[s][columns].assign(split=s) for s in ("train", "val")]
        with atomic_path(Path(log_dir) / SPLIT_FILE) as tmp:
            pd.concat(parts, ignore_index=True).to_csv(tmp, index=False)

    def _check_images(self) -> None:
        bad: list[tuple[str, str, str]] = []  # (split, path, reason)
        for split, df in self.indexes.items():
            for p in df["path"]:
                try:
                    load_image(self.root / p)
                except BadImageError as e:
                    bad.append((split, p, str(e.__cause__ or e)))
        if not bad:
            return
        listing = "\n  ".join(f"{split}: {p}: {reason}" for split, p, reason in bad)
        if self.hparams.bad_images == "fail":
            raise DataError(f"{len(bad)} unreadable image(s) under {self.root}:\n  {listing}")
        rank_zero_warn(f"Skipping {len(bad)} unreadable image(s) under {self.root}:\n  {listing}")
        for split in {b[0] for b in bad}:
            drop = {p for s, p, _ in bad if s == split}
            df = self.indexes[split]
            self.indexes[split] = df[~df["path"].isin(drop)].reset_index(drop=True)

    # ---------------------------------------------------------------- checkpoint state
    def state_dict(self) -> dict:
        """Stored in every checkpoint: the data root as an absolute path, so that a relative ``root`` (the configs'
        ``data/demo``) can be found again from another working directory, e.g. a notebook in ``notebooks/``
        (``api.datamodule_for``)."""
        return {"root_resolved": str(self.root.resolve())}

    def load_state_dict(self, state_dict: dict) -> None:
        pass  # nothing to restore: the root in use is the configured one

    def data_identity(self) -> dict:
        """What this data module trains on, for a checkpoint's provenance (``provenance.py``): the demo spec, or the
        training CSV's path, row count, AI share and content hash (a folders layout: its listing's hash); each extra
        training dataset; the manifest checked; and a hash of the train/val split. Empty before ``setup``."""
        if "train" not in self.indexes:
            return {}
        if self._identity is None:
            hp = self.hparams
            parts = [(p, s) for s in ("train", "val") for p in self.indexes[s]["path"]]
            pool = pd.concat([self.indexes["train"], self.indexes["val"]], ignore_index=True)
            if hp.demo:
                data = {"kind": "demo", "spec": self.demo_spec.to_json(), "root": str(self.root.resolve())}
            else:
                primary = self._sources.primary
                data = _dataset_identity(primary, pool[pool["dataset"] == primary.name])
                del data["name"]  # the data root's: as before data.train_sets
                data["kaggle"] = primary.layout == "kaggle" and self.root.name == KAGGLE_DATASET.split("/")[1]
            if len(self._sources.datasets) > 1:
                data["train_sets"] = [
                    _dataset_identity(d, pool[pool["dataset"] == name]) | {"weight": self._sources.weights[name]}
                    for name, d in list(self._sources.datasets.items())[1:]
                ]
                data["balance"] = hp.balance
            if hp.train_query:
                data["train_query"] = hp.train_query
            if hp.manifest is not None:
                data["manifest"] = {"path": str(Path(hp.manifest).resolve()), "sha256": file_sha256(hp.manifest)}
            self._identity = {"data": data, "split_sha256": split_sha256(parts)}
        return self._identity

    def manifest_rows(self) -> pd.DataFrame:
        """Every image of every configured split (``path`` openable from here, label, generator, split, dataset),
        once each: what ``deepfake data scan`` writes into a manifest and ``data.manifest`` checks."""
        frames = [self.indexes[s].assign(split=s) for s in self.indexes]
        rows = pd.concat(frames, ignore_index=True).drop_duplicates("path")
        return rows.assign(file=[str(self.root / p) for p in rows["path"]])

    # ---------------------------------------------------------------- loaders
    def test_splits(self) -> list[str]:
        """The splits ``deepfake test`` evaluates, in order: validation first, then every configured test split
        (unlabeled ones are used for share estimation only)."""
        return ["val"] + [s for s in self.indexes if s not in ("train", "val")]

    def labeled_test_splits(self) -> list[str]:
        """Test splits that are configured and carry labels, in order."""
        return [s for s in self.test_splits() if (self.indexes[s]["label"] != UNLABELED).all()]

    def dataset(
        self, split: str, train: bool = False, perturb=None, eval_views: int | str | None = None, copies: int = 0
    ) -> ImageDataset:
        """The dataset of one split, with the training or the evaluation transform; ``perturb`` (PIL to PIL)
        runs before the evaluation transform, for robustness curves; ``eval_views`` overrides ``data.eval_views``
        (the localization report scores tiles and the centre crop whatever the run evaluates); ``copies=k`` gives
        each image's k re-shared copies of the stability check instead (``data/reshare.py``: ``ReshareCopies``)."""
        if copies:
            perturb = _Copies(copies)
        if split == "files":
            return self._files_dataset(perturb, eval_views)
        if split not in self.indexes:
            configured = ", ".join(self.indexes) or "none (call setup() first)"
            raise KeyError(f"split {split!r} is not configured; configured splits: {configured}")
        hp = self.hparams
        df = self.indexes[split]
        cache = self.cache if split in ("train", "val") else None
        return ImageDataset(
            self.root,
            df["path"],
            df["label"],
            self._transform(train, perturb, eval_views),
            bad_images=hp.bad_images,
            draft_size=self._draft_size,
            cache=cache,
            encoded=self._decodes_on_device(train, perturb) and cache is None,
        )

    def _decodes_on_device(self, train: bool, perturb=None) -> bool:
        # Training batches only: that is where a GPU waits for data. Evaluation loaders are also read outside the
        # trainer's loops (calibration, reports, notebooks), which must see pixels.
        return self.hparams.decode == "device" and train and perturb is None

    @property
    def augment_location(self) -> str:
        """Where training images are augmented: ``cpu`` (loader workers) or ``device``; see ``augment_on``."""
        hp = self.hparams
        if hp.augment_on != "auto":
            return hp.augment_on
        return "device" if hp.decode == "device" or self._device().type == "cuda" else "cpu"

    def _device(self):
        import torch

        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    @property
    def inference_settings(self) -> InferenceSettings:
        """The data side of the model's inference settings (settings.py): size, mode, normalization, views, tiling
        and JPEG draft decoding, as the evaluation loaders apply them."""
        hp = self.hparams
        return InferenceSettings(**{k: hp[k] for k in InferenceSettings.DATA_KEYS})

    @property
    def _draft_size(self) -> int | None:
        return self.inference_settings.draft_size

    def _transform(self, train: bool, perturb=None, eval_views: int | str | None = None):
        hp = self.hparams
        if train:
            transform = create_transform(
                hp.img_size,
                train=True,
                mode=hp.mode,
                aug_strength=hp.aug_strength,
                aug_reshare=hp.aug_reshare,
                mean=hp.mean,
                std=hp.std,
                normalize=False,  # uint8 to the device, where the model normalizes
                augment_on=self.augment_location,
            )
        else:  # the one evaluation transform of a model's settings (data/transforms.py), as the Detector's
            transform = evaluation_transform(self.inference_settings.merged(eval_views=eval_views))
        if isinstance(perturb, _Copies):
            return ReshareCopies(perturb.k, transform)
        return transform if perturb is None else v2.Compose([perturb, transform])

    def _files_dataset(self, perturb=None, eval_views: int | str | None = None) -> ImageDataset:

        paths = [str(p) for p in expand_inputs(self.hparams.predict_paths or [], keep_missing=True)]
        if not paths:
            raise DataError(f"data.predict_paths {self.hparams.predict_paths} holds no files")
        return ImageDataset(
            "",
            paths,
            [UNLABELED] * len(paths),
            self._transform(False, perturb, eval_views),
            bad_images="skip",
            draft_size=self._draft_size,
        )

    @property
    def predict_name(self) -> str:
        """``files`` when predicting ``predict_paths``, else the split name."""
        return "files" if self.hparams.predict_paths else self.hparams.predict_split

    def split_column(self, split: str, column: str) -> pd.Series:
        """Column ``column`` of the data a split comes from (its CSV's columns, or ``generator`` and ``dataset`` for
        any layout), one value per image in the split's order; e.g. the ``generator`` of each image, for per-group
        reports.

        Raises:
            DataError: If the split has no such column (naming the split's source and the columns it has).
        """
        index = self.indexes[split]
        has = column in index and not (column == "generator" and (index["generator"] == "").all())
        if not has:
            columns = [c for c in index.columns if c not in ("path", "label")]
            primary = self._sources.primary
            where = self._sources.origins.get(split, primary.source or primary.root)
            raise DataError(f"{where}: no column {column!r} to group the {split} split by; columns: {columns}")
        return index[column].reset_index(drop=True)

    def split_ids(self, split: str) -> list[str]:
        """Image ids of a split as its CSV lists them (paths relative to the root), in order."""
        return self._files_dataset().paths if split == "files" else self.indexes[split]["path"].tolist()

    @property
    def tiled(self) -> bool:
        """Whether evaluation scores tiles (``data.eval_views: tiles``)."""
        return self.hparams.eval_views == "tiles"

    def images_per_batch(self, train: bool = False, eval_views: int | str | None = None) -> int:
        """``batch_size``, or with tiles ``batch_size // max_tiles`` images (at least one): bounded memory."""
        hp = self.hparams
        views = hp.eval_views if eval_views is None else eval_views
        return hp.batch_size if train or views != "tiles" else max(1, hp.batch_size // hp.max_tiles)

    def has_masks(self, split: str) -> bool:
        """Whether a test split's data names edit masks (a ``mask`` column): it is then scored for localization."""
        return split not in ("train", "val") and split in self.indexes and MASK_COLUMN in self.indexes[split]

    def masks(self, split: str) -> list[Path | None]:
        """Each image's mask PNG (under its dataset's root), None for an unedited image, in the split's order."""
        index = self.indexes[split]
        masks = [None if pd.isna(v) or str(v).strip() == "" else Path(str(v)) for v in index[MASK_COLUMN]]
        outside = [str(m) for m in masks if m is not None and (m.is_absolute() or ".." in m.parts)]
        if outside:  # as for images: paths stay under the data root
            where = self._sources.origins.get(split, self.root)
            raise DataError(f"{where}: mask paths must be relative to the data root, e.g. {outside[0]!r}")
        roots = [self._sources.roots.get(d, self.root) for d in index["dataset"]]
        return [None if m is None else Path(r) / m for m, r in zip(masks, roots, strict=True)]

    def loader(
        self, split: str, train: bool = False, perturb=None, eval_views: int | str | None = None, distributed=True
    ) -> DataLoader:
        """The loader of one split (see :meth:`dataset`); ``distributed=False`` gives the whole split to this
        process even under DDP (rank-zero-only extra evaluations)."""
        import torch

        hp = self.hparams
        workers = self.num_workers
        pin = torch.cuda.is_available() if hp.pin_memory is None else hp.pin_memory
        dataset = self.dataset(split, train=train, perturb=perturb, eval_views=eval_views)
        batch_size = self.images_per_batch(train, eval_views)
        sampler = None
        weights = sampling_weights(self.indexes["train"], self._sources.weights, hp.balance) if train else None
        if weights is not None:  # several training datasets, weighted or balanced (data.train_sets, data.balance)
            sampler = WeightedRandomSampler(
                weights.tolist(), len(dataset), replacement=True
            )  # seeded by seed_everything
        if distributed and not train and torch.distributed.is_available() and torch.distributed.is_initialized():
            # Evaluation under DDP: each image on exactly one rank. Lightning's default DistributedSampler pads
            # the shards with repeated images, which would enter the gathered metrics (AUROC...) twice.
            from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            drop_last=train and len(dataset) > batch_size,
            num_workers=workers,
            pin_memory=pin,
            persistent_workers=hp.persistent_workers and workers > 0,
            collate_fn=collate_skip_bad,
        )

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        work = (["decoding JPEGs (data.decode=device)"] if hp.decode == "device" else []) + (
            [f"augmenting (data.augment_on={hp.augment_on})"]
            if hp.aug_strength > 0 and self.augment_location == "device"
            else []
        )
        if work:  # the batched device path, whatever the device (on a CPU it runs in the main process)
            rank_zero_info(f"Training batches: {' and '.join(work)} on {self._device()}, in the main process's batches")
        return self.loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> list[DataLoader]:
        splits = self.test_splits()
        if not splits:
            raise DataError("no test split configured: set data.test_v1_csv and/or data.test_v2_csv")
        return [self.loader(s) for s in splits]

    def predict_dataloader(self) -> DataLoader:
        return self.loader(self.predict_name)

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
        images, keep, bad = decode_batch(encoded, paths, hp.img_size, hp.mode, train, self._device())
        skipped = raise_or_skip(bad, hp.bad_images)
        if len(keep) < len(encoded):
            for key in ("label", "index"):
                batch[key] = batch[key][keep]
        if keep:
            batch["image"] = images
        return skipped

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        # Training batches, augmented on the device (data.augment_on): the distribution of data/augment.py.
        hp = self.hparams
        trainer = self.trainer
        if (
            isinstance(batch, dict)
            and "image" in batch
            and hp.aug_strength > 0
            and trainer is not None
            and trainer.training
            and self.augment_location == "device"
        ):
            batch["image"] = augment_batch(batch["image"], sample_plan(len(batch["image"]), hp.aug_strength))
        return batch


def _dataset_identity(dataset, rows: pd.DataFrame) -> dict:
    """A training dataset's identity: layout, path, row count, AI share and the content hash of its CSV, or of the
    folder listing (paths and labels) for a folders layout."""
    out = {
        "kind": "csv" if dataset.layout == "kaggle" else dataset.layout,
        "name": dataset.name,
        "rows": int(len(rows)),
        "ai_share": float(rows["label"].mean()),
    }
    if dataset.source is not None:
        out |= {"train_csv": str(dataset.source.resolve()), "sha256": file_sha256(dataset.source)}
    else:
        listing = "\n".join(f"{p}\t{y}" for p, y in zip(dataset.index["path"], dataset.index["label"], strict=True))
        out |= {"root": str(dataset.root.resolve()), "listing_sha256": hashlib.sha256(listing.encode()).hexdigest()}
    return out


class _Copies:
    """``dataset(..., copies=k)``: marks the transform to become :class:`ReshareCopies` of the evaluation transform."""

    def __init__(self, k: int):
        self.k = int(k)
