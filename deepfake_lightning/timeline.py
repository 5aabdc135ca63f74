"""The chronological protocol (``deepfake timeline``): generators arrive in release order.

Given a table of generator -> release date and a dataset whose AI images carry their generator, the generators are
grouped into windows (each release date, or each month, quarter or year: ``period``). A detector is trained on the
earliest window, then adapted window by window in date order (``adapt.fine_tune``: brief fine-tuning, with replay of
the earlier windows' training images, or without for comparison). After each step it is measured on

* **Next**: the next window's held-out images, whose generators it has not seen (how well it anticipates);
* **Current**: the window it was just trained or adapted on (held-out images);
* **Past**: every earlier window's held-out images together (how much it forgot),

the protocol of AI-GenBench (Pellegrini et al. 2025), beside the same protocol with plain fine-tuning so that the
forgetting shows. Human images carry no release date: they are shared out evenly over the windows (seeded), so each
window has both classes. Each window keeps ``eval_share`` of its images aside to measure, stratified by label.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from deepfake_lightning.adapt import AdaptSettings, _dataset, _loader, auroc, fine_tune
from deepfake_lightning.errors import DataError
from deepfake_lightning.models.outputs import collect_logits

PERIODS = ("date", "M", "Q", "Y")
PROTOCOLS = ("replay", "plain")


@dataclass
class TimelineSettings:
    """``--timeline.*``: the release-date table, how dates group into windows, the held-out share of each window,
    the training steps on the first window, and which labelled splits supply the images (default: every labelled
    split without edit masks)."""

    release_dates: str
    period: str = "date"
    eval_share: float = 0.3
    initial_steps: int = 150
    splits: list[str] | None = None
    seed: int = 0


def read_release_dates(path: str | Path) -> pd.DataFrame:
    """The ``generator,release_date`` table, checked: one row per generator, every date readable.

    Raises:
        DataError: Naming the file and the row or column at fault.
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"--timeline.release_dates {path}: cannot be read as CSV ({e})") from None
    missing = [c for c in ("generator", "release_date") if c not in table.columns]
    if missing:
        raise DataError(f"{path}: needs the columns generator,release_date; missing {', '.join(missing)}")
    dates = pd.to_datetime(table["release_date"], errors="coerce")
    bad = dates.isna()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}, row {row + 2}: release_date {table['release_date'][row]!r} is not a date (YYYY-MM-DD)"
        )
    repeated = table["generator"][table["generator"].duplicated()]
    if len(repeated):
        raise DataError(f"{path}: generator {repeated.iloc[0]!r} appears twice")
    return pd.DataFrame({"generator": table["generator"].str.strip(), "release_date": dates})


def windows_of(dates: pd.DataFrame, period: str) -> list[list[str]]:
    """Generators grouped by release ``period`` (``date``: each date its own window; ``M``, ``Q``, ``Y``: by month,
    quarter, year), earliest first."""
    if period not in PERIODS:
        raise DataError(f"--timeline.period {period!r}: choose one of {', '.join(PERIODS)}")
    key = dates["release_date"] if period == "date" else dates["release_date"].dt.to_period(period)
    return [sorted(group["generator"]) for _, group in dates.groupby(key, sort=True)]


def assign_windows(rows: pd.DataFrame, windows: list[list[str]], eval_share: float, seed: int) -> pd.DataFrame:
    """``rows`` (file, label, generator) with a ``window`` (index into ``windows``) and a ``part`` (``train`` or
    ``eval``). AI images go to their generator's window; human images are shared out evenly, seeded.

    Raises:
        DataError: For AI images whose generator the table lacks, or a window without images.
    """
    rng = np.random.default_rng(seed)
    window_of = {g: i for i, gens in enumerate(windows) for g in gens}
    rows = rows.reset_index(drop=True).copy()
    ai = rows["label"] == 1
    unknown = rows.loc[ai & ~rows["generator"].isin(list(window_of)), "generator"].value_counts()
    if len(unknown):
        listed = ", ".join(f"{g or '(none)'} ({n} images)" for g, n in unknown.items())
        raise DataError(
            f"AI images whose generator has no release date: {listed}; add them to --timeline.release_dates"
        )
    rows["window"] = -1
    rows.loc[ai, "window"] = rows.loc[ai, "generator"].map(window_of)
    humans = np.flatnonzero(~ai.to_numpy())
    rows.loc[humans[rng.permutation(len(humans))], "window"] = np.arange(len(humans)) % len(windows)
    empty = [", ".join(windows[w]) for w in range(len(windows)) if not (ai & (rows["window"] == w)).any()]
    if empty:
        raise DataError(f"no AI images of the window {empty[0]!r} in the data")
    rows["part"] = "train"
    for _, group in rows.groupby(["window", "label"]):
        held = rng.permutation(group.index.to_numpy())[: max(1, round(eval_share * len(group)))]
        rows.loc[held, "part"] = "eval"
    return rows


def _scores(model, dm, rows: pd.DataFrame) -> np.ndarray:
    images = list(zip(rows["file"], rows["label"], strict=True))
    logits, _ = collect_logits(model, _loader(_dataset(dm, images, train=False), dm.images_per_batch(), dm))
    return logits


def _measure(model, dm, held: pd.DataFrame, k: int) -> dict:
    """Next, Current and Past AUROC after training on window ``k`` (NaN where there is no such window)."""
    scores = _scores(model, dm, held)
    w, y = held["window"].to_numpy(), held["label"].to_numpy()

    def of(mask):
        return auroc(y[mask], scores[mask]) if mask.any() else float("nan")

    return {"next_auroc": of(w == k + 1), "current_auroc": of(w == k), "past_auroc": of(w < k)}


def run_timeline(model, dm, rows: pd.DataFrame, windows: list[list[str]], adapt: AdaptSettings, initial_steps: int):
    """Trains ``model`` on window 0, then adapts it window by window, once with replay of the earlier windows'
    training images and once without; returns one row per protocol and step."""
    train, held = rows[rows["part"] == "train"], rows[rows["part"] == "eval"]

    def images(frame):
        return list(zip(frame["file"], frame["label"].astype(int), strict=True))

    first = replace(adapt, steps=initial_steps, batch_size=dm.hparams.batch_size)
    done = fine_tune(model, dm, images(train[train["window"] == 0]), first, own_optimizer=True, progress=False)
    start = copy.deepcopy(model.state_dict())
    results = []
    for protocol in PROTOCOLS:
        model.load_state_dict(start)
        for k, gens in enumerate(windows):
            seconds = done["seconds"] if k == 0 else None
            if k > 0:
                earlier = train[train["window"] < k]
                replay = _dataset(dm, images(earlier), train=True) if protocol == "replay" else None
                window = images(train[train["window"] == k])
                seconds = fine_tune(model, dm, window, adapt, replay, progress=False)["seconds"]
            results.append(
                {
                    "protocol": protocol,
                    "step": k,
                    "trained_on": "+".join(gens),
                    "next": "+".join(windows[k + 1]) if k + 1 < len(windows) else "",
                    **_measure(model, dm, held, k),
                    "train_images": int((train["window"] == k).sum()),
                    "seconds": seconds,
                }
            )
            r = results[-1]
            how = f"{seconds:.0f} s" if k > 0 or protocol == PROTOCOLS[0] else "the same first training"
            print(
                f"{protocol} step {k} of {len(windows) - 1}: trained on {r['trained_on']} ({how}); AUROC next "
                f"{r['next_auroc']:.4f}, current {r['current_auroc']:.4f}, past {r['past_auroc']:.4f}",
                flush=True,
            )
    return pd.DataFrame(results)


def plot_timeline(table: pd.DataFrame):
    """Next- and Past-period AUROC per step, replay (solid) against plain fine-tuning (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.8))
    colours = {"next_auroc": "tab:blue", "past_auroc": "tab:red", "current_auroc": "tab:grey"}
    names = {"next_auroc": "Next (unseen)", "past_auroc": "Past (forgetting)", "current_auroc": "Current"}
    for protocol, style in zip(PROTOCOLS, ("-", "--"), strict=True):
        rows = table[table["protocol"] == protocol]
        for column, colour in colours.items():
            ax.plot(rows["step"], rows[column], style, marker="o", color=colour, label=f"{names[column]}, {protocol}")
    steps = table[table["protocol"] == PROTOCOLS[0]]
    ax.set_xticks(steps["step"], [f"{s}\n{t}" for s, t in zip(steps["step"], steps["trained_on"], strict=True)])
    ax.set_xlabel("step: the window trained or adapted on")
    ax.set_ylabel("AUROC (held-out images)")
    ax.set_title("Generators in release order: replay (solid) vs plain fine-tuning (dashed)")
    ax.grid(alpha=0.3)
    # below the axes, clear of the lines; handles long enough to show the dashes
    ax.legend(fontsize=7, ncol=3, handlelength=4, loc="upper center", bbox_to_anchor=(0.5, -0.25))
    fig.tight_layout()
    return fig


def format_table(table: pd.DataFrame) -> str:
    lines = [f"{'protocol':<9}{'step':>5}  {'trained on':<22}{'next':>8}{'current':>9}{'past':>8}"]
    for r in table.itertuples():
        lines.append(
            f"{r.protocol:<9}{r.step:>5}  {r.trained_on[:21]:<22}{r.next_auroc:>8.4f}{r.current_auroc:>9.4f}"
            f"{r.past_auroc:>8.4f}"
        )
    return "\n".join(lines)


def settings_record(timeline: TimelineSettings, adapt: AdaptSettings, windows: list[list[str]]) -> dict:
    return {"timeline": asdict(timeline), "adapt": asdict(adapt), "windows": windows}
