"""Datasets read in the layouts they are published in (``data.layout``), into one kind of index.

* ``kaggle``: the Kaggle "AI vs. Human-Generated Images" CSVs (``data/index.py``), unchanged.
* ``folders``: class folders at any depth, named by :data:`LABEL_DIRS` (CNNDetection/ForenSynths ``0_real``/``1_fake``,
  CIFAKE ``REAL``/``FAKE``, GenImage ``nature``/``ai``, ``real``/``fake``, ``human``/``ai``; case-insensitive) or by
  ``data.label_dirs``. Folders named ``train``/``val``/``test`` (and their common spellings) above a class folder give
  the split; the first other folder above it gives the ``generator`` (GenImage's ``imagenet_ai_0419_sdv4/train/ai`` is
  ``imagenet_ai_0419_sdv4``, ForenSynths' ``progan/car/1_fake`` is ``progan``). Links under the root are followed.
* ``csv``: any CSV with a path and a label column (0/1, or names from the same vocabulary), and optional generator,
  group and split columns; paths are relative to the CSV's folder and may not leave it (``..``, absolute paths).
* ``auto``: ``kaggle`` when the root holds the training CSV, ``csv`` when the root is a CSV file, else ``folders``.

Every index has one row per image: ``path`` (relative to the dataset's root), ``label`` (1 = AI), ``generator``
(``""`` when the layout names none) and ``split`` (``train``, ``val``, ``test`` or ``""``), plus ``group`` when
configured. Every problem is one :class:`DataError` naming the path and what to do.
"""

from __future__ import annotations

import difflib
import os
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd

from deepfake_lightning.errors import DataError

LAYOUTS = ("auto", "kaggle", "folders", "csv")
# Class folder names (lower case) of the common public datasets; data.label_dirs replaces them.
LABEL_DIRS: dict[str, int] = {"0_real": 0, "1_fake": 1, "real": 0, "fake": 1, "nature": 0, "human": 0, "ai": 1}
SPLIT_DIRS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jfif", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
IGNORED_FILES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
# Column names tried, in order, when a CSV layout does not name its path or label column.
PATH_COLUMNS = ("path", "file_name", "filename", "filepath", "file_path", "file", "image", "image_path", "id")
LABEL_COLUMNS = ("label", "target", "is_fake", "class", "y")
INDEX_COLUMNS = ("path", "label", "generator", "split")


@dataclass
class DatasetSpec:
    """One dataset as the user names it: ``data.root`` and its layout flags, an entry of ``data.test_sets`` or of
    ``data.train_sets`` (a path, or a mapping with these keys)."""

    root: str
    name: str = ""
    layout: str = "auto"
    split: str = "auto"  # test sets: which split of the dataset (auto: its test split when it has one, else all)
    weight: float = 1.0  # train sets: a multiplier of how often its images are drawn
    label_dirs: dict[str, int] | None = None
    csv: str | None = None  # kaggle/csv layouts: the CSV, relative to root (default: train.csv)
    path_column: str | None = None
    label_column: str | None = None
    generator_column: str | None = None
    group_column: str | None = None
    split_column: str | None = None
    query: str | None = None

    @classmethod
    def parse(cls, value: Any, where: str, name: str = "") -> DatasetSpec:
        """A spec from a path string or a mapping; ``where`` names the setting in errors (``data.test_sets.x``)."""
        if isinstance(value, (str, os.PathLike)):
            return cls(root=os.fspath(value), name=name)
        if not isinstance(value, dict):
            raise DataError(f"{where}: expected a path or a mapping with a 'root' key, got {value!r}")
        allowed = [f.name for f in fields(cls)]
        for key in value:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise DataError(f"{where}: unknown key {key!r}{hint}; keys: {', '.join(allowed)}")
        if "root" not in value:
            raise DataError(f"{where}: needs a 'root' (a folder or a CSV file), got keys {sorted(value)}")
        spec = cls(**{"name": name, **value})
        spec.root = os.fspath(spec.root)
        return spec


@dataclass
class Dataset:
    """A dataset read from disk: where it is, which layout was used and why, and its index."""

    name: str
    root: Path
    layout: str
    index: pd.DataFrame
    reason: str
    source: Path | None = None  # the CSV read (kaggle and csv layouts)
    details: dict = field(default_factory=dict)

    def describe(self) -> str:
        """One line: what was read, from where, in which layout, and why."""
        counts = self.index["label"].value_counts()
        splits = Counter(s for s in self.index["split"] if s)
        by_split = f", splits {', '.join(f'{k} {v}' for k, v in sorted(splits.items()))}" if splits else ""
        gens = sorted({g for g in self.index["generator"] if g})
        by_gen = f", {len(gens)} generator(s)" if gens else ""
        return (
            f"{self.name}: {self.layout} layout ({self.reason}): {len(self.index)} images "
            f"({int(counts.get(0, 0))} human, {int(counts.get(1, 0))} AI{by_split}{by_gen}) under {self.root}"
        )


def check_layout(layout: str, where: str = "data.layout") -> None:
    if layout not in LAYOUTS:
        close = difflib.get_close_matches(str(layout), LAYOUTS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise DataError(f"{where}: unknown layout {layout!r}{hint}; choose one of {', '.join(LAYOUTS)}")


def label_vocabulary(label_dirs: dict[str, int] | None, where: str = "data.label_dirs") -> dict[str, int]:
    """The class-folder names (lower case) to labels: ``label_dirs`` when given (checked), else :data:`LABEL_DIRS`."""
    if label_dirs is None:
        return dict(LABEL_DIRS)
    vocab = {}
    for name, label in label_dirs.items():
        if label not in (0, 1) or isinstance(label, bool):
            raise DataError(f"{where}: {name!r} maps to {label!r}; labels are 0 (human) or 1 (AI-generated)")
        vocab[str(name).lower()] = int(label)
    if set(vocab.values()) != {0, 1}:
        raise DataError(f"{where}: {label_dirs} names folders of one class only; name a human (0) and an AI (1) one")
    return vocab


def resolve_layout(spec: DatasetSpec, default_csv: str = "train.csv") -> tuple[str, Path, str]:
    """(layout, root folder, reason) for a spec whose layout may be ``auto``."""
    check_layout(spec.layout, f"{spec.name or 'data'}.layout" if spec.name else "data.layout")
    root = Path(spec.root)
    if not root.exists():
        raise FileNotFoundError(f"{spec.name + ': ' if spec.name else ''}dataset path '{root}' does not exist")
    if root.is_file():
        if spec.layout not in ("auto", "csv") or root.suffix.lower() != ".csv":
            raise DataError(f"{root}: a file can only be read in the csv layout (a .csv file), not {spec.layout!r}")
        return "csv", root.parent, f"{root.name} is a CSV file"
    if spec.layout != "auto":
        return spec.layout, root, f"data.layout={spec.layout}" if not spec.name else f"layout {spec.layout}"
    csv = spec.csv or default_csv
    if (root / csv).is_file():
        return "kaggle", root, f"found {csv}"
    return "folders", root, f"no {csv}: class folders"


def scan_folders(root: str | os.PathLike, label_dirs: dict[str, int] | None = None) -> pd.DataFrame:
    """The index of a folders layout (see the module docstring), walked with ``os.scandir`` (no stat per file).

    Raises:
        DataError: No class folder, an empty class folder, class folders of both classes nested in each other, or
            images outside every class folder (each naming the path).
    """
    root_s = os.fspath(root)
    vocab = label_vocabulary(label_dirs)
    rows: list[tuple[str, int, str, str]] = []
    class_dirs: dict[str, int] = {}  # relative class folder -> images found under it
    loose: list[str] = []
    others: list[str] = []
    # (relative folder, label, class folder, split, generator)
    stack: list[tuple[str, int | None, str, str, str]] = [("", None, "", "", "")]
    while stack:
        rel, label, class_dir, split, generator = stack.pop()
        folder = os.path.join(root_s, rel) if rel else root_s
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            raise DataError(f"{folder}: cannot be listed ({e.strerror}); check its permissions") from None
        for entry in entries:
            name = entry.name
            if name.startswith(".") or name.lower() in IGNORED_FILES:
                continue
            sub = f"{rel}/{name}" if rel else name
            if entry.is_dir():  # follows a symbolic link the user placed here
                if entry.is_symlink() and _is_loop(entry.path, folder):
                    continue
                stack.append(_child(sub, name.lower(), label, class_dir, split, generator, vocab))
                if stack[-1][2] != class_dir:
                    class_dirs[sub] = 0
            elif os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                if label is None:
                    loose.append(sub)
                    continue
                rows.append((sub, label, generator, split))
                class_dirs[class_dir] += 1
            elif label is not None:
                others.append(sub)
    _check_scan(Path(root_s), vocab, class_dirs, loose, others)
    index = pd.DataFrame(rows, columns=list(INDEX_COLUMNS))
    return index.sort_values("path", kind="stable").reset_index(drop=True)


def _child(sub, lower, label, class_dir, split, generator, vocab) -> tuple:
    """The walk state of a sub-folder: a class folder sets the label, a split folder the split, and the first other
    folder above the class folder the generator."""
    if lower in vocab:
        if label is not None and vocab[lower] != label:
            raise DataError(
                f"{sub}: {_a(_class(vocab[lower]))} class folder inside the {_class(label)} class folder {class_dir}: "
                "one folder cannot hold both classes; move one of them out, or rename it (data.label_dirs)"
            )
        return sub, vocab[lower], class_dir if label is not None else sub, split, generator
    if label is None and lower in SPLIT_DIRS:
        return sub, None, class_dir, SPLIT_DIRS[lower], generator
    if label is None and not generator:
        return sub, None, class_dir, split, sub.rsplit("/", 1)[-1]
    return sub, label, class_dir, split, generator


def _class(label: int) -> str:
    return "AI" if label == 1 else "human"


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "AEIOUaeiou" else f"a {word}"


def _is_loop(link: str, parent: str) -> bool:
    """Whether a linked folder leads back to one of its own ancestors (it would be walked forever)."""
    target = os.path.realpath(link)
    here = os.path.realpath(parent)
    return here == target or here.startswith(target.rstrip(os.sep) + os.sep)


def _check_scan(root: Path, vocab: dict, class_dirs: dict, loose: list, others: list) -> None:
    names = "/".join(sorted(vocab))
    if not class_dirs:
        csvs = sorted(p.name for p in root.glob("*.csv"))
        hint = f" (it holds {csvs[0]}: --data.root {root / csvs[0]})" if csvs else ""
        raise DataError(
            f"{root}: no class folders found (folder names {names}, any case, at any depth); name the folders so, "
            'map your own names with --data.label_dirs \'{"mine_real": 0, "mine_ai": 1}\', or list the images in '
            f"a CSV (--data.layout csv){hint}"
        )
    empty = [d for d, n in class_dirs.items() if n == 0]
    if empty:
        raise DataError(
            f"{root / empty[0]}: class folder holds no images"
            + (f" (and {len(empty) - 1} more, e.g. {empty[1]})" if len(empty) > 1 else "")
            + f"; add its images or remove it (image files: {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    if loose:
        raise DataError(
            f"{root / loose[0]}: {len(loose)} image(s) under {root} are in no class folder ({names}); move them into "
            "one, or list them with their labels in a CSV (--data.layout csv)"
        )
    if others:
        from lightning.pytorch.utilities import rank_zero_warn

        rank_zero_warn(
            f"{len(others)} file(s) in class folders under {root} are not images by their extension and are left "
            f"out, e.g. {others[0]}"
        )


def read_csv_layout(
    csv_path: Path,
    root: Path,
    spec: DatasetSpec,
    check_files: bool = True,
) -> pd.DataFrame:
    """The index of a CSV layout: ``spec``'s columns, or the first of :data:`PATH_COLUMNS` / :data:`LABEL_COLUMNS`
    the CSV has; labels 0/1 or class names of the folder vocabulary (``REAL``/``fake``...)."""
    from deepfake_lightning.data.index import read_index

    header = _header(csv_path)
    path_column = spec.path_column or _first(header, PATH_COLUMNS, csv_path, "path", "path_column")
    label_column = spec.label_column or _first(header, LABEL_COLUMNS, csv_path, "label", "label_column")
    generator_column = spec.generator_column or ("generator" if "generator" in header else None)
    split_column = spec.split_column or ("split" if "split" in header else None)
    index = read_index(
        csv_path,
        root,
        path_column,
        label_column,
        spec.group_column,
        check_files=check_files,
        query=spec.query,
        label_names=label_vocabulary(spec.label_dirs),
        extra_columns={**extra_columns(header, path_column, label_column, spec.group_column),
                       "generator": generator_column, "split": split_column},
    )  # fmt: skip
    if "generator" not in index:
        index["generator"] = ""
    index["generator"] = index["generator"].fillna("").astype(str)
    index["split"] = _splits(index, csv_path, split_column)
    return index


def extra_columns(header: list[str], *used: str | None) -> dict[str, str]:
    """The CSV's other columns, kept in the index as they are (``mask``, ``pair``, a ``generator`` of the Kaggle
    layout...), so that reports can break results down by any of them; the index's own names are not overwritten."""
    taken = {*used, *INDEX_COLUMNS, "group", "dataset"}
    kept = {c: c for c in header if c not in taken and not str(c).startswith("Unnamed:")}
    if "generator" in header and "generator" not in used:
        kept["generator"] = "generator"
    return kept


def read_kaggle_csv(csv_path: Path, root: Path, path_column: str, query: str | None = None, group_column=None,
                    require_labels: bool = True) -> pd.DataFrame:  # fmt: skip
    """A Kaggle-layout CSV (``data/index.py``, unchanged), its other columns kept (see :func:`extra_columns`)."""
    from deepfake_lightning.data.index import read_index

    extras = extra_columns(_header(csv_path), path_column, "label", group_column) if csv_path.is_file() else {}
    index = read_index(
        csv_path, root, path_column, "label", group_column, require_labels=require_labels, query=query,
        extra_columns=extras,
    )  # fmt: skip
    index["generator"] = index["generator"].fillna("").astype(str) if "generator" in index else ""
    index["split"] = ""
    return index


def _header(csv_path: Path) -> list[str]:
    try:
        return list(pd.read_csv(csv_path, nrows=0, encoding="utf-8-sig").columns)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise DataError(f"{csv_path}: cannot be parsed as CSV ({e})") from e


def _first(header: list[str], candidates: tuple[str, ...], csv_path: Path, what: str, flag: str) -> str:
    for c in candidates:
        if c in header:
            return c
    raise DataError(
        f"{csv_path}: no {what} column (looked for {', '.join(candidates)}); name it with --data.{flag} "
        f"(columns: {', '.join(header)})"
    )


def _splits(index: pd.DataFrame, csv_path: Path, column: str | None) -> pd.Series:
    if "split" not in index:
        return pd.Series([""] * len(index), index=index.index, dtype=object)
    raw = index["split"].fillna("").astype(str).str.strip().str.lower()
    mapped = raw.map(lambda s: SPLIT_DIRS.get(s, "" if s == "" else None))
    bad = mapped.isna()
    if bad.any():
        first = int(bad.to_numpy().nonzero()[0][0])
        raise DataError(
            f"{csv_path}: column '{column}' has {int(bad.sum())} value(s) that are not a split, e.g. line {first + 2}: "
            f"{index['split'].iloc[first]!r}; use train, val or test (or leave it empty)"
        )
    return mapped.astype(str)


def read_dataset(spec: DatasetSpec, default_csv: str = "train.csv", check_files: bool = True) -> Dataset:
    """Reads one dataset (any layout) into a :class:`Dataset`; the kaggle layout reads ``spec.csv`` (default
    ``default_csv``) with its ``file_name``/``label`` columns, as ``data/index.py`` always has."""
    layout, root, reason = resolve_layout(spec, default_csv)
    name = spec.name or root.resolve().name
    if layout == "folders":
        index = scan_folders(root, spec.label_dirs)
        return Dataset(name, root, layout, index, reason)
    csv = Path(spec.root) if Path(spec.root).is_file() else root / (spec.csv or default_csv)
    if not csv.is_file():
        raise FileNotFoundError(f"{name}: {layout} layout, but its CSV '{csv}' does not exist")
    if layout == "kaggle":
        path_column = "file_name" if "file_name" in _header(csv) else "id"
        index = read_kaggle_csv(csv, root, path_column, spec.query, spec.group_column)
    else:
        index = read_csv_layout(csv, root, spec, check_files)
    return Dataset(name, root, layout, index, reason, source=csv)


def select_split(dataset: Dataset, split: str, where: str) -> pd.DataFrame:
    """The rows of a test set: ``auto`` takes the dataset's test split when it has one (else every image), ``all``
    every image, ``train``/``val``/``test`` that split."""
    index = dataset.index
    present = sorted({s for s in index["split"] if s})
    if split == "all" or (split == "auto" and "test" not in present):
        return index
    wanted = "test" if split == "auto" else SPLIT_DIRS.get(str(split).lower())
    if wanted is None:
        raise DataError(f"{where}.split: {split!r} is not a split; use auto, all, train, val or test")
    rows = index[index["split"] == wanted]
    if rows.empty:
        raise DataError(
            f"{where}.split: {dataset.root} has no {wanted} split (its splits: {', '.join(present) or 'none'}); "
            "use split: all for every image"
        )
    return rows.reset_index(drop=True)


def check_both_classes(index: pd.DataFrame, where: str) -> None:
    """A training dataset needs images of both classes."""
    counts = index["label"].value_counts()
    for label in (0, 1):
        if counts.get(label, 0) == 0:
            raise DataError(
                f"{where}: no {_class(label)} images among its {len(index)}; a detector trains on both classes "
                "(check the class folder names or the label column)"
            )
