"""The notebooks' API: a trained detector (detector.py), the runs under ``lightning_logs``, their data and scalars."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader

from deepfake_lightning.data import DeepfakeDataModule
from deepfake_lightning.data.dataset import collate_skip_bad
from deepfake_lightning.detector import Detector, load_detector
from deepfake_lightning.model_file import read_model_file

__all__ = [
    "Detector", "load_detector", "training_runs", "newest_checkpoint", "datamodule_for", "predict_split", "load_runs",
    "scalars",
]  # fmt: skip


def training_runs(logs_dir: str | os.PathLike = "lightning_logs") -> list[Path]:
    """Run directories of ``deepfake fit`` under ``logs_dir`` (searched recursively; a run has ``config.yaml`` and a
    ``checkpoints/`` folder), oldest first by when their ``config.yaml`` was written. Evaluations (``RUN/eval/...``)
    are not runs."""
    logs = Path(logs_dir)
    runs = [
        c.parent
        for c in logs.rglob("checkpoints")
        if c.is_dir() and (c.parent / "config.yaml").is_file() and "eval" not in c.parent.relative_to(logs).parts
    ]
    return sorted(runs, key=lambda run: (run / "config.yaml").stat().st_mtime)


def newest_checkpoint(logs_dir: str | os.PathLike = "lightning_logs", kind: str = "best") -> Path:
    """The newest training run's best checkpoint (``kind="best"``: the ``best-*.ckpt`` that ModelCheckpoint kept,
    falling back to ``last.ckpt`` when there is none) or its ``last.ckpt`` (``kind="last"``)."""
    for run in reversed(training_runs(logs_dir)):
        best = sorted((run / "checkpoints").glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
        last = run / "checkpoints" / "last.ckpt"
        found = best[-1:] if kind == "best" and best else [last] if last.is_file() else []
        if found:
            return found[0]
    raise FileNotFoundError(
        f"no training run with a checkpoint under {Path(logs_dir).resolve()}; train one from the "
        "project root with: deepfake fit --config configs/demo.yaml"
    )


def datamodule_for(ckpt_path: str | os.PathLike, **overrides) -> DeepfakeDataModule:
    """The data module a checkpoint was trained with (its stored hyperparameters; ``overrides`` win, e.g.
    ``root=...``), set up, with the run's saved train/val split when the run directory still has it. A relative data
    root is found again from any working directory (a notebook in ``notebooks/``): the checkpoint records where it
    was. For an export directory, the image size, mode and normalization come from its ``detector.json`` (pass
    ``root``)."""
    model_file = read_model_file(ckpt_path, metadata_only=True)
    stored = model_file.stored["data"]
    resolved = (model_file.checkpoint or {}).get("DeepfakeDataModule", {}).get("root_resolved")
    hparams = {**stored, **overrides}
    root = hparams.get("root")
    if "root" not in overrides and root and not Path(root).exists() and resolved and Path(resolved).is_dir():
        hparams["root"] = resolved  # relative to the directory the run was started from
    run_split = Path(ckpt_path).parent.parent / "split.csv"
    if "split_file" not in overrides and run_split.is_file():
        hparams["split_file"] = str(run_split)
    hparams.setdefault("num_workers", 0)
    accepted = inspect.signature(DeepfakeDataModule).parameters
    dm = DeepfakeDataModule(**{k: v for k, v in hparams.items() if k in accepted})
    dm.setup("test")
    return dm


@torch.inference_mode()
def predict_split(
    detector: Detector, datamodule: DeepfakeDataModule, split: str, batch_size: int | None = None
) -> pd.DataFrame:
    """``id, label, logit, prob_ai`` (calibrated) and ``pred`` (at the detector's threshold) for one split, with the
    data module's evaluation views (``n_tiles`` and ``tiles_total`` too when it scores tiles). ``batch_size`` (images)
    defaults to the data module's."""
    loader = DataLoader(
        datamodule.dataset(split), batch_size=batch_size or datamodule.images_per_batch(), collate_fn=collate_skip_bad
    )
    rows = []
    ids = datamodule.split_ids(split)
    tiled = datamodule.tiled
    for batch in loader:
        if "image" not in batch:
            continue
        logits = detector.model.predict_logits(batch["image"].to(detector.model.device), n_tiles=batch.get("n_tiles"))
        probs = detector.probs(logits)
        rows.append(
            pd.DataFrame(
                {
                    "id": [ids[i] for i in batch["index"].tolist()],
                    "label": batch["label"].long().numpy(),
                    "logit": logits.cpu().numpy(),
                    "prob_ai": probs,
                }
                | ({"n_tiles": batch["n_tiles"].numpy(), "tiles_total": batch["tiles_total"].numpy()} if tiled else {})
            )
        )
    table = pd.concat(rows, ignore_index=True)
    table["pred"] = detector.labels(table["prob_ai"])
    return table


def load_runs(logs_dir: str | os.PathLike = "lightning_logs") -> pd.DataFrame:
    """One row per training run under ``logs_dir`` (searched recursively; a directory with a ``metrics.json``, not an
    evaluation under ``RUN/eval/``): its final metrics plus the backbone, learning rate and augmentation strength
    from its ``config.yaml``."""
    import json

    import yaml

    rows = []
    for metrics in sorted(Path(logs_dir).rglob("metrics.json")):
        run = metrics.parent
        if "eval" in run.relative_to(logs_dir).parts:
            continue  # an evaluation of a run (deepfake test|predict), not a run
        row = {"run": str(run), **json.loads(metrics.read_text())}
        if (run / "config.yaml").is_file():
            cfg = yaml.safe_load((run / "config.yaml").read_text())
            model, data = cfg.get("model", {}), cfg.get("data", {})
            row |= {
                "backbone": model.get("backbone"),
                "aug_strength": data.get("aug_strength"),
                "lr": ((model.get("optimizer") or {}).get("init_args") or {}).get("lr"),
            }
        rows.append(row)
    return pd.DataFrame(rows)


def scalars(run_dir: str | os.PathLike, tags: list[str] | None = None) -> pd.DataFrame:
    """TensorBoard scalars of one run as a long table ``tag, step, value``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}).Reload()
    wanted = tags or events.Tags()["scalars"]
    rows = [(tag, e.step, e.value) for tag in wanted if tag in events.Tags()["scalars"] for e in events.Scalars(tag)]
    return pd.DataFrame(rows, columns=["tag", "step", "value"])
