"""The train/val split of a run: made once (each training dataset's own val split, or a seeded stratified one,
group-aware with ``data.group_column``), saved as the run's ``split.csv``, reused exactly with ``data.split_file``."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from deepfake_lightning.data.index import DataError
from deepfake_lightning.files import atomic_path

SPLIT_FILE = "split.csv"


def split_train_val(pool: pd.DataFrame, datasets: dict, hp, root: Path) -> dict[str, pd.DataFrame]:
    """Train and val rows of the training ``pool``: those of ``hp.split_file``, else per training dataset its own
    val split (a ``val`` folder or split column) or a seeded, stratified one (:func:`seeded_split`). ``datasets``:
    name -> the dataset (``data/sources.py``), ``hp`` the data module's hyperparameters."""
    if hp.split_file is not None:
        return load_split(pool, Path(hp.split_file), root, hp.train_query)
    parts: dict[str, list[pd.DataFrame]] = {"train": [], "val": []}
    for name, rows in pool.groupby("dataset", sort=False):
        given = rows["split"] == "val"
        if given.any():
            split = {"train": rows[~given], "val": rows[given]}
        else:
            dataset = datasets[name]
            where = dataset.source or dataset.root
            split = seeded_split(rows.reset_index(drop=True), where, hp.val_fraction, hp.split_seed, hp.group_column)
        for key in parts:
            parts[key].append(split[key])
    return {k: pd.concat(v, ignore_index=True) for k, v in parts.items()}


def seeded_split(
    df: pd.DataFrame, where, val_fraction: float, seed: int, group_column: str | None = None
) -> dict[str, pd.DataFrame]:
    """``val_fraction`` of ``df``'s rows held out for validation, stratified by label and seeded; with
    ``group_column``, by stratified group folds (a ``group`` never straddles train and val).

    Raises:
        DataError: Naming ``where`` when a class has fewer than 2 images or a side would have fewer than 2.
    """
    counts = df["label"].value_counts()
    if len(counts) < 2 or counts.min() < 2:
        raise DataError(f"{where}: need at least 2 images of each class for a stratified split, got {counts.to_dict()}")
    n_val = int(math.ceil(len(df) * val_fraction))
    if n_val < 2 or len(df) - n_val < 2:
        raise DataError(
            f"{where}: {len(df)} rows cannot be split into train and val with "
            f"data.val_fraction={val_fraction} (each side needs at least 2 images)"
        )
    idx = list(range(len(df)))
    if group_column is None:
        train_idx, val_idx = train_test_split(idx, test_size=val_fraction, stratify=df["label"], random_state=seed)
    else:
        folds = StratifiedGroupKFold(n_splits=max(2, round(1 / val_fraction)), shuffle=True, random_state=seed)
        train_idx, val_idx = next(folds.split(idx, df["label"], groups=df["group"]))
    return {
        "train": df.iloc[sorted(train_idx)].reset_index(drop=True),
        "val": df.iloc[sorted(val_idx)].reset_index(drop=True),
    }


def load_split(df: pd.DataFrame, split_file: Path, root: Path, train_query: str | None) -> dict[str, pd.DataFrame]:
    """Train and val rows of ``df`` as an earlier run's ``split.csv`` assigned them.

    Raises:
        DataError: For a file without ``path`` and ``split`` columns, or a training image it does not list.
    """
    saved = pd.read_csv(split_file, dtype={"path": str})
    if not {"path", "split"} <= set(saved.columns):
        raise DataError(f"{split_file}: a split file needs columns 'path' and 'split', found {list(saved.columns)}")
    where = dict(zip(saved["path"], saved["split"], strict=False))
    missing = df.loc[~df["path"].isin(where.keys()), "path"]
    if len(missing):
        raise DataError(
            f"{split_file} does not match the training data under {root}: {len(missing)} training "
            f"image(s) have no split, e.g. {missing.iloc[0]!r}"
            + ("" if train_query else " (if that run used --data.train_query, pass the same query)")
        )
    split = df["path"].map(where)
    return {s: df[split == s].reset_index(drop=True) for s in ("train", "val")}


def save_split(indexes: dict[str, pd.DataFrame], log_dir: str | Path) -> Path:
    """Writes ``log_dir/split.csv`` (``path,label[,group],generator,dataset,split``) of the train and val rows."""
    columns = ["path", "label", *(["group"] if "group" in indexes["train"] else []), "generator", "dataset"]
    parts = [indexes[s][columns].assign(split=s) for s in ("train", "val")]
    out = Path(log_dir) / SPLIT_FILE
    with atomic_path(out) as tmp:
        pd.concat(parts, ignore_index=True).to_csv(tmp, index=False)
    return out
