"""One trial: its parameters, its ``deepfake fit`` arguments and config, the run itself, and telling the study."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import optuna
import yaml

from deepfake_lightning.calibration import thresholded_metrics
from deepfake_lightning.callbacks.throughput import Throughput
from deepfake_lightning.errors import SweepConfigError
from deepfake_lightning.lightning_cli import lightning_warnings
from deepfake_lightning.sweep.spec import SweepSpec


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
        check_data_root(data["root"], data.get("train_csv") or "train.csv", data.get("layout") or "auto")
    for key, dim in spec.search_space.items():
        try:
            resolved_config(spec, {key: dim.first()})
        except SweepConfigError as e:
            raise SweepConfigError(f"search_space.{key}: {e}") from None


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
            with lightning_warnings():
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
