"""The ``deepfake`` command.

``fit|validate|test|predict`` are LightningCLI (``deepfake_lightning/lightning_cli.py``); ``calibrate``, ``explain``,
``export`` and ``sweep`` are small argparse commands. This module imports nothing heavy at the top: ``deepfake
--help`` and the argparse commands' ``--help`` answer without loading torch, and each command imports what it needs.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from pathlib import Path

from deepfake_lightning.errors import DeepfakeError

COMMANDS = {
    "fit": "train a detector (LightningCLI): deepfake fit --config configs/demo.yaml",
    "validate": "validation metrics of a checkpoint",
    "test": "evaluate a checkpoint on validation and every test split: report.json, plots, predictions",
    "predict": "calibrated predictions and a Kaggle submission for a split or for image files",
    "calibrate": "fit the calibrator and decision threshold of an existing checkpoint",
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


# --------------------------------------------------------------------------- argparse commands
def calibrate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepfake calibrate",
        description="Calibrate an existing checkpoint on the validation split of --config. Any other "
        "--section.key options (e.g. --calibration.method platt, --calibration.threshold youden, "
        "--data.split_file RUN/split.csv) are read as in `deepfake fit`.",
    )
    parser.add_argument("--ckpt_path", required=True, help="checkpoint to calibrate")
    parser.add_argument("--out", default=None, help="write a calibrated copy here instead of updating the checkpoint")
    return parser


def calibrate_main(args: list[str]):
    """``deepfake calibrate --config C --ckpt_path P [--out P2] [--calibration.method ...] [--data.split_file ...]``:
    fits the calibrator and threshold of an existing checkpoint on the config's validation split and writes
    them into the checkpoint (or a copy at ``--out``). Returns the calibration state."""
    known, rest = calibrate_parser().parse_known_args(args)
    from deepfake_lightning.calibration import CalibrationState
    from deepfake_lightning.checkpoints import is_export, load_checkpoint
    from deepfake_lightning.errors import ConfigError
    from deepfake_lightning.models import DeepfakeClassifier
    from deepfake_lightning.models.outputs import collect_logits

    if is_export(known.ckpt_path):
        raise ConfigError(
            f"--ckpt_path {known.ckpt_path} is an export folder, a published model that is not "
            "changed: calibrate the checkpoint it was exported from, then export it again"
        )
    model = DeepfakeClassifier.from_checkpoint(load_checkpoint(known.ckpt_path))  # refused before anything else runs
    cli = cli_main([*rest, "--model.pretrained=false"], run=False)
    settings = cli.config["calibration"]  # --calibration.method / --calibration.threshold, as `fit` reads them
    cli.datamodule.setup("validate")
    logits, labels = collect_logits(model, cli.datamodule.val_dataloader())
    state = CalibrationState.fit(logits, labels, settings["method"], settings["threshold"])
    out = state.write_into(known.ckpt_path, known.out)
    info = state.summary()
    print(
        f"Calibrated {out} ({info['method']}): val ECE {info['val/ece_before']:.4f} -> {info['val/ece']:.4f}, "
        f"NLL {info['val/nll_before']:.4f} -> {info['val/nll']:.4f}; "
        f"threshold ({info['criterion']}) {info['threshold']:.4f}"
        + (f"; temperature {info['temperature']:.4f}" if "temperature" in info else "")
    )
    return state


def explain_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepfake explain",
        description="Grad-CAM overlays for images or folders of images, with the checkpoint's own preprocessing "
        "and calibration. Writes one PNG per image and explanations.csv (file, prob_ai, label, error) to --out.",
    )
    parser.add_argument("inputs", nargs="+", help="image files and/or directories (searched recursively)")
    parser.add_argument("--ckpt_path", required=True, help="a .ckpt file or a `deepfake export` folder")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--method",
        default="gradcam",
        help="gradcam (default), gradcam++, hirescam, xgradcam, "
        "layercam, eigencam, eigengradcam, gradcamelementwise, scorecam",
    )
    parser.add_argument("--layers", nargs="+", default=None, help="module names to explain (default: by backbone)")
    parser.add_argument("--n_layers", type=int, default=1, help="multi-layer mode: explain this many stages")
    parser.add_argument("--target", default="ai", choices=["ai", "human"])
    parser.add_argument("--batch_size", type=int, default=16)
    return parser


def explain_main(args: list[str]):
    """``deepfake explain IMAGE_OR_DIR... --ckpt_path CKPT --out DIR [--method] [--layers] [--n_layers] [--target]``."""
    parser = explain_parser()
    a = parser.parse_args(args)
    from deepfake_lightning.api import load_detector
    from deepfake_lightning.explain import CAM_METHODS, expand_inputs, explain_files, resolve_layers
    from deepfake_lightning.provenance import DEMO_WARNING, outside_demo_data

    if a.method not in CAM_METHODS:
        parser.error(f"--method {a.method!r}: choose from {', '.join(sorted(CAM_METHODS))}")
    detector = load_detector(a.ckpt_path)
    try:  # before any work or folder: a mistyped layer name is one error line
        resolve_layers(getattr(detector.model, "net", detector.model), a.layers, a.n_layers)
    except ValueError as e:
        parser.error(f"--layers: {e}")
    files = expand_inputs(a.inputs)
    if outside_demo_data(detector.facts, files):
        print(f"deepfake: warning: {DEMO_WARNING}", file=sys.stderr)
    table = explain_files(
        detector,
        files,
        a.out,
        batch_size=a.batch_size,
        method=a.method,
        layers=a.layers,
        n_layers=a.n_layers,
        target=a.target,
    )
    bad = table[table["error"] != ""]
    for _, row in bad.iterrows():
        print(f"deepfake explain: skipped {row['file']}: {row['error']}", file=sys.stderr)
    print(
        f"Explained {len(table) - len(bad)} image(s), skipped {len(bad)}; wrote {Path(a.out) / 'explanations.csv'} "
        "and PNGs"
    )
    return table


def export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepfake export",
        description="Write a checkpoint as DIR/model.safetensors + DIR/detector.json: a model directory that "
        "`deepfake predict|test|explain --ckpt_path DIR` and load_detector(DIR) read without unpickling anything. "
        "Checkpoints are pickles: export only checkpoints you trust; the export is then safe to share.",
    )
    parser.add_argument("--ckpt_path", required=True, help="checkpoint written by deepfake fit")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--format",
        nargs="+",
        default=["safetensors"],
        choices=["safetensors", "onnx"],
        help="weights to write: safetensors (default; PyTorch), onnx (ONNX Runtime, dynamic batch "
        "axis; for `deepfake serve --runtime onnx`), or both: --format safetensors onnx",
    )
    return parser


def export_main(args: list[str]) -> Path:
    """``deepfake export --ckpt_path CKPT --out DIR [--format safetensors onnx]``: see
    ``deepfake_lightning/export.py``."""
    a = export_parser().parse_args(args)
    from deepfake_lightning.checkpoints import CONFIG_FILE, read_export_config
    from deepfake_lightning.export import WEIGHTS_FILE, export_checkpoint
    from deepfake_lightning.onnx_export import ONNX_FILE

    out = export_checkpoint(a.ckpt_path, a.out, a.format)
    config = read_export_config(out)
    temperature = f", temperature {config['temperature']:.4f}" if config["temperature"] is not None else ""
    files = [out / name for fmt, name in (("safetensors", WEIGHTS_FILE), ("onnx", ONNX_FILE)) if fmt in a.format]
    written = ", ".join(f"{f} ({f.stat().st_size / 1e6:.1f} MB)" for f in files)
    print(
        f"Exported {a.ckpt_path} -> {written} and {out / CONFIG_FILE}: {config['backbone']}, {config['img_size']} "
        f"px {config['mode']}, threshold {config['threshold']:.4f}{temperature}"
    )
    return out


def sweep_parser():
    from deepfake_lightning.sweep_spec import sweep_parser

    return sweep_parser()


def sweep_main(args: list[str]):
    from deepfake_lightning.sweep import sweep_main

    return sweep_main(args)


def serve_parser():
    from deepfake_lightning.serving.server import serve_parser

    return serve_parser()


def serve_main(args: list[str]):
    from deepfake_lightning.serving.server import serve_main

    return serve_main(args)


ARGPARSE_COMMANDS = {
    "calibrate": (calibrate_parser, calibrate_main),
    "explain": (explain_parser, explain_main),
    "export": (export_parser, export_main),
    "sweep": (sweep_parser, sweep_main),
    "serve": (serve_parser, serve_main),
}


def _dispatch(argv: list[str]) -> None:
    command = argv[0] if argv else None
    if command in (None, "-h", "--help"):
        sys.stdout.write(usage())
        if command is None:
            sys.exit(2)
        return
    if command in ARGPARSE_COMMANDS:
        make_parser, run = ARGPARSE_COMMANDS[command]
        if {"-h", "--help"} & set(argv[1:]):
            make_parser().parse_args(["--help"])  # prints the help and exits, before anything heavy is imported
        run(argv[1:])
        return
    if command not in LIGHTNING_COMMANDS and not command.startswith("-"):
        close = difflib.get_close_matches(command, list(COMMANDS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise DeepfakeError(f"unknown command {command!r}{hint}; commands: {', '.join(COMMANDS)}")
    cli_main(argv)


def main(argv: list[str] | None = None) -> None:
    """Console entry point. Input errors (missing data, bad CSVs or images, unavailable weights, bad settings) print
    one ``deepfake: error:`` line and exit with status 2; set DEEPFAKE_TRACEBACK=1 to see the traceback instead."""
    try:
        _dispatch(list(sys.argv[1:] if argv is None else argv))
    except (DeepfakeError, FileNotFoundError, FileExistsError) as e:
        if os.environ.get("DEEPFAKE_TRACEBACK"):
            raise
        print(f"deepfake: error: {e}", file=sys.stderr)
        sys.exit(2)
    except FloatingPointError as e:  # a numerical fault in training: the message names the step and the checkpoint
        if os.environ.get("DEEPFAKE_TRACEBACK"):
            raise
        print(f"deepfake: error: {e}", file=sys.stderr)
        sys.exit(1)


def __getattr__(name: str):
    # Kept importable from here for scripts written against earlier versions, without importing torch up front.
    if name in ("DeepfakeCLI", "resolve_precision"):
        from deepfake_lightning import lightning_cli

        return getattr(lightning_cli, name)
    raise AttributeError(name)


if __name__ == "__main__":
    main()
