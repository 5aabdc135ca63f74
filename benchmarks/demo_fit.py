"""Benchmark: `deepfake fit --config configs/demo.yaml` from scratch, as a new user runs it.

Measures wall time including the demo-data build (fresh data root), then evaluates the best checkpoint with
`deepfake test` and reports val/test_v1/test_v2 AUROC. With --aug, repeats the fit for several
`data.aug_strength` values to show what augmentation does on the shifted test_v2.

    python benchmarks/demo_fit.py [--aug 0 0.5 1] [--out benchmarks/results/demo_fit.csv]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from _results import publish  # benchmarks/_results.py, beside this script

REPO = Path(__file__).resolve().parents[1]


def run(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        ["deepfake", *args, "--trainer.enable_progress_bar=false"],
        cwd=cwd,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def one_fit(aug: float | None, work: Path, shared_data: Path | None) -> dict:
    data = shared_data or work / "data" / "demo"
    extra = [f"--data.root={data}"] + ([f"--data.aug_strength={aug}"] if aug is not None else [])
    fit_s = run(["fit", "--config", str(REPO / "configs" / "demo.yaml"), *extra], work)
    runs = sorted((work / "lightning_logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    fit_dir = runs[-1]
    best = next((fit_dir / "checkpoints").glob("best-*.ckpt"))
    val = json.loads((fit_dir / "metrics.json").read_text())
    run(
        [
            "test",
            "--config",
            str(REPO / "configs" / "demo.yaml"),
            *extra,
            f"--ckpt_path={best}",
            f"--data.split_file={fit_dir / 'split.csv'}",
        ],
        work,
    )
    test = json.loads((fit_dir / "eval" / f"test_{best.stem}" / "metrics.json").read_text())  # the run's evaluation
    return {
        "aug_strength": aug if aug is not None else "config",
        "fit_wall_s": round(fit_s, 1),
        "best_ckpt": best.name,
        "val_auroc_last": round(val["val/auroc"], 4),
        "test_v1_auroc": round(test["test/test_v1/auroc"], 4),
        "test_v2_auroc": round(test["test/test_v2/auroc"], 4),
        "test_v2_acc_ai": round(test["test/test_v2/acc_ai"], 4),
        "test_v2_acc_human": round(test["test/test_v2/acc_human"], 4),
        "temperature": round(val["calibration/temperature"], 4),
        "threshold_f1": round(val["calibration/threshold"], 4),
        "val_ece_before": round(val["val/ece_before"], 4),
        "val_ece_after": round(val["val/ece"], 4),
        "test_v1_ece_before": round(test["test/test_v1/ece_before"], 4),
        "test_v1_ece_after": round(test["test/test_v1/ece"], 4),
        "test_v2_ece_before": round(test["test/test_v2/ece_before"], 4),
        "test_v2_ece_after": round(test["test/test_v2/ece"], 4),
        "test_v2_ai_share_em": round(test["test/test_v2/ai_share_em"], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--aug", type=float, nargs="*", help="aug_strength values to compare (default: the config's)")
    parser.add_argument("--out", type=Path, default=None, help="CSV (default: benchmarks/results/demo_fit.csv)")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows.append(one_fit(None, work, None))  # first run builds the demo data: its time includes the build
        rows[0]["includes_data_build"] = True
        for aug in args.aug or []:
            rows.append(one_fit(aug, work, work / "data" / "demo") | {"includes_data_build": False})
    table = pd.DataFrame(rows)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, python {sys.version.split()[0]}"
    )
    publish(table, "demo_fit", args.out, transpose=True)


if __name__ == "__main__":
    main()
