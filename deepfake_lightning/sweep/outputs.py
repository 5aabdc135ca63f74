"""What a finished sweep writes: ``trials.csv``, ``best.yaml``, Optuna's plots, and the backbone comparison."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from deepfake_lightning.sweep.console import _last_monitored
from deepfake_lightning.sweep.spec import SweepSpec
from deepfake_lightning.sweep.trial import resolved_config

STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "FAIL": 2, "RUNNING": 3, "WAITING": 4}


def trials_table(study: optuna.Study, spec: SweepSpec) -> pd.DataFrame:
    """Every trial: parameters, state, duration, objective, threshold and key metrics. ``objective`` is set only
    for trials that reached it (COMPLETE); a pruned trial's last monitored value is in ``last_<monitor>`` and its
    epochs in ``epochs``. Complete trials come first, best first; then pruned, then failed ones, by number."""
    rows = []
    monitor_column = f"last_{spec.monitor}"
    for t in study.get_trials(deepcopy=False):
        row = {
            "number": t.number,
            "state": t.state.name,
            "objective": t.value if t.state == TrialState.COMPLETE else None,
            monitor_column: _last_monitored(t),
            "duration_s": t.duration.total_seconds() if t.duration else None,
        }
        row |= {f"param:{k}": v for k, v in t.params.items()}
        row |= {k: v for k, v in t.user_attrs.items() if k != "traceback"}
        rows.append(row)
    table = pd.DataFrame(rows)
    if len(table):
        sign = 1 if spec.objective.direction == "minimize" else -1
        table["_state"] = table["state"].map(STATE_ORDER).fillna(9)
        table["_key"] = sign * table["objective"].astype(float)
        table = table.sort_values(["_state", "_key", "number"], na_position="last").drop(columns=["_state", "_key"])
    return table


def write_outputs(study: optuna.Study, spec: SweepSpec) -> dict[str, Path]:
    """``trials.csv``, ``best.yaml`` (a complete fit config), Optuna plots (HTML and PNG) and, for a sweep with
    ``compare: true``, ``comparison.csv``/``.md``."""
    out = spec.folder
    written = {"trials": out / "trials.csv"}
    table = trials_table(study, spec)
    table.to_csv(written["trials"], index=False)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        text = resolved_config(spec, best.params)
        header = (
            f"# Best trial {best.number} of study '{spec.study_name}': "
            f"{spec.objective.metric} = {best.value:.4f}\n# params: {best.params}\n"
        )
        written["best"] = out / "best.yaml"
        written["best"].write_text(header + text)
        written |= _plots(study, out)
    if spec.compare:
        written |= write_comparison(table, out)
    return written


def _plots(study: optuna.Study, out: Path) -> dict[str, Path]:

    import matplotlib.pyplot as plt

    written = {}
    plots = {
        "history": "plot_optimization_history",
        "importances": "plot_param_importances",
        "parallel": "plot_parallel_coordinate",
    }
    for name, fn in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                fig = getattr(optuna.visualization, fn)(study)
                fig.write_html(out / f"{name}.html")
                written[f"{name}_html"] = out / f"{name}.html"
            except (ImportError, ValueError, RuntimeError, ZeroDivisionError) as e:  # too few trials for importances
                (out / f"{name}.txt").write_text(f"not available: {e}\n")
            try:
                ax = getattr(optuna.visualization.matplotlib, fn)(study)
                fig = ax.figure if hasattr(ax, "figure") else np.ravel(ax)[0].figure
                _readable_colours(fig)
                fig.savefig(out / f"{name}.png", dpi=100, bbox_inches="tight")
                plt.close(fig)
                written[f"{name}_png"] = out / f"{name}.png"
            except (ImportError, ValueError, RuntimeError, ZeroDivisionError):
                plt.close("all")
    return written


def write_comparison(table: pd.DataFrame, out: Path) -> dict[str, Path]:
    """The backbone comparison: one row per completed trial of a grid over ``model.backbone``."""
    done = table[table["state"] == "COMPLETE"].copy()
    columns = {
        "param:model.backbone": "backbone",
        "val/auroc": "AUROC",
        "val/f1_tuned": "F1 (tuned)",
        "val/acc_tuned": "accuracy (tuned)",
        "threshold": "threshold",
        "val/ece": "ECE (calibrated)",
        "params": "parameters",
        "train_images_per_s": "train images/s",
    }
    comparison = done[[c for c in columns if c in done]].rename(columns=columns)
    if "parameters" in comparison:
        comparison["parameters"] = comparison["parameters"].astype(int)
    if "train images/s" in comparison:  # a speed: whole images per second, not four decimals
        comparison["train images/s"] = comparison["train images/s"].round().astype(int)
    comparison.to_csv(out / "comparison.csv", index=False)
    (out / "comparison.md").write_text(_markdown(comparison))
    return {"comparison_csv": out / "comparison.csv", "comparison_md": out / "comparison.md"}


def _markdown(df: pd.DataFrame) -> str:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _readable_colours(fig) -> None:
    """Optuna draws its parallel-coordinate lines in "Blues" on ggplot's grey, where low-scoring trials are
    near-white and vanish: the lines get viridis (dark to bright, every value visible) on white axes."""
    from matplotlib.collections import LineCollection

    for ax in fig.axes:
        ax.set_facecolor("white")
    for lines in fig.findobj(LineCollection):
        lines.set_cmap("viridis")
        if lines.colorbar is not None:
            lines.colorbar.update_normal(lines)
