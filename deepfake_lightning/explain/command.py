"""``deepfake explain``: Grad-CAM overlays for image files and folders, with a model's own preprocessing and
calibration. Imports nothing heavy at the top, so that ``deepfake explain --help`` answers at once."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


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
    from deepfake_lightning.data.dataset import expand_inputs
    from deepfake_lightning.explain.cam import CAM_METHODS, explain_files, resolve_layers
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
        f"Explained {len(table) - len(bad)} image(s), skipped {len(bad)}; wrote their PNGs and rows in "
        f"{Path(a.out) / 'explanations.csv'}"
    )
    return table
