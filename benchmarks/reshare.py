"""Benchmark: verdicts that hold up (re-share training, the stability check) on the demo.

For ``--data.aug_reshare`` 0 and 0.5 (configs/demo.yaml otherwise), one fit each, then ``deepfake test`` with
``--report.robustness true --report.stability 8``: AUROC on test_v1 under re-share chains of 1, 2 and 3 operations
(and the single operations), and, per test split, the coverage of certain verdicts and accuracy on them against all
images. Then the cost of the stability check: ``deepfake predict`` of test_v1 (400 images) plain and with
``--report.stability 8``, wall time of the whole call, best of two.

    python benchmarks/reshare.py          # about 8 minutes on 2 CPU cores
    python benchmarks/reshare.py --cost_only CKPT [--data_root DIR]   # only the stability check's cost

The leave-one-generator-out figures come from ``python benchmarks/generalization.py --variants npr npr_reshare``.
Prints the tables and writes benchmarks/results/reshare.csv and reshare_cost.csv.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
from _results import publish  # benchmarks/_results.py, beside this script

from deepfake_lightning.cli import cli_main

REPO = Path(__file__).resolve().parents[1]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def stability_cost(base: list[str], ckpt: str) -> pd.DataFrame:
    """Wall time of ``deepfake predict`` of test_v1 (400 images) plain and with ``--report.stability 8``, best of
    two whole calls each, and their ratio."""
    cost = []
    for k in (0, 8):
        times = []
        for _ in range(2):
            started = time.perf_counter()
            cli_main(
                ["predict", *base, f"--ckpt_path={ckpt}", "--data.predict_split=test_v1", f"--report.stability={k}"]
            )
            times.append(time.perf_counter() - started)
        cost.append({"stability": k, "images": 400, "wall_s": min(times)})
    cost = pd.DataFrame(cost)
    cost["ratio"] = cost["wall_s"] / cost["wall_s"].iloc[0]
    return cost


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cost_only", metavar="CKPT", help="only the stability check's cost, on this checkpoint")
    parser.add_argument("--data_root", help="the demo data (default: configs/demo.yaml's data/demo)")
    args = parser.parse_args()
    os.chdir(REPO)  # configs/demo.yaml's data root (data/demo) is relative to the project
    if args.cost_only:
        with tempfile.TemporaryDirectory() as tmp:
            base = ["--config", "configs/demo.yaml", *QUIET, f"--trainer.default_root_dir={tmp}"]
            base += [f"--data.root={args.data_root}"] if args.data_root else []
            publish(stability_cost(base, args.cost_only).round(3), "reshare_cost")
        return
    rows, cost = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for p in (0.0, 0.5):
            base = ["--config", "configs/demo.yaml", *QUIET, f"--trainer.default_root_dir={tmp}/p{p}"]
            fit = cli_main(["fit", *base, "--trainer.callbacks=[]", f"--data.aug_reshare={p}"])
            best = fit.trainer.checkpoint_callback.best_model_path
            test = cli_main(["test", *base, f"--ckpt_path={best}", "--report.robustness=true", "--report.stability=8"])
            folder = Path(test.trainer.log_dir)
            report = json.loads((folder / "report.json").read_text())
            robustness = pd.read_csv(folder / "robustness.csv")
            row = {"aug_reshare": p}
            for split in ("val", "test_v1", "test_v2"):
                r = report["splits"][split]
                st = r["stability"]
                row |= {
                    f"{split}_auroc": r["auroc"],
                    f"{split}_coverage": st["coverage"],
                    f"{split}_acc_certain": st["certain"]["acc"],
                    f"{split}_acc_all": st["all"]["acc"],
                }
            for kind, level in (("reshare_chain", 1), ("reshare_chain", 2), ("reshare_chain", 3), ("jpeg_quality", 50)):
                hit = robustness[(robustness["perturbation"] == kind) & (robustness["level"] == level)]
                row[f"test_v1_auroc_{kind}_{level:g}"] = float(hit["auroc"].iloc[0])
            rows.append(row)
            print(pd.DataFrame([row]).T.to_string(header=False), flush=True)
            if p == 0.0:  # the cost of the stability check, on this model
                cost = stability_cost(base, best)
    table = pd.DataFrame(rows)
    publish(table.round(4), "reshare", transpose=True)
    publish(cost.round(3), "reshare_cost")


if __name__ == "__main__":
    main()
