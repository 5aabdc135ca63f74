"""``DeepfakeDataModule``: the Kaggle "AI vs. Human-Generated Images" splits as a LightningDataModule."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import lightning as L
import pandas as pd
from lightning.pytorch.utilities import rank_zero_info

from deepfake_lightning.data.cache import ResizedCache, ensure_cache
from deepfake_lightning.data.checks import check_data_root, check_device_work, check_images
from deepfake_lightning.data.dataset import BadImagePolicy
from deepfake_lightning.data.demo import DemoSpec, build_demo_dataset, demo_is_built
from deepfake_lightning.data.device import DeviceBatches
from deepfake_lightning.data.identity import data_identity
from deepfake_lightning.data.index import UNLABELED, DataError
from deepfake_lightning.data.layouts import check_layout
from deepfake_lightning.data.loaders import Loaders
from deepfake_lightning.data.manifest import check_manifest
from deepfake_lightning.data.sources import Sources, read_sources
from deepfake_lightning.data.splits import SPLIT_FILE, save_split, split_train_val
from deepfake_lightning.data.transforms import TransformMode, check_eval_views
from deepfake_lightning.settings import DEFAULTS

__all__ = ["SPLIT_FILE", "DeepfakeDataModule", "check_data_root"]

TEST_SPLITS = ("test_v1", "test_v2", "test_edited")
MASK_COLUMN = "mask"  # a test CSV column naming each image's mask PNG of edited pixels (empty: unedited)


class DeepfakeDataModule(Loaders, DeviceBatches, L.LightningDataModule):
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
        check_device_work(augment_on, decode, aug_reshare, cache_dir)
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

    @property
    def sources(self) -> Sources:
        """Every dataset of the run, their roots, weights and test splits (``data/sources.py``), read once; one line
        per dataset says what was read."""
        if self._sources is None:
            hp = self.hparams
            check_data_root(self.root, hp.train_csv, hp.layout)
            self._sources = read_sources(hp)
            self.root = self._sources.primary.root  # a CSV file given as the root: its folder holds the images
            if not hp.demo:
                for line in self._sources.describe():
                    rank_zero_info(f"Data: {line}")
        return self._sources

    def _ensure_cache(self) -> ResizedCache:
        # Built by prepare_data (once per node, before setup); setup, in every process, finds it current and opens it.
        hp = self.hparams
        return ensure_cache(
            hp.cache_dir,
            self.root,
            self.sources.pool["path"],
            hp.img_size,
            hp.jpeg_draft,
            self.num_workers,
            hp.bad_images,
        )

    def setup(self, stage: str | None = None) -> None:
        if self.indexes or (stage == "predict" and self.hparams.predict_paths):
            return  # predicting files needs no training data
        hp = self.hparams
        sources = self.sources
        self.indexes.update(split_train_val(sources.pool, sources.datasets, hp, self.root))
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
            self.indexes = check_images(self.indexes, self.root, hp.bad_images)
        self._save_split()

    def _save_split(self) -> None:
        trainer = self.trainer
        if trainer is None or not (getattr(trainer, "loggers", [None]) or trainer.checkpoint_callback is not None):
            return  # neither logs nor checkpoints, so no run directory: do not litter the working directory
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank asks
        if log_dir is not None and trainer.is_global_zero:
            save_split(self.indexes, log_dir)

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
            self._identity = data_identity(self.hparams, self.indexes, self._sources, self.root, self.demo_spec)
        return self._identity

    def manifest_rows(self) -> pd.DataFrame:
        """Every image of every configured split (``path`` openable from here, label, generator, split, dataset),
        once each: what ``deepfake data scan`` writes into a manifest and ``data.manifest`` checks."""
        frames = [self.indexes[s].assign(split=s) for s in self.indexes]
        rows = pd.concat(frames, ignore_index=True).drop_duplicates("path")
        return rows.assign(file=[str(self.root / p) for p in rows["path"]])

    # ---------------------------------------------------------------- splits
    def test_splits(self) -> list[str]:
        """The splits ``deepfake test`` evaluates, in order: validation first, then every configured test split
        (unlabeled ones are used for share estimation only)."""
        return ["val"] + [s for s in self.indexes if s not in ("train", "val")]

    def labeled_test_splits(self) -> list[str]:
        """Test splits that are configured and carry labels, in order."""
        return [s for s in self.test_splits() if (self.indexes[s]["label"] != UNLABELED).all()]

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
