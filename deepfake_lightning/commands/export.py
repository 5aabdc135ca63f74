"""``deepfake export``: a checkpoint as a pickle-free model folder (see ``folder.py``). Imports nothing heavy at the
top, so that ``deepfake export --help`` answers at once."""

from __future__ import annotations

import argparse
from pathlib import Path


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
    ``deepfake_lightning/export/folder.py``."""
    a = export_parser().parse_args(args)
    from deepfake_lightning.checkpoints import CONFIG_FILE, export_settings, read_export_config
    from deepfake_lightning.export.folder import WEIGHTS_FILE, export_checkpoint
    from deepfake_lightning.export.onnx import ONNX_FILE
    from deepfake_lightning.settings import InferenceSettings

    out = export_checkpoint(a.ckpt_path, a.out, a.format)
    config = read_export_config(out)
    temperature = f", temperature {config['temperature']:.4f}" if config["temperature"] is not None else ""
    settings = InferenceSettings.from_stored(export_settings(config))
    tiles = f", whole-image verdict from {settings.describe()}" if settings.tiled else ""
    files = [out / name for fmt, name in (("safetensors", WEIGHTS_FILE), ("onnx", ONNX_FILE)) if fmt in a.format]
    written = ", ".join(f"{f} ({f.stat().st_size / 1e6:.1f} MB)" for f in files)
    print(
        f"Exported {a.ckpt_path} -> {written} and {out / CONFIG_FILE}: {config['backbone']}, {config['img_size']} "
        f"px {config['mode']}{tiles}, threshold {config['threshold']:.4f}{temperature}"
    )
    return out
