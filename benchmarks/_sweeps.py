"""What the sweep benchmarks measure of one study run: trial counts by state, epochs, wall time, best objective."""

from __future__ import annotations

import time

import optuna

from deepfake_lightning.sweep import SweepSpec, run_sweep


def timed_sweep(spec: SweepSpec) -> dict:
    start = time.perf_counter()
    study = run_sweep(spec)
    wall = time.perf_counter() - start
    states = [t.state for t in study.trials]
    epochs = sum(t.user_attrs.get("epochs", 0) for t in study.trials)
    return {
        "trials": len(study.trials),
        "pruned": states.count(optuna.trial.TrialState.PRUNED),
        "failed": states.count(optuna.trial.TrialState.FAIL),
        "total_epochs": epochs,
        "wall_s": round(wall, 1),
        "trials_per_min": round(60 * len(study.trials) / wall, 2),
        "epochs_per_min": round(60 * epochs / wall, 1),
        "best_val_f1_tuned": round(study.best_value, 4),
    }
