"""``deepfake data scan``: what a dataset holds, in any layout (``data/layouts.py``), and its manifest
(``data/manifest.py``). The data settings are ``fit``'s (``--config``, ``--data.*``), read through LightningCLI.
Imports nothing heavy at the top, so that ``deepfake data --help`` answers at once."""

from __future__ import annotations

import argparse
from pathlib import Path

from deepfake_lightning.commands import DataOptionsHelp, data_options_epilog


def data_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepfake data",
        description="deepfake data scan [ROOT] [--config C] [--data.*] [--out manifest.csv]: indexes a dataset in its "
        "own layout (kaggle, folders or csv; --data.layout, --data.label_dirs, --data.test_sets and --data.train_sets "
        "as in `deepfake fit`), prints the images per split, class and generator, unreadable files and duplicates "
        "by content, and writes a manifest (path, bytes, sha256, label, generator, split, dataset) to check the data "
        "against later with --data.manifest.",
        epilog=data_options_epilog(),
        formatter_class=DataOptionsHelp,
    )
    parser.add_argument("action", choices=["scan"], help="scan: index, check and write the manifest")
    parser.add_argument("root", nargs="?", help="the data root (the same as --data.root)")
    parser.add_argument("--out", default="manifest.csv", help="the manifest to write (default: manifest.csv)")
    return parser


def data_main(args: list[str]):
    """``deepfake data scan``: returns the manifest (a DataFrame, with an ``error`` column for unreadable files)."""
    known, rest = data_parser().parse_known_args(args)
    if known.root is not None:
        if not Path(known.root).exists():
            raise FileNotFoundError(f"data root '{known.root}' does not exist")
        rest = [*rest, f"--data.root={known.root}"]
    from deepfake_lightning.data.manifest import build_manifest, duplicate_groups, summary_table
    from deepfake_lightning.files import atomic_path, file_sha256
    from deepfake_lightning.lightning_cli import run_lightning_cli

    cli = run_lightning_cli([*rest, "--model.pretrained=false"], run=False)  # a --data.manifest is checked first
    dm = cli.datamodule
    dm.prepare_data()
    dm.setup("fit")
    manifest = build_manifest(dm.manifest_rows())
    out = Path(known.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        manifest.drop(columns="error").to_csv(tmp, index=False)
    print(_report(manifest, summary_table(manifest), duplicate_groups(manifest)))
    print(f"Manifest: {out} ({len(manifest)} files, sha256 {file_sha256(out)[:16]}, as runs record it); check a "
          f"dataset against it with --data.manifest {out}")  # fmt: skip
    return manifest


def _report(manifest, summary, duplicates) -> str:
    lines = [f"{len(manifest)} images:", summary.to_string(index=False)]
    bad = manifest[manifest["error"] != ""]
    lines.append(f"\nUnreadable files: {len(bad)}")
    lines += [f"  {p}: {e}" for p, e in zip(bad["path"][:20], bad["error"][:20], strict=True)]
    if len(bad) > 20:
        lines.append(f"  ... and {len(bad) - 20} more (data.bad_images=skip leaves them out of a run)")
    groups = duplicates.groupby("sha256")
    across = sum(g["split"].nunique() > 1 for _, g in groups)
    conflicting = sum(g["label"].nunique() > 1 for _, g in groups)
    lines.append(
        f"Duplicates by content: {len(duplicates)} files in {groups.ngroups} groups ({across} groups across "
        f"splits, {conflicting} with both labels)"
    )
    for _, g in list(groups)[:5]:
        lines.append("  " + ", ".join(f"{p} ({s})" for p, s in zip(g["path"], g["split"], strict=True)))
    return "\n".join(lines)
