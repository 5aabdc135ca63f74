"""``deepfake calibrate``: fits the calibrator and decision threshold of an existing checkpoint (the command line is
``fit``'s, through LightningCLI, for the data and calibration settings). Imports nothing heavy at the top, so that
``deepfake calibrate --help`` answers at once."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deepfake_lightning.calibration.state import CalibrationState

from deepfake_lightning.commands import DataOptionsHelp, data_options_epilog


def calibrate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepfake calibrate",
        description="Calibrate an existing checkpoint on the validation split of --config. Any other "
        "--section.key options (e.g. --calibration.method platt, --calibration.threshold youden, "
        "--data.split_file RUN/split.csv) are read as in `deepfake fit`. --data.eval_views tiles (with "
        "--model.tile_pooling) calibrates the whole-image tiled verdict, which the model then gives by default.",
        epilog=data_options_epilog(),
        formatter_class=DataOptionsHelp,
    )
    parser.add_argument("--ckpt_path", required=True, help="checkpoint to calibrate")
    parser.add_argument("--out", default=None, help="write a calibrated copy here instead of updating the checkpoint")
    return parser


def calibrate_main(args: list[str]) -> CalibrationState:
    """``deepfake calibrate --config C --ckpt_path P [--out P2] [--calibration.method ...] [--data.split_file ...]``:
    fits the calibrator and threshold of an existing checkpoint on the config's validation split and writes
    them into the checkpoint (or a copy at ``--out``). Returns the calibration state."""
    known, rest = calibrate_parser().parse_known_args(args)
    from deepfake_lightning.calibration import CalibrationState, evaluation_of
    from deepfake_lightning.calibration.state import EVALUATION_KEYS, guarantee_line
    from deepfake_lightning.checkpoints import is_export
    from deepfake_lightning.errors import ConfigError
    from deepfake_lightning.lightning_cli import run_lightning_cli
    from deepfake_lightning.model_file import read_model_file
    from deepfake_lightning.models.outputs import collect_logits

    if is_export(known.ckpt_path):
        raise ConfigError(
            f"--ckpt_path {known.ckpt_path} is an export folder, a published model that is not "
            "changed: calibrate the checkpoint it was exported from, then export it again"
        )
    model = read_model_file(known.ckpt_path).build()  # refused before anything else runs
    cli = run_lightning_cli([*rest, "--model.pretrained=false"], run=False)
    settings = cli.config["calibration"]  # --calibration.method / --calibration.threshold, as `fit` reads them
    for key in EVALUATION_KEYS["model"]:  # --model.tile_pooling on the command line: calibrate another pooling
        if any(arg.split("=")[0] == f"--model.{key}" for arg in rest):
            model.hparams[key] = cli.config["model"][key]
    cli.datamodule.setup("validate")
    logits, labels = collect_logits(model, cli.datamodule.val_dataloader())
    evaluation = evaluation_of(cli.datamodule.hparams, model.hparams)
    state = CalibrationState.fit(
        logits, labels, settings["method"], settings["threshold"], evaluation, settings["confidence"]
    )
    out = state.write_into(known.ckpt_path, known.out)
    info = state.summary()
    print(
        f"Calibrated {out} ({info['method']}): val ECE {info['val/ece_before']:.4f} -> {info['val/ece']:.4f}, "
        f"NLL {info['val/nll_before']:.4f} -> {info['val/nll']:.4f}; "
        f"threshold ({info['criterion']}) {info['threshold']:.4f}"
        + (f"; temperature {info['temperature']:.4f}" if "temperature" in info else "")
        + guarantee_line(state)
        + (
            f"; on tiles ({model.settings.tile_pooling} pooling): the model's verdicts score tiles from now on"
            if evaluation["data"]["eval_views"] == "tiles"
            else ""
        )
    )
    if state.calibrator.bound_line():
        print(f"Calibration: {state.calibrator.bound_line()}")
    return state
