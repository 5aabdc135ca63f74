"""What a data module trains on, for a checkpoint's provenance (``provenance.py``): the demo spec, or each training
dataset's path, row count, AI share and content hash; the manifest checked; and a hash of the train/val split."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from deepfake_lightning.files import file_sha256
from deepfake_lightning.provenance import KAGGLE_DATASET, split_sha256


def data_identity(hp, indexes: dict[str, pd.DataFrame], sources, root: Path, demo_spec) -> dict:
    """``{"data": ..., "split_sha256": ...}`` of a set-up data module: ``hp`` its hyperparameters, ``indexes`` its
    splits, ``sources`` what it read (``data/sources.py``), ``root`` its data root, ``demo_spec`` the demo's."""
    parts = [(p, s) for s in ("train", "val") for p in indexes[s]["path"]]
    pool = pd.concat([indexes["train"], indexes["val"]], ignore_index=True)
    if hp.demo:
        data = {"kind": "demo", "spec": demo_spec.to_json(), "root": str(root.resolve())}
    else:
        primary = sources.primary
        data = dataset_identity(primary, pool[pool["dataset"] == primary.name])
        del data["name"]  # the data root's: as before data.train_sets
        data["kaggle"] = primary.layout == "kaggle" and root.name == KAGGLE_DATASET.split("/")[1]
    if len(sources.datasets) > 1:
        data["train_sets"] = [
            dataset_identity(d, pool[pool["dataset"] == name]) | {"weight": sources.weights[name]}
            for name, d in list(sources.datasets.items())[1:]
        ]
        data["balance"] = hp.balance
    if hp.train_query:
        data["train_query"] = hp.train_query
    if hp.manifest is not None:
        data["manifest"] = {"path": str(Path(hp.manifest).resolve()), "sha256": file_sha256(hp.manifest)}
    return {"data": data, "split_sha256": split_sha256(parts)}


def dataset_identity(dataset, rows: pd.DataFrame) -> dict:
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
