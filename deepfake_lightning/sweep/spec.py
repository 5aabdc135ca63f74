"""The sweep file: dataclasses that jsonargparse parses (types checked, ``--print_config``, every field also a
``deepfake sweep --<field>`` option), plus the checks no type can express. Light: no torch, no Optuna, so that
``deepfake sweep --help`` is instant.

A sweep file (YAML)::

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
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from deepfake_lightning.errors import SweepConfigError

# Optional[...] rather than "X | None": jsonargparse resolves these annotations at runtime on every Python we support.


@dataclass
class Dimension:
    """One search-space dimension: ``float``/``int`` between ``low`` and ``high`` (``log`` scale optional), or
    ``categorical`` over ``choices``."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    def check(self, key: str) -> None:
        if self.type == "categorical":
            if not self.choices:
                raise SweepConfigError(f"search_space.{key}: a categorical needs a non-empty 'choices' list")
            return
        if self.low is None or self.high is None or not self.low < self.high:
            raise SweepConfigError(f"search_space.{key}: needs low < high, got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise SweepConfigError(f"search_space.{key}: a log scale needs low > 0, got {self.low}")

    def first(self) -> Any:
        """The value a quick config check parses: the first choice or ``low``."""
        if self.type == "categorical":
            return self.choices[0]
        return int(self.low) if self.type == "int" else self.low


@dataclass
class Objective:
    """The trial metric the study optimises (any logged metric, or ``val/<m>_tuned`` at the trial's threshold)."""

    metric: str = "val/f1_tuned"
    direction: Literal["maximize", "minimize"] = "maximize"


@dataclass
class SweepSpec:
    """A sweep: the study, its trials (base fit configs plus fixed overrides plus sampled parameters) and how to
    run them.

    Args:
        study_name: The Optuna study; its files go to ``<out_dir>/<study_name>/``.
        base_configs: ``deepfake fit`` config files every trial starts from (relative to the working directory).
        search_space: Config key -> dimension.
        overrides: Config key -> value, fixed for every trial.
        n_trials: The study's total number of trials, whichever worker runs them.
        objective: The metric to optimise and its direction.
        sampler: ``{type: tpe|random|grid, ...}``; other keys go to the Optuna sampler.
        pruner: ``{type: median|hyperband|none, monitor: val/auroc, ...}``; other keys go to the Optuna pruner.
        storage: Optuna storage URL (default: SQLite in the study folder).
        heartbeat_interval: Seconds between trial heartbeats (RDB storages): a dead worker's trial is failed and
            retried once the others notice.
        out_dir: Folder of the study folders.
        compare: Also write ``comparison.csv``/``.md`` (a backbone grid).
        workers: Trials run at once on this machine, each in its own process on its own devices.
        devices_per_trial: GPUs per trial (default 1); on CPU the cores are divided among the workers.
    """

    study_name: str
    base_configs: list[str]
    search_space: dict[str, Dimension]
    overrides: dict[str, Any] = field(default_factory=dict)
    n_trials: int = 8
    objective: Objective = field(default_factory=Objective)
    sampler: dict[str, Any] = field(default_factory=lambda: {"type": "tpe", "seed": 0})
    pruner: dict[str, Any] = field(default_factory=lambda: {"type": "median"})
    storage: str | None = None
    heartbeat_interval: int | None = None
    out_dir: str = "sweeps"
    compare: bool = False
    workers: int = 1
    devices_per_trial: int | None = None

    @property
    def folder(self) -> Path:
        return Path(self.out_dir) / self.study_name

    @property
    def monitor(self) -> str:
        """The metric the pruner watches after each validation."""
        return self.pruner.get("monitor", "val/auroc")

    def to_dict(self) -> dict:
        return asdict(self)


def sweep_parser():
    """``deepfake sweep``'s parser: ``--config`` plus one option per :class:`SweepSpec` field."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(
        prog="deepfake sweep",
        description="An Optuna study over any config key: each trial is one `deepfake fit` in "
        "sweeps/<study>/trial_<n>/ with its own threshold tuned on validation; writes trials.csv, best.yaml and plots. "
        "Sweep files: configs/sweep_*.yaml (see the README's Sweeps section).",
        exit_on_error=False,
    )
    parser.add_argument("--config", action=ActionConfigFile, help="sweep file (YAML), e.g. configs/sweep_demo.yaml")
    parser.add_class_arguments(SweepSpec, as_group=False)
    return parser


def sweep_files(folder: str | Path = "configs") -> list[str]:
    return sorted(str(p) for p in Path(folder).glob("sweep*.yaml"))


def parse_sweep(args: list[str]) -> SweepSpec:
    """The checked :class:`SweepSpec` of ``deepfake sweep`` arguments (``--config FILE`` and field options)."""
    from jsonargparse import ArgumentError

    config = _config_path(args)
    if config is None:
        files = sweep_files()
        example = next(
            (f for f in files if f.endswith("sweep_demo.yaml")), files[0] if files else "configs/sweep_demo.yaml"
        )
        pick = f" (configs/ has {', '.join(Path(f).name for f in files)})" if files else ""
        raise SweepConfigError(f"--config is required: name a sweep file, e.g. deepfake sweep --config {example}{pick}")
    if not Path(config).is_file():
        raise FileNotFoundError(f"sweep file not found: {config}")
    parser = sweep_parser()
    try:
        cfg = parser.parse_args(args)
    except ArgumentError as e:
        unknown = _unknown_option(parser, args, str(e))
        if unknown:  # a mistyped option on the command line: not the sweep file's fault
            raise SweepConfigError(unknown) from None
        raise SweepConfigError(f"{config}: {_explain(config, e)}") from None
    return _build(parser, cfg, config)


def _unknown_option(parser, args: list[str], message: str) -> str | None:
    """For an option on the command line that the sweep does not have: the error, with a "did you mean"."""
    import difflib
    import re

    found = re.search(r"[Uu]nrecognized arguments: (--[\w.-]+)", message)
    if not found or found.group(1) not in " ".join(args):
        return None
    known = sorted(o for a in parser._actions for o in a.option_strings if o.startswith("--"))
    close = difflib.get_close_matches(found.group(1), known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown option {found.group(1)}{hint}; `deepfake sweep --help` lists every option"


def _config_path(args: list[str]) -> str | None:
    for i, a in enumerate(args):
        if a.startswith("--config="):
            return a.split("=", 1)[1]
        if a == "--config" and i + 1 < len(args):
            return args[i + 1]
    return None


def load_sweep(path: str | Path, **overrides: Any) -> SweepSpec:
    """Reads and checks a sweep file; ``overrides`` (e.g. ``n_trials``, ``storage``, ``study_name``) win over it."""
    args = ["--config", str(path)]
    for key, value in overrides.items():
        if value is not None:
            args.append(f"--{key}={value}")
    return parse_sweep(args)


def _build(parser, cfg, path) -> SweepSpec:
    cfg = parser.instantiate(cfg)
    values = {k: v for k, v in vars(cfg).items() if k in SweepSpec.__dataclass_fields__}
    spec = SweepSpec(**values)
    for key, dim in spec.search_space.items():
        dim.check(key)
    if spec.sampler.get("type") == "grid":  # a grid has a fixed number of points
        spec.n_trials = min(spec.n_trials, math.prod(len(d.choices or []) for d in spec.search_space.values()))
    if spec.workers < 1:
        raise SweepConfigError(f"{path}: workers must be >= 1, got {spec.workers}")
    if spec.devices_per_trial is not None and spec.devices_per_trial < 1:
        raise SweepConfigError(f"{path}: devices_per_trial must be >= 1, got {spec.devices_per_trial}")
    for base in spec.base_configs:
        if not Path(base).is_file():
            raise SweepConfigError(f"{path}: base config not found: {base}")
    return spec


def _explain(config: str, error: Exception) -> str:
    """jsonargparse's message on one line; for a bad search-space entry, which key it is (jsonargparse names only
    ``search_space``)."""
    import difflib
    import re

    import yaml
    from jsonargparse import ArgumentError, ArgumentParser

    message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    unknown = re.search(r"Option '([\w.]+)' is not accepted", message)
    if unknown:  # a mistyped key in the sweep file
        close = difflib.get_close_matches(unknown.group(1), list(SweepSpec.__dataclass_fields__), n=1, cutoff=0.6)
        return f"unknown key {unknown.group(1)!r}" + (f" (did you mean {close[0]}?)" if close else "")
    raw = (
        (yaml.safe_load(Path(config).read_text()) or {}).get("search_space")
        if 'key "search_space"' in message
        else None
    )
    if not isinstance(raw, dict):
        return message
    one = ArgumentParser(exit_on_error=False)
    one.add_class_arguments(Dimension, as_group=False)
    for key, dim in raw.items():
        try:
            one.parse_object(dim if isinstance(dim, dict) else {"type": dim})
        except ArgumentError as e:
            detail = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
            return f"search_space.{key}: {detail} (a dimension's 'type' is float, int or categorical)"
    return message
