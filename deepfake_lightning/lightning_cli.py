"""``DeepfakeCLI``: LightningCLI's ``fit|validate|test|predict`` over the package's classes.

Every ``__init__`` argument of ``DeepfakeClassifier``, ``DeepfakeDataModule`` and ``Trainer`` is a config key
(``--model.backbone``, ``--data.root``, ``--trainer.max_epochs``...); ``--config`` files merge in order, and
``--print_config`` shows the result. Settings shared by every config live here and in those signatures.

How settings combine, lowest to highest: the signatures' defaults, the ``--config`` files in order, the settings
stored with the model given as ``--ckpt_path`` (its ``model.*`` hyperparameters, the preprocessing
``data.img_size`` / ``data.mode`` and the training-row filter ``data.train_query`` it was trained with), and the
command line, which always wins. What was used is
what the run's ``config.yaml`` records.
"""

from __future__ import annotations

import copy
import sys
import warnings
from pathlib import Path

import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from deepfake_lightning.callbacks import Calibration, EvaluationReport, MetricsJson, PredictionWriter, RunCheckpoint
from deepfake_lightning.callbacks.run_summary import FitSummary
from deepfake_lightning.checkpoints import is_export
from deepfake_lightning.cli_parser import DeepfakeArgumentParser, check_duplicate_keys, command_line_keys
from deepfake_lightning.data import DeepfakeDataModule
from deepfake_lightning.data.datamodule import check_data_root
from deepfake_lightning.data.dataset import expand_inputs
from deepfake_lightning.errors import ConfigError, DataError
from deepfake_lightning.model_file import read_model_file
from deepfake_lightning.models import DeepfakeClassifier
from deepfake_lightning.runs import (
    evaluation_dir,
    install_noise_filter,
    lightning_warnings,
    resolve_precision,
    resume_last,
    tensorboard_logger,
)
from deepfake_lightning.settings import InferenceSettings

__all__ = ["DeepfakeCLI", "lightning_warnings", "resolve_precision", "run_lightning_cli"]

# Preprocessing that belongs to a trained model: taken from its checkpoint unless the command line says otherwise.
# The data settings a model keeps: its preprocessing, and the training-row filter its train/val split came from.
STORED_DATA_KEYS = (
    # its inference settings (settings.py) but mean and std, which follow its backbone (model.data_config)
    *(k for k in InferenceSettings.DATA_KEYS if k not in ("mean", "std")), "train_query",
    # how its training data was read, so that an evaluation rebuilds the same validation split (data/sources.py)
    "layout", "label_dirs", "path_column", "label_column", "generator_column", "split_column", "train_sets", "balance",
)  # fmt: skip
EVAL_SUBCOMMANDS = ("validate", "test", "predict")
LIGHTNING_CKPT_NAMES = (None, "last", "best", "hpc", "registry")  # --ckpt_path values that are not our files


def _check_predict_paths(paths: list[str]) -> None:
    """Before an evaluation folder is made for a run that cannot happen: no file listed, or none of them there. Some
    missing files are rows with their error in the predictions."""
    listed = expand_inputs(paths, keep_missing=True)
    if not listed:
        raise DataError(f"data.predict_paths {paths} holds no files")
    if not any(p.exists() for p in listed):
        raise FileNotFoundError(f"no such file or directory: {', '.join(map(str, listed))}")


class DeepfakeCLI(LightningCLI):
    _export_dir: str | None = None  # set when --ckpt_path names a `deepfake export` directory
    _given: dict  # config keys set on the command line -> their parsed values
    _configured_backbone: str | None = None  # model.backbone before a --ckpt_path's hyperparameters replaced it
    _model_file = None  # --ckpt_path, read once (model_file.py)

    def init_parser(self, **kwargs) -> LightningArgumentParser:
        kwargs.setdefault("dump_header", ["deepfake-lightning run configuration"])
        parser = DeepfakeArgumentParser(**kwargs)
        from jsonargparse import ActionConfigFile

        parser.add_argument("-c", "--config", action=ActionConfigFile, help="Path to a configuration file (YAML).")
        return parser

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
        parser.add_lightning_class_args(Calibration, "calibration")
        parser.add_lightning_class_args(MetricsJson, "metrics_json")
        parser.add_lightning_class_args(EvaluationReport, "report")
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        # One label-shift setting for test (Calibration) and predict (PredictionWriter).
        parser.link_arguments("calibration.adapt_splits", "predictions.adapt_splits")
        parser.link_arguments("calibration.shift_tolerance", "predictions.shift_tolerance")
        # One stability setting for test (EvaluationReport) and predict (PredictionWriter).
        parser.link_arguments("report.stability", "predictions.stability")
        parser.link_arguments("report.stability_tolerance", "predictions.stability_tolerance")
        # One evidence setting for test (EvaluationReport) and predict (PredictionWriter).
        parser.link_arguments("report.evidence", "predictions.evidence")
        parser.link_arguments("report.trust_anchors", "predictions.trust_anchors")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        # Normalization follows the backbone's own timm data config.
        parser.link_arguments(
            "model.data_config", "data.mean", compute_fn=lambda c: tuple(c["mean"]), apply_on="instantiate"
        )
        parser.link_arguments(
            "model.data_config", "data.std", compute_fn=lambda c: tuple(c["std"]), apply_on="instantiate"
        )

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        # As LightningCLI's, minus its warning about `args` beside sys.argv (calibrate and sweeps pass `args` from a
        # running `deepfake` command), plus a record of which keys the command line set: those win over the
        # settings stored in a checkpoint (see `before_instantiate_classes`).
        from jsonargparse import Namespace

        if isinstance(args, (dict, Namespace)):
            DeepfakeArgumentParser.argv = []
            self.config, argv = parser.parse_object(args), []
        else:
            argv = list(sys.argv[1:] if args is None else args)
            DeepfakeArgumentParser.argv = argv  # for naming the config file of an unknown key
            check_duplicate_keys(argv)
            self.config = parser.parse_args(argv)
        section = self.config.get(self.config.get("subcommand") or "", self.config)
        self._given = {k: copy.deepcopy(section.get(k)) for k in command_line_keys(argv) if k in section}

    def _parse_ckpt_path(self) -> None:
        # Lightning reads --ckpt_path's hyperparameters here with torch.load(weights_only=True) and lets a refusal
        # through as a traceback: the file is read through checkpoints.py first, whose error is one line.
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and Path(ckpt_path).is_file():
            self._model_file = read_model_file(ckpt_path, metadata_only=True)
        # What the config files said, before Lightning puts the checkpoint's hyperparameters in its place.
        self._configured_backbone = self.config[subcommand].model.backbone if subcommand else None
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        ckpt_path = cfg.get("ckpt_path")
        if ckpt_path not in LIGHTNING_CKPT_NAMES:
            if self.subcommand == "fit" and is_export(ckpt_path):
                raise ConfigError(
                    f"fit --ckpt_path {ckpt_path}: an export folder holds weights only (no optimizer "
                    f"state or epoch) and cannot be resumed; to train from its weights pass "
                    f"--model.weights {Path(ckpt_path) / 'model.safetensors'} instead"
                )
            # Read with weights_only (checkpoints.py): a crafted checkpoint is refused here, before anything runs.
            model_file = self._model_file or read_model_file(ckpt_path, metadata_only=True)
            self._apply_stored_settings(cfg, model_file.stored)
        files_only = self.subcommand == "predict" and cfg.data.predict_paths  # needs no training data
        if files_only:
            _check_predict_paths(cfg.data.predict_paths)
        if not cfg.data.demo and not files_only:
            # Fail before the model is built (and ImageNet weights fetched) when the data is not there.
            check_data_root(cfg.data.root, cfg.data.train_csv, cfg.data.layout)
        trainer = cfg.trainer
        trainer.precision = resolve_precision(trainer.precision, trainer.accelerator, torch.cuda.is_available())
        if self.subcommand in EVAL_SUBCOMMANDS and ckpt_path not in LIGHTNING_CKPT_NAMES:
            # Evaluations of a model go with that model's run, not into a new lightning_logs/version_N.
            out = evaluation_dir(ckpt_path, self.subcommand, trainer.default_root_dir)
            trainer.default_root_dir = str(out)
            if trainer.logger in (None, True):
                trainer.logger = tensorboard_logger(str(out.parent), name="", version=out.name)
        if trainer.logger in (None, True) and not trainer.barebones:
            trainer.logger = tensorboard_logger(trainer.default_root_dir or ".", name="lightning_logs")
        if trainer.plugins is None:
            # Checkpoints are read with weights_only and written to a temporary file then renamed (checkpoints.py).
            trainer.plugins = [{"class_path": "deepfake_lightning.checkpoints.SafeCheckpointIO"}]
        if self.subcommand == "fit" and ckpt_path == "last":
            resume_last(cfg)
        if is_export(cfg.get("ckpt_path")):
            # A `deepfake export` directory: the model it describes is built, then its safetensors weights are
            # loaded in instantiate_classes; Lightning gets no checkpoint to unpickle.
            self._export_dir, cfg.ckpt_path = cfg.ckpt_path, None
        if torch.cuda.is_available():
            torch.set_float32_matmul_precision("high")

    def _apply_stored_settings(self, cfg, stored: dict[str, dict]) -> None:
        """Config files < the model's stored settings < the command line (see the module docstring)."""
        backbone = stored["model"].get("backbone")
        given_backbone = self._given.get("model.backbone")
        if given_backbone is not None and given_backbone != (backbone or given_backbone):
            raise ConfigError(
                f"--model.backbone {given_backbone} contradicts --ckpt_path {cfg.ckpt_path}, a "
                f"{backbone} model: its weights fit only that backbone"
            )
        configured = self._configured_backbone  # by the config files (Lightning has put the checkpoint's in since)
        if self.subcommand == "fit" and backbone and configured not in (None, backbone) and given_backbone is None:
            rank_zero_info(
                f"--ckpt_path {cfg.ckpt_path} is a {backbone} model: its backbone is used instead of the "
                f"configured {configured}"
            )
        data = {k: v for k, v in stored["data"].items() if k in STORED_DATA_KEYS}
        for section, values in {"model": stored["model"], "data": data}.items():
            for key, value in values.items():
                if f"{section}.{key}" in cfg:
                    cfg[f"{section}.{key}"] = value
        for key, value in self._given.items():  # Lightning's own checkpoint parsing may have overwritten them
            cfg[key] = copy.deepcopy(value)
        # The checkpoint supplies the weights: never fetch ImageNet weights only to overwrite them.
        cfg.model.pretrained = False
        cfg.model.weights = None

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        if self._export_dir is not None:
            read_model_file(self._export_dir).load_into(self.model)

    def instantiate_trainer(self, **kwargs):
        """LightningCLI's, with the framework's callbacks stepping aside (one line each) when the user turned off
        what they need, instead of Lightning refusing the combination."""
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        trainer = cfg.trainer
        parser = self._parser(self.subcommand)
        keys = list(parser.callback_keys)
        aside = {}
        if trainer.enable_checkpointing is False or trainer.barebones:
            aside["checkpoint"] = (
                "trainer.enable_checkpointing=false: no checkpoints are written; calibration "
                "is fitted on the final weights and kept in memory only"
                if self.subcommand == "fit"
                else ""
            )
        if trainer.logger is False or trainer.barebones:
            aside["lr_monitor"] = (
                "trainer.logger=false: no TensorBoard logs and no learning-rate monitor; "
                f"files go to trainer.default_root_dir ({Path(trainer.default_root_dir or '.').resolve()})"
            )
        for key, why in aside.items():
            if why and key in keys:
                rank_zero_info(why)
        if "checkpoint" in aside and self.subcommand in EVAL_SUBCOMMANDS:
            # Lightning's advice to re-create the callbacks that wrote the checkpoint: the user turned this one off.
            warnings.filterwarnings("ignore", message="Be aware that when using `ckpt_path`, callbacks used to create")
        parser.callback_keys = [k for k in keys if k not in aside]
        # Says why fit stopped when trainer.max_time ended it (given the budget: callbacks never search the trainer's).
        self.trainer_defaults["callbacks"] = [FitSummary(trainer.max_time)]
        try:
            return super().instantiate_trainer(**kwargs)
        except (ValueError, MisconfigurationException) as e:  # Lightning's own checks of its arguments
            raise ConfigError(f"trainer settings cannot be used together: {e}") from e
        finally:
            parser.callback_keys = keys

    def validate(self, model, datamodule=None, ckpt_path=None, verbose: bool = True, **kwargs):
        # One summary line from MetricsJson instead of Lightning's wide table of raw floats.
        return self.trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False, **kwargs)

    def test(self, model, datamodule=None, ckpt_path=None, verbose: bool = True, **kwargs):
        # Metric names already carry the split, so Lightning's per-dataloader table would repeat every one in
        # every column; EvaluationReport prints one compact table instead.
        return self.trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False, **kwargs)


def run_lightning_cli(args: list[str] | None = None, run: bool = True) -> DeepfakeCLI:
    """Runs the CLI on ``args`` (default: ``sys.argv[1:]``). With ``run=False`` the caller runs the trainer, inside
    :func:`lightning_warnings` for the same console."""
    install_noise_filter()
    with lightning_warnings():
        return DeepfakeCLI(
            DeepfakeClassifier,
            DeepfakeDataModule,
            seed_everything_default=42,
            trainer_defaults={"max_epochs": 10},
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            parser_kwargs={
                "prog": "deepfake",
                "description": "Train, evaluate and predict with deepfake-lightning "
                "detectors. `deepfake --help` lists every command.",
            },
            args=args,
            run=run,
        )
