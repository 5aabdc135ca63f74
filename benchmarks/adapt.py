"""Benchmark: ``deepfake adapt`` on the demo's unseen generator.

The demo's detector (``configs/demo.yaml``) is trained on three simulated generators; test_v2's AI images come from
a fourth (``subpixel_texture``) it never saw. Adapt it with 10, 20 and 50 of those images, with and without replay
(defaults otherwise: 40 steps of 32 images, lr 1e-4, 30 % of the new images held out), and report the held-out new
images' AUROC against the validation human images, validation and test_v1 AUROC before/after (forgetting), and the
fine-tuning time.

    python benchmarks/adapt.py [--ckpt CKPT] [--data_root data/demo]

Without ``--ckpt`` it trains the demo detector first (about a minute). Prints the table and writes
benchmarks/results/adapt.csv.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from _results import publish  # benchmarks/_results.py, beside this script

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default=None)
    parser.add_argument("--data_root", default="data/demo")
    parser.add_argument("--counts", nargs="+", type=int, default=[10, 20, 50])
    args = parser.parse_args()
    root = Path(args.data_root)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = args.ckpt
        if ckpt is None:
            run = [sys.executable, "-m", "deepfake_lightning.cli", "fit", "--config", str(ROOT / "configs/demo.yaml")]
            subprocess.run([*run, f"--data.root={root}", f"--trainer.default_root_dir={tmp}"], check=True)
            ckpt = str(next((tmp / "lightning_logs/version_0/checkpoints").glob("best-*.ckpt")))
        ai = pd.read_csv(root / "test.csv").query("label == 1")["id"].tolist()
        rows = []
        for n in args.counts:
            folder = tmp / f"new{n}"
            folder.mkdir()
            for name in ai[:n]:
                shutil.copy(root / name, folder / Path(name).name)
            for replay in ("true", "false"):
                out = tmp / f"out{n}{replay}"
                start = time.perf_counter()
                subprocess.run(
                    [sys.executable, "-m", "deepfake_lightning.cli", "adapt", "--ckpt_path", ckpt,
                     "--adapt.ai_paths", str(folder), "--out", str(out), "--adapt.replay", replay],
                    check=True, capture_output=True,
                )  # fmt: skip
                wall = time.perf_counter() - start
                r = json.loads((out / "adapt_report.json").read_text())
                a = r["auroc"]
                rows.append(
                    {
                        "new_images": n,
                        "replay": replay == "true",
                        "held_out": a["new_generator"]["n_images"],
                        "new_auroc_before": round(a["new_generator"]["auroc_before"], 4),
                        "new_auroc_after": round(a["new_generator"]["auroc_after"], 4),
                        "val_auroc_before": round(a["val"]["auroc_before"], 4),
                        "val_auroc_after": round(a["val"]["auroc_after"], 4),
                        "test_v1_before": round(a["test_v1"]["auroc_before"], 4),
                        "test_v1_after": round(a["test_v1"]["auroc_after"], 4),
                        "recall_before": round(r["new_generator_recall"]["before"], 3),
                        "recall_after": round(r["new_generator_recall"]["after"], 3),
                        "fine_tune_s": r["fine_tuning"]["seconds"],
                        "command_s": round(wall, 1),
                    }
                )
    print(f"deepfake adapt on the demo's unseen generator (subpixel_texture), checkpoint {ckpt}")
    publish(pd.DataFrame(rows), "adapt")


if __name__ == "__main__":
    main()
