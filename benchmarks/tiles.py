"""Benchmark: whole-image verdicts from tiles (``data.eval_views: tiles``).

``--part pooling`` (the demo, configs/demo.yaml as shipped: crop mode, 64-px tiles, stride 32): which tile pooling
to make the default. Four fits: one on every training generator, and one leaving out each of the three
(``--data.train_query "generator != 'G'"``). For the centre crop and each pooling (mean, top-25 % mean, max):

* ``val_auroc`` / ``val_f1``: the full fit's validation split (macro F1 at a threshold tuned on these same pooled,
  temperature-calibrated logits, as calibration does);
* ``held_out_<G>``: a leave-one-out fit's AUROC of G's AI images (the training-CSV rows its query removed: never
  seen, and not test data) against its validation split's human images;
* ``edited_auroc``: the full fit's AUROC of the demo's partly edited images against their unedited originals
  (``test_edited``, the split that exists for this choice; pointing game and tile AUROC do not depend on the
  pooling and are in ``deepfake test``'s report).

No test_v1 or test_v2 label is looked at.

``--part throughput``: tiles per second, the wall time of a 16-megapixel photograph (4608 x 3456 JPEG: decode, tile,
score, pool; at the default ``max_tiles`` 64 and with every tile of the grid), and peak memory (max RSS of a fresh
process) against one training step at the config's batch size, for the demo model and ``convnext_tiny``
(224 px, random weights: the cost is the same).

    python benchmarks/tiles.py --part pooling      # about 4 minutes on 2 CPU cores
    python benchmarks/tiles.py --part throughput   # about 2 minutes

Prints the tables and writes benchmarks/results/tiles_pooling.csv and tiles_throughput.csv.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _results import publish  # benchmarks/_results.py, beside this script

REPO = Path(__file__).resolve().parents[1]
POOLINGS = {"centre crop": None, "mean": ("mean", 1.0), "topk 25%": ("topk", 0.25), "max": ("max", 1.0)}


# --------------------------------------------------------------------------- pooling
def _fit(out: Path, query: str | None) -> Path:
    from deepfake_lightning.cli import cli_main

    args = [
        "fit",
        "--config",
        "configs/demo.yaml",
        "--trainer.callbacks=[]",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={out}",
    ] + ([f"--data.train_query={query}"] if query else [])
    cli = cli_main(args)
    return Path(cli.trainer.checkpoint_callback.best_model_path)


def _scores(model, dm, dataset_paths: list[str], labels: list[int]) -> dict[str, np.ndarray]:
    """Logits of the centre crop and of every pooling, for images under the data root."""
    import torch
    from torch.utils.data import DataLoader

    from deepfake_lightning.data import create_transform
    from deepfake_lightning.data.dataset import ImageDataset, collate_skip_bad
    from deepfake_lightning.data.tiles import pool_tile_logits

    hp = dm.hparams
    out = {name: [] for name in POOLINGS}
    for views in (1, "tiles"):
        transform = create_transform(
            hp.img_size, False, hp.mode, 0.0, hp.mean, hp.std, views, hp.tile_stride, hp.max_tiles
        )
        dataset = ImageDataset(dm.root, dataset_paths, labels, transform)
        for batch in DataLoader(dataset, batch_size=8, collate_fn=collate_skip_bad):
            with torch.inference_mode():
                if views == 1:
                    out["centre crop"].append(model.predict_logits(batch["image"]))
                    continue
                tiles = model.tile_logits(batch["image"])
                for name, pooling in POOLINGS.items():
                    if pooling is not None:
                        out[name].append(pool_tile_logits(tiles, batch["n_tiles"], *pooling))
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def pooling(args) -> None:
    from sklearn.metrics import roc_auc_score

    from deepfake_lightning.api import datamodule_for, load_detector
    from deepfake_lightning.calibration import CalibrationState, thresholded_metrics
    from deepfake_lightning.data.demo import TRAIN_GENERATORS

    results: dict[str, dict] = {name: {} for name in POOLINGS}
    with tempfile.TemporaryDirectory() as tmp:
        for fold in ["all", *TRAIN_GENERATORS]:
            started = time.perf_counter()
            ckpt = _fit(Path(tmp) / fold, None if fold == "all" else f"generator != '{fold}'")
            model = load_detector(ckpt).model
            dm = datamodule_for(ckpt)
            val = dm.indexes["val"]
            if fold == "all":
                scores = _scores(model, dm, list(val["path"]), list(val["label"]))
                for name, z in scores.items():
                    state = CalibrationState.fit(z, val["label"].to_numpy())
                    probs = state.probs(z)
                    results[name]["val_auroc"] = roc_auc_score(val["label"], z)
                    results[name]["val_f1"] = thresholded_metrics(probs, val["label"], state.threshold)["f1_macro"]
                edited = pd.read_csv(dm.root / "test_edited.csv")
                scores = _scores(model, dm, list(edited["id"]), list(edited["label"]))
                for name, z in scores.items():
                    results[name]["edited_auroc"] = roc_auc_score(edited["label"], z)
            else:
                train = pd.read_csv(dm.root / "train.csv")
                held_out = train.loc[train["generator"] == fold, "file_name"].tolist()
                human = val.loc[val["label"] == 0, "path"].tolist()
                scores = _scores(model, dm, held_out + human, [1] * len(held_out) + [0] * len(human))
                y = np.r_[np.ones(len(held_out)), np.zeros(len(human))]
                for name, z in scores.items():
                    results[name][f"held_out_{fold}"] = roc_auc_score(y, z)
            print(f"{fold}: {time.perf_counter() - started:.0f} s", flush=True)
    table = pd.DataFrame([{"views": name, **r} for name, r in results.items()])
    held = [c for c in table.columns if c.startswith("held_out_")]
    table.insert(len(table.columns), "held_out_mean", table[held].mean(axis=1))
    publish(table.round(4), "tiles_pooling")


# --------------------------------------------------------------------------- throughput
MODELS = {
    "demo (test_resnet, 64 px)": ("test_resnet", 64, "npr"),
    "convnext_tiny (224 px)": ("convnext_tiny", 224, "rgb"),
}


def _measure(task: str, backbone: str, size: int, frontend: str, photo: str) -> dict:
    """Runs in a fresh process, so that ru_maxrss is this task's peak alone."""
    import torch
    import torch.nn.functional as F

    from deepfake_lightning.data import load_image
    from deepfake_lightning.data.tiles import TileTransform, collate_tiles
    from deepfake_lightning.models import DeepfakeClassifier

    torch.manual_seed(0)
    model = DeepfakeClassifier(backbone, pretrained=False, frontend=frontend)
    out: dict = {}
    if task == "fit_step":  # what `deepfake fit` holds at batch 64: forward, backward, AdamW step
        model.train()
        optimizer = torch.optim.AdamW(model.parameters())
        x, y = torch.randn(64, 3, size, size), torch.randint(0, 2, (64,)).float()
        for _ in range(2):
            F.binary_cross_entropy_with_logits(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
    elif task == "tiles_per_s":
        model.eval()
        x = torch.randn(64, 3, size, size)
        with torch.inference_mode():
            model.tile_logits(x)
            started, n = time.perf_counter(), 0
            while time.perf_counter() - started < 5:
                model.tile_logits(x)
                n += len(x)
        out["tiles_per_s"] = n / (time.perf_counter() - started)
    else:  # photo_64 / photo_all: a 16 MP photograph, decoded, tiled, scored, pooled
        model.eval()
        max_tiles = 64 if task == "photo_64" else 10**6
        with torch.inference_mode():
            model.tile_logits(torch.randn(2, 3, size, size))  # warm
            started = time.perf_counter()
            batch = collate_tiles([TileTransform(size, None, max_tiles)(load_image(photo))])
            model.predict_logits(batch["image"], n_tiles=batch["n_tiles"])
            out["wall_s"] = time.perf_counter() - started
            out["tiles"] = int(batch["n_tiles"][0])
            out["tiles_total"] = int(batch["tiles_total"][0])
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def throughput(args) -> None:
    from PIL import Image

    from deepfake_lightning.data.demo import source_photos

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "photo_16mp.jpg"
        Image.fromarray(source_photos()[0]).resize((4608, 3456), Image.Resampling.BICUBIC).save(photo, quality=92)
        for label, (backbone, size, frontend) in MODELS.items():
            row = {"model": label}
            for task in ("tiles_per_s", "fit_step", "photo_64", "photo_all"):
                code = [sys.executable, __file__, "--measure", task, backbone, str(size), frontend, str(photo)]
                result = json.loads(subprocess.run(code, capture_output=True, text=True, check=True).stdout)
                if task == "tiles_per_s":
                    row["tiles_per_s"] = result["tiles_per_s"]
                elif task == "fit_step":
                    row["fit_step_peak_mb"] = result["peak_rss_mb"]
                else:
                    key = "16mp_64tiles" if task == "photo_64" else "16mp_all_tiles"
                    row[f"{key}_s"] = result["wall_s"]
                    row[f"{key}_n"] = f"{result['tiles']} of {result['tiles_total']}"
                    row[f"{key}_peak_mb"] = result["peak_rss_mb"]
            rows.append(row)
            print(pd.DataFrame([row]).T.to_string(header=False), flush=True)
    publish(pd.DataFrame(rows).round(2), "tiles_throughput", transpose=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--measure":
        task, backbone, size, frontend, photo = sys.argv[2:7]
        print(json.dumps(_measure(task, backbone, int(size), frontend, photo)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["pooling", "throughput"], required=True)
    args = parser.parse_args()
    os.chdir(REPO)  # configs/demo.yaml's data root (data/demo) is relative to the project
    {"pooling": pooling, "throughput": throughput}[args.part](args)


if __name__ == "__main__":
    main()
