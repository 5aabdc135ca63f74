"""A new generator appears: adapt a detector from a few of its images without forgetting (``deepfake adapt``).

:func:`adapt` fine-tunes a trained detector briefly on the new generator's images (and matching real ones, when the
user has them), with *replay*: every batch also draws images from the model's own training split, so what it knew
is rehearsed while it learns the new traces (experience replay, the simplest continual-learning baseline and still
one of the strongest). Part of the new images is kept aside to measure; the calibrator and threshold are fitted
again on the original validation split plus those images. The report gives AUROC before and after on the
validation split and every labelled test split (forgetting) and on the held-out new images against the validation
human images (what was learnt).

The model's training data comes from the settings its checkpoint stores (``datamodule_hyper_parameters``: where
the data lay, how it was read and split), so the validation split is the one it was calibrated on; ``--data.*``
(or ``--config``) overrides them for a model whose data moved, or an export folder, which does not say.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import ConcatDataset, DataLoader, WeightedRandomSampler

from deepfake_lightning.calibration import CalibrationState, evaluation_of
from deepfake_lightning.data import DeepfakeDataModule
from deepfake_lightning.data.dataset import ImageDataset, collate_skip_bad, expand_inputs, read_error
from deepfake_lightning.errors import DataError
from deepfake_lightning.models.outputs import collect_logits
from deepfake_lightning.scoring import Scorer

MIN_TRAIN, MIN_HELD_OUT = 3, 2  # the fewest new images to adapt on, and to measure on
NEW = "new_generator"  # the report's row of the held-out new images


@dataclass
class AdaptSettings:
    """How to adapt (``--adapt.*``).

    Attributes:
        ai_paths: Images of the new generator: files or folders (every file under them).
        human_paths: Optional real images that match them (same subjects or source); they join both halves.
        steps: Optimizer steps of fine-tuning.
        batch_size: Images per step.
        lr: AdamW learning rate (constant): a tenth of a usual training rate, so the model moves little.
        holdout: Share of the new images kept aside to measure (at least 2 are).
        replay: Draw part of each batch from the model's own training split (False: plain fine-tuning on the new
            images alone, which forgets; kept for comparison).
        replay_share: The share of each batch drawn from the training split.
        seed: Seeds the split of the new images, the sampling and the training.
    """

    ai_paths: list[str]
    human_paths: list[str] = field(default_factory=list)
    steps: int = 40
    batch_size: int = 32
    lr: float = 1e-4
    holdout: float = 0.3
    replay: bool = True
    replay_share: float = 0.5
    seed: int = 0

    def check(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise DataError(
                f"--adapt.steps and --adapt.batch_size must be at least 1, got {self.steps}, {self.batch_size}"
            )
        if not 0 < self.holdout < 1 or not 0 <= self.replay_share < 1:
            raise DataError(
                f"--adapt.holdout must be in (0, 1) and --adapt.replay_share in [0, 1), got {self.holdout}, "
                f"{self.replay_share}"
            )


@dataclass
class NewImages:
    """The new images, split into those adapted on and those measured on; label 1 = AI-generated."""

    train: list[tuple[str, int]]
    held_out: list[tuple[str, int]]


def split_new_images(settings: AdaptSettings) -> NewImages:
    """Reads the new images' paths, checks every one decodes, and splits each kind seeded (``holdout`` aside).

    Raises:
        DataError: For an image that cannot be read (named, with the reason), or fewer AI images than
            ``MIN_TRAIN + MIN_HELD_OUT``.
    """
    rng = np.random.default_rng(settings.seed)
    train, held_out = [], []
    for option, paths, label in (("ai_paths", settings.ai_paths, 1), ("human_paths", settings.human_paths, 0)):
        files = [str(p) for p in expand_inputs(list(paths))]
        bad = [(f, read_error(f)) for f in files]
        bad = [(f, why) for f, why in bad if why]
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise DataError(f"--adapt.{option}: {bad[0][0]}: not a readable image ({bad[0][1]}){more}")
        if not files:
            if label == 0:
                continue
            raise DataError("--adapt.ai_paths names no images: give the new generator's images (files or folders)")
        n_held = max(MIN_HELD_OUT, round(settings.holdout * len(files)))
        if len(files) - n_held < MIN_TRAIN:
            raise DataError(
                f"--adapt.{option}: {len(files)} image(s); adapting needs at least {MIN_TRAIN + MIN_HELD_OUT} "
                f"({MIN_TRAIN} to adapt on, {MIN_HELD_OUT} or --adapt.holdout {settings.holdout:g} of them kept "
                "aside to measure)"
            )
        order = rng.permutation(len(files))
        held_out += [(files[i], label) for i in order[:n_held]]
        train += [(files[i], label) for i in order[n_held:]]
    return NewImages(train, held_out)


def datamodule_from(stored_data: dict, overrides: dict) -> DeepfakeDataModule:
    """The model's data module: its stored settings, then ``overrides`` (``--config``'s data section and
    ``--data.*``). Augmentation runs in the loader workers (the fine-tuning loop is not the data module's)."""
    accepted = inspect.signature(DeepfakeDataModule).parameters
    kwargs = {k: v for k, v in stored_data.items() if k in accepted} | overrides
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        raise DataError(f"unknown data option(s) {', '.join('--data.' + k for k in unknown)}")
    kwargs |= {"augment_on": "cpu", "decode": "cpu", "predict_paths": None}
    return DeepfakeDataModule(**kwargs)


def _dataset(dm: DeepfakeDataModule, images: list[tuple[str, int]], train: bool) -> ImageDataset:
    paths, labels = zip(*images, strict=True) if images else ((), ())
    return ImageDataset("", list(paths), list(labels), dm.transform(train), draft_size=dm.draft_size)


def _loader(dataset, batch_size: int, dm: DeepfakeDataModule, sampler=None) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=dm.num_workers,
        collate_fn=collate_skip_bad,
    )


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC-AUC, NaN when only one class is present."""
    return float(roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else float("nan")


def _digest(path: str | Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def split_files(dm: DeepfakeDataModule, split: str) -> list[str]:
    """The content digest of every image of a split, in its order (a copy of an image is the same image)."""
    index = dm.indexes[split]
    roots = [dm.sources.roots.get(d, dm.root) for d in index["dataset"]]
    return [_digest(Path(r) / p) for r, p in zip(roots, index["path"], strict=True)]


def adapted_on_masks(dm: DeepfakeDataModule, train: list[tuple[str, int]]) -> dict[str, np.ndarray]:
    """Per labelled split, which of its images are among ``train`` (the images adapted on, copies included)."""
    adapted_on = {_digest(p) for p, _ in train}
    return {s: np.array([f in adapted_on for f in split_files(dm, s)], bool) for s in dm.labeled_test_splits()}


def measure(model, dm: DeepfakeDataModule, held_out: list[tuple[str, int]], adapted_on: dict[str, np.ndarray]) -> dict:
    """Logits and labels of the validation split, each labelled test split and the held-out new images (with the
    validation human images as their negatives), and the AUROC of each. The images ``adapted_on`` marks
    (:func:`adapted_on_masks`) are left out of their split's figures."""
    batch = dm.images_per_batch()
    out = {}
    for split in dm.labeled_test_splits():
        z, y = collect_logits(model, dm.loader(split, distributed=False))
        marked = adapted_on[split]
        keep = ~marked if len(marked) == len(z) else np.ones(len(z), bool)  # (skipped unreadable files: keep all)
        z, y = z[keep], y[keep]  # an image adapted on measures nothing
        out[split] = {"logits": z, "labels": y, "auroc": auroc(y, z), "left_out": int((~keep).sum())}
    new_z, new_y = collect_logits(model, _loader(_dataset(dm, held_out, train=False), batch, dm))
    val = out["val"]
    humans = val["labels"] == 0
    z, y = np.concatenate([new_z, val["logits"][humans]]), np.concatenate([new_y, val["labels"][humans]])
    out[NEW] = {"logits": new_z, "labels": new_y, "auroc": auroc(y, z)}
    return out


def _recall(model_calibration, logits: np.ndarray) -> float:
    """Share of the held-out new AI images called AI at the model's threshold."""
    if len(logits) == 0:
        return float("nan")
    return float(np.mean(Scorer(calibration=model_calibration).verdicts(logits)[1]))


class _TrainerNoise(logging.Filter):
    """Lightning's lines about the hardware and the end of a fit: a fine-tuning inside a command says nothing new."""

    NOISE = ("GPU available", "TPU available", "HPU available", "`Trainer.fit` stopped", "Seed set to")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.NOISE)


@contextlib.contextmanager
def _quiet_trainer():
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric")]
    noise = _TrainerNoise()
    for logger in loggers:
        logger.addFilter(noise)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(noise)


def fine_tune(
    model,
    dm: DeepfakeDataModule,
    images: list[tuple[str, int]],
    settings: AdaptSettings,
    replay: ImageDataset | None = None,
    own_optimizer: bool = False,
    progress: bool = True,
) -> dict:
    """Fine-tunes ``model`` in place for ``settings.steps`` steps on ``images`` (path, label), with
    ``settings.replay_share`` of each batch drawn from ``replay`` (a training-transform dataset) when given; at
    ``settings.lr`` (constant AdamW), or with ``own_optimizer`` the model's own optimizer and schedule; a progress
    bar unless ``progress`` is False. Returns what was done."""
    from deepfake_lightning.runs import install_noise_filter, lightning_warnings, resolve_precision

    L.seed_everything(settings.seed, workers=True, verbose=False)
    parts, weights = [_dataset(dm, images, train=True)], [np.full(len(images), 1.0 / len(images))]
    replay_rows = 0
    if replay is not None and settings.replay_share > 0:
        replay_rows = len(replay)
        parts.append(replay)
        weights = [weights[0] * (1 - settings.replay_share), np.full(replay_rows, settings.replay_share / replay_rows)]
    sampler = WeightedRandomSampler(
        np.concatenate(weights).tolist(),
        settings.steps * settings.batch_size,
        replacement=True,
        generator=torch.Generator().manual_seed(settings.seed),
    )
    loader = _loader(ConcatDataset(parts), settings.batch_size, dm, sampler)
    if not own_optimizer:
        model.optimizer_factory = lambda params: torch.optim.AdamW(params, lr=settings.lr)
        model.scheduler_factory = lambda optimizer: torch.optim.lr_scheduler.ConstantLR(optimizer, 1.0, total_iters=0)
    model.hparams.freeze_backbone_epochs = 0
    install_noise_filter()
    with lightning_warnings(), _quiet_trainer():
        warnings.filterwarnings("ignore", message="You defined a `validation_step` but have no `val_dataloader`")
        trainer = L.Trainer(
            max_steps=settings.steps,
            max_epochs=1,
            precision=resolve_precision(None, "auto", torch.cuda.is_available()),
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=progress,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            devices=1,
        )
        start = time.perf_counter()
        trainer.fit(model.train(), train_dataloaders=loader)
    model.eval()
    return {"seconds": round(time.perf_counter() - start, 1), "replay_pool": replay_rows}


def adapt(
    model, dm: DeepfakeDataModule, settings: AdaptSettings, new: NewImages | None = None
) -> tuple[CalibrationState, dict]:
    """Measures ``model``, fine-tunes it (:func:`fine_tune`), recalibrates it on the validation split plus the
    held-out new images, and measures it again (on the GPU when there is one). ``new``: the images as
    :func:`split_new_images` split them (read and checked here when not given). Returns the new calibration state
    and the report (the ``adapt_report.json`` of ``deepfake adapt``)."""
    settings.check()
    new = new or split_new_images(settings)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    dm.setup("test")
    adapted_on = adapted_on_masks(dm, new.train)
    before = measure(model, dm, new.held_out, adapted_on)
    old = model.calibration
    recall_before = _recall(old, before[NEW]["logits"][before[NEW]["labels"] == 1])
    replay = dm.dataset("train", train=True) if settings.replay else None
    done = fine_tune(model, dm, new.train, settings, replay)
    after = measure(model, dm, new.held_out, adapted_on)
    method = old.summary()["method"] if old is not None else "temperature"
    criterion = old.criterion if old is not None else "f1"
    val, held = after["val"], after[NEW]
    state = CalibrationState.fit(
        np.concatenate([val["logits"], held["logits"]]),
        np.concatenate([val["labels"], held["labels"]]),
        method,
        criterion,
        evaluation_of(dict(dm.hparams), dict(model.hparams)),
        float((old.guarantee or {}).get("confidence", 0.95)) if old is not None else 0.95,
    )
    rows = {
        name: {
            "n_images": int(len(before[name]["labels"])),
            "adapted_on_left_out": before[name].get("left_out", 0),
            "auroc_before": before[name]["auroc"],
            "auroc_after": after[name]["auroc"],
            "change": after[name]["auroc"] - before[name]["auroc"],
        }
        for name in before
    }
    ai_held = held["labels"] == 1
    report = {
        "settings": asdict(settings),
        "images": {
            "ai_train": [p for p, y in new.train if y == 1],
            "human_train": [p for p, y in new.train if y == 0],
            "ai_held_out": [p for p, y in new.held_out if y == 1],
            "human_held_out": [p for p, y in new.held_out if y == 0],
        },
        "auroc": rows,
        "new_generator_recall": {"before": recall_before, "after": _recall(state, held["logits"][ai_held])},
        "forgetting": {k: -r["change"] for k, r in rows.items() if k != NEW},
        "calibration": {"method": method, "criterion": criterion, "threshold": state.threshold},
        "fine_tuning": done,
    }
    return state, report


def provenance_record(report: dict, source: str) -> dict:
    """What a checkpoint's provenance keeps of an adaptation (``provenance["adaptations"]``, one per adaptation)."""
    s, images = report["settings"], report["images"]
    return {
        "from": source,
        "ai_images": len(images["ai_train"]) + len(images["ai_held_out"]),
        "human_images": len(images["human_train"]) + len(images["human_held_out"]),
        "ai_train": images["ai_train"],
        "ai_held_out": images["ai_held_out"],
        "human_train": images["human_train"],
        "human_held_out": images["human_held_out"],
        "steps": s["steps"],
        "batch_size": s["batch_size"],
        "lr": s["lr"],
        "replay": s["replay"],
        "auroc": {k: {"before": r["auroc_before"], "after": r["auroc_after"]} for k, r in report["auroc"].items()},
    }


def format_table(report: dict) -> str:
    """The printed table: AUROC before and after per split, the held-out new images last."""
    lines = [f"{'AUROC':<34}{'images':>8}{'before':>10}{'after':>10}{'change':>10}"]
    for name, r in report["auroc"].items():
        label = "held-out new images vs val human" if name == NEW else name
        lines.append(
            f"{label:<34}{r['n_images']:>8}{r['auroc_before']:>10.4f}{r['auroc_after']:>10.4f}{r['change']:>+10.4f}"
        )
    recall = report["new_generator_recall"]
    lines.append(
        f"held-out new AI images called AI at the threshold: {100 * recall['before']:.0f} % before, "
        f"{100 * recall['after']:.0f} % after (threshold {report['calibration']['threshold']:.4f}, "
        f"{report['calibration']['criterion']})"
    )
    return "\n".join(lines)
