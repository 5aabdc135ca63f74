"""Where a ``deepfake`` run writes and what its console shows: the precision for the machine, evaluation folders
beside the run they evaluate, ``fit --ckpt_path last``, the TensorBoard logger, and the warning and log filters."""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_warn

from deepfake_lightning.checkpoints import stored_settings
from deepfake_lightning.errors import ConfigError


def resolve_precision(precision: str | int | None, accelerator: str | None, cuda_available: bool) -> str:
    """The training precision to use.

    ``None`` (not set) means ``16-mixed`` on CUDA and ``32-true`` elsewhere. CPUs have no float16 autocast,
    so an explicit ``16-mixed`` on CPU falls back to ``32-true`` with a warning; ``bf16-mixed`` is kept.
    """
    accelerator = "auto" if accelerator is None else str(accelerator).lower()
    on_cuda = accelerator in ("cuda", "gpu") or (accelerator == "auto" and cuda_available)
    if precision is None:
        return "16-mixed" if on_cuda else "32-true"
    precision = str(precision)
    if precision in ("16-mixed", "16") and not on_cuda and accelerator != "mps":
        rank_zero_warn(
            f"trainer.precision={precision} needs a CUDA GPU (CPUs have no float16 autocast); "
            "training in 32-true instead. Use --trainer.precision bf16-mixed for bfloat16 autocast on CPU."
        )
        return "32-true"
    return precision


def evaluation_dir(ckpt_path: str, subcommand: str, default_root: str | None) -> Path:
    """Where ``validate|test|predict`` of a model write: ``RUN/eval/<subcommand>_<checkpoint>/`` for a checkpoint in
    a training run's ``checkpoints/`` folder (so training runs stay easy to find, each with its evaluations), and
    ``<default_root_dir>/eval/<subcommand>_<name>/`` for an export directory or a checkpoint elsewhere. A repeated
    evaluation gets ``_v1``, ``_v2``... rather than overwriting an earlier one."""
    path = Path(ckpt_path)
    in_run = path.is_file() and path.parent.name == "checkpoints"
    base = path.parent.parent if in_run else Path(default_root or ".")
    name = f"{subcommand}_{path.stem if path.is_file() else path.resolve().name}"
    out, n = base / "eval" / name, 0
    while out.exists():
        n += 1
        out = base / "eval" / f"{name}_v{n}"
    return out


def tensorboard_logger(save_dir: str, **init_args) -> dict:
    return {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": save_dir, "default_hp_metric": False, **init_args},
    }


def resume_last(cfg) -> None:
    """``fit --ckpt_path last``: continue the newest run that has a ``last.ckpt``, in its own run directory
    (same TensorBoard version, same checkpoints folder) and with its saved train/val split."""
    logger = cfg.trainer.logger
    if not (isinstance(logger, dict) and logger.get("class_path", "").endswith("TensorBoardLogger")):
        return  # a custom logger: leave "last" to Lightning's own lookup
    args = logger.setdefault("init_args", {})
    logs = Path(args.get("save_dir") or ".") / (args.get("name") or "lightning_logs")

    def trained_at(last: Path) -> float:
        # When the run last trained: its own TensorBoard events (evaluations log under RUN/eval/), not the
        # checkpoint's mtime, which copying or calibrating a checkpoint changes.
        run = last.parent.parent
        events = [f.stat().st_mtime for f in run.glob("events.out.tfevents.*")]
        return max(events or [(run / "config.yaml").stat().st_mtime if (run / "config.yaml").is_file() else 0.0])

    found = sorted(logs.glob("*/checkpoints/last.ckpt"), key=trained_at)
    if not found:
        raise FileNotFoundError(
            f"--ckpt_path last: no {logs}/*/checkpoints/last.ckpt to resume; run without --ckpt_path to start anew"
        )
    run = found[-1].parent.parent
    backbone = stored_settings(found[-1])["model"].get("backbone")
    if backbone and backbone != cfg.model.backbone:
        raise ConfigError(
            f"--ckpt_path last: the newest run {run} is a {backbone} model, but this run configures "
            f"{cfg.model.backbone}; resume a {cfg.model.backbone} run by passing its checkpoint "
            f"(--ckpt_path RUN/checkpoints/last.ckpt), or train anew without --ckpt_path"
        )
    args["version"] = run.name
    cfg.ckpt_path = str(found[-1])
    if cfg.data.split_file is None and (run / "split.csv").is_file():
        cfg.data.split_file = str(run / "split.csv")
    print(f"Resuming {run} from {found[-1]}", file=sys.stderr)
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")  # by design


class _LightningNoise(logging.Filter):
    """Drops two of Lightning's info lines that say nothing to our users: the advert for its cloud logger, printed
    on every command, and the note that the training loader is read to count the scheduler's steps."""

    NOISE = ("💡 Tip: For seamless cloud logging", "Loading `train_dataloader` to estimate number of stepping batches")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.NOISE)


def install_noise_filter() -> None:
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _LightningNoise) for f in logger.filters):
        logger.addFilter(_LightningNoise())


@contextlib.contextmanager
def lightning_warnings() -> Iterator[None]:
    """Scopes the warning filters of a ``deepfake`` run (Lightning's notes that are by design here: every run has its
    own version directory, and a pytree deprecation internal to Lightning) and of the CLI's own decisions (set
    inside): they end with the block, so a test, a sweep trial or a calibration in the same process keeps its own."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The dirpath has changed from")
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
        # Under DDP the epoch mean of train/loss is rank 0's by design (classifier.py: synchronising it deadlocks
        # with the progress bar); every other logged value is synchronised.
        warnings.filterwarnings("ignore", message=r".*self\.log\('train/loss', \.\.\., sync_dist=True\)")
        yield
