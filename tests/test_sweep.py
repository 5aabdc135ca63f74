"""`deepfake sweep` on the Kaggle-layout fixture with very short trials."""

import subprocess
import sys

import optuna
import pandas as pd
import pytest
import yaml

from deepfake_lightning.cli import cli_main, main
from deepfake_lightning.sweep import SweepConfigError, load_sweep, run_sweep
from tests.conftest import CONFIGS


def _sweep_file(tmp_path, kaggle_root, name="s", **spec):
    spec = {
        "study_name": name,
        "base_configs": [str(CONFIGS / "demo.yaml")],
        "out_dir": str(tmp_path / "sweeps"),
        "overrides": {"data.root": str(kaggle_root), "data.demo": False, "data.group_column": None,
                      "data.test_v1_csv": "test_v1.csv", "data.img_size": 32, "data.batch_size": 8,
                      "data.num_workers": 0, "trainer.max_epochs": 2, "trainer.callbacks": []},
        "n_trials": 3,
        "sampler": {"type": "tpe", "seed": 0},
        "pruner": {"type": "none"},
        "search_space": {"model.optimizer.init_args.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                         "data.aug_strength": {"type": "float", "low": 0.0, "high": 1.0}},
        **spec,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_tiny_sweep_writes_trials_and_a_best_config_that_fit_accepts(tmp_path, kaggle_root, capsys):
    study = run_sweep(load_sweep(_sweep_file(tmp_path, kaggle_root)))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    out = tmp_path / "sweeps" / "s"
    table = pd.read_csv(out / "trials.csv")
    assert len(table) == 3 and table["objective"].is_monotonic_decreasing  # best first
    assert {"param:model.optimizer.init_args.lr", "param:data.aug_strength", "threshold", "val/auroc",
            "val/f1_tuned", "val/ece"} <= set(table.columns)
    # each trial's objective is the validation F1 at its own tuned threshold
    best = study.best_trial
    assert best.value == pytest.approx(best.user_attrs["val/f1_tuned"])
    assert 0 < best.user_attrs["threshold"] < 1
    assert (out / f"trial_{best.number:03d}" / "lightning_logs" / "version_0" / "metrics.json").is_file()
    assert (out / "history.html").is_file() and (out / "history.png").is_file()
    config = yaml.safe_load((out / "best.yaml").read_text())
    assert config["model"]["optimizer"]["init_args"]["lr"] == pytest.approx(best.params["model.optimizer.init_args.lr"])
    cli = cli_main(["fit", "--config", str(out / "best.yaml"), "--trainer.fast_dev_run=1",
                    f"--trainer.default_root_dir={tmp_path / 'refit'}"])
    assert cli.trainer.state.finished and cli.datamodule.hparams.aug_strength == pytest.approx(
        best.params["data.aug_strength"])

    # rerunning the same command with a larger total resumes the study
    study = run_sweep(load_sweep(_sweep_file(tmp_path, kaggle_root), n_trials=5))
    assert len(study.trials) == 5 and len(pd.read_csv(out / "trials.csv")) == 5


def test_two_concurrent_workers_share_one_study_exactly(tmp_path, kaggle_root):
    path = _sweep_file(tmp_path, kaggle_root, name="shared", n_trials=4)
    workers = [subprocess.Popen([sys.executable, "-c", "from deepfake_lightning.cli import main; main()", "sweep",
                                 "--config", str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
    logs = [w.communicate(timeout=600)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), logs
    study = optuna.load_study(study_name="shared", storage=f"sqlite:///{tmp_path / 'sweeps' / 'shared' / 'study.db'}")
    assert len(study.trials) == 4 and all(t.state.is_finished() for t in study.trials)
    assert all("[sweep shared] trial" in log for log in logs)  # both workers ran trials


def test_a_diverging_trial_fails_and_the_sweep_goes_on(tmp_path, kaggle_root):
    path = _sweep_file(tmp_path, kaggle_root, name="bad", n_trials=2, sampler={"type": "grid"},
                       search_space={"model.optimizer.init_args.lr": {"type": "categorical", "choices": [1e-3, 1e6]}})
    study = run_sweep(load_sweep(path))
    states = {t.params["model.optimizer.init_args.lr"]: t.state for t in study.trials}
    assert states[1e-3] == optuna.trial.TrialState.COMPLETE
    assert states[1e6] in (optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED)
    bad = next(t for t in study.trials if t.params["model.optimizer.init_args.lr"] == 1e6)
    assert "error" not in bad.user_attrs or bad.user_attrs["error"]
    assert len(pd.read_csv(tmp_path / "sweeps" / "bad" / "trials.csv")) == 2


def test_unknown_key_fails_before_training_naming_it(tmp_path, kaggle_root, monkeypatch, capsys):
    path = _sweep_file(tmp_path, kaggle_root, name="typo",
                       search_space={"model.optimizr.init_args.lr": {"type": "float", "low": 1e-4, "high": 1e-2}})
    monkeypatch.setattr(sys, "argv", ["deepfake", "sweep", "--config", str(path)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert "search_space.model.optimizr.init_args.lr" in capsys.readouterr().err
    assert not list((tmp_path / "sweeps" / "typo").glob("trial_*"))


@pytest.mark.parametrize(
    "dim,message",
    [({"type": "float", "low": 1.0, "high": 0.1}, "low < high"), ({"type": "float", "low": 0.0, "high": 1, "log": True},
     "log scale needs low > 0"), ({"type": "categorical", "choices": []}, "non-empty"), ({"low": 0, "high": 1}, "'type'")],
)
def test_bad_ranges_are_named(tmp_path, kaggle_root, dim, message):
    path = _sweep_file(tmp_path, kaggle_root, search_space={"data.aug_strength": dim})
    with pytest.raises(SweepConfigError, match=rf"search_space\.data\.aug_strength: .*{message}"):
        load_sweep(path)


def test_two_workers_on_postgresql_share_one_study_exactly(tmp_path, kaggle_root, postgres_url):
    path = _sweep_file(tmp_path, kaggle_root, name="pg", n_trials=4, storage=postgres_url)
    workers = [subprocess.Popen([sys.executable, "-c", "from deepfake_lightning.cli import main; main()", "sweep",
                                 "--config", str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
    logs = [w.communicate(timeout=600)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), logs
    study = optuna.load_study(study_name="pg", storage=postgres_url)
    assert len(study.trials) == 4 and all(t.state.is_finished() for t in study.trials)
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 4


def test_a_killed_worker_leaves_no_zombie_trial(tmp_path, kaggle_root):
    """With heartbeats on, a worker killed mid-trial leaves a RUNNING trial without heartbeat; the next worker
    marks it failed and retries its parameters, so the study ends with no RUNNING trial."""
    import signal
    import time

    path = _sweep_file(tmp_path, kaggle_root, name="hb", n_trials=2, heartbeat_interval=1,
                       overrides={**yaml.safe_load(_sweep_file(tmp_path, kaggle_root).read_text())["overrides"],
                                  "trainer.max_epochs": 50})
    victim = subprocess.Popen([sys.executable, "-c", "from deepfake_lightning.cli import main; main()", "sweep",
                               "--config", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "sweeps" / "hb" / "trial_000" / "lightning_logs"
    deadline = time.time() + 120
    while not any(run_dir.glob("version_*/events.*")) and time.time() < deadline:
        time.sleep(0.5)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    storage_url = f"sqlite:///{tmp_path / 'sweeps' / 'hb' / 'study.db'}"
    killed = optuna.load_study(study_name="hb", storage=storage_url).trials
    assert [t.state for t in killed] == [optuna.trial.TrialState.RUNNING]
    time.sleep(3)  # past the grace period (2 heartbeat intervals)
    spec = load_sweep(path)
    spec["overrides"]["trainer.max_epochs"] = 1
    study = run_sweep(spec)
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states
    assert states[0] == optuna.trial.TrialState.FAIL and states[1] == optuna.trial.TrialState.COMPLETE
    assert study.trials[1].params == study.trials[0].params  # the failed trial's parameters were retried
