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
    label_names: dict[str, int] | None = None,
    extra_columns: dict[str, str | None] | None = None,
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
        label_names: Class names also accepted as labels, lower case to 0/1 (``{"real": 0, "fake": 1}``).
        extra_columns: Output column -> CSV column, copied as they are (``{"generator": "model"}``); a None or an
            absent CSV column is left out.

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

    out["label"] = _labels(df, out, csv_path, label_column, label_names)
    if group_column:
        if df[group_column].isna().any():
            raise DataError(f"{csv_path}: empty '{group_column}' in rows:{_rows(out, df[group_column].isna())}")
        out["group"] = df[group_column].astype(str)

    for name, column in (extra_columns or {}).items():
        if column is not None and column in df.columns:
            out[name] = df[column].to_numpy()

    _check_paths(out, csv_path, path_column, root, check_files)
    return out


def _labels(df: pd.DataFrame, out: pd.DataFrame, csv_path: Path, label_column, label_names) -> pd.Series:
    """0/1 labels (or class names mapped by ``label_names``); UNLABELED without a label column."""
    if not label_column or label_column not in df.columns:
        return pd.Series(UNLABELED, index=out.index, dtype="int64")
    raw = pd.to_numeric(df[label_column], errors="coerce")
    if label_names:
        named = df[label_column].astype(str).str.strip().str.lower().map(label_names)
        raw = raw.fillna(named)
    bad = ~raw.isin([0, 1])
    if bad.any():
        raise DataError(
            f"{csv_path}: column '{label_column}' must be 0 (human) or 1 (AI-generated)"
            + (f" or a class name ({', '.join(sorted(label_names))})" if label_names else "")
            + f"; bad rows:{_rows(out, bad, df[label_column])}"
        )
    return raw.astype("int64")


def _check_paths(out: pd.DataFrame, csv_path: Path, path_column: str, root, check_files: bool) -> None:
    """No duplicates, no path leaving the root, and (``check_files``) every file there."""
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
        exists = _check_files(out["path"], Path(root))
        if not exists.all():
            raise DataError(
                f"{csv_path}: {int((~exists).sum())} image file(s) listed but not found under {os.fspath(root)!r}:"
                f"{_rows(out, ~exists)}"
            )


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


def _check_files(paths: pd.Series, root: Path) -> pd.Series:
    """Whether each path is a file under the root. A symbolic link the user placed under the root (a folder on
    another disk) is followed: the paths themselves cannot leave the root (``_is_safe_relative``)."""
    root_s = os.fspath(root)
    return pd.Series([os.path.isfile(os.path.join(root_s, p)) for p in paths], index=paths.index)


def _is_safe_relative(path: str) -> bool:
    """True for a relative path that does not climb out of its root (``a/../b`` is fine, ``../b`` is not)."""
    if os.path.isabs(path) or path.startswith(("/", "\\")) or (len(path) > 1 and path[1] == ":"):
        return False
    norm = os.path.normpath(path.replace("\\", "/"))
    return norm != ".." and not norm.startswith("../") and norm != "."
