"""``deepfake audit``: the dataset audit for file-format shortcuts (``audit/shortcuts.py``). The command line is
``fit``'s for the data settings, through LightningCLI. Imports nothing heavy at the top, so that ``deepfake audit
--help`` answers at once."""

from __future__ import annotations

import argparse
from pathlib import Path

from deepfake_lightning.commands import DataOptionsHelp, data_options_epilog


def audit_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepfake audit",
        description="Audit a dataset for file-format shortcuts: per split and class, the distribution of file "
        "metadata, and the AUROC of a classifier that sees only that metadata; and for leakage: exact and near "
        "duplicates (perceptual hash) of training images in val and every test set (audit.json, audit.md). Any "
        "--config and --data.* options are read as in `deepfake fit`.",
        epilog=data_options_epilog(),
        formatter_class=DataOptionsHelp,
    )
    parser.add_argument("--out", required=True, help="folder for audit.json and audit.md")
    parser.add_argument(
        "--near_distance",
        type=int,
        default=4,
        help="leakage: a perceptual hash within this many bits (of 64) of a training image's is a near duplicate "
        "(default 4)",
    )
    parser.add_argument("--leakage", default="true", choices=["true", "false"], help="check train/test leakage")
    return parser


def audit_main(args: list[str]) -> dict:
    """``deepfake audit --config C [--data.*] --out DIR``: the dataset audit of train+val and each labelled test
    split; returns what audit.json holds."""
    known, rest = audit_parser().parse_known_args(args)
    import pandas as pd

    from deepfake_lightning.audit.leakage import format_leakage, leakage_report
    from deepfake_lightning.audit.shortcuts import FLAG_AUROC, audit_split, format_markdown
    from deepfake_lightning.files import write_json
    from deepfake_lightning.lightning_cli import run_lightning_cli

    cli = run_lightning_cli([*rest, "--model.pretrained=false"], run=False)
    dm = cli.datamodule
    dm.prepare_data()  # builds the demo (with its shortcut, if asked) when the config says demo
    dm.setup("fit")
    splits = {"train": pd.concat([dm.indexes["train"], dm.indexes["val"]], ignore_index=True)}
    splits |= {s: dm.indexes[s] for s in dm.labeled_test_splits() if s != "val"}  # val is in train here
    audit = {
        "root": str(dm.root),
        "flag_auroc": FLAG_AUROC,
        "splits": {s: audit_split(dm.root, index, dm.hparams.bad_images) for s, index in splits.items()},
    }
    audit["flagged"] = any(r.get("flagged") for r in audit["splits"].values())
    leak_lines = []
    if known.leakage == "true":  # against train only: val and every test set are the sets a model is measured on
        tests = {s: dm.indexes[s] for s in ["val", *dm.test_splits()[1:]]}
        audit["leakage"] = leakage_report(
            {s: index["path"].tolist() for s, index in tests.items()},
            dm.indexes["train"]["path"].tolist(),
            known.near_distance,
            root=dm.root,
        )
        leak_lines = format_leakage(audit["leakage"])
    out = Path(known.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "audit.json", audit)
    leak_md = ["", "## Leakage between training and the evaluation sets", "", "```", *leak_lines, "```"]
    leak_md = leak_md if leak_lines else []
    (out / "audit.md").write_text(format_markdown(audit) + "\n".join(leak_md) + "\n", encoding="utf-8")
    for split, r in audit["splits"].items():
        auroc = r.get("metadata_auroc")
        top = ", ".join(f"{f['feature']} {f['auroc']:.2f}" for f in r["top_features"][:3])
        state = "FLAGGED" if r.get("flagged") else "ok"
        size = r.get("metadata_auroc_with_size")
        print(
            f"{split}: {r['images']} images, metadata_auroc {auroc} ({state}; with the file size {size}); "
            f"top features: {top or '-'}"
        )
    for line in leak_lines:
        print(line)
    print(f"Written to {out / 'audit.json'} and {out / 'audit.md'}")
    return audit
