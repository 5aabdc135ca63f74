"""Dataset manifests: one row per image (path, bytes, sha256, label, generator, split, dataset), written by
``deepfake data scan`` and checked by ``data.manifest`` before a run, so that a dataset whose download rotted or
changed is caught with every missing or changed file named, not trained on."""

from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from deepfake_lightning.errors import DataError

MANIFEST_COLUMNS = ("path", "bytes", "sha256", "label", "generator", "split", "dataset")
_LISTED = 20


def _hash_file(path: str, verify: bool) -> tuple[int, str, str]:
    """(bytes, sha256, error) of one file; ``error`` is empty when PIL can identify (and verify) the image."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return -1, "", f"cannot be read ({e.strerror})"
    error = ""
    if verify:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as im:
                im.verify()
        except Exception as e:
            error = f"not a readable image ({type(e).__name__}: {e})"
    return len(data), hashlib.sha256(data).hexdigest(), error


def hash_files(files: list[str], verify: bool = False, workers: int | None = None) -> pd.DataFrame:
    """``bytes``, ``sha256`` and ``error`` per file, read by threads (hashlib and file reads release the GIL)."""
    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda f: _hash_file(f, verify), files, chunksize=64))
    return pd.DataFrame(results, columns=["bytes", "sha256", "error"])


def build_manifest(rows: pd.DataFrame, verify: bool = True) -> pd.DataFrame:
    """The manifest of ``rows`` (a data module's :meth:`manifest_rows`), plus an ``error`` column for files that
    cannot be read as images (empty otherwise)."""
    hashed = hash_files(rows["file"].tolist(), verify=verify)
    manifest = rows.reset_index(drop=True)[["path", "label", "generator", "split", "dataset"]].copy()
    manifest.insert(1, "bytes", hashed["bytes"].to_numpy())
    manifest.insert(2, "sha256", hashed["sha256"].to_numpy())
    manifest["error"] = hashed["error"].to_numpy()
    return manifest


def check_manifest(manifest_csv: str | os.PathLike, rows: pd.DataFrame) -> int:
    """Checks the dataset ``rows`` (with ``path`` and ``file``) against a manifest: every manifest entry present
    with the same size and SHA-256, and no image missing from the manifest. Returns how many files were checked.

    Raises:
        FileNotFoundError: If the manifest is missing.
        DataError: Listing every missing, changed or unlisted file at once.
    """
    manifest_csv = Path(manifest_csv)
    if not manifest_csv.is_file():
        raise FileNotFoundError(f"data.manifest: {manifest_csv} does not exist (write one with `deepfake data scan`)")
    wanted = pd.read_csv(manifest_csv, dtype={"path": str, "sha256": str})
    missing_cols = [c for c in ("path", "bytes", "sha256") if c not in wanted.columns]
    if missing_cols:
        raise DataError(
            f"{manifest_csv}: not a manifest (no column(s) {missing_cols}); write one with `deepfake data scan`"
        )
    here = rows.set_index("path")["file"]
    problems = [f"{p}: in the manifest, not in the dataset" for p in wanted["path"] if p not in here.index]
    listed = wanted[wanted["path"].isin(here.index)].reset_index(drop=True)
    hashed = hash_files(here[listed["path"]].tolist())
    for p, want_b, want_h, got_b, got_h in zip(
        listed["path"], listed["bytes"], listed["sha256"], hashed["bytes"], hashed["sha256"], strict=True
    ):
        if got_b < 0:
            problems.append(f"{p}: missing or unreadable")
        elif got_b != want_b or got_h != want_h:
            problems.append(f"{p}: changed ({got_b} bytes, sha256 {got_h[:12]}; manifest: {want_b}, {want_h[:12]})")
    unlisted = sorted(set(here.index) - set(wanted["path"]))
    problems += [f"{p}: in the dataset, not in the manifest" for p in unlisted]
    if problems:
        more = f"\n  ... and {len(problems) - _LISTED} more" if len(problems) > _LISTED else ""
        raise DataError(
            f"{manifest_csv}: {len(problems)} file(s) differ from the manifest:\n  "
            + "\n  ".join(problems[:_LISTED])
            + more
            + "\n  Restore those files, or accept the dataset as it is now with a new manifest: deepfake data scan "
            "ROOT --out FILE"
        )
    return len(wanted)


def summary_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Images per dataset, split, generator and class (columns ``human``, ``ai``, ``images``)."""
    table = manifest.assign(cls=manifest["label"].map({0: "human", 1: "ai", -1: "unlabelled"}))
    counts = table.groupby(["dataset", "split", "generator", "cls"]).size().unstack("cls", fill_value=0)
    for c in ("human", "ai"):
        if c not in counts:
            counts[c] = 0
    counts["images"] = counts.sum(axis=1)
    return counts.reset_index().replace({"generator": {"": "-"}})


def duplicate_groups(manifest: pd.DataFrame) -> pd.DataFrame:
    """Files with the same content (SHA-256): one row per duplicated file, with how many copies and in which
    splits the copies are."""
    dup = manifest[manifest["sha256"].duplicated(keep=False) & (manifest["bytes"] >= 0)]
    return dup.sort_values(["sha256", "path"])[["sha256", "path", "split", "label"]]
