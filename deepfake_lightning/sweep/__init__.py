"""``deepfake sweep``: Optuna studies over any config key, driving ``deepfake fit`` directly.

The sweep file is described in ``spec.py``. Every trial is one fit in ``sweeps/<study>/trial_<n>/`` (its
console output in ``fit.log`` there); its decision threshold is chosen on its own validation predictions by the
Calibration callback (no retraining), and the objective defaults to the validation F1 at that threshold. The
study lives in a storage (default ``sqlite:///sweeps/<study>/study.db``; any Optuna URL works), so rerunning
resumes it and several workers share it; ``n_trials`` is the study's total. ``workers: N`` (``--workers N``) runs
N trials at once on this machine, each in its own process on its own devices.

The package, by concern: ``spec`` (the sweep file), ``study`` (Optuna sampler, pruner, storage, locks), ``trial``
(one fit), ``run`` (the study loop and ``deepfake sweep``), ``workers`` (parallel processes), ``console`` (lines
and progress) and ``outputs`` (trials.csv, best.yaml, plots, backbone comparison).
"""

from importlib import import_module

from deepfake_lightning.errors import SweepConfigError
from deepfake_lightning.sweep.spec import SweepSpec, load_sweep, parse_sweep

# The study loop is imported on first use (PEP 562): `deepfake sweep --help` reads only spec.py, without Optuna
# or torch.
_RUN = ("run_sweep", "sweep_main", "worker_main")
__all__ = ["SweepConfigError", "SweepSpec", "load_sweep", "parse_sweep", *_RUN]


def __getattr__(name: str):
    if name in _RUN:
        return getattr(import_module("deepfake_lightning.sweep.run"), name)
    raise AttributeError(f"module 'deepfake_lightning.sweep' has no attribute {name!r}")
