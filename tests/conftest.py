"""Shared fixtures: small Kaggle-layout datasets generated on the fly; CPU only, no network."""

import os

# Before anything imports huggingface_hub: never try the network (an offline lookup retries for ~45 s).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("PYTHONHASHSEED", "0")

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from deepfake_lightning.data.demo import DemoSpec, build_demo_dataset

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write_image(path: Path, rng: np.random.Generator, size: tuple[int, int] = (40, 48), smooth: bool = False) -> None:
    """A random RGB JPEG; ``smooth`` images are low-frequency, so a model can tell the two kinds apart."""
    h, w = size
    if smooth:
        small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        im = Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)
    else:
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, "JPEG", quality=90)


def make_kaggle_root(root: Path, n_train: int = 40, n_test: int = 12, seed: int = 0, groups: bool = True) -> Path:
    """Writes a dataset exactly in the Kaggle layout: train.csv (unnamed index, file_name, label[, group]),
    train_data/, test.csv (id) for test_v2, plus test_v1.csv (id, label) and test_data_v1/, and, as the demo has,
    test_edited.csv (id, label, mask: two originals and two images with an edited rectangle, masks as PNGs)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_train):
        label = i % 2
        f = f"train_data/{i:032x}.jpg"
        write_image(root / f, rng, smooth=bool(label))
        rows.append((f, label, f"g{i // 2}"))
    train = pd.DataFrame(rows, columns=["file_name", "label", "group"])
    if not groups:
        train = train.drop(columns="group")
    train.to_csv(root / "train.csv")
    for split, folder, csv, labeled in (
        ("v2", "test_data_v2", "test.csv", True),
        ("v1", "test_data_v1", "test_v1.csv", True),
    ):
        ids, labels = [], []
        for i in range(n_test):
            f = f"{folder}/{split}{i:030x}.jpg"
            write_image(root / f, rng, smooth=bool(i % 3 == 0))
            ids.append(f)
            labels.append(int(i % 3 == 0))
        df = pd.DataFrame({"id": ids, "label": labels}) if labeled else pd.DataFrame({"id": ids})
        df.to_csv(root / csv, index=False)
    rows = []
    for i in range(4):
        f = f"test_data_edited/e{i:031x}.jpg"
        write_image(root / f, rng)
        mask = ""
        if i % 2:
            mask = f"test_data_edited/masks/e{i:031x}.png"
            (root / mask).parent.mkdir(parents=True, exist_ok=True)
            pixels = np.zeros((40, 48), dtype=np.uint8)
            pixels[8:30, 10:40] = 255
            Image.fromarray(pixels).save(root / mask)
        rows.append((f, i % 2, mask))
    pd.DataFrame(rows, columns=["id", "label", "mask"]).to_csv(root / "test_edited.csv", index=False)
    return root


@pytest.fixture(scope="session")
def kaggle_root(tmp_path_factory) -> Path:
    """A small labelled Kaggle-layout dataset, shared read-only by the session's tests."""
    return make_kaggle_root(tmp_path_factory.mktemp("kaggle"))


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """The real demo dataset (default spec, as configs/demo.yaml builds it), built once per session."""
    root = tmp_path_factory.mktemp("demo") / "demo"
    return build_demo_dataset(root, DemoSpec())


@pytest.fixture(scope="session")
def demo_run(demo_root, tmp_path_factory) -> Path:
    """One full `deepfake fit --config configs/demo.yaml` (about 30 s), shared by the tests that need a trained,
    calibrated checkpoint. Returns the run directory (``.../lightning_logs/version_0``)."""
    from deepfake_lightning.cli import cli_main

    out = tmp_path_factory.mktemp("demo_run")
    cli_main(
        [
            "fit",
            "--config",
            str(CONFIGS / "demo.yaml"),
            f"--data.root={demo_root}",
            f"--trainer.default_root_dir={out}",
            "--data.num_workers=0",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
        ]
    )
    return out / "lightning_logs" / "version_0"


@pytest.fixture
def console():
    """What the console shows of Lightning's info lines and ours (both go through the `lightning.pytorch` logger,
    whose handler holds the stream it was created with, out of reach of capsys/capfd)."""
    import io
    import logging

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("lightning.pytorch")
    logger.addHandler(handler)
    yield stream
    logger.removeHandler(handler)


@pytest.fixture(scope="session")
def postgres_url():
    """A throw-away PostgreSQL server on loopback (Debian's `postgresql` package, which .ci/run installs),
    run as the `postgres` user; yields an SQLAlchemy URL of an empty database."""
    import glob
    import shutil
    import socket
    import subprocess
    import tempfile

    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not bins or os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs Debian's postgresql package and root (to run the server as the postgres user)")
    bindir = Path(bins[-1]).parent
    data = Path(tempfile.mkdtemp(prefix="deepfake-pg-"))
    shutil.chown(data, "postgres", "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def as_postgres(*cmd):
        subprocess.run(["runuser", "-u", "postgres", "--", *map(str, cmd)], check=True, capture_output=True)

    as_postgres(bindir / "initdb", "-D", data / "db", "-A", "trust", "-U", "postgres")
    as_postgres(
        bindir / "pg_ctl",
        "-D",
        data / "db",
        "-l",
        data / "log",
        "-w",
        "start",
        "-o",
        f"-p {port} -h 127.0.0.1 -k {data}",
    )
    try:
        as_postgres(bindir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "optuna")
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(bindir / "pg_ctl"),
                "-D",
                str(data / "db"),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
            capture_output=True,
        )
        shutil.rmtree(data, ignore_errors=True)
