"""The ``deepfake`` command: LightningCLI's ``fit|validate|test|predict`` over the package's classes.

Every ``__init__`` argument of ``DeepfakeClassifier``, ``DeepfakeDataModule`` and ``Trainer`` is a config key
(``--model.backbone``, ``--data.root``, ``--trainer.max_epochs``...); ``--config`` files merge in order, and
``--print_config`` shows the result. Settings shared by every config live here and in those signatures.
"""

from __future__ import annotations

import os
import sys
import warnings

import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_warn

from deepfake_lightning.callbacks import Calibration, EvaluationReport, MetricsJson, PredictionWriter
from deepfake_lightning.data import DeepfakeDataModule
from deepfake_lightning.data import BadImageError, DataError
from deepfake_lightning.data.datamodule import check_data_root
from deepfake_lightning.models import DeepfakeClassifier, PretrainedWeightsUnavailable
from deepfake_lightning.sweep import SweepConfigError


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


class DeepfakeCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Always-on callbacks, configurable as --checkpoint.* and --metrics_json.*.
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/auroc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-epoch={epoch:02d}-auroc={val/auroc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        # Calibration before metrics_json, so that metrics.json holds the calibrated validation figures.
        parser.add_lightning_class_args(Calibration, "calibration")
        parser.add_lightning_class_args(MetricsJson, "metrics_json")
        parser.add_lightning_class_args(EvaluationReport, "report")
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        # Normalization follows the backbone's own timm data config.
        parser.link_arguments("model.data_config", "data.mean", compute_fn=lambda c: tuple(c["mean"]), apply_on="instantiate")
        parser.link_arguments("model.data_config", "data.std", compute_fn=lambda c: tuple(c["std"]), apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        if not cfg.data.demo:
            # Fail before the model is built (and ImageNet weights fetched) when the data is not there.
            check_data_root(cfg.data.root, cfg.data.train_csv)
        trainer = cfg.trainer
        trainer.precision = resolve_precision(trainer.precision, trainer.accelerator, torch.cuda.is_available())
        if trainer.logger in (None, True):
            trainer.logger = {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {
                    "save_dir": trainer.default_root_dir or ".",
                    "name": "lightning_logs",
                    "default_hp_metric": False,
                },
            }
        if self.subcommand in ("validate", "test", "predict") and cfg.get("ckpt_path"):
            # The checkpoint supplies the weights: do not fetch ImageNet weights only to overwrite them.
            cfg.model.pretrained = False
            cfg.model.weights = None
        if torch.cuda.is_available():
            torch.set_float32_matmul_precision("high")


    def test(self, model, datamodule=None, ckpt_path=None, verbose: bool = True, **kwargs):
        # Metric names already carry the split, so Lightning's per-dataloader table would repeat every one in
        # every column; EvaluationReport prints one compact table instead.
        return self.trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False, **kwargs)


def cli_main(args: list[str] | None = None, run: bool = True) -> DeepfakeCLI:
    """Runs the CLI on ``args`` (default: ``sys.argv[1:]``); tests call this directly."""
    # Noise that says nothing to our users: every run has its own version directory by design, and the
    # pytree deprecation is internal to Lightning.
    warnings.filterwarnings("ignore", message="The dirpath has changed from")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    return DeepfakeCLI(
        DeepfakeClassifier,
        DeepfakeDataModule,
        seed_everything_default=42,
        trainer_defaults={"max_epochs": 10},
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        parser_kwargs={"description": "Train, evaluate and predict with deepfake-lightning detectors. "
                       "More commands: `deepfake calibrate --help`, `deepfake explain --help`, `deepfake sweep --help`."},
        args=args,
        run=run,
    )


def calibrate_main(args: list[str]) -> dict:
    """``deepfake calibrate --config C --ckpt_path P [--out P2] [--calibration.method ...] [--data.split_file ...]``:
    fits the calibrator and threshold of an existing checkpoint on the config's validation split and writes
    them into the checkpoint (or a copy at ``--out``). Returns the calibration state."""
    import argparse

    from deepfake_lightning.callbacks.calibration import collect_logits, fit_calibration, summary, write_calibration

    parser = argparse.ArgumentParser(
        prog="deepfake calibrate",
        description="Calibrate an existing checkpoint on the validation split of --config. Any other "
        "--section.key options (e.g. --calibration.method platt, --calibration.threshold youden, "
        "--data.split_file RUN/split.csv) are read as in `deepfake fit`.",
    )
    parser.add_argument("--ckpt_path", required=True, help="checkpoint to calibrate")
    parser.add_argument("--out", default=None, help="write a calibrated copy here instead of updating the checkpoint")
    known, rest = parser.parse_known_args(args)
    if not os.path.isfile(known.ckpt_path):
        raise FileNotFoundError(f"--ckpt_path: no such file {known.ckpt_path!r}")
    cli = cli_main([*rest, "--model.pretrained=false"], run=False)
    callback = next(c for c in cli.trainer.callbacks if isinstance(c, Calibration))
    model = DeepfakeClassifier.load_from_checkpoint(known.ckpt_path, map_location="cpu")
    cli.datamodule.setup("validate")
    logits, labels = collect_logits(model, cli.datamodule.val_dataloader())
    state = fit_calibration(logits, labels, callback.method, callback.threshold)
    out = write_calibration(known.ckpt_path, state, known.out)
    info = summary(state)
    print(
        f"Calibrated {out} ({info['method']}): val ECE {info['val/ece_before']:.4f} -> {info['val/ece']:.4f}, "
        f"NLL {info['val/nll_before']:.4f} -> {info['val/nll']:.4f}; threshold ({info['criterion']}) {info['threshold']:.4f}"
        + (f"; temperature {info['temperature']:.4f}" if "temperature" in info else "")
    )
    return state


def explain_main(args: list[str]):
    """``deepfake explain IMAGE_OR_DIR... --ckpt_path CKPT --out DIR [--method] [--layers] [--n_layers] [--target]``."""
    import argparse

    from deepfake_lightning.api import load_detector
    from deepfake_lightning.explain import CAM_METHODS, expand_inputs, explain_files

    parser = argparse.ArgumentParser(
        prog="deepfake explain",
        description="Grad-CAM overlays for images or folders of images, with the checkpoint's own preprocessing "
        "and calibration. Writes one PNG per image and explanations.csv (file, prob_ai, label, error) to --out.",
    )
    parser.add_argument("inputs", nargs="+", help="image files and/or directories (searched recursively)")
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--method", default="gradcam", choices=sorted(CAM_METHODS))
    parser.add_argument("--layers", nargs="+", default=None, help="module names to explain (default: by backbone)")
    parser.add_argument("--n_layers", type=int, default=1, help="multi-layer mode: explain this many stages")
    parser.add_argument("--target", default="ai", choices=["ai", "human"])
    parser.add_argument("--batch_size", type=int, default=16)
    a = parser.parse_args(args)
    detector = load_detector(a.ckpt_path)
    table = explain_files(detector, expand_inputs(a.inputs), a.out, batch_size=a.batch_size, method=a.method,
                          layers=a.layers, n_layers=a.n_layers, target=a.target)
    bad = table[table["error"] != ""]
    for _, row in bad.iterrows():
        print(f"deepfake explain: skipped {row['file']}: {row['error']}", file=sys.stderr)
    print(f"Explained {len(table) - len(bad)} image(s), skipped {len(bad)}; wrote {a.out}/explanations.csv and PNGs")
    return table


def main() -> None:
    """Console entry point. Input errors (missing data, bad CSVs or images, unavailable weights) print one
    clear message and exit with status 2; set DEEPFAKE_TRACEBACK=1 to see the full traceback instead."""
    try:
        if sys.argv[1:2] == ["calibrate"]:
            calibrate_main(sys.argv[2:])
            return
        if sys.argv[1:2] == ["explain"]:
            explain_main(sys.argv[2:])
            return
        if sys.argv[1:2] == ["sweep"]:
            from deepfake_lightning.sweep import sweep_main

            sweep_main(sys.argv[2:])
            return
        cli_main()
    except (DataError, BadImageError, PretrainedWeightsUnavailable, FileNotFoundError, FileExistsError,
            SweepConfigError) as e:
        if os.environ.get("DEEPFAKE_TRACEBACK"):
            raise
        print(f"deepfake: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
