"""Helpers shared by the tests (imported, not fixtures): the configs, generated datasets, the demo command line, a
run's best checkpoint, a copy of a run, and a data module builder."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"


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


# What every command of a test passes: no loader processes, no progress bar drawn into captured output.
QUIET = ["--data.num_workers=0", "--trainer.enable_progress_bar=false"]


def demo_command(
    subcommand: str, root: Path, *extra: str, ckpt: Path | None = None, out: Path | None = None, run: Path | None = None
) -> list[str]:
    """``deepfake SUBCOMMAND --config configs/demo.yaml`` on the demo data at ``root``, quiet; with the checkpoint
    ``ckpt``, the output root ``out`` and ``run``'s saved train/val split where given, then ``extra``."""
    args = [subcommand, "--config", str(CONFIGS / "demo.yaml"), f"--data.root={root}", *QUIET]
    if out is not None:
        args.append(f"--trainer.default_root_dir={out}")
    if run is not None:
        args.append(f"--data.split_file={run / 'split.csv'}")
    if ckpt is not None:
        args.append(f"--ckpt_path={ckpt}")
    return args + list(extra)


def best_checkpoint(run: Path) -> Path:
    """The ``best-*.ckpt`` that ModelCheckpoint kept in a training run."""
    return next((run / "checkpoints").glob("best-*.ckpt"))


def copy_run(run: Path, dest: Path) -> Path:
    """A copy of a training run (config, split, checkpoints, metrics; not its evaluations), so that a test that
    evaluates it (``RUN/eval/...``, results recorded in the checkpoint) leaves the session's shared run alone."""
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("eval"))
    return dest


def datamodule(root: Path, stage: str | None = "fit", **settings):
    """A ``DeepfakeDataModule`` on ``root`` with no loader processes (``settings`` win), set up for ``stage``."""
    from deepfake_lightning.data import DeepfakeDataModule

    dm = DeepfakeDataModule(root=str(root), **({"num_workers": 0} | settings))
    if stage is not None:
        dm.setup(stage)
    return dm
