"""What a sweep prints: one line per finished trial, a progress bar over the study, and the closing summary."""

from __future__ import annotations

import sys
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from deepfake_lightning.sweep.spec import SweepSpec

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class _Progress:
    """One console line per finished trial (number, parameters, objective or pruned-at-epoch, duration) and a tqdm
    bar over the study (on a terminal)."""

    def __init__(self, spec: SweepSpec, study: optuna.Study, enabled: bool = True):
        from tqdm.auto import tqdm

        self.spec = spec
        self.seen = {t.number for t in study.get_trials(deepcopy=False) if t.state in FINISHED}
        self.bar = tqdm(
            total=spec.n_trials,
            initial=min(len(self.seen), spec.n_trials),
            unit="trial",
            desc=f"sweep {spec.study_name}",
            disable=None if enabled else True,
            dynamic_ncols=True,
        )

    def report(self, trial: FrozenTrial) -> None:
        if trial.number in self.seen or trial.state not in FINISHED:
            return
        self.seen.add(trial.number)
        self.bar.write(trial_line(self.spec, trial), file=sys.stdout)
        self.bar.update(1)

    def poll(self, study: optuna.Study) -> None:
        for trial in sorted(
            study.get_trials(deepcopy=False), key=lambda t: t.datetime_complete or t.datetime_start or 0
        ):
            self.report(trial)

    def close(self) -> None:
        self.bar.close()


def trial_line(spec: SweepSpec, trial: FrozenTrial) -> str:
    """``[sweep demo] trial 3 (worker 1): lr=0.0021, aug_strength=0.41 -> val/f1_tuned 0.9412 (38 s)``."""
    names = [k.rsplit(".", 1)[-1] for k in trial.params]
    short = len(set(names)) == len(names)
    params = ", ".join(f"{k.rsplit('.', 1)[-1] if short else k}={_fmt(v)}" for k, v in trial.params.items())
    if trial.state == TrialState.COMPLETE:
        result = f"{spec.objective.metric} {trial.value:.4f}"
    elif trial.state == TrialState.PRUNED:
        last = _last_monitored(trial)
        result = f"pruned at epoch {trial.user_attrs.get('epochs', '?')}" + (
            f" ({spec.monitor} {last:.4f})" if last is not None else ""
        )
    else:
        result = f"failed: {trial.user_attrs.get('error', 'see its fit.log')}"
    worker = f" (worker {trial.user_attrs['worker']})" if "worker" in trial.user_attrs else ""
    seconds = trial.duration.total_seconds() if trial.duration else None
    duration = f" ({seconds:.0f} s)" if seconds is not None else ""
    return f"[sweep {spec.study_name}] trial {trial.number}{worker}: {params} -> {result}{duration}"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _last_monitored(trial: FrozenTrial) -> float | None:
    """The last value the pruner saw (the monitored metric after the trial's last validation)."""
    steps = trial.intermediate_values
    return float(steps[max(steps)]) if steps else None


def _print_summary(study: optuna.Study, spec: SweepSpec, written: dict | None = None) -> None:
    out = spec.folder
    plots = sorted(p.name for p in (written or {}).values() if p.suffix in (".png", ".html"))
    if any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        print(
            f"Best trial {study.best_trial.number}: {spec.objective.metric} = {study.best_value:.4f} "
            f"{study.best_params}\nWrote {out}/trials.csv and {out}/best.yaml "
            f"(train it: deepfake fit --config {out}/best.yaml)"
            + (f"\nPlots in {out}/: {', '.join(plots)}" if plots else "")
        )
    else:
        print(f"No trial completed; see {out}/trials.csv")
