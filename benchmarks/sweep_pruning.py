"""Benchmark: the demo sweep (configs/sweep_demo.yaml, 8 trials) with and without median pruning.

    python benchmarks/sweep_pruning.py

Prints wall time, total epochs trained and the best objective for each, and writes
benchmarks/results/sweep_pruning.csv. Each variant is its own study in a temporary sweeps folder.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import pandas as pd
from _results import publish  # benchmarks/_results.py, beside this script
from _sweeps import timed_sweep

from deepfake_lightning.sweep import load_sweep

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, pruner in (("pruned", None), ("unpruned", {"type": "none"})):
            spec = replace(load_sweep(REPO / "configs" / "sweep_demo.yaml", study_name=f"demo_{name}"), out_dir=tmp)
            if pruner:
                spec.pruner = pruner
            rows.append({"variant": name, **timed_sweep(spec)})
    table = pd.DataFrame(rows)
    publish(table, "sweep_pruning")


if __name__ == "__main__":
    main()
