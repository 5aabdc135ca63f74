import hashlib
import json

import pandas as pd
import pytest

from deepfake_lightning.data import DeepfakeDataModule
from deepfake_lightning.data.demo import DemoSpec, build_demo_dataset

SMALL = DemoSpec(seed=3, size=48, train_pairs=12, test_v1=10, test_v2=10)


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_build_is_deterministic_for_a_seed(tmp_path):
    a = build_demo_dataset(tmp_path / "a", SMALL)
    b = build_demo_dataset(tmp_path / "b", SMALL)
    c = build_demo_dataset(tmp_path / "c", DemoSpec(**{**SMALL.__dict__, "seed": 4}))
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_layout_matches_kaggle_and_loads(tmp_path):
    root = build_demo_dataset(tmp_path / "d", SMALL)
    raw = pd.read_csv(root / "train.csv")
    assert list(raw.columns) == ["Unnamed: 0", "file_name", "label", "group", "generator"]  # unnamed index first
    assert len(raw) == 24 and raw["label"].sum() == 12
    pairs = raw.groupby("group")["label"].agg(lambda v: tuple(sorted(v)))
    assert len(pairs) == 12 and set(pairs) == {(0, 1)}  # each pair: a photo and its fake
    assert ((raw["generator"] == "real") == (raw["label"] == 0)).all()  # the generator column names each fake's
    assert set(raw.loc[raw["label"] == 1, "generator"]) == {"tconv", "nearest_smooth", "bilinear_sharpen"}
    v1, v2 = pd.read_csv(root / "test_v1.csv"), pd.read_csv(root / "test.csv")
    assert ((v1["generator"] == "real") == (v1["label"] == 0)).all()
    assert set(v2.loc[v2["label"] == 1, "generator"]) == {"subpixel_texture"}  # test_v2: the held-out generator
    dm = DeepfakeDataModule(str(root), test_v1_csv="test_v1.csv", group_column="group", img_size=32, num_workers=0)
    dm.setup("fit")
    assert dm.labeled_test_splits() == ["val", "test_v1", "test_v2"]
    assert pd.read_csv(root / "test.csv")["id"].str.startswith("test_data_v2/").all()


def test_default_test_v2_has_another_ai_share(demo_root):
    v1, v2 = pd.read_csv(demo_root / "test_v1.csv"), pd.read_csv(demo_root / "test.csv")
    assert v1["label"].mean() == pytest.approx(0.5)
    assert v2["label"].mean() == pytest.approx(0.3)


def test_rebuilds_on_spec_change_and_never_overwrites_user_data(tmp_path):
    root = build_demo_dataset(tmp_path / "d", SMALL)
    stamp = (root / "train.csv").stat().st_mtime_ns
    build_demo_dataset(root, SMALL)  # same spec: reused
    assert (root / "train.csv").stat().st_mtime_ns == stamp
    build_demo_dataset(root, DemoSpec(**{**SMALL.__dict__, "train_pairs": 6}))
    assert len(pd.read_csv(root / "train.csv")) == 12
    assert json.loads((root / "demo.json").read_text())["train_pairs"] == 6
    user = tmp_path / "mine"
    user.mkdir()
    (user / "train.csv").write_text("precious")
    with pytest.raises(FileExistsError, match="not a demo dataset"):
        build_demo_dataset(user, SMALL)
    assert (user / "train.csv").read_text() == "precious"
