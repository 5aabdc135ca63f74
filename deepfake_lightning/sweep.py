"""``deepfake sweep``: Optuna studies over any config key, driving ``deepfake fit`` directly.

A sweep file (YAML) names the base fit config(s), fixed overrides and a search space::

    study_name: demo
    base_configs: [configs/demo.yaml]        # relative to the working directory
    overrides: {trainer.max_epochs: 4}       # fixed for every trial
    n_trials: 8
    objective: {metric: val/f1_tuned, direction: maximize}
    sampler: {type: tpe, seed: 0}            # or {type: grid} (every combination of categorical choices)
    pruner: {type: median, n_startup_trials: 2, n_warmup_steps: 1, monitor: val/auroc}   # or {type: none}
    search_space:
      model.optimizer.init_args.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      data.aug_strength: {type: float, low: 0.0, high: 1.0}
      calibration.threshold: {type: categorical, choices: [f1, youden]}

Every trial is one fit, in ``sweeps/<study>/trial_<n>/``; its decision threshold is chosen on its own validation
predictions by the Calibration callback (no retraining), and the objective defaults to the validation F1 at that
threshold. The study lives in a storage (default ``sqlite:///sweeps/<study>/study.db``; any Optuna URL works),
so rerunning resumes it and several workers share it; ``n_trials`` is the study's total.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import math
import os
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from optuna.trial import TrialState

from deepfake_lightning.errors import SweepConfigError  # noqa: F401 (re-exported)
from deepfake_lightning.evaluation import thresholded_metrics

KINDS = {"float", "int", "categorical"}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


# --------------------------------------------------------------------------- the sweep file
def load_sweep(path: str | os.PathLike, **cli_overrides: Any) -> dict:
    """Reads and validates a sweep file; ``cli_overrides`` (n_trials, storage, study_name) win over the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep file not found: {path}")
    spec = yaml.safe_load(path.read_text()) or {}
    spec.update({k: v for k, v in cli_overrides.items() if v is not None})
    known = {"study_name", "base_configs", "overrides", "n_trials", "objective", "sampler", "pruner", "search_space",
             "storage", "heartbeat_interval", "out_dir", "compare"}
    unknown = set(spec) - known
    if unknown:
        raise SweepConfigError(f"{path}: unknown top-level key(s) {sorted(unknown)}; known: {sorted(known)}")
    for key in ("study_name", "base_configs", "search_space"):
        if key not in spec:
            raise SweepConfigError(f"{path}: missing required key '{key}'")
    spec.setdefault("overrides", {})
    spec.setdefault("n_trials", 8)
    spec.setdefault("objective", {})
    spec["objective"] = {"metric": "val/f1_tuned", "direction": "maximize", **spec["objective"]}
    spec.setdefault("sampler", {"type": "tpe", "seed": 0})
    spec.setdefault("pruner", {"type": "median"})
    spec.setdefault("out_dir", "sweeps")
    for key, dim in spec["search_space"].items():
        _check_dimension(key, dim)
    if spec["sampler"].get("type") == "grid":  # a grid has a fixed number of points
        size = math.prod(len(d.get("choices", [])) for d in spec["search_space"].values())
        spec["n_trials"] = min(spec["n_trials"], size)
    for cfg in spec["base_configs"]:
        if not Path(cfg).is_file():
            raise SweepConfigError(f"{path}: base config not found: {cfg}")
    return spec


def _check_dimension(key: str, dim: dict) -> None:
    kind = dim.get("type") if isinstance(dim, dict) else None
    if kind not in KINDS:
        raise SweepConfigError(f"search_space.{key}: 'type' must be one of {sorted(KINDS)}, got {dim!r}")
    if kind == "categorical":
        if not dim.get("choices"):
            raise SweepConfigError(f"search_space.{key}: a categorical needs a non-empty 'choices' list")
        return
    low, high = dim.get("low"), dim.get("high")
    if low is None or high is None or not low < high:
        raise SweepConfigError(f"search_space.{key}: needs low < high, got low={low}, high={high}")
    if dim.get("log") and low <= 0:
        raise SweepConfigError(f"search_space.{key}: a log scale needs low > 0, got {low}")


def fit_args(spec: dict, params: dict, run_dir: Path | None = None) -> list[str]:
    """The ``deepfake fit`` arguments of one trial."""
    args = []
    for cfg in spec["base_configs"]:
        args += ["--config", str(cfg)]
    for key, value in {**spec["overrides"], **params}.items():
        args.append(f"--{key}={json.dumps(value) if value is None or isinstance(value, (list, dict, bool)) else value}")
    if run_dir is not None:
        args += [f"--trainer.default_root_dir={run_dir}", "--trainer.enable_progress_bar=false",
                 "--trainer.enable_model_summary=false"]
    return args


def resolved_config(spec: dict, params: dict) -> str:
    """The complete fit config for ``params``, as ``--print_config`` writes it. Raises SweepConfigError naming
    the key when the parser rejects one, before anything is trained."""
    from deepfake_lightning.cli import cli_main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli_main(["fit", *fit_args(spec, params), "--print_config"])
        except SystemExit as e:
            if e.code not in (0, None):
                lines = err.getvalue().strip().splitlines()
                message = next((m.removeprefix("deepfake: error: ") for m in lines if m.startswith("deepfake: error:")),
                               lines[-1] if lines else e)
                raise SweepConfigError(f"the fit config rejects these settings {params}: {message}") from None
    return out.getvalue()


def validate_search_space(spec: dict) -> None:
    """Parses one config per search-space key (at its low/first value), so an unknown key or a value of the wrong
    type fails before training, with the key named; and checks that the trials' data is there (the Kaggle data
    root, unless the demo is configured), rather than failing every trial."""
    from deepfake_lightning.data.datamodule import check_data_root

    data = (yaml.safe_load(resolved_config(spec, {})) or {}).get("data", {})
    if not data.get("demo"):
        check_data_root(data["root"], data.get("train_csv") or "train.csv")
    for key, dim in spec["search_space"].items():
        value = dim["choices"][0] if dim["type"] == "categorical" else dim["low"]
        try:
            resolved_config(spec, {key: value})
        except SweepConfigError as e:
            raise SweepConfigError(f"search_space.{key}: {e}") from None


# --------------------------------------------------------------------------- Optuna objects
def make_sampler(spec: dict) -> optuna.samplers.BaseSampler:
    s = dict(spec["sampler"])
    kind = s.pop("type", "tpe")
    if kind == "tpe":
        return optuna.samplers.TPESampler(**s)
    if kind == "random":
        return optuna.samplers.RandomSampler(**s)
    if kind == "grid":
        space = {}
        for key, dim in spec["search_space"].items():
            if dim["type"] != "categorical":
                raise SweepConfigError(f"search_space.{key}: the grid sampler takes categorical dimensions only")
            space[key] = dim["choices"]
        return optuna.samplers.GridSampler(space, seed=s.get("seed", 0))
    raise SweepConfigError(f"sampler.type must be tpe, random or grid, got {kind!r}")


def make_pruner(spec: dict) -> optuna.pruners.BasePruner:
    p = {k: v for k, v in spec["pruner"].items() if k not in ("type", "monitor")}
    kind = spec["pruner"].get("type", "median")
    if kind == "median":
        return optuna.pruners.MedianPruner(**p)
    if kind in ("none", None):
        return optuna.pruners.NopPruner()
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(**p)
    raise SweepConfigError(f"pruner.type must be median, hyperband or none, got {kind!r}")


def make_storage(spec: dict) -> str | optuna.storages.BaseStorage:
    url = spec.get("storage") or f"sqlite:///{Path(spec['out_dir']) / spec['study_name'] / 'study.db'}"
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    if url.endswith(".log") or url.startswith("journal:"):
        path = url.removeprefix("journal:")
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
    kwargs = {"engine_kwargs": {"connect_args": {"timeout": 60}}} if url.startswith("sqlite") else {}
    interval = spec.get("heartbeat_interval")
    if interval:
        import inspect

        retry = optuna.storages.RetryFailedTrialCallback(max_retry=1)
        params = inspect.signature(optuna.storages.RDBStorage).parameters
        name = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params else "failed_trial_callback"
        kwargs |= {"heartbeat_interval": int(interval), "grace_period": 2 * int(interval), name: retry}
    return optuna.storages.RDBStorage(url, **kwargs)


def _open_study(spec: dict) -> tuple[optuna.Study, Any]:
    """Creates or loads the study. Workers starting together race to create the schema: local storages take a
    file lock first; a server storage is retried once the other worker has created it."""
    def create():
        storage = make_storage(spec)
        study = optuna.create_study(
            study_name=spec["study_name"], storage=storage, sampler=make_sampler(spec), pruner=make_pruner(spec),
            direction=spec["objective"]["direction"], load_if_exists=True,
        )
        return study, storage

    url = spec.get("storage") or "sqlite"
    if url.startswith(("sqlite", "journal:")) or url.endswith(".log"):
        with _file_lock(spec):
            return create()
    for attempt in range(5):
        try:
            return create()
        except Exception as e:  # noqa: BLE001 - a concurrent schema creation; the next attempt loads it
            if attempt == 4:
                reason = (str(getattr(e, "orig", None) or e).strip().splitlines() or [type(e).__name__])[0]
                raise SweepConfigError(f"--storage {url}: cannot open the study after 5 attempts ({reason})") from e
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _file_lock(spec: dict):
    lock_path = Path(spec["out_dir"]) / spec["study_name"] / ".claim.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _claim_lock(spec: dict, storage):
    """Mutual exclusion between workers while one counts the study's trials and starts a new one, so that the
    study ends with exactly ``n_trials``: a file lock beside an SQLite or journal file, a PostgreSQL advisory lock."""
    url = spec.get("storage") or "sqlite"
    if url.startswith("postgresql"):
        engine = storage.engine
        with engine.connect() as conn:
            from sqlalchemy import text

            key = int.from_bytes(spec["study_name"].encode()[:8].ljust(8, b"\0"), "big") & 0x7FFFFFFFFFFFFFFF
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
def suggest(trial: optuna.Trial, space: dict) -> dict:
    params = {}
    for key, dim in space.items():
        if dim["type"] == "float":
            params[key] = trial.suggest_float(key, dim["low"], dim["high"], log=bool(dim.get("log", False)))
        elif dim["type"] == "int":
            params[key] = trial.suggest_int(key, dim["low"], dim["high"], log=bool(dim.get("log", False)))
        else:
            params[key] = trial.suggest_categorical(key, dim["choices"])
    return params


def run_trial(spec: dict, trial: optuna.Trial) -> float:
    """One fit with the trial's parameters; records the tuned threshold and calibrated metrics as attributes."""
    from optuna_integration import PyTorchLightningPruningCallback

    from deepfake_lightning.cli import cli_main

    params = suggest(trial, spec["search_space"])
    run_dir = Path(spec["out_dir"]) / spec["study_name"] / f"trial_{trial.number:03d}"
    trial.set_user_attr("run_dir", str(run_dir))
    cli = cli_main(fit_args(spec, params, run_dir), run=False)
    monitor = spec["pruner"].get("monitor", "val/auroc")
    pruning = PyTorchLightningPruningCallback(trial, monitor=monitor)
    throughput = Throughput()
    cli.trainer.callbacks += [pruning, throughput]
    started = time.perf_counter()
    try:
        cli.trainer.fit(cli.model, cli.datamodule)
    finally:
        trial.set_user_attr("epochs", throughput.epochs)
        trial.set_user_attr("fit_seconds", round(time.perf_counter() - started, 2))
    pruning.check_pruned()
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if v.numel() == 1}
    state = cli.model.calibration
    if state is not None:
        tuned = thresholded_metrics(state["val_probs"].numpy(), state["val_labels"].numpy(), state["threshold"])
        metrics |= {f"val/{k}_tuned": v for k, v in tuned.items() if k not in ("tn", "fp", "fn", "tp")}
        metrics["threshold"] = state["threshold"]
    metrics["train_images_per_s"] = throughput.rate
    metrics["params"] = float(sum(p.numel() for p in cli.model.parameters()))
    for key, value in metrics.items():
        if math.isfinite(value):
            trial.set_user_attr(key, value)
    name = spec["objective"]["metric"]
    if name not in metrics or not math.isfinite(metrics[name]):
        raise FloatingPointError(f"objective {name!r} missing or not finite in this trial (available: {sorted(metrics)})")
    return metrics[name]


# --------------------------------------------------------------------------- the study
def run_sweep(spec: dict) -> optuna.Study:
    """Validates the sweep, then runs trials until the study holds ``n_trials`` (counting every worker's)."""
    validate_search_space(spec)
    study, storage = _open_study(spec)
    out = Path(spec["out_dir"]) / spec["study_name"]
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    heartbeat = bool(spec.get("heartbeat_interval")) and hasattr(storage, "record_heartbeat")
    while True:
        with _claim_lock(spec, storage):
            if heartbeat:  # trials of dead workers (no heartbeat for a grace period) become FAIL, and are re-queued
                optuna.storages.fail_stale_trials(study)
            started = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
            if len(started) >= spec["n_trials"]:
                break
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with optimize": we beat below
                trial = study.ask()
        try:
            with _heartbeat(storage, trial, spec.get("heartbeat_interval")) if heartbeat else contextlib.nullcontext():
                value = run_trial(spec, trial)
        except optuna.TrialPruned:
            _tell(study, trial, state=TrialState.PRUNED)
            print(f"[sweep {spec['study_name']}] trial {trial.number} pruned")
        except Exception as e:  # a crashed trial is recorded as failed with its error; the sweep goes on
            trial.set_user_attr("error", f"{type(e).__name__}: {e}")
            trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
            _tell(study, trial, state=TrialState.FAIL)
            print(f"[sweep {spec['study_name']}] trial {trial.number} failed: {type(e).__name__}: {e}")
        else:
            _tell(study, trial, value)
            print(f"[sweep {spec['study_name']}] trial {trial.number}: {spec['objective']['metric']} = {value:.4f}")
    write_outputs(study, spec)
    return study


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


def trials_table(study: optuna.Study, spec: dict) -> pd.DataFrame:
    """Every trial: parameters, state, duration, objective, threshold and key metrics, best first."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        row = {"number": t.number, "state": t.state.name, "objective": t.value,
               "duration_s": t.duration.total_seconds() if t.duration else None}
        row |= {f"param:{k}": v for k, v in t.params.items()}
        row |= {k: v for k, v in t.user_attrs.items() if k != "traceback"}
        rows.append(row)
    table = pd.DataFrame(rows)
    if len(table):
        ascending = spec["objective"]["direction"] == "minimize"
        table = table.sort_values("objective", ascending=ascending, na_position="last")
    return table


def write_outputs(study: optuna.Study, spec: dict) -> dict[str, Path]:
    """``trials.csv``, ``best.yaml`` (a complete fit config), Optuna plots (HTML and PNG) and, for a sweep with
    ``compare: true``, ``comparison.csv``/``.md``."""
    out = Path(spec["out_dir"]) / spec["study_name"]
    written = {"trials": out / "trials.csv"}
    table = trials_table(study, spec)
    table.to_csv(written["trials"], index=False)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        text = resolved_config(spec, best.params)
        header = (f"# Best trial {best.number} of study '{spec['study_name']}': "
                  f"{spec['objective']['metric']} = {best.value:.4f}\n# params: {best.params}\n")
        written["best"] = out / "best.yaml"
        written["best"].write_text(header + text)
        written |= _plots(study, out)
    if spec.get("compare"):
        written |= write_comparison(table, out)
    return written


def _plots(study: optuna.Study, out: Path) -> dict[str, Path]:
    import warnings

    import matplotlib.pyplot as plt

    written = {}
    plots = {"history": "plot_optimization_history", "importances": "plot_param_importances",
             "parallel": "plot_parallel_coordinate"}
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
    columns = {"param:model.backbone": "backbone", "val/auroc": "AUROC", "val/f1_tuned": "F1 (tuned)",
               "val/acc_tuned": "accuracy (tuned)", "threshold": "threshold", "val/ece": "ECE (calibrated)",
               "params": "parameters", "train_images_per_s": "train images/s"}
    comparison = done[[c for c in columns if c in done]].rename(columns=columns)
    if "parameters" in comparison:
        comparison["parameters"] = comparison["parameters"].astype(int)
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
    """``deepfake sweep --config SWEEP.yaml [--n_trials N] [--storage URL] [--study_name NAME]``."""
    from deepfake_lightning.cli import sweep_parser

    a = sweep_parser().parse_args(args)
    spec = load_sweep(a.config, n_trials=a.n_trials, storage=a.storage, study_name=a.study_name)
    torch.set_float32_matmul_precision("high")
    study = run_sweep(spec)
    out = Path(spec["out_dir"]) / spec["study_name"]
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if done:
        print(f"Best trial {study.best_trial.number}: {spec['objective']['metric']} = {study.best_value:.4f} "
              f"{study.best_params}\nWrote {out}/trials.csv and {out}/best.yaml "
              f"(train it: deepfake fit --config {out}/best.yaml)")
    else:
        print(f"No trial completed; see {out}/trials.csv")
    return study
