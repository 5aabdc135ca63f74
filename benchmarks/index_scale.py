"""Benchmark: data-module set-up time and memory for a Kaggle-size index (80,000 rows) and 10x that.

Writes train.csv / test.csv in the Kaggle layout with that many (empty) image files, then times
``DeepfakeDataModule.setup`` (CSV parsing, validation, path-safety and file-existence checks, stratified split,
split.csv) and reports the peak Python memory it allocated (tracemalloc).

    python benchmarks/index_scale.py [--rows 80000 800000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
from _results import publish  # benchmarks/_results.py, beside this script

from deepfake_lightning.data import DeepfakeDataModule


def make_root(root: Path, rows: int) -> None:
    (root / "train_data").mkdir(parents=True)
    (root / "test_data_v2").mkdir()
    names = [f"train_data/{i:032x}.jpg" for i in range(rows)]
    for n in names:
        (root / n).touch()
    pd.DataFrame({"file_name": names, "label": [i % 2 for i in range(rows)]}).to_csv(root / "train.csv")
    tests = [f"test_data_v2/{i:032x}.jpg" for i in range(rows // 14)]
    for n in tests:
        (root / n).touch()
    pd.DataFrame({"id": tests}).to_csv(root / "test.csv", index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[80_000])
    args = parser.parse_args()
    out_rows = []
    for rows in args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "data"
            make_root(root, rows)
            dm = DeepfakeDataModule(str(root), num_workers=0)
            dm.trainer = SimpleNamespace(log_dir=tmp, is_global_zero=True)
            tracemalloc.start()
            start = time.perf_counter()
            dm.setup("fit")
            seconds = time.perf_counter() - start
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            index_mb = sum(df.memory_usage(deep=True).sum() for df in dm.indexes.values()) / 2**20
            out_rows.append(
                {
                    "train_rows": rows,
                    "setup_s": round(seconds, 2),
                    "peak_alloc_mb": round(peak / 2**20, 1),
                    "index_mb": round(index_mb, 1),
                }
            )
    table = pd.DataFrame(out_rows)
    publish(table, "index_scale")


if __name__ == "__main__":
    main()
