"""Benchmark: reading datasets in their own layouts at scale, and training on them.

``--part index``: 100,000 (empty) image files laid out in the Kaggle layout (train.csv + train_data/) and as CIFAKE
publishes them (train/REAL, train/FAKE, test/REAL, test/FAKE); files/s of ``scan_folders`` (the folder walk) and of
``DeepfakeDataModule.setup`` in each layout (index, checks, split, split.csv). ``--part fit``: the demo's train and
test_v1 images in the Kaggle layout and written as CIFAKE folders (hard links: the same files), ``deepfake fit`` for
the same epochs and batches, training images per second from the first to the last training batch (median, min and
max of runs in both orders, so that neither layout gets the warmer file cache).

    python benchmarks/layouts.py [--part index fit] [--files 100000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
from _results import publish  # benchmarks/_results.py, beside this script

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.helpers: the demo written as public layouts

from deepfake_lightning.data import DeepfakeDataModule
from deepfake_lightning.data.layouts import scan_folders


def make_kaggle(root: Path, files: int) -> None:
    (root / "train_data").mkdir(parents=True)
    names = [f"train_data/{i:032x}.jpg" for i in range(files)]
    for n in names:
        (root / n).touch()
    pd.DataFrame({"file_name": names, "label": [i % 2 for i in range(files)]}).to_csv(root / "train.csv")


def make_cifake(root: Path, files: int) -> None:
    for i in range(files):
        split = "test" if i % 6 == 0 else "train"
        folder = root / split / ("FAKE" if i % 2 else "REAL")
        if i < 12:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.jpg").touch()


def _setup_seconds(root: Path, tmp: str, **kw) -> float:
    dm = DeepfakeDataModule(str(root), num_workers=0, test_v2_csv=None, **kw)
    dm.trainer = SimpleNamespace(log_dir=tmp, is_global_zero=True)
    start = time.perf_counter()
    dm.setup("fit")
    return time.perf_counter() - start


def part_index(files: int) -> pd.DataFrame:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        kaggle, cifake = Path(tmp) / "kaggle", Path(tmp) / "cifake"
        make_kaggle(kaggle, files)
        make_cifake(cifake, files)
        start = time.perf_counter()
        n = len(scan_folders(cifake))
        scan = time.perf_counter() - start
        rows.append({"what": "scan_folders (CIFAKE layout)", "files": n, "seconds": scan})
        rows.append({"what": "setup, kaggle layout", "files": files, "seconds": _setup_seconds(kaggle, tmp)})
        rows.append({"what": "setup, folders layout", "files": files, "seconds": _setup_seconds(cifake, tmp)})
    table = pd.DataFrame(rows)
    table["files_per_s"] = (table["files"] / table["seconds"]).round(0).astype(int)
    table["seconds"] = table["seconds"].round(2)
    return table


class _Clock:
    """A callback timing the training batches (from the first batch's start to the last batch's end)."""

    def __init__(self):
        from lightning.pytorch.callbacks import Callback

        clock = self

        class Timer(Callback):
            def on_train_batch_start(self, trainer, *args):
                clock.start = clock.start or time.perf_counter()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                clock.end = time.perf_counter()
                clock.images += len(batch["label"])

        self.start, self.end, self.images, self.callback = None, None, 0, Timer()


def part_fit(epochs: int, repeats: int) -> pd.DataFrame:
    from deepfake_lightning.cli import cli_main
    from deepfake_lightning.data.demo import DemoSpec, build_demo_dataset
    from tests.helpers.layouts import relayout

    configs = Path(__file__).resolve().parents[1] / "configs"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        demo = build_demo_dataset(Path(tmp) / "demo", DemoSpec())
        cifake = relayout(demo, "cifake", Path(tmp) / "cifake")
        kaggle = ("kaggle", demo, ["--data.test_v1_csv=null", "--data.test_v2_csv=null", "--data.test_edited_csv=null"])
        folders = ("folders", cifake, [])
        for layout, root, extra in [kaggle, folders, folders, kaggle] * repeats:  # each order, for the file cache
            clock = _Clock()
            cli = cli_main(
                [
                    "--config", str(configs / "own_data.yaml"),
                    f"--data.root={root}",
                    f"--trainer.max_epochs={epochs}",
                    "--trainer.limit_val_batches=0",
                    "--trainer.enable_progress_bar=false",
                    "--trainer.enable_checkpointing=false",
                    "--trainer.logger=false",
                    "--data.num_workers=1",
                    *extra,
                ],
                run=False,
            )  # fmt: skip
            cli.trainer.callbacks.append(clock.callback)
            cli.trainer.fit(cli.model, cli.datamodule)
            seconds = clock.end - clock.start
            rows.append({"layout": layout, "train_images": len(cli.datamodule.indexes["train"]), "epochs": epochs,
                         "img_per_s": round(clock.images / seconds, 1)})  # fmt: skip
    table = pd.DataFrame(rows).groupby(["layout", "train_images", "epochs"], as_index=False)["img_per_s"]
    return table.agg(["median", "min", "max"]).rename(
        columns=lambda c: f"img_per_s_{c}" if c in ("median", "min", "max") else c
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", nargs="+", default=["index", "fit"], choices=["index", "fit"])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="fit: each layout 2 x repeats times, both orders")
    args = parser.parse_args()
    if "index" in args.part:
        publish(part_index(args.files), "layouts_index")
    if "fit" in args.part:
        publish(part_fit(args.epochs, args.repeats), "layouts_fit")


if __name__ == "__main__":
    main()
