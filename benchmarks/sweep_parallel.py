"""Benchmark: the demo sweep (configs/sweep_demo.yaml, 8 trials, median pruning) with 1 and with 2 workers.

    python benchmarks/sweep_parallel.py [--workers 1 2]

Prints wall time, trials per minute, pruned trials, epochs trained and the best objective for each, and writes
benchmarks/results/sweep_parallel.csv. Each variant is its own study in a temporary sweeps folder. With N workers
on a CPU machine each trial gets cores/N threads; on a GPU node each worker gets its own GPU.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import pandas as pd
from _results import publish  # benchmarks/_results.py, beside this script
from _sweeps import timed_sweep

from deepfake_lightning.sweep import load_sweep

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    os.chdir(REPO)  # the sweep file's base config and the demo data root are relative to the project
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for workers in args.workers:
            spec = replace(
                load_sweep("configs/sweep_demo.yaml"), study_name=f"demo_w{workers}", out_dir=tmp, workers=workers
            )
            rows.append({"workers": workers, "cpus": os.cpu_count(), **timed_sweep(spec)})
    publish(pd.DataFrame(rows), "sweep_parallel")


if __name__ == "__main__":
    main()
