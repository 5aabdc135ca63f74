"""The demo's images written in the layouts public datasets are published in (CNNDetection/ForenSynths, GenImage,
CIFAKE, a CSV), by hard links."""

import os
from pathlib import Path

import pandas as pd

LAYOUTS = ("cnndetection", "genimage", "cifake", "csv")
CSV_COLUMNS = {"path_column": "filepath", "label_column": "is_fake", "generator_column": "model"}


def demo_rows(demo: Path) -> pd.DataFrame:
    """The demo's train and test_v1 images with their labels, generators and splits (human train images take their
    pair's generator, as a folder layout files them; test_v1's human images are ``photos``)."""
    train = pd.read_csv(demo / "train.csv").rename(columns={"file_name": "path"})
    fake_of = train[train["label"] == 1].set_index("group")["generator"]
    train["generator"] = train["group"].map(fake_of)
    test = pd.read_csv(demo / "test_v1.csv").rename(columns={"id": "path"})
    test.loc[test["label"] == 0, "generator"] = "photos"
    rows = pd.concat([train.assign(split="train"), test.assign(split="test")], ignore_index=True)
    return rows[["path", "label", "generator", "split"]]


def relayout(demo: Path, kind: str, out: Path) -> Path:
    """Hard-links the demo's train and test_v1 images into a public dataset's layout; returns its root (or CSV)."""
    rows = demo_rows(demo)
    listed = []
    for path, label, gen, split in rows.itertuples(index=False):
        name = Path(path).name
        target = {
            "cnndetection": f"{split}/{gen}/{'1_fake' if label else '0_real'}/{name}",
            "genimage": f"{gen}/{split}/{'ai' if label else 'nature'}/{name}",
            "cifake": f"{split}/{'FAKE' if label else 'REAL'}/{name}",
            "csv": f"images/{name}",
        }[kind]
        (out / target).parent.mkdir(parents=True, exist_ok=True)
        os.link(demo / path, out / target)
        listed.append((target, "FAKE" if label else "REAL", gen, split))
    if kind != "csv":
        return out
    table = pd.DataFrame(listed, columns=["filepath", "is_fake", "model", "split"])
    table.to_csv(out / "labels.csv", index=False)
    return out / "labels.csv"
