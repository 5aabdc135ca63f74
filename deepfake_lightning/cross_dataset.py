"""The cross-dataset table (one row per test set, as the GenImage, AIGCDetectBenchmark, Chameleon, WildRF and
CNNDetection papers report detectors) and the models x sets matrix that several evaluations assemble into."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from deepfake_lightning.errors import DataError

TABLE_FILE = "cross_dataset.csv"
# Column -> (report.json key, key inside at_tuned or None)
COLUMNS = {
    "images": ("n_images", None),
    "auroc": ("auroc", None),
    "ap": ("ap", None),
    "acc_human": ("at_tuned", "acc_human"),
    "acc_ai": ("at_tuned", "acc_ai"),
    "f1_macro": ("at_tuned", "f1_macro"),
    "fpr": ("at_tuned", "fpr"),
}
METRICS = ("auroc", "ap", "acc_human", "acc_ai", "f1_macro", "fpr")


def cross_dataset_table(splits: dict[str, dict]) -> pd.DataFrame:
    """One row per labelled test set of a ``report.json``'s ``splits`` (validation left out), then their ``mean``
    (unweighted: every set counts once, as the papers average). Thresholded columns are at the tuned threshold; a
    set with one class only has no AUROC/AP (empty)."""
    rows = []
    for name, r in splits.items():
        if name == "val":
            continue
        row = {"set": name}
        for column, (key, sub) in COLUMNS.items():
            row[column] = r[key][sub] if sub else r[key]
        if r["n_ai"] == 0:
            row["acc_ai"] = None
        if r["n_human"] == 0:
            row["acc_human"], row["fpr"] = None, None
        rows.append(row)
    table = pd.DataFrame(rows, columns=["set", *COLUMNS]).astype(object)
    if len(table):
        mean = {"set": "mean", "images": int(table["images"].sum())}
        # rounded past float noise: the mean of three 0.97915 is 0.97915, not 0.9791500000000001 (printed 0.9792)
        mean |= {m: round(float(pd.to_numeric(table[m], errors="coerce").mean()), 12) for m in METRICS}
        table = pd.concat([table, pd.DataFrame([mean]).astype(object)], ignore_index=True)
        table = table.where(table.notna(), None)
    return table


def markdown(table: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub Markdown table (numbers to ``digits`` places, empty cells for n/a)."""

    def cell(v) -> str:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return ""
        if isinstance(v, (float, np.floating)):
            return f"{v:.{digits}f}"
        return str(v)

    head = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(table.columns))) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def read_table(path: str | Path) -> pd.DataFrame:
    """The table of an evaluation folder (or of the folder of a ``report.json`` or ``cross_dataset.csv``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; pass `deepfake test` output folders (RUN/eval/test_*)")
    folder = path if path.is_dir() else path.parent
    csv = folder / TABLE_FILE
    if not csv.is_file():
        raise DataError(
            f"{path}: no {TABLE_FILE} here; pass a `deepfake test` output folder (it writes one for its labelled "
            "test sets)"
        )
    return pd.read_csv(csv)


def model_names(paths: list[str | Path]) -> list[str]:
    """Short, distinct names for evaluation folders: their paths past the common prefix, without the
    ``lightning_logs`` and ``eval`` levels (``runs/a/lightning_logs/version_0/eval/test_last`` beside
    ``runs/b/...`` is ``a/version_0/test_last``)."""
    folders = [Path(p).resolve() if Path(p).is_dir() else Path(p).resolve().parent for p in paths]
    parts = [f.parts for f in folders]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    common = min(common, min(len(p) for p in parts) - 1)
    names = ["/".join(x for x in p[common:] if x not in ("lightning_logs", "eval")) for p in parts]
    return [n if names.count(n) == 1 else f"{n} ({i + 1})" for i, n in enumerate(names)]


def matrix(tables: dict[str, pd.DataFrame], metric: str = "auroc") -> pd.DataFrame:
    """Models x sets of one metric (the ``mean`` column last: each model's mean over *its* sets)."""
    if metric not in METRICS:
        raise DataError(f"--metric {metric!r}: choose one of {', '.join(METRICS)}")
    rows = {}
    for model, table in tables.items():
        rows[model] = dict(zip(table["set"], table[metric], strict=True))
    out = pd.DataFrame.from_dict(rows, orient="index")
    sets = [c for c in out.columns if c != "mean"]
    out = out[sets]
    out["mean"] = out[sets].mean(axis=1).round(12)
    out.index.name = "model"
    return out


def plot_matrix(table: pd.DataFrame, metric: str):
    """A heat map of the matrix, each cell written in; a matplotlib Figure."""
    import matplotlib.pyplot as plt

    values = table.to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * table.shape[1], 1.2 + 0.5 * table.shape[0]), constrained_layout=True)
    good_high = metric != "fpr"
    image = ax.imshow(values, cmap="viridis" if good_high else "viridis_r", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(table.shape[1]), table.columns, rotation=30, ha="right")
    ax.set_yticks(range(table.shape[0]), table.index)
    ax.axvline(table.shape[1] - 1.5, color="white", linewidth=2)  # the mean column apart
    for (i, j), v in np.ndenumerate(values):
        if np.isnan(v):
            ax.text(j, i, "n/a", ha="center", va="center", fontsize=8, color="grey")
        else:
            colour = "black" if (v > 0.6) == good_high else "white"
            ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=8, color=colour)
    fig.colorbar(image, ax=ax, label=metric)
    ax.set_title(f"Cross-dataset {metric} (models x test sets)")
    return fig


def write_matrix(paths: list[str], out: str | Path, metric: str = "auroc") -> pd.DataFrame:
    """``deepfake compare``: the matrix of several evaluations as ``matrix_<metric>.csv``, ``.md`` and ``.png``."""
    tables = {name: read_table(p) for name, p in zip(model_names(paths), paths, strict=True)}
    result = matrix(tables, metric)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result.to_csv(out / f"matrix_{metric}.csv")
    (out / f"matrix_{metric}.md").write_text(markdown(result.reset_index()) + "\n", encoding="utf-8")
    fig = plot_matrix(result, metric)
    fig.savefig(out / f"matrix_{metric}.png", dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return result


def compare_parser():
    import argparse

    parser = argparse.ArgumentParser(
        prog="deepfake compare",
        description="Assemble the cross-dataset tables of several `deepfake test` runs into one models x test sets "
        "matrix: matrix_<metric>.csv, .md and a heat map .png.",
    )
    parser.add_argument("evaluations", nargs="+", help="`deepfake test` output folders (or their report.json)")
    parser.add_argument("--metric", default="auroc", choices=METRICS, help="the metric in the cells (default auroc)")
    parser.add_argument("--out", default="cross_dataset", help="output folder (default: cross_dataset)")
    return parser


def compare_main(args: list[str]) -> pd.DataFrame:
    known = compare_parser().parse_args(args)
    result = write_matrix(known.evaluations, known.out, known.metric)
    print(markdown(result.reset_index()))
    out = Path(known.out)
    print(f"Written to {out / f'matrix_{known.metric}.csv'}, .md and .png")
    return result
