"""Every dataset a run reads: ``data.root`` (any layout), ``data.train_sets`` and ``data.test_sets``, gathered into
the training pool and the named test sets, with the sampling weights that mix several training datasets.

Image ids: a path relative to ``data.root`` for its own images (as the Kaggle CSVs list them), an absolute path for
the images of any other dataset, so that ids never collide and ``root / id`` always opens the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from deepfake_lightning.data.layouts import (
    Dataset,
    DatasetSpec,
    check_both_classes,
    read_dataset,
    read_kaggle_csv,
    select_split,
)
from deepfake_lightning.errors import DataError

KAGGLE_TESTS = ("test_v1", "test_v2", "test_edited")
RESERVED = ("train", "val", "files")
BALANCE = ("none", "dataset", "generator")


@dataclass
class Sources:
    """What :func:`read_sources` read."""

    datasets: dict[str, Dataset]  # the training datasets, data.root's first
    pool: pd.DataFrame  # their train and val rows (``split`` train, val or empty), ids in ``path``, ``dataset``
    tests: dict[str, pd.DataFrame] = field(default_factory=dict)  # test name -> index, in report order
    origins: dict[str, str] = field(default_factory=dict)  # test name -> where it came from
    roots: dict[str, Path] = field(default_factory=dict)  # dataset name -> root (test sets' too)
    weights: dict[str, float] = field(default_factory=dict)  # training dataset -> weight

    @property
    def primary(self) -> Dataset:
        return next(iter(self.datasets.values()))

    def describe(self) -> list[str]:
        """One line per dataset read (training datasets, then test sets)."""
        return [d.describe() for d in self.datasets.values()]


def primary_spec(hp) -> DatasetSpec:
    """``data.root`` and its layout flags as a spec."""
    return DatasetSpec(
        root=hp.root,
        layout=hp.layout,
        label_dirs=hp.label_dirs,
        csv=hp.train_csv,
        path_column=hp.path_column,
        label_column=hp.label_column,
        generator_column=hp.generator_column,
        group_column=hp.group_column,
        split_column=hp.split_column,
        query=hp.train_query,
    )


def read_sources(hp) -> Sources:
    """Reads ``data.root``, every ``data.train_sets`` entry and every ``data.test_sets`` entry (``hp``: the data
    module's hyperparameters).

    Raises:
        DataError: A dataset that cannot be read, a training dataset without both classes, or a test set name given
            twice (each naming the path or setting).
    """
    primary = read_dataset(primary_spec(hp), hp.train_csv)
    if primary.layout == "folders" and hp.group_column:
        raise DataError("data.group_column needs a CSV (kaggle or csv layout); the folders layout has no groups")
    sources = Sources(datasets={}, pool=pd.DataFrame())
    parts = [_add_training(sources, primary, 1.0, is_primary=True)]
    for i, value in enumerate(hp.train_sets or []):
        spec = DatasetSpec.parse(value, f"data.train_sets[{i}]")
        if not spec.weight > 0:
            raise DataError(f"data.train_sets[{i}]: weight must be positive, got {spec.weight}")
        dataset = read_dataset(spec)
        if dataset.name in sources.datasets:
            raise DataError(
                f"data.train_sets[{i}]: dataset name {dataset.name!r} is given twice; give it another with 'name'"
            )
        parts.append(_add_training(sources, dataset, spec.weight, is_primary=False))
    sources.pool = pd.concat(parts, ignore_index=True)
    if primary.layout == "kaggle":
        _add_kaggle_tests(sources, hp)
    else:
        _add_kaggle_tests(sources, hp, explicit_only=True)
    for name, dataset in sources.datasets.items():
        rows = dataset.index[dataset.index["split"] == "test"]
        if len(rows):
            _add_test(
                sources, f"{name}_test", _with_ids(rows, dataset, dataset is primary), f"{dataset.root} (test split)"
            )
    for name, value in (hp.test_sets or {}).items():
        _add_test_set(sources, str(name), value)
    return sources


def _add_training(sources: Sources, dataset: Dataset, weight: float, is_primary: bool) -> pd.DataFrame:
    """Registers a training dataset; returns its train and val rows with their ids."""
    rows = dataset.index[dataset.index["split"] != "test"]
    if rows.empty:
        raise DataError(
            f"{dataset.root}: all of its {len(dataset.index)} images are in its test split: nothing to train"
        )
    check_both_classes(rows, f"{dataset.root} (training images)")
    sources.datasets[dataset.name] = dataset
    sources.roots[dataset.name] = dataset.root
    sources.weights[dataset.name] = float(weight)
    return _with_ids(rows, dataset, is_primary)


def _with_ids(rows: pd.DataFrame, dataset: Dataset, is_primary: bool) -> pd.DataFrame:
    """The rows with their ids (see the module docstring) and the ``dataset`` column."""
    rows = rows.reset_index(drop=True).copy()
    if not is_primary:
        base = os.path.abspath(dataset.root)
        rows["path"] = [os.path.join(base, p) for p in rows["path"]]
    rows["dataset"] = dataset.name
    return rows


def _add_kaggle_tests(sources: Sources, hp, explicit_only: bool = False) -> None:
    """test_v1 / test_v2 / test_edited: the Kaggle layout's test CSVs under ``data.root``. Outside that layout only
    the CSVs that exist are read (the default ``test.csv`` belongs to the Kaggle layout)."""
    primary = sources.primary
    for split, csv in zip(KAGGLE_TESTS, (hp.test_v1_csv, hp.test_v2_csv, hp.test_edited_csv), strict=True):
        if csv is None or (explicit_only and not (primary.root / csv).is_file() and csv == "test.csv"):
            continue
        if not (primary.root / csv).is_file():
            raise FileNotFoundError(
                f"data.{split}_csv: {primary.root / csv} does not exist; pass --data.{split}_csv null if this data "
                f"has no {split} split"
            )
        index = read_kaggle_csv(primary.root / csv, primary.root, "id", require_labels=False)
        _add_test(sources, split, index.assign(dataset=primary.name), str(primary.root / csv))


def _add_test_set(sources: Sources, name: str, value) -> None:
    where = f"data.test_sets.{name}"
    if name in RESERVED:
        raise DataError(f"{where}: {name!r} names a split of the training data; choose another name")
    spec = DatasetSpec.parse(value, where, name=name)
    dataset = read_dataset(spec)
    rows = select_split(dataset, spec.split, where)
    dataset_name = f"test:{name}"
    sources.roots[dataset_name] = dataset.root
    _add_test(sources, name, _with_ids(rows, Dataset(dataset_name, dataset.root, dataset.layout, rows, ""), False),
              f"{spec.root} ({dataset.layout} layout)")  # fmt: skip


def _add_test(sources: Sources, name: str, index: pd.DataFrame, origin: str) -> None:
    if name in sources.tests:
        raise DataError(
            f"test set name {name!r} is given twice: {sources.origins[name]} and {origin}; rename one in data.test_sets"
        )
    sources.tests[name] = index
    sources.origins[name] = origin


def sampling_weights(train: pd.DataFrame, weights: dict[str, float], balance: str) -> np.ndarray | None:
    """Per training image, the relative probability of drawing it (``WeightedRandomSampler``), or None for plain
    shuffling (one dataset, weight 1, no balance).

    ``none``: an image is drawn in proportion to its dataset's weight. ``dataset``: each dataset's share of the draws
    is in proportion to its weight, whatever its size. ``generator``: as ``dataset``, and within a dataset each
    generator's AI images get an equal share of the dataset's AI draws (human images keep theirs).
    """
    if balance not in BALANCE:
        raise DataError(f"data.balance must be one of {', '.join(BALANCE)}, got {balance!r}")
    datasets = train["dataset"].to_numpy()
    if balance == "none" and all(weights[d] == 1.0 for d in set(datasets)):
        return None
    w = np.array([weights[d] for d in datasets], dtype=np.float64)
    if balance == "none":
        return w
    sizes = train["dataset"].map(train["dataset"].value_counts()).to_numpy()
    w = w / sizes
    if balance == "generator":
        ai = train["label"].to_numpy() == 1
        key = train["dataset"].astype(str) + "\0" + train["generator"].astype(str)
        per_gen = key[ai].value_counts()
        n_gen = train[ai].groupby("dataset")["generator"].nunique()
        ai_count = train[ai]["dataset"].value_counts()
        share = np.ones(len(train))
        # An AI image's weight: its dataset's AI images split equally between generators.
        share[ai] = (ai_count[datasets[ai]].to_numpy() / n_gen[datasets[ai]].to_numpy()) / per_gen[key[ai]].to_numpy()
        w = w * share
    return w / w.sum()
