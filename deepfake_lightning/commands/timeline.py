"""``deepfake timeline``: the chronological protocol (``deepfake_lightning/timeline.py``). Imports nothing heavy at the
top, so that ``deepfake timeline --help`` answers at once."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from deepfake_lightning.commands import DataOptionsHelp, data_options_epilog
from deepfake_lightning.commands.adapt import add_fine_tuning_options


def timeline_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepfake timeline",
        description="The chronological protocol: generators grouped into windows by release date, a detector trained "
        "on the earliest window (the config's model and optimizer) and adapted window by window in date order, with "
        "replay of the earlier windows and with plain fine-tuning. After each step: Next-period AUROC (the next "
        "window, unseen), Current and Past-period AUROC (all earlier windows), on held-out images. Writes "
        "OUT/timeline.csv, OUT/timeline.json and OUT/timeline.png. Other --section.key options (--config, --data.*, "
        "--model.*) are read as in `deepfake fit`.",
        epilog=data_options_epilog(),
        formatter_class=DataOptionsHelp,
    )
    parser.add_argument("--out", required=True, help="folder for timeline.csv, timeline.json and timeline.png")
    parser.add_argument(
        "--timeline.release_dates", dest="release_dates", required=True, help="CSV with generator,release_date"
    )
    parser.add_argument(
        "--timeline.period", dest="period", default="date", help="windows: date (each date), M, Q or Y (default date)"
    )
    parser.add_argument(
        "--timeline.eval_share", dest="eval_share", type=float, default=0.3, help="held out per window (0.3)"
    )
    parser.add_argument(
        "--timeline.initial_steps", dest="initial_steps", type=int, default=150, help="steps on the first window (150)"
    )
    parser.add_argument(
        "--timeline.splits",
        dest="splits",
        nargs="+",
        default=None,
        help="labelled splits to draw images from (default: all without edit masks)",
    )
    add_fine_tuning_options(parser)
    return parser


def _json_safe(value):
    """NaN (no next window after the last, no past before the first) as JSON's null; NumPy scalars as numbers."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    return None if isinstance(value, float) and value != value else value


def timeline_main(args: list[str]):
    """``deepfake timeline --config C --timeline.release_dates DATES.csv --out DIR [--timeline.*] [--adapt.*]``."""
    a, rest = timeline_parser().parse_known_args(args)
    from deepfake_lightning.adapt import AdaptSettings
    from deepfake_lightning.data.index import UNLABELED
    from deepfake_lightning.errors import DataError
    from deepfake_lightning.lightning_cli import run_lightning_cli
    from deepfake_lightning.timeline import (
        TimelineSettings,
        assign_windows,
        format_table,
        plot_timeline,
        read_release_dates,
        run_timeline,
        settings_record,
        windows_of,
    )

    timeline = TimelineSettings(a.release_dates, a.period, a.eval_share, a.initial_steps, a.splits, a.seed)
    if not 0 < timeline.eval_share < 1 or timeline.initial_steps < 1:
        raise DataError("--timeline.eval_share must be in (0, 1) and --timeline.initial_steps at least 1")
    adapt = AdaptSettings(
        ai_paths=[], steps=a.steps, batch_size=a.batch_size, lr=a.lr, replay_share=a.replay_share, seed=a.seed
    )
    adapt.check()
    windows = windows_of(read_release_dates(timeline.release_dates), timeline.period)
    if len(windows) < 2:
        raise DataError(f"{timeline.release_dates}: one window only; the protocol needs at least two release periods")
    cli = run_lightning_cli(rest, run=False)
    model, dm = cli.model, cli.datamodule
    dm.hparams.augment_on, dm.hparams.decode = "cpu", "cpu"  # the fine-tuning loop is not the data module's
    dm.setup("test")
    splits = timeline.splits or [s for s in dm.indexes if not dm.has_masks(s)]
    unknown = [s for s in splits if s not in dm.indexes]
    if unknown:
        raise DataError(f"--timeline.splits: {', '.join(unknown)} not configured; configured: {', '.join(dm.indexes)}")
    rows = dm.manifest_rows()
    rows = rows[rows["split"].isin(splits) & (rows["label"] != UNLABELED)]
    rows = assign_windows(rows[["file", "label", "generator"]], windows, timeline.eval_share, timeline.seed)
    table = run_timeline(model, dm, rows, windows, adapt, timeline.initial_steps)

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "timeline.csv", index=False)
    counts = rows.groupby(["window", "part", "label"]).size().rename("images").reset_index()
    record = settings_record(timeline, adapt, windows) | {
        "images": counts.to_dict(orient="records"),
        "steps": table.to_dict(orient="records"),
    }
    (out / "timeline.json").write_text(json.dumps(_json_safe(record), indent=2) + "\n")
    figure = plot_timeline(table)
    figure.savefig(out / "timeline.png", dpi=120)
    print(format_table(table))
    print(
        f"Timeline of {len(windows)} windows -> {out / 'timeline.csv'}, {out / 'timeline.json'}, {out / 'timeline.png'}"
    )
    return table
