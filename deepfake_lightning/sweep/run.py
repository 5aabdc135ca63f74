"""The study loop (``run_sweep``), the entry point of a worker process, and ``deepfake sweep`` itself."""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
import warnings

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from deepfake_lightning.sweep.console import _print_summary, _Progress
from deepfake_lightning.sweep.outputs import write_outputs
from deepfake_lightning.sweep.spec import SweepSpec, load_sweep, parse_sweep
from deepfake_lightning.sweep.study import _claim_lock, _open_study
from deepfake_lightning.sweep.trial import _heartbeat, _tell, run_trial, validate_search_space
from deepfake_lightning.sweep.workers import _run_workers


def _started(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]


def _next_trial(spec: SweepSpec, study, storage, worker: int | None, heartbeat: bool):
    """The next trial to run, or None once the study holds ``n_trials`` (claimed under the study's lock)."""
    with _claim_lock(spec, storage):
        if heartbeat:  # trials of dead workers (no heartbeat for a grace period) become FAIL, and are re-queued
            optuna.storages.fail_stale_trials(study)
        if len(_started(study)) >= spec.n_trials:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with optimize": we beat below
            trial = study.ask()
        if worker is not None:
            trial.set_user_attr("worker", worker)
    return trial


def _run_one(spec: SweepSpec, study, storage, trial, heartbeat: bool) -> None:
    """Runs one trial and tells the study how it ended (a crash is recorded as failed with its error)."""
    try:
        with _heartbeat(storage, trial, spec.heartbeat_interval) if heartbeat else contextlib.nullcontext():
            value = run_trial(spec, trial)
    except optuna.TrialPruned:
        _tell(study, trial, state=TrialState.PRUNED)
    except Exception as e:  # a crashed trial is recorded as failed with its error; the sweep goes on
        trial.set_user_attr("error", f"{type(e).__name__}: {e}")
        trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
        _tell(study, trial, state=TrialState.FAIL)
    else:
        _tell(study, trial, value)


def run_sweep(spec: SweepSpec, worker: int | None = None) -> optuna.Study:
    """Validates the sweep, then runs trials until the study holds ``n_trials`` (counting every worker's): here,
    or with ``spec.workers > 1`` in that many worker processes. ``worker`` is set inside a worker process."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what happens
    if worker is None:
        validate_search_space(spec)
    study, storage = _open_study(spec, worker)
    spec.folder.mkdir(parents=True, exist_ok=True)
    tag = f"[sweep {spec.study_name}]"
    if worker is None:
        have = len(_started(study))
        if have >= spec.n_trials:
            print(
                f"{tag} study '{spec.study_name}' already has {have} of {spec.n_trials} trials; raise --n_trials to "
                f"run more (results: {spec.folder / 'trials.csv'})"
            )
            return study
        if spec.workers > 1:
            _run_workers(spec, study)
            _print_summary(study, spec, write_outputs(study, spec))
            return study
    progress = _Progress(spec, study, enabled=worker is None)
    heartbeat = bool(spec.heartbeat_interval) and hasattr(storage, "record_heartbeat")
    while (trial := _next_trial(spec, study, storage, worker, heartbeat)) is not None:
        _run_one(spec, study, storage, trial, heartbeat)
        progress.report(study.trials[trial.number])
    progress.close()
    if worker is None:
        _print_summary(study, spec, write_outputs(study, spec))
    return study


def worker_main(worker: int, spec_file: str, parent: int | None = None) -> None:
    """Entry point of a worker process started by ``--workers``. It ends with its parent, however the parent ends
    (Linux: the kernel sends it SIGTERM when the parent dies, even of SIGKILL)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if parent is not None and os.getppid() != parent:  # the parent died before the line above
            sys.exit(1)
    threads = os.environ.get("DEEPFAKE_CPUS")
    if threads:
        torch.set_num_threads(int(threads))
    torch.set_float32_matmul_precision("high")
    run_sweep(load_sweep(spec_file), worker=worker)


def sweep_main(args: list[str]) -> optuna.Study:
    """``deepfake sweep --config SWEEP.yaml [--n_trials N] [--workers N] [--storage URL] [--study_name NAME] ...``"""
    spec = parse_sweep(args)
    torch.set_float32_matmul_precision("high")
    return run_sweep(spec)
