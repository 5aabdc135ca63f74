"""Hostile inputs through the data module: each is a clear error or, under data.bad_images=skip, a counted skip;
never a hang or a crash in the middle of an epoch. Ends with a fuzz test of a few hundred mutated images."""

import io
import struct
import zlib

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from deepfake_lightning import DeepfakeClassifier
from deepfake_lightning.data import BadImageError, DataError, DeepfakeDataModule, load_image
from deepfake_lightning.data.dataset import collate_skip_bad
from tests.helpers import make_kaggle_root


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A small valid PNG whose header claims ``width`` x ``height`` pixels (30 GB decoded)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _jpeg(rng, size=(40, 48)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _hostile_files(rng) -> dict[str, bytes]:
    good = _jpeg(rng)
    return {
        "train_data/zero_byte.jpg": b"",
        "train_data/random_bytes.jpg": rng.integers(0, 256, 3000, dtype=np.uint8).tobytes(),
        "train_data/truncated.jpg": good[: len(good) // 3],
        "train_data/bomb.png": png_bomb(),
    }


@pytest.fixture
def hostile_root(tmp_path):
    """A Kaggle-layout dataset whose train.csv also lists the four hostile files."""
    root = make_kaggle_root(tmp_path / "data", n_train=24, n_test=4)
    hostile = _hostile_files(np.random.default_rng(1))
    for name, data in hostile.items():
        (root / name).write_bytes(data)
    train = pd.read_csv(root / "train.csv", index_col=0)
    extra = pd.DataFrame({"file_name": list(hostile), "label": [0, 1, 0, 1], "group": ["h0", "h1", "h2", "h3"]})
    pd.concat([train, extra], ignore_index=True).to_csv(root / "train.csv")
    return root, set(hostile)


def _dm(root, **kw):
    return DeepfakeDataModule(
        str(root),
        **{"img_size": 32, "batch_size": 7, "num_workers": 0, "val_fraction": 0.25, "test_v2_csv": None, **kw},
    )


def test_each_hostile_image_is_a_clear_error(hostile_root):
    root, hostile = hostile_root
    for name in hostile:
        with pytest.raises(BadImageError, match=name.split("/")[-1]):
            load_image(root / name)
    dm = _dm(root, check_images=True)
    with pytest.raises(DataError, match=r"4 unreadable image\(s\)") as e:
        dm.setup("fit")
    assert all(name in str(e.value) for name in hostile)
    assert "decompression bomb" in str(e.value).lower()


def test_hostile_images_are_counted_skips_in_a_real_fit(hostile_root):
    root, hostile = hostile_root
    dm = _dm(root, bad_images="skip", num_workers=1)
    L.seed_everything(0)
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    with pytest.warns(UserWarning, match="Skipped"):
        trainer.fit(DeepfakeClassifier("test_resnet", pretrained=False), dm)
    assert trainer.state.finished and sorted(dm.skipped_paths) == sorted(hostile)  # 21 train + 7 val: nothing dropped
    dm2 = _dm(root, bad_images="skip", check_images=True)
    with pytest.warns(UserWarning, match="Skipping 4 unreadable image"):
        dm2.setup("fit")
    assert not hostile & (set(dm2.indexes["train"]["path"]) | set(dm2.indexes["val"]["path"]))


@pytest.mark.parametrize(
    ("csv", "outcome"),
    [
        (b"\xef\xbb\xbf,file_name,label,extra\r\n{rows}", "ok"),  # byte-order mark, extra column, CRLF
        (b",file_name,label\n{rows}0,train_data/a.jpg,\n", r"line \d+: 'train_data/a\.jpg' \(nan\)"),  # NaN label
        (b",file_name,label\n{rows}0,../outside.jpg,1\n", r"stay inside the data root"),
        (b",file_name,label\n{rows}0,/etc/hostname,1\n", r"stay inside the data root"),
        (b",file_name,label\n{rows}0,train_data/link.jpg,1\n", "ok"),  # a link the user placed: followed
    ],
)
def test_hostile_csvs_through_the_data_module(tmp_path, csv, outcome):
    root = tmp_path / "data"
    (root / "train_data").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = b""
    for i in range(8):
        (root / f"train_data/{i}.jpg").write_bytes(_jpeg(rng))
        rows += f"{i},train_data/{i}.jpg,{i % 2}".encode() + (b",x\r\n" if b"\r\n" in csv else b"\n")
    (root / "train_data/a.jpg").write_bytes(_jpeg(rng))
    (tmp_path / "outside.jpg").write_bytes(_jpeg(rng))
    (root / "train_data/link.jpg").symlink_to(tmp_path / "outside.jpg")
    (root / "train.csv").write_bytes(csv.replace(b"{rows}", rows))
    dm = DeepfakeDataModule(str(root), img_size=32, num_workers=0, val_fraction=0.25, test_v2_csv=None)
    if outcome == "ok":
        dm.setup("fit")
        assert len(dm.indexes["train"]) + len(dm.indexes["val"]) == 8 + (b"link.jpg" in csv)
    else:
        with pytest.raises(DataError, match=r"(?s)train\.csv.*" + outcome):
            dm.setup("fit")


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    kind = rng.integers(4)
    if kind == 0:  # flip a few bytes anywhere, headers included
        for i in rng.integers(0, len(b), rng.integers(1, 20)):
            b[i] = int(rng.integers(256))
    elif kind == 1:  # truncate
        b = b[: rng.integers(1, len(b))]
    elif kind == 2:  # insert garbage
        at = int(rng.integers(len(b)))
        b[at:at] = rng.integers(0, 256, rng.integers(1, 200), dtype=np.uint8).tobytes()
    else:  # cut a block out of the middle
        at = int(rng.integers(len(b)))
        del b[at : at + int(rng.integers(1, 400))]
    return bytes(b)


@pytest.mark.filterwarnings("ignore::UserWarning:PIL")  # PIL's notes on corrupt TIFF tags
def test_fuzz_mutated_images_load_or_fail_cleanly(tmp_path):
    rng = np.random.default_rng(2024)
    bases = {}
    for fmt in ("jpeg", "png", "webp", "gif", "bmp", "tiff"):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(buf, fmt)
        bases[fmt] = buf.getvalue()
    root = tmp_path / "fuzz"
    (root / "train_data").mkdir(parents=True)
    names = []
    for i in range(300):
        fmt = list(bases)[i % len(bases)]
        names.append(f"train_data/{i}.{fmt}")
        (root / names[-1]).write_bytes(_mutate(bases[fmt], rng))
    pd.DataFrame({"file_name": names, "label": [i % 2 for i in range(300)]}).to_csv(root / "train.csv")

    readable = set()
    for name in names:  # one by one: the only exception allowed is BadImageError naming the file
        try:
            load_image(root / name)
            readable.add(name)
        except BadImageError as e:  # one by one: a single pytest.raises could not say which file may fail
            assert name.split("/")[-1] in str(e)  # noqa: PT017
    assert 0 < len(readable) < 300

    dm = DeepfakeDataModule(str(root), img_size=32, num_workers=0, bad_images="skip", test_v2_csv=None)
    dm.setup("fit")
    seen, skipped = [], []
    for split in ("train", "val"):
        ds = dm.dataset(split)
        for batch in DataLoader(ds, batch_size=32, num_workers=2, collate_fn=collate_skip_bad):
            skipped += batch["skipped"]
            if "image" in batch:
                assert batch["image"].shape[1:] == (3, 32, 32) and torch.isfinite(batch["image"]).all()
                seen += [ds.paths[i] for i in batch["index"].tolist()]
    assert set(seen) == readable and set(skipped) == set(names) - readable and len(seen) + len(skipped) == 300


@pytest.mark.slow  # a fit's start with a loader process (about 10 s)
def test_an_unreadable_image_met_in_a_loader_worker_is_one_line_naming_it(tmp_path, capsys):
    """torch re-raises a worker's exception with the worker's traceback as its message: the command still prints
    one `deepfake: error:` line, naming the file and what to do, and exits 2."""
    from deepfake_lightning.cli import main
    from tests.helpers import CONFIGS

    root = make_kaggle_root(tmp_path / "data", n_test=4)
    bad = root / pd.read_csv(root / "train.csv")["file_name"][3]
    bad.write_bytes(bad.read_bytes()[:200])  # a truncated JPEG
    args = ["fit", "--config", str(CONFIGS / "demo.yaml"), f"--data.root={root}", "--data.demo=false"]
    args += ["--data.num_workers=1", "--data.img_size=32", "--data.batch_size=4", "--trainer.max_epochs=1"]
    args += [f"--trainer.default_root_dir={tmp_path / 'runs'}", "--trainer.enable_progress_bar=false"]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("deepfake: error:")]
    assert exit_.value.code == 2 and len(lines) == 1, err[-3000:]
    assert "Traceback" not in err and "DataLoader worker" not in err
    assert f"cannot read image {str(bad)!r}" in lines[0]
    assert "--data.bad_images skip" in lines[0] and "deepfake data scan" in lines[0]
