"""What a model was trained on and how well it did: the provenance record in every checkpoint, the facts
``load_detector`` exposes (the model card that ``deepfake export`` writes from them is export/card.py).

A checkpoint's ``provenance`` (written by ``DeepfakeClassifier.on_save_checkpoint``) holds:

* ``data``: the training data's identity: for the demo, ``{"kind": "demo", "spec": {...}}``; otherwise
  ``{"kind": "csv", "train_csv", "rows", "ai_share", "sha256"}`` (the CSV's content hash; a folders layout:
  ``{"kind": "folders", "root", "rows", "ai_share", "listing_sha256"}``), with ``train_sets`` (each extra training
  dataset, its ``name`` and ``weight``) and ``balance``, and ``manifest`` (``path``, ``sha256``) when checked;
* ``split_sha256``: a hash of the train/val split (sorted ``path,split`` lines);
* ``validation``: the ``val/*`` metrics at the time of that checkpoint;
* ``versions``: deepfake-lightning, torch, lightning, timm; ``git_commit`` when the package runs from a checkout;
* ``test``, ``test_settings``, ``test_report``: only in checkpoints of earlier versions, whose ``deepfake test``
  wrote its per-split summary into the file it evaluated; they are shown as recorded.

No command writes into a model file it reads. A model's test results are read from its evaluation folders
(:func:`recorded_evaluation`): the newest ``report.json`` under its run's ``eval/`` whose ``model.sha256`` is the
file's own, so a figure is only ever shown beside the exact weights and calibration it was measured on.

The calibration and threshold are the checkpoint's own ``calibration`` entry. Anything missing (a checkpoint
from before provenance existed) reads as ``"unknown"``, never as an error.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deepfake_lightning.checkpoints import is_export, stored_settings
from deepfake_lightning.files import file_sha256
from deepfake_lightning.settings import DEFAULTS, UNCALIBRATED_THRESHOLD

UNKNOWN = "unknown"
KAGGLE_DATASET = "alessandrasala79/ai-vs-human-generated-dataset"
DEMO_WARNING = (
    "this detector was trained on the synthetic demo dataset (simulated up-sampling artifacts): it does "
    "not detect real AI-generated images, and its probabilities on other images mean nothing"
)


def split_sha256(paths_and_splits: list[tuple[str, str]]) -> str:
    lines = "\n".join(f"{p},{s}" for p, s in sorted(paths_and_splits))
    return hashlib.sha256(lines.encode()).hexdigest()


@functools.cache  # asked at every checkpoint save: once per process is enough
def git_commit() -> str | None:
    """The commit of the checkout this package runs from (``+dirty`` with uncommitted changes), or None."""
    here = Path(__file__).resolve().parent
    if not (here.parent / ".git").exists():
        return None
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=here, capture_output=True, text=True, timeout=10)  # noqa: E731
        commit = run("rev-parse", "HEAD").stdout.strip()
        dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("+dirty" if dirty else "")) or None


@functools.cache
def _versions_once() -> tuple[tuple[str, str], ...]:
    import lightning
    import timm
    import torch

    from deepfake_lightning import __version__

    # str(): torch's version is a str subclass, which torch.load(weights_only=True) refuses to unpickle
    return (
        ("deepfake-lightning", str(__version__)),
        ("torch", str(torch.__version__)),
        ("lightning", str(lightning.__version__)),
        ("timm", str(timm.__version__)),
    )


def versions() -> dict[str, str]:
    return dict(_versions_once())


def training_record(datamodule, metrics: dict[str, Any]) -> dict:
    """The provenance of a checkpoint being saved during ``fit``: ``datamodule`` is the set-up data module,
    ``metrics`` the trainer's current metrics (the ``val/*`` ones are kept)."""
    record: dict[str, Any] = {"versions": versions(), "git_commit": git_commit()}
    identity = getattr(datamodule, "data_identity", None)
    if identity is not None:
        record |= identity()
    record["validation"] = {k: float(v) for k, v in metrics.items() if k.startswith("val/") and _scalar(v)}
    return record


def _scalar(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


@dataclass
class ModelFacts:
    """What is known about a trained detector (``load_detector(...).facts``); ``"unknown"`` where the checkpoint or
    export does not say."""

    backbone: str = UNKNOWN
    frontend: str = DEFAULTS.frontend
    img_size: int | str = UNKNOWN
    mode: str = UNKNOWN
    calibration: str = "none"
    temperature: float | None = None
    threshold: float = UNCALIBRATED_THRESHOLD
    threshold_criterion: str = UNKNOWN
    fpr_guarantee: dict = field(default_factory=dict)  # fpr_bound thresholds: calibration/state.py CalibrationState
    training_data: dict | str = UNKNOWN
    split_sha256: str = UNKNOWN
    validation: dict | str = UNKNOWN
    test: dict = field(default_factory=dict)
    test_settings: dict = field(default_factory=dict)
    test_report: str | None = None  # the report.json the test figures come from
    versions: dict | str = UNKNOWN
    git_commit: str | None = None
    source: str = UNKNOWN
    adaptations: list = field(default_factory=list)  # `deepfake adapt` runs, oldest first (adapt.provenance_record)

    @property
    def trained_on_demo(self) -> bool:
        return isinstance(self.training_data, dict) and self.training_data.get("kind") == "demo"

    @property
    def dataset(self) -> str:
        """A one-line description of the training data."""
        data = self.training_data
        if not isinstance(data, dict):
            return UNKNOWN
        if data.get("kind") == "demo":
            return f"the synthetic demo dataset (demo spec {data.get('spec')})"
        parts = [_describe_dataset(data)]
        extra = data.get("train_sets", [])
        parts += [f"{d.get('name')}: {_describe_dataset(d)}, weight {d.get('weight')}" for d in extra]
        if data.get("train_sets"):
            parts[-1] += f" (sampling balanced by {data.get('balance')})"
        if data.get("manifest"):
            m = data["manifest"]
            parts.append(f"checked against the manifest {m.get('path')} (sha256 {str(m.get('sha256'))[:12]})")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_parts(
        cls, model_hparams: dict, data_hparams: dict, calibration: dict | None, provenance: dict | None, source: str
    ) -> ModelFacts:
        """From a checkpoint's (or an export's) stored pieces; tolerant of any of them missing."""
        provenance = provenance or {}
        cal = calibration or {}
        calibrator = cal.get("calibrator") or {}
        training = provenance.get("data", UNKNOWN)
        if training == UNKNOWN and data_hparams.get("demo"):  # older demo checkpoints: the hyperparameters say so
            training = {"kind": "demo", "spec": {"seed": data_hparams.get("demo_seed", 0)}}
        return cls(
            backbone=model_hparams.get("backbone", UNKNOWN),
            frontend=model_hparams.get("frontend", DEFAULTS.frontend),
            img_size=data_hparams.get("img_size", UNKNOWN),
            mode=data_hparams.get("mode", UNKNOWN),
            calibration=calibrator.get("method", "none"),
            temperature=calibrator.get("temperature") if calibrator.get("method") == "temperature" else None,
            threshold=float(cal.get("threshold", UNCALIBRATED_THRESHOLD)),
            threshold_criterion=cal.get("criterion", UNKNOWN)
            if cal
            else f"none (uncalibrated: {UNCALIBRATED_THRESHOLD})",
            fpr_guarantee=dict(cal.get("guarantee") or {}),
            training_data=training,
            split_sha256=provenance.get("split_sha256", UNKNOWN),
            validation=provenance.get("validation", UNKNOWN),
            test=provenance.get("test", {}),
            test_settings=provenance.get("test_settings", {}),
            test_report=provenance.get("test_report"),
            versions=provenance.get("versions", UNKNOWN),
            git_commit=provenance.get("git_commit"),
            source=source,
            adaptations=list(provenance.get("adaptations", [])),
        )


def outside_demo_data(facts: ModelFacts | None, files: list) -> bool:
    """True when a demo-trained detector is asked about images that are not from its demo data set (then the
    result means nothing, and the user is told so); False for other detectors and for the demo's own images."""
    if facts is None or not facts.trained_on_demo:
        return False
    root = facts.training_data.get("root")
    if root is None:  # an older checkpoint: where its demo data lay is not recorded
        return bool(files)
    return any(not Path(f).resolve().is_relative_to(Path(root)) for f in files)


def checkpoint_facts(ckpt: dict, source: str) -> ModelFacts:
    settings = stored_settings(ckpt)
    return ModelFacts.from_parts(
        settings["model"], settings["data"], ckpt.get("calibration"), ckpt.get("provenance"), source
    )


def model_sha256(source: str | os.PathLike) -> str:
    """What identifies a model file: a checkpoint's SHA-256; for an export folder, the SHA-256 of its files' names
    and hashes (its model card, written from them, left out)."""
    path = Path(source)
    if not path.is_dir():
        return file_sha256(path)
    lines = [f"{f.name} {file_sha256(f)}" for f in sorted(path.iterdir()) if f.is_file() and f.name != "README.md"]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def evaluated_model(source: str | os.PathLike) -> dict:
    """The ``model`` entry of a ``report.json``: which model file was evaluated (path and :func:`model_sha256`)."""
    return {"path": str(Path(source).resolve()), "sha256": model_sha256(source)}


def recorded_evaluation(source: str | os.PathLike) -> dict:
    """The test results of the model file ``source`` as its evaluation folders hold them: ``test`` (per split, see
    :func:`evaluation_record`), ``test_settings`` and ``test_report`` (the ``report.json`` they come from), from
    the newest ``deepfake test`` report under its run's ``eval/`` whose ``model.sha256`` is the file's own (a
    checkpoint since re-calibrated or re-trained no longer matches); empty when there is none, or when ``source``
    is not in a training run's ``checkpoints/`` folder."""
    path = Path(source)
    if is_export(path) or not (path.is_file() and path.parent.name == "checkpoints"):
        return {}
    reports = []
    for file in (path.parent.parent / "eval").glob("*/report.json"):
        try:
            report = json.loads(file.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(report.get("model"), dict) and report.get("splits"):
            reports.append((file.stat().st_mtime, str(file), report))
    if not reports:
        return {}
    digest = model_sha256(path)
    mine = [r for r in reports if r[2]["model"].get("sha256") == digest]
    if not mine:
        return {}
    _, file, report = max(mine, key=lambda r: r[:2])
    return {"test": evaluation_record(report), "test_settings": report.get("settings", {}), "test_report": file}


def with_recorded_evaluation(provenance: dict | None, source: str | os.PathLike) -> dict:
    """``provenance`` with the test results of :func:`recorded_evaluation` where it holds none of its own (a
    checkpoint of an earlier version keeps those it carries, as recorded)."""
    provenance = dict(provenance or {})
    if not provenance.get("test"):
        provenance |= recorded_evaluation(source)
    return provenance


def evaluation_record(report: dict) -> dict:
    """The per-split summary of a ``report.json``: what a model card and ``ModelFacts.test`` show of it."""
    return {
        split: {
            "n_images": r["n_images"],
            "auroc": r["auroc"],
            "ap": r["ap"],
            "ece": r["ece"],
            "acc": r["at_tuned"]["acc"],
            "f1_macro": r["at_tuned"]["f1_macro"],
        }
        for split, r in report.get("splits", {}).items()
    }


def _describe_dataset(data: dict) -> str:
    """One training dataset: its CSV (kaggle, csv layouts) or folder (folders layout), size, AI share and hash."""
    where, digest = data.get("train_csv"), data.get("sha256")
    if where is None:  # a folders layout: the hash of its listing (paths and labels)
        where, digest = f"{data.get('root')} ({data.get('kind')} layout)", data.get("listing_sha256")
    return (
        f"{where}: {data.get('rows')} images, {100 * float(data.get('ai_share', 0)):.1f} % AI-generated "
        f"(sha256 {str(digest)[:12]})"
    )
