"""The Optuna side of a sweep: sampler, pruner and storage from the sweep file, opening the study, and the lock
under which workers claim trials."""

from __future__ import annotations

import contextlib
import fcntl
import re
import time
from pathlib import Path
from typing import Any

import optuna

from deepfake_lightning.errors import SweepConfigError
from deepfake_lightning.sweep.spec import SweepSpec


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
