from types import SimpleNamespace

import pandas as pd
import pytest

from deepfake_lightning.data import DataError, DeepfakeDataModule
from deepfake_lightning.data.dataset import BadImageError
from tests.helpers import make_kaggle_root


def _dm(root, **kw):
    kw = {"img_size": 32, "batch_size": 8, "num_workers": 0, "test_v1_csv": "test_v1.csv", **kw}
    dm = DeepfakeDataModule(root=str(root), **kw)
    dm.setup("fit")
    return dm


def test_split_sizes_stratification_and_determinism(tmp_path):
    root = make_kaggle_root(tmp_path, n_train=200, groups=False)
    dm = _dm(root, val_fraction=0.2)
    train, val = dm.indexes["train"], dm.indexes["val"]
    assert (len(train), len(val)) == (160, 40)
    assert set(train["path"]).isdisjoint(val["path"])
    assert val["label"].mean() == pytest.approx(0.5) and train["label"].mean() == pytest.approx(0.5)
    again = _dm(root, val_fraction=0.2)
    assert again.indexes["val"]["path"].tolist() == val["path"].tolist()
    other = _dm(root, val_fraction=0.2, split_seed=7)
    assert other.indexes["val"]["path"].tolist() != val["path"].tolist()


def test_group_aware_split_keeps_pairs_together(kaggle_root):
    dm = _dm(kaggle_root, group_column="group", val_fraction=0.25)
    train_groups, val_groups = set(dm.indexes["train"]["group"]), set(dm.indexes["val"]["group"])
    assert train_groups.isdisjoint(val_groups)
    assert len(dm.indexes["val"]) == 10  # 4 folds of 20 pairs: 5 pairs = 10 images
    assert dm.indexes["val"]["label"].mean() == pytest.approx(0.5)


def test_split_file_is_written_and_reused(kaggle_root, tmp_path):
    dm = DeepfakeDataModule(root=str(kaggle_root), img_size=32, num_workers=0, split_seed=3)
    dm.trainer = SimpleNamespace(log_dir=str(tmp_path), is_global_zero=True)
    dm.setup("fit")
    saved = pd.read_csv(tmp_path / "split.csv")
    assert sorted(saved.loc[saved["split"] == "val", "path"]) == sorted(dm.indexes["val"]["path"])
    reused = _dm(kaggle_root, split_seed=99, split_file=str(tmp_path / "split.csv"))
    assert reused.indexes["val"]["path"].tolist() == dm.indexes["val"]["path"].tolist()
    saved.iloc[1:].to_csv(tmp_path / "partial.csv", index=False)
    with pytest.raises(DataError, match="1 training image"):
        _dm(kaggle_root, split_file=str(tmp_path / "partial.csv"))


def test_missing_root_says_how_to_get_data_and_demo(tmp_path):
    with pytest.raises(FileNotFoundError, match="(?s)does not exist.*kaggle datasets download.*configs/demo.yaml"):
        _dm(tmp_path / "nope")


def test_loaders_batches_and_labeled_test_splits(kaggle_root):
    dm = _dm(kaggle_root)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 3, 32, 32) and set(batch["label"].tolist()) <= {0.0, 1.0}
    assert dm.labeled_test_splits() == ["val", "test_v1", "test_v2"]  # `deepfake test` reports validation too
    assert [len(dl.dataset) for dl in dm.test_dataloader()] == [4, 12, 12]
    assert len(dm.predict_dataloader().dataset) == 12


def test_unlabeled_test_split_is_not_scored_but_predicted(tmp_path):
    root = make_kaggle_root(tmp_path)
    pd.read_csv(root / "test.csv")[["id"]].to_csv(root / "test.csv", index=False)  # Kaggle's real test.csv
    dm = _dm(root)
    assert dm.labeled_test_splits() == ["val", "test_v1"]
    assert dm.test_splits() == ["val", "test_v1", "test_v2"]  # served for share estimation, not scored
    assert (dm.indexes["test_v2"]["label"] == -1).all()
    assert len(dm.predict_dataloader().dataset) == 12


def _with_bad_images(tmp_path):
    root = make_kaggle_root(tmp_path, n_train=20)
    train = pd.read_csv(root / "train.csv", index_col=0)
    bad = train["file_name"].iloc[[0, 5]].tolist()
    (root / bad[0]).write_bytes(b"")
    (root / bad[1]).write_bytes(b"\xff\xd8garbage")
    return root, bad


def test_fail_policy_names_the_bad_file(tmp_path):
    root, bad = _with_bad_images(tmp_path)
    dm = _dm(root, val_fraction=0.5)

    def read_all():
        for split in ("train", "val"):
            for _ in dm.loader(split):
                pass

    with pytest.raises(BadImageError, match="cannot read image"):
        read_all()


def test_check_images_lists_every_bad_file(tmp_path):
    root, bad = _with_bad_images(tmp_path)
    with pytest.raises(DataError, match=r"2 unreadable image\(s\)") as err:
        _dm(root, check_images=True)
    assert bad[0] in str(err.value) and bad[1] in str(err.value)


def test_check_images_skip_drops_them_with_a_warning(tmp_path):
    root, bad = _with_bad_images(tmp_path)
    with pytest.warns(UserWarning, match=r"Skipping 2 unreadable image\(s\)"):
        dm = _dm(root, check_images=True, bad_images="skip")
    kept = set(dm.indexes["train"]["path"]) | set(dm.indexes["val"]["path"])
    assert len(kept) == 18 and not kept & set(bad)


def test_skip_policy_counts_skipped_images_while_loading(tmp_path):
    root, bad = _with_bad_images(tmp_path)
    dm = _dm(root, bad_images="skip", batch_size=4)

    def read_all() -> int:
        seen = 0
        for split in ("train", "val"):
            for batch in dm.loader(split):
                seen += len(dm.on_before_batch_transfer(batch, 0).get("label", []))
        return seen

    with pytest.warns(UserWarning, match="Skipped"):
        seen = read_all()
    assert dm.skipped_images == 2
    assert seen == 18  # evaluation loaders drop no partial batch: every good image arrives once
