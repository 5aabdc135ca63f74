"""Benchmark: generalization to unseen generators on the demo data (configs/demo.yaml as shipped, 8 epochs).

For each variant (front-ends rgb, npr and highpass; the frozen-feature probe on the demo's tiny backbone):

* leave-one-generator-out: for each of the three training generators, train without it
  (``--data.train_query "generator != 'G'"``) and report the AUROC of G's AI images in test_v1 against test_v1's
  human images (``--report.group_by generator``);
* a fit on every generator: test_v1 and test_v2 AUROC, and test_v2 macro F1 at the validation-tuned threshold and
  at the label-shift-adapted one (``--calibration.adapt_splits [test_v2]``: EM on the unlabeled predictions).

Thresholds come from validation only; no choice here looks at test labels.

    python benchmarks/generalization.py [--variants rgb npr highpass probe] [--folds tconv nearest_smooth ...]

Prints the table and writes benchmarks/results/generalization.csv.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _results import publish  # benchmarks/_results.py, beside this script

from deepfake_lightning.calibration import thresholded_metrics
from deepfake_lightning.cli import cli_main
from deepfake_lightning.data.demo import TRAIN_GENERATORS

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "rgb": [],
    "npr": ["--model.frontend=npr"],
    "highpass": ["--model.frontend=highpass"],
    "probe": ["--model.freeze_backbone=true", "--model.optimizer.init_args.lr=0.01"],
    "npr_aug1": ["--model.frontend=npr", "--data.aug_strength=1.0"],  # NPR with the strongest blur/JPEG augmentation
    "npr_reshare": [
        "--model.frontend=npr",
        "--data.aug_reshare=0.5",
    ],  # NPR, half the images re-shared (data/reshare.py)
}


def fit_and_test(variant: str, out: Path, query: str | None = None) -> tuple[dict, dict, Path, float]:
    base = [
        "--config",
        "configs/demo.yaml",
        "--trainer.callbacks=[]",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={out}",
        *VARIANTS[variant],
    ]
    if query:
        base.append(f"--data.train_query={query}")  # test too: its split file covers the filtered rows only
    started = time.perf_counter()
    fit = cli_main(["fit", *base])
    fit_s = time.perf_counter() - started
    run = Path(fit.trainer.log_dir)
    best = fit.trainer.checkpoint_callback.best_model_path
    test = cli_main(
        [
            "test",
            *base,
            f"--ckpt_path={best}",
            f"--data.split_file={run / 'split.csv'}",
            "--report.group_by=generator",
            "--calibration.adapt_splits=[test_v2]",
        ]
    )
    folder = Path(test.trainer.log_dir)
    report = json.loads((folder / "report.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    return report, metrics, folder, fit_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["rgb", "npr", "highpass", "probe"], choices=list(VARIANTS))
    parser.add_argument("--out", default="generalization", help="results/<out>.csv")
    parser.add_argument("--folds", nargs="+", default=list(TRAIN_GENERATORS))
    args = parser.parse_args()
    os.chdir(REPO)  # configs/demo.yaml's data root (data/demo) is relative to the project
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            row: dict = {"variant": variant}
            for g in args.folds:
                report, _, _, _ = fit_and_test(variant, Path(tmp) / variant / g, f"generator != '{g}'")
                row[f"held_out_{g}"] = report["groups"]["test_v1"][g]["auroc"]
            row["held_out_mean"] = float(np.mean([row[f"held_out_{g}"] for g in args.folds]))
            report, metrics, folder, fit_s = fit_and_test(variant, Path(tmp) / variant / "all")
            v2 = pd.read_csv(folder / "predictions" / "test_v2.csv")
            adapted = metrics["test/test_v2/adapted_threshold"]
            row |= {
                "val_auroc": report["splits"]["val"]["auroc"],
                "test_v1_auroc": report["splits"]["test_v1"]["auroc"],
                "test_v2_auroc": report["splits"]["test_v2"]["auroc"],
                "test_v2_f1_macro_tuned": report["splits"]["test_v2"]["at_tuned"]["f1_macro"],
                "test_v2_f1_macro_adapted": thresholded_metrics(v2["prob_ai"], v2["label"], adapted)["f1_macro"],
                "threshold_tuned": report["threshold"],
                "threshold_adapted": adapted,
                "fit_s": round(fit_s, 1),
            }
            rows.append(row)
            print(pd.DataFrame([row]).to_string(index=False, float_format=lambda v: f"{v:.4f}"), flush=True)
    table = pd.DataFrame(rows)
    publish(table.round(4), args.out)


if __name__ == "__main__":
    main()
