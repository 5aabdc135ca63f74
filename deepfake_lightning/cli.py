"""The ``deepfake`` command: LightningCLI's ``fit|validate|test|predict`` over the package's classes.

Every ``__init__`` argument of ``DeepfakeClassifier``, ``DeepfakeDataModule`` and ``Trainer`` is a config key
(``--model.backbone``, ``--data.root``, ``--trainer.max_epochs``...); ``--config`` files merge in order, and
``--print_config`` shows the result. Settings shared by every config live here and in those signatures.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_warn

from deepfake_lightning.callbacks import Calibration, EvaluationReport, MetricsJson, PredictionWriter, RunCheckpoint
from deepfake_lightning.data import DeepfakeDataModule
from deepfake_lightning.data import BadImageError, DataError
from deepfake_lightning.data.datamodule import check_data_root
from deepfake_lightning.export import ExportError, is_export, load_weights, read_export_config
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
    _export_dir: str | None = None  # set when --ckpt_path names a `deepfake export` directory

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Always-on callbacks, configurable as --checkpoint.* and --metrics_json.*.
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
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
        if trainer.plugins is None:
            # Checkpoints are written to a temporary file and renamed: a kill mid-write keeps the previous one.
            trainer.plugins = [{"class_path": "deepfake_lightning.files.AtomicCheckpointIO"}]
        if self.subcommand == "fit" and cfg.get("ckpt_path") == "last":
            self._resume_last(cfg)
        if self.subcommand in ("validate", "test", "predict") and cfg.get("ckpt_path"):
            # The checkpoint supplies the weights: do not fetch ImageNet weights only to overwrite them.
            cfg.model.pretrained = False
            cfg.model.weights = None
            if os.path.isdir(cfg.ckpt_path) and not is_export(cfg.ckpt_path):
                raise ExportError(f"--ckpt_path {cfg.ckpt_path} is a folder without detector.json: pass a .ckpt file "
                                  "or a folder written by `deepfake export`")
            if not os.path.exists(cfg.ckpt_path) and cfg.ckpt_path not in ("last", "best", "hpc", "registry"):
                raise FileNotFoundError(f"--ckpt_path: no such checkpoint file or export folder {cfg.ckpt_path!r}")
            if is_export(cfg.ckpt_path):
                # A `deepfake export` directory: build the model it describes, then load its safetensors
                # weights in instantiate_classes; Lightning gets no checkpoint to unpickle.
                export = read_export_config(cfg.ckpt_path)
                cfg.model.backbone, cfg.model.channels_last = export["backbone"], export.get("channels_last", True)
                cfg.data.img_size, cfg.data.mode = export["img_size"], export["mode"]
                self._export_dir, cfg.ckpt_path = cfg.ckpt_path, None
        if torch.cuda.is_available():
            torch.set_float32_matmul_precision("high")

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        if self._export_dir is not None:
            load_weights(self.model, self._export_dir)

    @staticmethod
    def _resume_last(cfg) -> None:
        """``fit --ckpt_path last``: continue the newest run that has a ``last.ckpt``, in its own run directory
        (same TensorBoard version, same checkpoints folder) and with its saved train/val split."""
        logger = cfg.trainer.logger
        if not (isinstance(logger, dict) and logger.get("class_path", "").endswith("TensorBoardLogger")):
            return  # a custom logger: leave "last" to Lightning's own lookup
        args = logger.setdefault("init_args", {})
        logs = Path(args.get("save_dir") or ".") / (args.get("name") or "lightning_logs")
        found = sorted(logs.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise FileNotFoundError(
                f"--ckpt_path last: no {logs}/*/checkpoints/last.ckpt to resume; run without --ckpt_path to start anew"
            )
        run = found[-1].parent.parent
        args["version"] = run.name
        cfg.ckpt_path = str(found[-1])
        if cfg.data.split_file is None and (run / "split.csv").is_file():
            cfg.data.split_file = str(run / "split.csv")
        print(f"Resuming {run} from {found[-1]}", file=sys.stderr)
        warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")  # by design

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
                       "More commands: `deepfake calibrate --help`, `deepfake explain --help`, `deepfake export --help`, "
                       "`deepfake sweep --help`."},
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


def export_main(args: list[str]) -> Path:
    """``deepfake export --ckpt_path CKPT --out DIR``: see ``deepfake_lightning/export.py``."""
    import argparse

    from deepfake_lightning.export import CONFIG_FILE, WEIGHTS_FILE, export_checkpoint

    parser = argparse.ArgumentParser(
        prog="deepfake export",
        description="Write a checkpoint as DIR/model.safetensors + DIR/detector.json: a model directory that "
        "`deepfake predict|test|explain --ckpt_path DIR` and load_detector(DIR) read without unpickling anything. "
        "Checkpoints are pickles: export only checkpoints you trust; the export is then safe to share.",
    )
    parser.add_argument("--ckpt_path", required=True, help="checkpoint written by deepfake fit")
    parser.add_argument("--out", required=True, help="output directory")
    a = parser.parse_args(args)
    out = export_checkpoint(a.ckpt_path, a.out)
    config = read_export_config(out)
    temperature = f", temperature {config['temperature']:.4f}" if config["temperature"] is not None else ""
    print(f"Exported {a.ckpt_path} -> {out / WEIGHTS_FILE} ({(out / WEIGHTS_FILE).stat().st_size / 1e6:.1f} MB) and "
          f"{out / CONFIG_FILE}: {config['backbone']}, {config['img_size']} px {config['mode']}, threshold "
          f"{config['threshold']:.4f}{temperature}")
    return out


def main() -> None:
    """Console entry point. Input errors (missing data, bad CSVs or images, unavailable weights) print one
    clear message and exit with status 2; set DEEPFAKE_TRACEBACK=1 to see the full traceback instead."""
    try:
        if sys.argv[1:2] == ["calibrate"]:
            calibrate_main(sys.argv[2:])
            return
        if sys.argv[1:2] == ["export"]:
            export_main(sys.argv[2:])
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
            SweepConfigError, ExportError) as e:
        if os.environ.get("DEEPFAKE_TRACEBACK"):
            raise
        print(f"deepfake: error: {e}", file=sys.stderr)
        sys.exit(2)
    except FloatingPointError as e:  # a numerical fault in training: the message names the step and the checkpoint
        if os.environ.get("DEEPFAKE_TRACEBACK"):
            raise
        print(f"deepfake: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
