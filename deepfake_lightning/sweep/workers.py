"""``--workers N``: worker processes on one shared study, each on its own devices, ended with their parent."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace

import optuna
import torch
import yaml
from optuna.trial import TrialState

from deepfake_lightning.errors import SweepConfigError
from deepfake_lightning.sweep.console import _Progress
from deepfake_lightning.sweep.spec import SweepSpec


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
