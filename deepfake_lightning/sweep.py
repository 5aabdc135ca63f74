"""``deepfake sweep``: Optuna studies over any config key, driving ``deepfake fit`` directly.

The sweep file is described in ``sweep_spec.py``. Every trial is one fit in ``sweeps/<study>/trial_<n>/`` (its
console output in ``fit.log`` there); its decision threshold is chosen on its own validation predictions by the
Calibration callback (no retraining), and the objective defaults to the validation F1 at that threshold. The
study lives in a storage (default ``sqlite:///sweeps/<study>/study.db``; any Optuna URL works), so rerunning
resumes it and several workers share it; ``n_trials`` is the study's total. ``workers: N`` (``--workers N``) runs
N trials at once on this machine, each in its own process on its own devices.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import math
import os
import re
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from optuna.trial import FrozenTrial, TrialState

from deepfake_lightning.calibration import thresholded_metrics
from deepfake_lightning.errors import SweepConfigError
from deepfake_lightning.sweep_spec import SweepSpec, load_sweep, parse_sweep

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


# --------------------------------------------------------------------------- trial configs
def nested(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b.c": 1}`` -> ``{"a": {"b": {"c": 1}}}``: dotted config keys as one config dict."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, last = key.split(".")
        for name in parents:
            node = node.setdefault(name, {})
        node[last] = value
    return out


def fit_args(spec: SweepSpec, params: dict, run_dir: Path | None = None) -> list[str]:
    """The ``deepfake fit`` arguments of one trial: the base config files, then the fixed overrides and the
    trial's parameters as one more config, a dict (values keep their types: no string formatting)."""
    settings = {**spec.overrides, **params}
    if run_dir is not None:
        settings |= {
            "trainer.default_root_dir": str(run_dir),
            "trainer.enable_progress_bar": False,
            "trainer.enable_model_summary": False,
        }
    args = []
    for cfg in spec.base_configs:
        args += ["--config", str(cfg)]
    return args + ["--config", json.dumps(nested(settings))]


def _fit_cli(args: list[str], run: bool = False):
    from deepfake_lightning.lightning_cli import run_lightning_cli

    return run_lightning_cli(args, run)


def resolved_config(spec: SweepSpec, params: dict) -> str:
    """The complete fit config for ``params``, as ``--print_config`` writes it. Raises SweepConfigError naming
    the key when the parser rejects one, before anything is trained."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            _fit_cli(["fit", *fit_args(spec, params), "--print_config"], run=True)
        except SystemExit as e:
            if e.code not in (0, None):
                lines = err.getvalue().strip().splitlines()
                message = next(
                    (m.removeprefix("deepfake: error: ") for m in lines if m.startswith("deepfake: error:")),
                    lines[-1] if lines else e,
                )
                raise SweepConfigError(f"the fit config rejects these settings {params}: {message}") from None
    return out.getvalue()


def validate_search_space(spec: SweepSpec) -> None:
    """Parses one config per search-space key (at its low/first value), so an unknown key or a value of the wrong
    type fails before training, with the key named; and checks that the trials' data is there (the Kaggle data
    root, unless the demo is configured), rather than failing every trial."""
    from deepfake_lightning.data.datamodule import check_data_root

    data = (yaml.safe_load(resolved_config(spec, {})) or {}).get("data", {})
    if not data.get("demo"):
        check_data_root(data["root"], data.get("train_csv") or "train.csv")
    for key, dim in spec.search_space.items():
        try:
            resolved_config(spec, {key: dim.first()})
        except SweepConfigError as e:
            raise SweepConfigError(f"search_space.{key}: {e}") from None


# --------------------------------------------------------------------------- Optuna objects
def make_sampler(spec: SweepSpec, worker: int | None = None) -> optuna.samplers.BaseSampler:
    """The sampler of ``spec.sampler``. Worker ``i`` of ``--workers`` seeds it with ``seed + i``: with one seed the
    workers' samplers would propose the same parameters, in parallel."""
    s = dict(spec.sampler)
    kind = s.pop("type", "tpe")
    if worker and s.get("seed") is not None:
        s["seed"] = int(s["seed"]) + worker
    if kind == "tpe":
        return optuna.samplers.TPESampler(**s)
    if kind == "random":
        return optuna.samplers.RandomSampler(**s)
    if kind == "grid":
        space = {}
        for key, dim in spec.search_space.items():
            if dim.type != "categorical":
                raise SweepConfigError(f"search_space.{key}: the grid sampler takes categorical dimensions only")
            space[key] = dim.choices
        return optuna.samplers.GridSampler(space, seed=s.get("seed", 0))
    raise SweepConfigError(f"sampler.type must be tpe, random or grid, got {kind!r}")


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    p = {k: v for k, v in spec.pruner.items() if k not in ("type", "monitor")}
    kind = spec.pruner.get("type", "median")
    if kind == "median":
        return optuna.pruners.MedianPruner(**p)
    if kind in ("none", None):
        return optuna.pruners.NopPruner()
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(**p)
    raise SweepConfigError(f"pruner.type must be median, hyperband or none, got {kind!r}")


def make_storage(spec: SweepSpec) -> str | optuna.storages.BaseStorage:
    url = spec.storage or f"sqlite:///{spec.folder / 'study.db'}"
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    if url.endswith(".log") or url.startswith("journal:"):
        path = url.removeprefix("journal:")
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
    kwargs = {"engine_kwargs": {"connect_args": {"timeout": 60}}} if url.startswith("sqlite") else {}
    interval = spec.heartbeat_interval
    if interval:
        import inspect

        retry = optuna.storages.RetryFailedTrialCallback(max_retry=1)
        params = inspect.signature(optuna.storages.RDBStorage).parameters
        name = (
            "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params else "failed_trial_callback"
        )
        kwargs |= {"heartbeat_interval": int(interval), "grace_period": 2 * int(interval), name: retry}
    return optuna.storages.RDBStorage(url, **kwargs)


def _open_study(spec: SweepSpec, worker: int | None = None) -> tuple[optuna.Study, Any]:
    """Creates or loads the study. Workers starting together race to create the schema: local storages take a
    file lock first; a server storage is retried once the other worker has created it."""

    def create():
        storage = make_storage(spec)
        study = optuna.create_study(
            study_name=spec.study_name,
            storage=storage,
            sampler=make_sampler(spec, worker),
            pruner=make_pruner(spec),
            direction=spec.objective.direction,
            load_if_exists=True,
        )
        return study, storage

    url = spec.storage or "sqlite"
    if url.startswith(("sqlite", "journal:")) or url.endswith(".log"):
        with _file_lock(spec):
            return create()
    for attempt in range(5):
        try:
            return create()
        except Exception as e:
            if attempt == 4:
                reason = (str(getattr(e, "orig", None) or e).strip().splitlines() or [type(e).__name__])[0]
                shown = redact_url(url)
                reason = reason.replace(url, shown)
                raise SweepConfigError(f"--storage {shown}: cannot open the study after 5 attempts ({reason})") from e
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")


def redact_url(url: str) -> str:
    """A storage URL fit to print: ``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


@contextlib.contextmanager
def _file_lock(spec: SweepSpec):
    lock_path = spec.folder / ".claim.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _claim_lock(spec: SweepSpec, storage):
    """Mutual exclusion between workers while one counts the study's trials and starts a new one, so that the
    study ends with exactly ``n_trials``: a file lock beside an SQLite or journal file, a PostgreSQL advisory lock."""
    url = spec.storage or "sqlite"
    if url.startswith("postgresql"):
        engine = storage.engine
        with engine.connect() as conn:
            from sqlalchemy import text

            key = int.from_bytes(spec.study_name.encode()[:8].ljust(8, b"\0"), "big") & 0x7FFFFFFFFFFFFFFF
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
        return
    with _file_lock(spec):
        yield


class Throughput(Callback):
    """Training images per second (time spent in training epochs only)."""

    def __init__(self):
        self.images, self.seconds, self._start, self.epochs = 0, 0.0, 0.0, 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()
        self.epochs += 1  # epochs started: a pruned trial stops after its epoch's validation

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if isinstance(batch, dict) and "label" in batch:
            self.images += len(batch["label"])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds += time.perf_counter() - self._start

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds else float("nan")


# --------------------------------------------------------------------------- one trial
def suggest(trial: optuna.Trial, spec: SweepSpec) -> dict:
    params = {}
    for key, dim in spec.search_space.items():
        if dim.type == "float":
            params[key] = trial.suggest_float(key, dim.low, dim.high, log=dim.log)
        elif dim.type == "int":
            params[key] = trial.suggest_int(key, int(dim.low), int(dim.high), log=dim.log)
        else:
            params[key] = trial.suggest_categorical(key, dim.choices)
    return params


@contextlib.contextmanager
def trial_output(path: Path):
    """Everything a trial prints (Lightning's info lines and warnings, our result lines) goes to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    saved = [(logger, logger.handlers[:], logger.propagate) for logger in loggers]
    with open(path, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        handler = logging.StreamHandler(f)
        for logger in loggers:
            logger.handlers, logger.propagate = [handler], False
        try:
            yield
        finally:
            for logger, handlers, propagate in saved:
                logger.handlers, logger.propagate = handlers, propagate


def run_trial(spec: SweepSpec, trial: optuna.Trial) -> float:
    """One fit with the trial's parameters; records the tuned threshold and calibrated metrics as attributes."""
    from optuna_integration import PyTorchLightningPruningCallback

    params = suggest(trial, spec)
    run_dir = spec.folder / f"trial_{trial.number:03d}"
    trial.set_user_attr("run_dir", str(run_dir))
    throughput = Throughput()
    started = time.perf_counter()
    with trial_output(run_dir / "fit.log"):
        cli = _fit_cli(fit_args(spec, params, run_dir))
        pruning = PyTorchLightningPruningCallback(trial, monitor=spec.monitor)
        cli.trainer.callbacks += [pruning, throughput]
        try:
            cli.trainer.fit(cli.model, cli.datamodule)
        finally:
            trial.set_user_attr("epochs", throughput.epochs)
            trial.set_user_attr("fit_seconds", round(time.perf_counter() - started, 2))
    pruning.check_pruned()
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if v.numel() == 1}
    state = cli.model.calibration
    if state is not None:
        tuned = thresholded_metrics(state.val_probs, state.val_labels, state.threshold)
        metrics |= {f"val/{k}_tuned": v for k, v in tuned.items() if k not in ("tn", "fp", "fn", "tp")}
        metrics["threshold"] = state.threshold
    metrics["train_images_per_s"] = throughput.rate
    metrics["params"] = float(sum(p.numel() for p in cli.model.parameters()))
    for key, value in metrics.items():
        if math.isfinite(value):
            trial.set_user_attr(key, value)
    name = spec.objective.metric
    if name not in metrics or not math.isfinite(metrics[name]):
        raise FloatingPointError(
            f"objective {name!r} missing or not finite in this trial (available: {sorted(metrics)})"
        )
    return metrics[name]


# --------------------------------------------------------------------------- the study
def _started(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]


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
            write_outputs(study, spec)
            _print_summary(study, spec)
            return study
    progress = _Progress(spec, study, enabled=worker is None)
    heartbeat = bool(spec.heartbeat_interval) and hasattr(storage, "record_heartbeat")
    while True:
        with _claim_lock(spec, storage):
            if heartbeat:  # trials of dead workers (no heartbeat for a grace period) become FAIL, and are re-queued
                optuna.storages.fail_stale_trials(study)
            if len(_started(study)) >= spec.n_trials:
                break
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with optimize": we beat below
                trial = study.ask()
            if worker is not None:
                trial.set_user_attr("worker", worker)
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
        progress.report(study.trials[trial.number])
    progress.close()
    if worker is None:
        write_outputs(study, spec)
        _print_summary(study, spec)
    return study


def _print_summary(study: optuna.Study, spec: SweepSpec) -> None:
    out = spec.folder
    if any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        print(
            f"Best trial {study.best_trial.number}: {spec.objective.metric} = {study.best_value:.4f} "
            f"{study.best_params}\nWrote {out}/trials.csv and {out}/best.yaml "
            f"(train it: deepfake fit --config {out}/best.yaml)"
        )
    else:
        print(f"No trial completed; see {out}/trials.csv")


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


# --------------------------------------------------------------------------- parallel workers
def worker_environments(
    workers: int, devices_per_trial: int | None, gpus: int | None = None, cpus: int | None = None
) -> list[dict[str, str]]:
    """The environment of each worker process: its own GPUs (``CUDA_VISIBLE_DEVICES``), or on a CPU machine its
    share of the cores (``OMP_NUM_THREADS``, the data loaders' default too)."""
    gpus = torch.cuda.device_count() if gpus is None else gpus
    cpus = (os.cpu_count() or 1) if cpus is None else cpus
    if gpus:
        k = devices_per_trial or 1
        if workers * k > gpus:
            raise SweepConfigError(
                f"--workers {workers} x --devices_per_trial {k} needs {workers * k} GPUs; this machine has {gpus}"
            )
        return [{"CUDA_VISIBLE_DEVICES": ",".join(str(i * k + j) for j in range(k))} for i in range(workers)]
    threads = str(max(1, cpus // workers))
    return [{"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads, "DEEPFAKE_CPUS": threads} for _ in range(workers)]


def _run_workers(spec: SweepSpec, study: optuna.Study) -> None:
    """Starts ``spec.workers`` worker processes on the shared study, shows its progress, and reports workers that
    die: their running trial is marked failed (or, with heartbeats, failed and retried by the others)."""
    envs = worker_environments(spec.workers, spec.devices_per_trial)
    spec_file = spec.folder / "sweep.yaml"  # the resolved sweep, which every worker reads
    spec_file.write_text(yaml.safe_dump(replace(spec, workers=1).to_dict(), sort_keys=False))
    progress = _Progress(spec, study)
    procs = []
    for i, env in enumerate(envs):
        log = open(spec.folder / f"worker_{i}.log", "w")
        code = f"from deepfake_lightning.sweep import worker_main; worker_main({i}, {str(spec_file)!r}, {os.getpid()})"
        procs.append(
            (
                subprocess.Popen(
                    [sys.executable, "-c", code], env=os.environ | env, stdout=log, stderr=subprocess.STDOUT
                ),
                log,
            )
        )
    print(
        f"[sweep {spec.study_name}] {spec.workers} workers: "
        + "; ".join(f"worker {i} on {_devices(env)}" for i, env in enumerate(envs)),
        flush=True,
    )
    import signal
    import threading

    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:  # SIGTERM runs the finally below, which stops the workers
        previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        alive = set(range(len(procs)))
        while alive:
            time.sleep(1.0)
            progress.poll(study)
            for i in sorted(alive):
                code = procs[i][0].poll()
                if code is None:
                    continue
                alive.discard(i)
                if code != 0:
                    _worker_died(spec, study, i, code)
        progress.poll(study)
    finally:
        for proc, log in procs:
            if proc.poll() is None:  # interrupted: take the workers down with us
                proc.terminate()
                proc.wait(timeout=30)
            log.close()
        progress.close()
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _devices(env: dict[str, str]) -> str:
    if env.get("CUDA_VISIBLE_DEVICES"):
        return f"GPU {env['CUDA_VISIBLE_DEVICES']}"
    return f"{env['OMP_NUM_THREADS']} CPU thread(s)"


def _worker_died(spec: SweepSpec, study: optuna.Study, worker: int, code: int) -> None:
    running = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state == TrialState.RUNNING and t.user_attrs.get("worker") == worker
    ]
    what = f"; its trial {', '.join(str(t.number) for t in running)}" if running else ""
    if running and not spec.heartbeat_interval:
        for t in running:
            study.tell(t.number, state=TrialState.FAIL)
        what += " is marked failed"
    elif running:
        what += " is failed and retried by the heartbeat check"
    print(
        f"[sweep {spec.study_name}] worker {worker} exited with code {code}{what} (log: "
        f"{spec.folder / f'worker_{worker}.log'})",
        flush=True,
    )


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


@contextlib.contextmanager
def _heartbeat(storage, trial: optuna.Trial, interval: float):
    """Records the trial's heartbeat every ``interval`` seconds while it runs (what study.optimize does itself;
    this driver uses ask/tell so that several workers stop at exactly ``n_trials``)."""
    import threading

    stop = threading.Event()

    def beat():
        while not stop.is_set():
            storage.record_heartbeat(trial._trial_id)
            stop.wait(interval)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _tell(study: optuna.Study, trial: optuna.Trial, value: float | None = None, state=None) -> None:
    try:
        study.tell(trial, value, state=state)
    except RuntimeError as e:
        # GridSampler asks the study to stop once every grid point is taken; that is only allowed inside
        # study.optimize, but the trial's result is already stored. Our loop stops on the trial count instead.
        if "Study.stop" not in str(e):
            raise


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
    import warnings

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


def sweep_main(args: list[str]) -> optuna.Study:
    """``deepfake sweep --config SWEEP.yaml [--n_trials N] [--workers N] [--storage URL] [--study_name NAME] ...``"""
    spec = parse_sweep(args)
    torch.set_float32_matmul_precision("high")
    return run_sweep(spec)
