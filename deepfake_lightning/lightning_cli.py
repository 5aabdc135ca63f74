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

import contextlib
import copy
import difflib
import logging
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from deepfake_lightning.callbacks import Calibration, EvaluationReport, MetricsJson, PredictionWriter, RunCheckpoint
from deepfake_lightning.callbacks.run_summary import FitSummary
from deepfake_lightning.checkpoints import is_export, load_checkpoint, stored_settings
from deepfake_lightning.data import DeepfakeDataModule
from deepfake_lightning.data.datamodule import check_data_root
from deepfake_lightning.data.dataset import expand_inputs
from deepfake_lightning.errors import ConfigError, DataError
from deepfake_lightning.export.folder import load_weights
from deepfake_lightning.models import DeepfakeClassifier
from deepfake_lightning.settings import InferenceSettings

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


class _StrictLoader(yaml.SafeLoader):
    """YAML that refuses a mapping naming a key twice (PyYAML keeps the last silently: a test set given twice under
    one name would lose the first)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"{key!r} is given twice in one mapping (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep)


def check_duplicate_keys(argv: list[str]) -> None:
    """One error line for a key given twice in a ``--config`` file or in a mapping value on the command line
    (``--data.test_sets '{a: x, a: y}'``), naming where."""
    pairs = [a.split("=", 1) if "=" in a else [a, argv[i + 1] if i + 1 < len(argv) else ""] for i, a in enumerate(argv)]
    for flag, value in pairs:
        if not flag.startswith("--") or not value:
            continue
        is_file = flag == "--config" and Path(value).is_file()
        if not is_file and not value.lstrip().startswith(("{", "[")):
            continue
        try:
            yaml.load(Path(value).read_text() if is_file else value, Loader=_StrictLoader)
        except ConfigError as e:
            raise ConfigError(f"{value if is_file else flag}: {e}") from None
        except yaml.YAMLError:
            continue  # not YAML: the parser says what is wrong with it


def command_line_keys(argv: list[str]) -> list[str]:
    """Config keys set on the command line (``--model.tta_flip true``, ``--data.img_size=64``), in order."""
    return [a[2:].split("=", 1)[0] for a in argv if re.match(r"--(model|data|trainer)\.", a)]


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


class DeepfakeArgumentParser(LightningArgumentParser):
    """LightningCLI's parser with a one-line error: the problem, a "did you mean" for a mistyped key, and where the
    help is, instead of the whole usage. A key that only a ``--config`` file sets is named with that file."""

    argv: list[str] = []  # the command line being parsed (set by DeepfakeCLI.parse_arguments)

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        message = " ".join(str(message).split())  # jsonargparse wraps and indents its messages
        bad_class = re.search(r"Problem with given class_path '([^']+)': (.+?)(?: - |$)", message)
        if bad_class:  # instead of a page listing every Union subtype it tried
            key = re.search(r'Parser key "([^"]+)"', message)
            message = (
                f"{key.group(1) + ': ' if key else ''}class_path '{bad_class.group(1)}' cannot be used "
                f"({bad_class.group(2).strip()})"
            )
        hint = ""
        unknown = re.search(r"(?:--|key \"|option ')([A-Za-z_][\w.]*)", message)
        if unknown:
            source = _config_file_setting(DeepfakeArgumentParser.argv, unknown.group(1))
            if source:
                message = f"{source}: {message}"
            known = {o.lstrip("-") for a in parser._actions for o in a.option_strings if o.startswith("--")}
            known |= {k for k in _nested_keys(parser) if "." in k}
            close = difflib.get_close_matches(unknown.group(1), sorted(known), n=1, cutoff=0.75)
            if close and close[0] != unknown.group(1):
                hint = f" (did you mean --{close[0]}?)"
        sys.stderr.write(f"deepfake: error: {message}{hint}\n  `{prog} --help` lists every option.\n")
        sys.exit(2)


def _config_file_setting(argv: list[str], key: str) -> str | None:
    """The first ``--config`` file on ``argv`` that sets ``key`` (``data.img_size``), or None."""
    import yaml

    files = [b for a, b in zip(argv, argv[1:], strict=False) if a in ("-c", "--config")]
    files += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for name in files:
        try:
            node = yaml.safe_load(Path(name).read_text())
        except (OSError, yaml.YAMLError):  # an inline JSON/YAML string, or a file the parser reports itself
            continue
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            return name
    return None


def _nested_keys(parser) -> list[str]:
    try:
        return list(parser.get_defaults().keys())
    except Exception:  # defaults that cannot be resolved: the option strings still give suggestions
        return []


class _LightningNoise(logging.Filter):
    """Drops two of Lightning's info lines that say nothing to our users: the advert for its cloud logger, printed
    on every command, and the note that the training loader is read to count the scheduler's steps."""

    NOISE = ("💡 Tip: For seamless cloud logging", "Loading `train_dataloader` to estimate number of stepping batches")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.NOISE)


def _install_noise_filter() -> None:
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _LightningNoise) for f in logger.filters):
        logger.addFilter(_LightningNoise())


class DeepfakeCLI(LightningCLI):
    _export_dir: str | None = None  # set when --ckpt_path names a `deepfake export` directory
    _given: dict  # config keys set on the command line -> their parsed values
    _configured_backbone: str | None = None  # model.backbone before a --ckpt_path's hyperparameters replaced it

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
            load_checkpoint(ckpt_path, metadata_only=True)
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
            self._apply_stored_settings(cfg, stored_settings(ckpt_path))
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
                trainer.logger = _tensorboard(str(out.parent), name="", version=out.name)
        if trainer.logger in (None, True) and not trainer.barebones:
            trainer.logger = _tensorboard(trainer.default_root_dir or ".", name="lightning_logs")
        if trainer.plugins is None:
            # Checkpoints are read with weights_only and written to a temporary file then renamed (checkpoints.py).
            trainer.plugins = [{"class_path": "deepfake_lightning.checkpoints.SafeCheckpointIO"}]
        if self.subcommand == "fit" and ckpt_path == "last":
            self._resume_last(cfg)
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
            load_weights(self.model, self._export_dir)

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

    @staticmethod
    def _resume_last(cfg) -> None:
        """``fit --ckpt_path last``: continue the newest run that has a ``last.ckpt``, in its own run directory
        (same TensorBoard version, same checkpoints folder) and with its saved train/val split."""
        logger = cfg.trainer.logger
        if not (isinstance(logger, dict) and logger.get("class_path", "").endswith("TensorBoardLogger")):
            return  # a custom logger: leave "last" to Lightning's own lookup
        args = logger.setdefault("init_args", {})
        logs = Path(args.get("save_dir") or ".") / (args.get("name") or "lightning_logs")

        def trained_at(last: Path) -> float:
            # When the run last trained: its own TensorBoard events (evaluations log under RUN/eval/), not the
            # checkpoint's mtime, which `deepfake test` changes when it records its results in the checkpoint.
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

    def validate(self, model, datamodule=None, ckpt_path=None, verbose: bool = True, **kwargs):
        # One summary line from MetricsJson instead of Lightning's wide table of raw floats.
        return self.trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False, **kwargs)

    def test(self, model, datamodule=None, ckpt_path=None, verbose: bool = True, **kwargs):
        # Metric names already carry the split, so Lightning's per-dataloader table would repeat every one in
        # every column; EvaluationReport prints one compact table instead.
        return self.trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False, **kwargs)


def _tensorboard(save_dir: str, **init_args) -> dict:
    return {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": save_dir, "default_hp_metric": False, **init_args},
    }


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


def run_lightning_cli(args: list[str] | None = None, run: bool = True) -> DeepfakeCLI:
    """Runs the CLI on ``args`` (default: ``sys.argv[1:]``). With ``run=False`` the caller runs the trainer, inside
    :func:`lightning_warnings` for the same console."""
    _install_noise_filter()
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
