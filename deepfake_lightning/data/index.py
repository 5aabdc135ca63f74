"""Reading and validating the Kaggle CSV files into an index DataFrame.

An index has one row per image: ``path`` (relative to the data root, exactly as in the CSV),
``label`` (1 = AI-generated, 0 = human, -1 = unknown) and, when configured, ``group``.
Every check names the CSV file and the offending rows; nothing is dropped silently.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from deepfake_lightning.errors import DataError

UNLABELED = -1
_MAX_LISTED = 20  # rows listed in an error message before "... and N more"


def _rows(df: pd.DataFrame, mask, values: pd.Series | None = None) -> str:
    """Human-readable list of CSV line numbers (header = line 1) and paths for the masked rows,
    with the offending ``values`` when given."""
    bad = df[mask]
    lines = [f"line {i + 2}: {p!r}" for i, p in zip(bad.index, bad["path"].tolist(), strict=False)]
    if values is not None:
        lines = [f"{line} ({v!r})" for line, v in zip(lines, values[mask].tolist(), strict=False)]
    more = f"\n  ... and {len(lines) - _MAX_LISTED} more" if len(lines) > _MAX_LISTED else ""
    return "\n  " + "\n  ".join(lines[:_MAX_LISTED]) + more


def read_index(
    csv_path: str | os.PathLike,
    root: str | os.PathLike,
    path_column: str,
    label_column: str | None = "label",
    group_column: str | None = None,
    require_labels: bool = True,
    check_files: bool = True,
    query: str | None = None,
) -> pd.DataFrame:
    """Reads one Kaggle-style CSV into a validated index.

    Args:
        csv_path: The CSV file. Kaggle's ``train.csv`` starts with an unnamed index column, which is dropped.
        root: Data root; image paths in the CSV are relative to it.
        path_column: Column holding the image path (``file_name`` in train.csv, ``id`` in test.csv).
        label_column: Column holding 0/1 labels. If it is absent and ``require_labels`` is False,
            the split is unlabeled (label -1).
        group_column: Optional column pairing related images (a photo and its AI counterpart).
        require_labels: Fail when the label column is missing.
        check_files: Fail when a row's image file does not exist.
        query: A pandas query over the CSV's own columns (``"generator != 'tconv'"``); only matching rows are kept.

    Returns:
        DataFrame with columns ``path``, ``label`` (int) and ``group`` if configured, in CSV order.

    Raises:
        DataError: Naming the CSV and the rows at fault.
        FileNotFoundError: If the CSV itself is missing.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"CSV file not found: {csv_path}")
    try:
        # utf-8-sig strips a byte-order mark; pandas handles \r\n line endings itself.
        df = pd.read_csv(csv_path, encoding="utf-8-sig", dtype={path_column: str}, keep_default_na=True)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise DataError(f"{csv_path}: cannot be parsed as CSV ({e})") from e
    df = df.loc[:, [c for c in df.columns if not str(c).startswith("Unnamed:")]]
    if query:
        df = _query(df, query, csv_path)

    required = (
        [path_column]
        + ([label_column] if require_labels and label_column else [])
        + ([group_column] if group_column else [])
    )
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{csv_path}: missing required column(s) {missing}; found columns {list(df.columns)}")

    out = pd.DataFrame({"path": df[path_column]})
    if out["path"].isna().any():
        raise DataError(f"{csv_path}: empty '{path_column}' in rows:{_rows(out, out['path'].isna())}")

    if label_column and label_column in df.columns:
        raw = pd.to_numeric(df[label_column], errors="coerce")
        bad = ~raw.isin([0, 1])
        if bad.any():
            raise DataError(
                f"{csv_path}: column '{label_column}' must be 0 (human) or 1 (AI-generated); bad rows:"
                f"{_rows(out, bad, df[label_column])}"
            )
        out["label"] = raw.astype("int64")
    else:
        out["label"] = UNLABELED

    if group_column:
        if df[group_column].isna().any():
            raise DataError(f"{csv_path}: empty '{group_column}' in rows:{_rows(out, df[group_column].isna())}")
        out["group"] = df[group_column].astype(str)

    dup = out["path"].duplicated(keep=False)
    if dup.any():
        raise DataError(f"{csv_path}: duplicate '{path_column}' entries:{_rows(out, dup)}")

    unsafe = ~out["path"].map(_is_safe_relative)
    if unsafe.any():
        raise DataError(
            f"{csv_path}: paths must be relative and stay inside the data root {str(root)!r}; bad rows:"
            f"{_rows(out, unsafe)}"
        )

    if check_files:
        exists, escapes = _check_files(out["path"], Path(root))
        if escapes.any():
            raise DataError(
                f"{csv_path}: {int(escapes.sum())} path(s) lead out of the data root {os.fspath(root)!r} through a "
                f"symbolic link; bad rows:{_rows(out, escapes)}"
            )
        if not exists.all():
            raise DataError(
                f"{csv_path}: {int((~exists).sum())} image file(s) listed but not found under {os.fspath(root)!r}:"
                f"{_rows(out, ~exists)}"
            )
    return out


def _query(df: pd.DataFrame, query: str, csv_path: Path) -> pd.DataFrame:
    try:
        kept = df.query(query, engine="python")
    except pd.errors.UndefinedVariableError as e:
        raise DataError(
            f"{csv_path}: query {query!r} names an unknown column ({e}); columns: {list(df.columns)}"
        ) from None
    except (SyntaxError, ValueError, TypeError, KeyError) as e:
        raise DataError(f"{csv_path}: query {query!r} cannot be evaluated ({type(e).__name__}: {e})") from None
    if not isinstance(kept, pd.DataFrame):
        raise DataError(f"{csv_path}: query {query!r} does not select rows")
    if kept.empty:
        raise DataError(f"{csv_path}: query {query!r} matches none of its {len(df)} rows")
    return kept.reset_index(drop=True)


def _check_files(paths: pd.Series, root: Path) -> tuple[pd.Series, pd.Series]:
    """(exists, escapes) per path. The real path is resolved once per folder, and per file only for symbolic
    links, so that no link (to a file or a folder) can lead out of the root; nothing per file is kept."""
    root_s = os.fspath(root)
    real_root = os.path.realpath(root_s)

    def inside(p: str) -> bool:
        real = os.path.realpath(p)
        return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)

    folder_inside: dict[str, bool] = {}
    exists, escapes = [], []
    for p in paths:
        full = os.path.join(root_s, p)  # as the dataset opens it
        folder = os.path.dirname(full)
        if folder not in folder_inside:
            folder_inside[folder] = inside(folder)
        escapes.append(not folder_inside[folder] or (os.path.islink(full) and not inside(full)))
        exists.append(os.path.isfile(full))
    return pd.Series(exists, index=paths.index), pd.Series(escapes, index=paths.index)


def _is_safe_relative(path: str) -> bool:
    """True for a relative path that does not climb out of its root (``a/../b`` is fine, ``../b`` is not)."""
    if os.path.isabs(path) or path.startswith(("/", "\\")) or (len(path) > 1 and path[1] == ":"):
        return False
    norm = os.path.normpath(path.replace("\\", "/"))
    return norm != ".." and not norm.startswith("../") and norm != "."
