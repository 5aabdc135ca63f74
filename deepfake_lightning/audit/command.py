"""``deepfake audit``: the dataset audit for file-format shortcuts (``audit/shortcuts.py``). The command line is
``fit``'s for the data settings, through LightningCLI. Imports nothing heavy at the top, so that ``deepfake audit
--help`` answers at once."""

from __future__ import annotations

import argparse
from pathlib import Path


def audit_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepfake audit",
        description="Audit a dataset for file-format shortcuts: per split and class, the distribution of file "
        "metadata, and the AUROC of a classifier that sees only that metadata (audit.json, audit.md). Any "
        "--config and --data.* options are read as in `deepfake fit`.",
    )
    parser.add_argument("--out", required=True, help="folder for audit.json and audit.md")
    return parser


def audit_main(args: list[str]) -> dict:
    """``deepfake audit --config C [--data.*] --out DIR``: the dataset audit of train+val and each labelled test
    split; returns what audit.json holds."""
    known, rest = audit_parser().parse_known_args(args)
    import pandas as pd

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
    out = Path(known.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "audit.json", audit)
    (out / "audit.md").write_text(format_markdown(audit), encoding="utf-8")
    for split, r in audit["splits"].items():
        auroc = r.get("metadata_auroc")
        top = ", ".join(f"{f['feature']} {f['auroc']:.2f}" for f in r["top_features"][:3])
        state = "FLAGGED" if r.get("flagged") else "ok"
        size = r.get("metadata_auroc_with_size")
        print(
            f"{split}: {r['images']} images, metadata_auroc {auroc} ({state}; with the file size {size}); "
            f"top features: {top or '-'}"
        )
    print(f"Written to {out / 'audit.json'} and {out / 'audit.md'}")
    return audit
