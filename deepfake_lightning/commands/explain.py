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
        "and calibration. Writes one PNG per image and explanations.csv (file, prob_ai, label, error) to --out. "
        "With --map true, score maps instead: each whole image scored as tiles at native resolution, "
        "<stem>_map.png and <stem>_tiles.csv (x,y,size,prob_ai) per image, and the tiled verdict.",
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
    parser.add_argument(
        "--map",
        type=_boolean,
        default=None,
        help="true: score maps of whole images (crop-mode models); default: true for a model whose verdict "
        "scores tiles, false otherwise",
    )
    parser.add_argument(
        "--trust_anchors", default=None, help="PEM file of certificates whose C2PA signers count as valid"
    )
    parser.add_argument("--tile_stride", type=_positive, default=None, help="with --map: pixels between tiles")
    parser.add_argument("--max_tiles", type=_positive, default=None, help="with --map: most tiles per image")
    return parser


def _boolean(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {value!r}")
    return number


def explain_main(args: list[str]):
    """``deepfake explain IMAGE_OR_DIR... --ckpt_path CKPT --out DIR [--method] [--layers] [--n_layers] [--target]``."""
    parser = explain_parser()
    a = parser.parse_args(args)
    from deepfake_lightning.data.dataset import expand_inputs
    from deepfake_lightning.detector import load_detector
    from deepfake_lightning.explain.cam import CAM_METHODS, resolve_layers
    from deepfake_lightning.explain.files import explain_files
    from deepfake_lightning.provenance import DEMO_WARNING, outside_demo_data

    if a.method not in CAM_METHODS:
        parser.error(f"--method {a.method!r}: choose from {', '.join(sorted(CAM_METHODS))}")
    from deepfake_lightning.evidence import load_trust_anchors

    a.trust_anchors = load_trust_anchors(a.trust_anchors, "--trust_anchors")  # PEM text from here on
    detector = load_detector(a.ckpt_path)
    if a.map if a.map is not None else detector.tiled:
        return _maps(a, detector)
    try:  # before any work or folder: a mistyped layer name is one error line
        resolve_layers(getattr(detector.model, "net", detector.model), a.layers, a.n_layers)
    except ValueError as e:
        parser.error(f"--layers: {e}")
    files = expand_inputs(a.inputs, keep_missing=True)  # a missing file is a row with its error, as in predict
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
        trust_anchors=a.trust_anchors,
    )
    bad = table[table["error"] != ""]
    for _, row in bad.iterrows():
        print(f"deepfake explain: skipped {row['file']}: {row['error']}", file=sys.stderr)
    print(
        f"Explained {len(table) - len(bad)} image(s), skipped {len(bad)}; wrote their PNGs and rows in "
        f"{Path(a.out) / 'explanations.csv'}"
    )
    _none_read(table, bad)
    return table


def _none_read(table, bad) -> None:
    """Exit non-zero (one error line) when not one image could be read: a run that scored nothing failed."""
    if len(bad) and len(bad) == len(table):
        from deepfake_lightning.errors import DataError

        raise DataError(f"none of the {len(table)} file(s) could be read as an image (each row says why)")


def _maps(a: argparse.Namespace, detector):
    from deepfake_lightning.data.dataset import expand_inputs
    from deepfake_lightning.explain.maps import map_files
    from deepfake_lightning.provenance import DEMO_WARNING, outside_demo_data

    detector.tile_transform(a.tile_stride, a.max_tiles)  # a resize-mode model: one error line before any work
    files = expand_inputs(a.inputs, keep_missing=True)
    if outside_demo_data(detector.facts, files):
        print(f"deepfake: warning: {DEMO_WARNING}", file=sys.stderr)
    table = map_files(detector, files, a.out, a.tile_stride, a.max_tiles, a.trust_anchors)
    bad = table[table["error"].fillna("") != ""]
    for _, row in bad.iterrows():
        print(f"deepfake explain: skipped {row['file']}: {row['error']}", file=sys.stderr)
    good = table[table["error"].fillna("") == ""]
    for _, row in good.iterrows():
        thinned = f" of {row['tiles_total']}" if row["n_tiles"] < row["tiles_total"] else ""
        verdict = "AI-generated" if row["label"] == 1 else "human"
        views = (
            ""
            if row["map_is_verdict"]
            else f" on its {detector.settings.describe()} (map: P(AI) {row['map_prob_ai']:.3f})"
        )
        print(f"{row['file']}: {verdict}, P(AI) {row['prob_ai']:.3f}{views}, {row['n_tiles']}{thinned} tiles scored")
    print(
        f"Mapped {len(good)} image(s), skipped {len(bad)}; wrote <stem>_map.png and <stem>_tiles.csv per image and "
        f"{Path(a.out) / 'explanations.csv'}"
    )
    _none_read(table, bad)
    return table
