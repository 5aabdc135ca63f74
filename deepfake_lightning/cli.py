"""The ``deepfake`` command.

``fit|validate|test|predict`` are LightningCLI (``deepfake_lightning/lightning_cli.py``); every other command lives
with its feature and is dispatched from ``ARGPARSE_COMMANDS``. This module imports nothing heavy at the top: ``deepfake
--help`` and the argparse commands' ``--help`` answer without loading torch, and each command imports what it needs.
"""

from __future__ import annotations

import difflib
import os
import sys
from importlib import import_module

from deepfake_lightning.errors import DeepfakeError

COMMANDS = {
    "fit": "train a detector (LightningCLI): deepfake fit --config configs/demo.yaml",
    "validate": "validation metrics of a checkpoint",
    "test": "evaluate a checkpoint on validation and every test split: report.json, plots, predictions",
    "predict": "calibrated predictions and a Kaggle submission for a split or for image files",
    "calibrate": "fit the calibrator and decision threshold of an existing checkpoint",
    "adapt": "adapt a detector to a new generator from a few of its images (fine-tuning with replay)",
    "timeline": "the chronological protocol: train on the earliest generators, adapt in release order, Next/Past AUROC",
    "audit": "audit a dataset: file-format shortcuts, and train/test leakage (exact and near duplicates)",
    "data": "deepfake data scan: what a dataset holds (per split, class, generator), bad files, duplicates; a manifest",
    "compare": "assemble several `deepfake test` cross-dataset tables into one models x test sets matrix and heat map",
    "explain": "Grad-CAM overlays for image files or folders",
    "export": "write a checkpoint as a pickle-free model folder (safetensors and/or ONNX + JSON)",
    "sweep": "an Optuna study over any config key (learning rate, augmentation, threshold criterion...)",
    "serve": "an HTTP API with server-side batching and a web page (LitServe; PyTorch or ONNX Runtime)",
}
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    return (
        "usage: deepfake COMMAND [options]\n\nTrain, evaluate, calibrate, explain, export and tune detectors of "
        "AI-generated images.\n\ncommands:\n" + "\n".join(lines) + "\n\n`deepfake COMMAND --help` shows a "
        "command's options.\n"
    )


def cli_main(args: list[str] | None = None, run: bool = True):
    """Runs ``deepfake fit|validate|test|predict`` (LightningCLI) on ``args`` (default: ``sys.argv[1:]``); tests call
    this directly. Returns the ``DeepfakeCLI``."""
    from deepfake_lightning.lightning_cli import run_lightning_cli

    return run_lightning_cli(args, run)


# --------------------------------------------------------------------------- the other commands
# Each command lives with its feature: "module:function" of its parser and of its entry point (called with the
# arguments after the command's name). Modules are imported only when their command runs, and each parser's module
# imports nothing heavy, so that `deepfake COMMAND --help` answers without loading torch.
ARGPARSE_COMMANDS = {
    "audit": ("deepfake_lightning.commands.audit:audit_parser", "deepfake_lightning.commands.audit:audit_main"),
    "data": ("deepfake_lightning.commands.data:data_parser", "deepfake_lightning.commands.data:data_main"),
    "compare": ("deepfake_lightning.cross_dataset:compare_parser", "deepfake_lightning.cross_dataset:compare_main"),
    "calibrate": (
        "deepfake_lightning.commands.calibration:calibrate_parser",
        "deepfake_lightning.commands.calibration:calibrate_main",
    ),
    "explain": (
        "deepfake_lightning.commands.explain:explain_parser",
        "deepfake_lightning.commands.explain:explain_main",
    ),
    "adapt": ("deepfake_lightning.commands.adapt:adapt_parser", "deepfake_lightning.commands.adapt:adapt_main"),
    "timeline": (
        "deepfake_lightning.commands.timeline:timeline_parser",
        "deepfake_lightning.commands.timeline:timeline_main",
    ),
    "export": ("deepfake_lightning.commands.export:export_parser", "deepfake_lightning.commands.export:export_main"),
    "sweep": ("deepfake_lightning.sweep.spec:sweep_parser", "deepfake_lightning.sweep.run:sweep_main"),
    "serve": ("deepfake_lightning.serving.server:serve_parser", "deepfake_lightning.serving.server:serve_main"),
}


def _resolve(target: str):
    module, name = target.split(":")
    return getattr(import_module(module), name)


def _check_paths(argv: list[str]) -> None:
    """A ``--ckpt_path`` that is not there fails now, in a tenth of a second, not after torch and Lightning load."""
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--ckpt_path=") else None
        if arg == "--ckpt_path" and i + 1 < len(argv):
            value = argv[i + 1]
        if value and value not in ("last", "best", "hpc", "registry", "null") and not os.path.exists(value):
            raise FileNotFoundError(f"no such checkpoint file or export folder: {value!r}")


def _dispatch(argv: list[str]) -> None:
    command = argv[0] if argv else None
    _check_paths(argv[1:])
    if command in (None, "-h", "--help"):
        sys.stdout.write(usage())
        if command is None:
            sys.exit(2)
        return
    if command in ARGPARSE_COMMANDS:
        make_parser, run = ARGPARSE_COMMANDS[command]
        if {"-h", "--help"} & set(argv[1:]):
            _resolve(make_parser)().parse_args(["--help"])  # prints the help and exits, before anything heavy
        _resolve(run)(argv[1:])
        return
    if command not in LIGHTNING_COMMANDS and not command.startswith("-"):
        close = difflib.get_close_matches(command, list(COMMANDS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise DeepfakeError(f"unknown command {command!r}{hint}; commands: {', '.join(COMMANDS)}")
    cli_main(argv)


def torch_mismatch() -> str:
    """What to install when torch and torchvision do not work together (read from the installed metadata, without
    importing either)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        have = f"torch {version('torch')} and torchvision {version('torchvision')}"
    except PackageNotFoundError:
        have = "torch and torchvision"
    return (
        f"{have} do not work together (torchvision's operators do not load into this torch): install a matching "
        "pair of one build, e.g. pip install torch==2.14.1 torchvision==0.29.1, or for CPUs both from "
        "https://download.pytorch.org/whl/cpu"
    )


def error_line(error: BaseException) -> str:
    """An error's message on one line. One raised in a DataLoader worker process, which torch re-raises with the
    worker's whole traceback as its message ("Caught BadImageError in DataLoader worker process 0. Original
    Traceback..."), is the worker's own message; an unreadable image says what to do about it."""
    from deepfake_lightning.errors import BadImageError

    text = str(error)
    if text.startswith("Caught ") and "Original Traceback" in text:
        text = text.rstrip().splitlines()[-1].split(": ", 1)[-1]
    if isinstance(error, BadImageError):
        text += (
            "; pass --data.bad_images skip to leave unreadable images out (each is listed), or list them all first "
            "with `deepfake data scan ROOT`"
        )
    return text


def main(argv: list[str] | None = None) -> None:
    """Console entry point. Input errors (missing data, bad CSVs or images, unavailable weights, bad settings) print
    one ``deepfake: error:`` line and exit with status 2; set DEEPFAKE_TRACEBACK=1 to see the traceback instead."""
    try:
        _dispatch(list(sys.argv[1:] if argv is None else argv))
    except (DeepfakeError, FileNotFoundError, FileExistsError) as e:
        if os.environ.get("DEEPFAKE_TRACEBACK"):
            raise
        print(f"deepfake: error: {error_line(e)}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as e:
        if "torchvision::" not in str(e) or os.environ.get("DEEPFAKE_TRACEBACK"):
            raise
        # torchvision's compiled operators do not load into this torch: the two come from different builds
        print(f"deepfake: error: {torch_mismatch()}", file=sys.stderr)
        sys.exit(2)
    except FloatingPointError as e:  # a numerical fault in training: the message names the step and the checkpoint
        if os.environ.get("DEEPFAKE_TRACEBACK"):
            raise
        print(f"deepfake: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
