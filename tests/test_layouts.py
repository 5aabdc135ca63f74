"""Datasets in their own layouts (data/layouts.py, data/sources.py): the demo's images written as CNNDetection,
GenImage, CIFAKE and CSV layouts read back with the same counts, labels, generators and splits; several training
datasets; named test sets; bad input."""

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deepfake_lightning.data import DeepfakeDataModule
from deepfake_lightning.data.demo import DemoSpec, build_demo_dataset
from deepfake_lightning.data.layouts import DatasetSpec, read_dataset, scan_folders
from deepfake_lightning.data.sources import sampling_weights
from deepfake_lightning.errors import DataError
from tests.helpers.layouts import LAYOUTS, demo_rows, relayout

SMALL = DemoSpec(seed=5, size=48, train_pairs=16, test_v1=12, test_v2=10)


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory) -> Path:
    return build_demo_dataset(tmp_path_factory.mktemp("small") / "demo", SMALL)


@pytest.fixture(scope="module")
def layouts(small_demo, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("layouts")
    return {kind: relayout(small_demo, kind, base / kind) for kind in LAYOUTS}


def _dm(root, **kw) -> DeepfakeDataModule:
    extra = {"path_column": "filepath", "label_column": "is_fake", "generator_column": "model"}
    kw = {**(extra if str(root).endswith(".csv") else {}), **kw}
    return DeepfakeDataModule(str(root), img_size=32, batch_size=8, num_workers=0, **kw)


@pytest.mark.parametrize("kind", LAYOUTS)
def test_each_layout_reads_the_same_images_labels_generators_and_splits(small_demo, layouts, kind):
    expected = demo_rows(small_demo).assign(name=lambda t: t["path"].map(lambda p: Path(p).name))
    dm = _dm(layouts[kind])
    dm.setup("fit")
    test = f"{kind}_test"  # the layout's test folder: a test set named after its dataset
    assert dm.test_splits() == ["val", test]
    got = pd.concat([dm.indexes[s].assign(part=s) for s in ("train", "val", test)], ignore_index=True)
    got["name"] = got["path"].map(lambda p: Path(p).name)
    merged = expected.merge(got, on="name", suffixes=("", "_got"), validate="one_to_one")
    assert len(merged) == len(expected) == 32 + 12
    assert (merged["label"] == merged["label_got"]).all()
    if kind == "cifake":  # CIFAKE's layout has no folder above its class folders: no generator
        assert (merged["generator_got"] == "").all()
    else:
        assert (merged["generator"] == merged["generator_got"]).all()
    assert ((merged["split"] == "test") == (merged["part"] == test)).all()
    assert len(dm.indexes["val"]) == 4  # no val folder: the seeded 10 % split of the 32 training images
    batch = next(iter(dm.loader(test)))  # and the images open (a CSV given as the root: paths from its folder)
    assert batch["image"].shape == (8, 3, 32, 32) and batch["label"].tolist() == dm.indexes[test]["label"][:8].tolist()


def test_generator_from_the_folders_above_the_class_folder(tmp_path):
    for rel in (
        "imagenet_ai_0419_sdv4/train/ai/x.png",  # GenImage
        "imagenet_ai_0419_sdv4/train/nature/y.png",
        "progan/car/1_fake/z.png",  # ForenSynths
        "progan/car/0_real/w.png",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    index = scan_folders(tmp_path).set_index("path")
    assert index.loc["imagenet_ai_0419_sdv4/train/ai/x.png"].tolist() == [1, "imagenet_ai_0419_sdv4", "train"]
    assert index.loc["imagenet_ai_0419_sdv4/train/nature/y.png"].tolist() == [0, "imagenet_ai_0419_sdv4", "train"]
    assert index.loc["progan/car/1_fake/z.png"].tolist() == [1, "progan", ""]
    assert index.loc["progan/car/0_real/w.png"].tolist() == [0, "progan", ""]


def test_label_dirs_replace_the_vocabulary_and_a_linked_folder_is_followed(tmp_path):
    other = tmp_path / "other_disk"
    for rel in ("photos/a.jpg", "photos/b.jpg", "generated/c.jpg", "generated/d.jpg"):
        (other / rel).parent.mkdir(parents=True, exist_ok=True)
        (other / rel).write_bytes(b"x")
    root = tmp_path / "root"
    root.mkdir()
    (root / "mine").symlink_to(other, target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)  # a link back up: not walked forever
    index = scan_folders(root, {"photos": 0, "Generated": 1})
    assert dict(zip(index["path"], index["label"], strict=True)) == {
        "mine/generated/c.jpg": 1,
        "mine/generated/d.jpg": 1,
        "mine/photos/a.jpg": 0,
        "mine/photos/b.jpg": 0,
    }
    assert set(index["generator"]) == {"mine"}


def test_auto_says_which_layout_it_chose_and_why(small_demo, layouts, caplog):
    assert read_dataset(DatasetSpec(str(small_demo))).reason == "found train.csv"
    assert read_dataset(DatasetSpec(str(small_demo))).layout == "kaggle"
    assert read_dataset(DatasetSpec(str(layouts["cifake"]))).layout == "folders"
    csv = read_dataset(DatasetSpec(str(layouts["csv"]), path_column="filepath", label_column="is_fake"))
    assert (csv.layout, csv.reason) == ("csv", "labels.csv is a CSV file")
    line = read_dataset(DatasetSpec(str(layouts["cifake"]))).describe()
    assert line.startswith("cifake: folders layout (no train.csv: class folders): 44 images (22 human, 22 AI")
    assert "splits test 12, train 32" in line


def test_several_training_datasets_keep_their_provenance_and_are_sampled_as_weighted(layouts, tmp_path):
    dm = _dm(
        layouts["cifake"],
        train_sets=[{"root": str(layouts["genimage"]), "name": "gen", "weight": 2.0}],
        test_sets={"cnn": str(layouts["cnndetection"])},
        balance="dataset",
    )
    dm.setup("fit")
    train = dm.indexes["train"]
    assert train.groupby("dataset").size().to_dict() == {"cifake": 28, "gen": 28}
    assert dm.test_splits() == ["val", "cifake_test", "gen_test", "cnn"]
    assert Path(train.loc[train["dataset"] == "gen", "path"].iloc[0]).is_absolute()  # other datasets: absolute ids
    w = sampling_weights(train, {"cifake": 1.0, "gen": 2.0}, "dataset")
    assert w[train["dataset"] == "gen"].sum() == pytest.approx(2 / 3)  # shares follow the weights, not the sizes
    w = sampling_weights(train, {"cifake": 1.0, "gen": 1.0}, "generator")
    ai_gen = train[(train["dataset"] == "gen") & (train["label"] == 1)].assign(
        w=w[(train["dataset"] == "gen") & (train["label"] == 1)]
    )
    shares = ai_gen.groupby("generator")["w"].sum()
    assert np.allclose(shares, shares.iloc[0])  # each generator's AI images: an equal share
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 3, 32, 32)


def test_split_file_records_the_dataset_of_every_image_and_is_reused(layouts, tmp_path):
    from deepfake_lightning.cli import cli_main

    cli_main(
        [
            "fit",
            f"--data.root={layouts['cifake']}",
            f"--data.train_sets=[{layouts['genimage']}]",
            "--data.img_size=32",
            "--data.num_workers=0",
            "--model.backbone=test_resnet",
            "--model.pretrained=false",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=1",
            "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    split = pd.read_csv(tmp_path / "lightning_logs/version_0/split.csv")
    assert split.groupby(["dataset", "split"]).size().to_dict() == {
        ("cifake", "train"): 28,
        ("cifake", "val"): 4,
        ("genimage", "train"): 28,
        ("genimage", "val"): 4,
    }
    dm = _dm(
        layouts["cifake"],
        train_sets=[str(layouts["genimage"])],
        split_file=str(tmp_path / "lightning_logs/version_0/split.csv"),
        split_seed=7,
    )
    dm.setup("fit")
    assert sorted(dm.indexes["val"]["path"]) == sorted(split.loc[split["split"] == "val", "path"])
    # evaluating the model rebuilds its validation split from its stored data settings (train_sets included)
    cli = cli_main(
        [
            "validate",
            f"--data.root={layouts['cifake']}",
            f"--ckpt_path={tmp_path / 'lightning_logs/version_0/checkpoints/last.ckpt'}",
            "--data.num_workers=0",
            "--trainer.enable_progress_bar=false",
        ]
    )
    assert sorted(cli.datamodule.indexes["val"]["path"]) == sorted(split.loc[split["split"] == "val", "path"])


@pytest.mark.parametrize(
    ("make", "kw", "message"),
    [
        (["a/x.jpg", "b/y.jpg"], {}, r"no class folders found \(folder names 0_real/1_fake/ai/fake/human/nature/real"),
        (["REAL/x.jpg", "FAKE/"], {}, r"FAKE: class folder holds no images; add its images or remove it"),
        (["fake/real/x.jpg", "real/y.jpg"], {}, r"fake/real: a human class folder inside the AI class folder fake"),
        (["real/ai/x.jpg", "fake/y.jpg"], {}, r"real/ai: an AI class folder inside the human class folder real"),
        (
            ["labels.csv", "a/x.jpg"],
            {},
            r"no class folders found .* \(it holds labels\.csv: --data\.root .*labels\.csv\)",
        ),
        (["x.jpg", "real/y.jpg", "fake/z.jpg"], {}, r"x\.jpg: 1 image\(s\) under .* are in no class folder"),
        (["real/y.jpg", "fake/z.jpg"], {"layout": "folder"}, r"unknown layout 'folder' \(did you mean folders\?\)"),
        (["real/y.jpg", "real/z.jpg"], {}, r"no AI images among its 2"),
        (["real/y.jpg", "fake/z.jpg"], {"label_dirs": {"real": 0, "fake": 0}}, r"names folders of one class only"),
    ],
)
def test_bad_layouts_are_one_clear_line(tmp_path, make, kw, message):
    for rel in make:
        if rel.endswith("/"):
            (tmp_path / rel).mkdir(parents=True)
            continue
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    with pytest.raises(DataError, match=message):
        DeepfakeDataModule(str(tmp_path), num_workers=0, **kw).setup("fit")


def test_files_that_are_not_images_are_named_in_one_warning(layouts, tmp_path):
    root = tmp_path / "c"
    shutil.copytree(layouts["cifake"], root, copy_function=os.link)
    (root / "train/REAL/notes.txt").write_text("x")
    dm = _dm(root)
    with pytest.warns(UserWarning, match=r"1 file\(s\) in class folders .* not images .* e\.g\. train/REAL/notes\.txt"):
        dm.setup("fit")
    assert not dm.indexes["train"]["path"].str.endswith(".txt").any()


def test_a_test_set_name_given_twice_and_bad_test_set_keys(layouts, capsys):
    from deepfake_lightning.cli import main

    for bad, message in (
        (["--data.test_sets", "{x: a, x: b}"], "--data.test_sets: 'x' is given twice in one mapping (line 1)"),
        (
            ["--data.layout", "folder"],
            "unknown layout 'folder' (did you mean folders?); choose one of auto, kaggle, folders, csv",
        ),
    ):
        with pytest.raises(SystemExit) as e:
            main(["data", "scan", str(layouts["cifake"]), *bad])
        assert e.value.code == 2 and capsys.readouterr().err.strip().endswith(message)
    with pytest.raises(DataError, match=r"test set name 'cifake_test' is given twice: .*cifake \(test split\) and"):
        _dm(layouts["cifake"], test_sets={"cifake_test": str(layouts["genimage"])}).setup("fit")
    with pytest.raises(DataError, match=r"data.test_sets.x: unknown key 'rot' \(did you mean 'root'\?\)"):
        _dm(layouts["cifake"], test_sets={"x": {"rot": "y"}}).setup("fit")
    with pytest.raises(DataError, match=r"data.test_sets.x.split: .* has no val split \(its splits: test, train\)"):
        _dm(layouts["cifake"], test_sets={"x": {"root": str(layouts["cnndetection"]), "split": "val"}}).setup("fit")
    with pytest.raises(DataError, match=r"data.test_sets.train: 'train' names a split of the training data"):
        _dm(layouts["cifake"], test_sets={"train": str(layouts["genimage"])}).setup("fit")


def test_a_kaggle_layout_without_its_test_csv_says_how_to_go_on(small_demo, tmp_path):
    root = tmp_path / "mine"
    shutil.copytree(small_demo, root, copy_function=os.link)
    (root / "test.csv").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"data.test_v2_csv: .*test\.csv does not exist; pass --data.test_v2_csv null"
    ):
        _dm(root).setup("fit")
    dm = _dm(root, test_v2_csv=None)
    dm.setup("fit")
    assert dm.test_splits() == ["val"]


@pytest.mark.parametrize("kind", ["cnndetection", "genimage", "csv"])
def test_the_timeline_puts_a_layouts_images_in_their_generators_windows(layouts, kind):
    """`deepfake timeline` reads the generators a folder layout (or a CSV's column) gives, as the demo's column."""
    from deepfake_lightning.timeline import assign_windows

    dm = _dm(layouts[kind])
    dm.setup("test")
    rows = dm.manifest_rows()[["file", "label", "generator"]]
    windows = [["tconv"], ["nearest_smooth"], ["bilinear_sharpen"]]
    out = assign_windows(rows, windows, eval_share=0.3, seed=0)
    ai = out[out["label"] == 1]
    assert len(ai) == 16 + 6 and set(ai["generator"]) == {"tconv", "nearest_smooth", "bilinear_sharpen"}
    assert (ai["window"] == ai["generator"].map({"tconv": 0, "nearest_smooth": 1, "bilinear_sharpen": 2})).all()
    assert sorted(out.loc[out["label"] == 0, "window"].value_counts().tolist()) == [7, 7, 8]  # 22 shared out
