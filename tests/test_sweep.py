"""`deepfake sweep` on the Kaggle-layout fixture with very short trials."""

import re
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from deepfake_lightning.cli import cli_main, main
from deepfake_lightning.sweep import SweepConfigError, load_sweep, run_sweep
from deepfake_lightning.sweep.console import _print_summary
from tests.helpers import CONFIGS


def _sweep_file(tmp_path, kaggle_root, name="s", **spec):
    spec = {
        "study_name": name,
        "base_configs": [str(CONFIGS / "demo.yaml")],
        "out_dir": str(tmp_path / "sweeps"),
        "overrides": {
            "data.root": str(kaggle_root),
            "data.demo": False,
            "data.group_column": None,
            "data.test_v1_csv": "test_v1.csv",
            "data.img_size": 32,
            "data.batch_size": 8,
            "data.num_workers": 0,
            "trainer.max_epochs": 2,
            "trainer.callbacks": [],
        },
        "n_trials": 3,
        "sampler": {"type": "tpe", "seed": 0},
        "pruner": {"type": "none"},
        "search_space": {
            "model.optimizer.init_args.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
            "data.aug_strength": {"type": "float", "low": 0.0, "high": 1.0},
        },
        **spec,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.slow  # a whole (two-trial) sweep and a fit of its best config
def test_tiny_sweep_writes_trials_and_a_best_config_that_fit_accepts(tmp_path, kaggle_root, capsys):
    study = run_sweep(load_sweep(_sweep_file(tmp_path, kaggle_root)))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    out = tmp_path / "sweeps" / "s"
    table = pd.read_csv(out / "trials.csv")
    assert len(table) == 3 and table["objective"].is_monotonic_decreasing  # best first
    assert {
        "param:model.optimizer.init_args.lr",
        "param:data.aug_strength",
        "threshold",
        "val/auroc",
        "val/f1_tuned",
        "val/ece",
    } <= set(table.columns)
    # each trial's objective is the validation F1 at its own tuned threshold
    best = study.best_trial
    assert best.value == pytest.approx(best.user_attrs["val/f1_tuned"])
    assert 0 < best.user_attrs["threshold"] < 1
    assert (out / f"trial_{best.number:03d}" / "lightning_logs" / "version_0" / "metrics.json").is_file()
    assert (out / "history.html").is_file() and (out / "history.png").is_file()
    config = yaml.safe_load((out / "best.yaml").read_text())
    assert config["model"]["optimizer"]["init_args"]["lr"] == pytest.approx(best.params["model.optimizer.init_args.lr"])
    cli = cli_main(
        [
            "fit",
            "--config",
            str(out / "best.yaml"),
            "--trainer.fast_dev_run=1",
            f"--trainer.default_root_dir={tmp_path / 'refit'}",
        ]
    )
    assert cli.trainer.state.finished and cli.datamodule.hparams.aug_strength == pytest.approx(
        best.params["data.aug_strength"]
    )

    # the console: one line per trial, Lightning's own output in the trial's fit.log
    console = capsys.readouterr()
    lines = [line for line in console.out.splitlines() if line.startswith("[sweep s] trial")]
    assert len(lines) == 3 and all(re.search(r" -> val/f1_tuned [01]\.\d{4} \(\d+ s\)$", line) for line in lines), lines
    assert "lr=" in lines[0] and "aug_strength=" in lines[0]
    for noise in ("GPU available", "LOCAL_RANK", "litlogger", "Trainer.fit"):
        assert noise not in console.out + console.err
    assert "GPU available" in (out / f"trial_{best.number:03d}" / "fit.log").read_text()

    # rerunning the same command with a larger total resumes the study
    study = run_sweep(load_sweep(_sweep_file(tmp_path, kaggle_root), n_trials=5))
    assert len(study.trials) == 5 and len(pd.read_csv(out / "trials.csv")) == 5
    # and with a smaller one says so in one line, runs nothing and exits 0
    capsys.readouterr()
    main(["sweep", "--config", str(_sweep_file(tmp_path, kaggle_root)), "--n_trials", "3"])  # no SystemExit: status 0
    said = capsys.readouterr().out.strip().splitlines()
    assert said[0] == (
        f"[sweep s] study 's' already has 5 of 3 trials; raise --n_trials to run more (results: {out / 'trials.csv'})"
    )
    assert len(optuna.load_study(study_name="s", storage=f"sqlite:///{out / 'study.db'}").trials) == 5


@pytest.mark.slow
def test_two_workers_share_one_study_exactly(tmp_path, kaggle_root, capsys):
    """`--workers 2`: two processes, each with its share of the cores, run the study's 4 trials between them."""
    path = _sweep_file(tmp_path, kaggle_root, name="shared", n_trials=4)
    main(["sweep", "--config", str(path), "--workers", "2"])
    out = tmp_path / "sweeps" / "shared"
    study = optuna.load_study(study_name="shared", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) == 4 and all(t.state.is_finished() for t in study.trials)  # exact total, no zombie
    assert {t.user_attrs["worker"] for t in study.trials} == {0, 1}  # both workers ran trials
    said = capsys.readouterr().out
    assert "[sweep shared] 2 workers: worker 0 on 1 CPU thread(s); worker 1 on 1 CPU thread(s)" in said
    assert sum(line.startswith("[sweep shared] trial") for line in said.splitlines()) == 4
    assert len(pd.read_csv(out / "trials.csv")) == 4 and (out / "best.yaml").is_file()
    for i in (0, 1):  # each worker process ended, with its log beside the study
        assert (out / f"worker_{i}.log").is_file()
    assert not [p for p in Path("/proc").glob("[0-9]*") if _is_our_worker(p, out)]


def _is_our_worker(proc: Path, out: Path) -> bool:
    try:
        return str(out / "sweep.yaml") in (proc / "cmdline").read_bytes().decode(errors="ignore")
    except OSError:
        return False


def test_worker_devices():
    from deepfake_lightning.sweep.workers import worker_environments

    envs = worker_environments(2, 2, gpus=4, cpus=16)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0,1", "2,3"]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in worker_environments(4, None, gpus=4)] == ["0", "1", "2", "3"]
    with pytest.raises(SweepConfigError, match="needs 6 GPUs; this machine has 4"):
        worker_environments(3, 2, gpus=4)
    cpu = worker_environments(2, None, gpus=0, cpus=2)
    assert [e["OMP_NUM_THREADS"] for e in cpu] == ["1", "1"] and cpu[0]["CUDA_VISIBLE_DEVICES"] == ""


def test_workers_sample_with_their_own_seed(tmp_path, kaggle_root):
    """With one seed, parallel workers' samplers would propose the same parameters (they did: trials 0 and 1 of a
    2-worker demo sweep were identical); worker i seeds with seed + i."""
    from deepfake_lightning.sweep.study import make_sampler
    from deepfake_lightning.sweep.trial import suggest

    spec = load_sweep(_sweep_file(tmp_path, kaggle_root, name="seeds"))
    proposals = []
    for worker in (None, 0, 1, 2):
        study = optuna.create_study(sampler=make_sampler(spec, worker))
        proposals.append(suggest(study.ask(), spec))
    assert proposals[0] == proposals[1]  # worker 0 and a single process: the configured seed
    assert len({tuple(p.values()) for p in proposals[1:]}) == 3


def test_a_dead_worker_is_reported_and_its_trial_failed(tmp_path, kaggle_root, capsys):
    from deepfake_lightning.sweep.workers import _worker_died

    spec = load_sweep(_sweep_file(tmp_path, kaggle_root, name="dead"))
    study = optuna.create_study(study_name="dead", storage=f"sqlite:///{tmp_path / 'dead.db'}")
    trial = study.ask()
    trial.set_user_attr("worker", 1)
    _worker_died(spec, study, 1, -9)
    assert study.trials[0].state == optuna.trial.TrialState.FAIL
    assert capsys.readouterr().out.startswith("[sweep dead] worker 1 exited with code -9; its trial 0 is marked failed")


def test_trial_table_puts_pruned_trials_after_complete_ones(tmp_path, kaggle_root, capsys):
    """Optuna stores a pruned trial's last monitored value (val/auroc) as its value: it must not pass for an
    objective (val/f1_tuned) in trials.csv, best.yaml or the plots."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from deepfake_lightning.sweep.outputs import write_outputs

    spec = load_sweep(
        _sweep_file(
            tmp_path,
            kaggle_root,
            name="pruned",
            search_space={"data.aug_strength": {"type": "float", "low": 0.0, "high": 1.0}},
        )
    )
    study = optuna.create_study(study_name="pruned", direction="maximize")
    dist = {"data.aug_strength": FloatDistribution(0.0, 1.0)}
    for value, state, aug in (
        (0.90, TrialState.COMPLETE, 0.1),
        (0.97, TrialState.PRUNED, 0.2),
        (0.94, TrialState.COMPLETE, 0.3),
        (None, TrialState.FAIL, 0.4),
        (0.96, TrialState.PRUNED, 0.5),
    ):
        study.add_trial(
            create_trial(
                state=state,
                value=value if state == TrialState.COMPLETE else None,
                params={"data.aug_strength": aug},
                distributions=dist,
                intermediate_values={0: 0.5, 1: value} if state == TrialState.PRUNED else {},
            )
        )
    spec.folder.mkdir(parents=True)
    written = write_outputs(study, spec)
    table = pd.read_csv(written["trials"])
    assert table["number"].tolist() == [2, 0, 1, 4, 3]  # best complete first, then pruned, then failed
    assert table["state"].tolist() == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED", "FAIL"]
    assert table["objective"].tolist()[:2] == [0.94, 0.90] and table["objective"][2:].isna().all()
    assert table["last_val/auroc"].tolist()[2:4] == [0.97, 0.96]
    best = written["best"].read_text()
    assert best.startswith("# Best trial 2 of study 'pruned': val/f1_tuned = 0.9400")
    assert yaml.safe_load(best)["data"]["aug_strength"] == 0.3
    _print_summary(study, spec, written)  # the closing line names the plots too
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"Plots in {spec.folder}/: history.html, history.png, importances.html, importances.png, parallel.html, "
        "parallel.png"
    )


def test_sweep_without_config_lists_the_sweep_files(monkeypatch, capsys):
    monkeypatch.chdir(CONFIGS.parent)
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "deepfake: error: --config is required: name a sweep file, e.g. "
        "deepfake sweep --config configs/sweep_demo.yaml (configs/ has "
    )
    assert "sweep_backbones.yaml" in err[0]


@pytest.mark.slow
def test_a_diverging_trial_fails_and_the_sweep_goes_on(tmp_path, kaggle_root):
    path = _sweep_file(
        tmp_path,
        kaggle_root,
        name="bad",
        n_trials=2,
        sampler={"type": "grid"},
        search_space={"model.optimizer.init_args.lr": {"type": "categorical", "choices": [1e-3, 1e6]}},
    )
    study = run_sweep(load_sweep(path))
    states = {t.params["model.optimizer.init_args.lr"]: t.state for t in study.trials}
    assert states[1e-3] == optuna.trial.TrialState.COMPLETE
    assert states[1e6] in (optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED)
    bad = next(t for t in study.trials if t.params["model.optimizer.init_args.lr"] == 1e6)
    assert "error" not in bad.user_attrs or bad.user_attrs["error"]
    assert len(pd.read_csv(tmp_path / "sweeps" / "bad" / "trials.csv")) == 2


def test_unknown_key_fails_before_training_naming_it(tmp_path, kaggle_root, monkeypatch, capsys):
    path = _sweep_file(
        tmp_path,
        kaggle_root,
        name="typo",
        search_space={"model.optimizr.init_args.lr": {"type": "float", "low": 1e-4, "high": 1e-2}},
    )
    monkeypatch.setattr(sys, "argv", ["deepfake", "sweep", "--config", str(path)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert "search_space.model.optimizr.init_args.lr" in capsys.readouterr().err
    assert not list((tmp_path / "sweeps" / "typo").glob("trial_*"))


def test_a_mistyped_option_gets_a_did_you_mean_and_blames_where_it_was_typed(tmp_path, kaggle_root):
    """On the command line: the option, a suggestion, no sweep file named; in the sweep file: the file and its key."""
    path = _sweep_file(tmp_path, kaggle_root)
    from deepfake_lightning.sweep.spec import parse_sweep

    with pytest.raises(SweepConfigError) as typed:
        parse_sweep(["--config", str(path), "--n_trails", "2"])
    assert str(typed.value) == (
        "unknown option --n_trails (did you mean --n_trials?); `deepfake sweep --help` lists every option"
    )
    path.write_text(path.read_text().replace("n_trials:", "n_trails:"))
    assert "n_trails:" in path.read_text()
    with pytest.raises(SweepConfigError) as filed:
        load_sweep(path)
    assert str(filed.value) == f"{path}: unknown key 'n_trails' (did you mean n_trials?)"


@pytest.mark.parametrize(
    ("dim", "message"),
    [
        ({"type": "float", "low": 1.0, "high": 0.1}, "low < high"),
        ({"type": "float", "low": 0.0, "high": 1, "log": True}, "log scale needs low > 0"),
        ({"type": "categorical", "choices": []}, "non-empty"),
        ({"low": 0, "high": 1}, "'type'"),
    ],
)
def test_bad_ranges_are_named(tmp_path, kaggle_root, dim, message):
    path = _sweep_file(tmp_path, kaggle_root, search_space={"data.aug_strength": dim})
    with pytest.raises(SweepConfigError, match=rf"search_space\.data\.aug_strength: .*{message}"):
        load_sweep(path)


@pytest.mark.slow
def test_two_workers_on_postgresql_share_one_study_exactly(tmp_path, kaggle_root, postgres_url):
    path = _sweep_file(tmp_path, kaggle_root, name="pg", n_trials=4, storage=postgres_url)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", "from deepfake_lightning.cli import main; main()", "sweep", "--config", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    logs = [w.communicate(timeout=600)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), logs
    study = optuna.load_study(study_name="pg", storage=postgres_url)
    assert len(study.trials) == 4 and all(t.state.is_finished() for t in study.trials)
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 4


@pytest.mark.slow
def test_a_killed_worker_leaves_no_zombie_trial(tmp_path, kaggle_root):
    """With heartbeats on, a worker killed mid-trial leaves a RUNNING trial without heartbeat; the next worker
    marks it failed and retries its parameters, so the study ends with no RUNNING trial."""
    import signal
    import time

    path = _sweep_file(
        tmp_path,
        kaggle_root,
        name="hb",
        n_trials=2,
        heartbeat_interval=1,
        overrides={
            **yaml.safe_load(_sweep_file(tmp_path, kaggle_root).read_text())["overrides"],
            "trainer.max_epochs": 50,
        },
    )
    victim = subprocess.Popen(
        [sys.executable, "-c", "from deepfake_lightning.cli import main; main()", "sweep", "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
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
    spec.overrides["trainer.max_epochs"] = 1
    study = run_sweep(spec)
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states
    assert states[0] == optuna.trial.TrialState.FAIL and states[1] == optuna.trial.TrialState.COMPLETE
    assert study.trials[1].params == study.trials[0].params  # the failed trial's parameters were retried


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_workers_end_with_their_parent(tmp_path, kaggle_root, how):
    """Killing `deepfake sweep --workers 2` (politely, or with SIGKILL) leaves no worker process running."""
    import signal
    import time

    path = _sweep_file(
        tmp_path,
        kaggle_root,
        name="orphans",
        n_trials=4,
        overrides={
            **yaml.safe_load(_sweep_file(tmp_path, kaggle_root).read_text())["overrides"],
            "trainer.max_epochs": 50,
        },
    )
    out = tmp_path / "sweeps" / "orphans"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from deepfake_lightning.cli import main; main()",
            "sweep",
            "--config",
            str(path),
            "--workers",
            "2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 180
    while len(list(out.glob("trial_*/lightning_logs/version_*/events.*"))) < 2 and time.time() < deadline:
        time.sleep(0.5)
    assert [p for p in Path("/proc").glob("[0-9]*") if _is_our_worker(p, out)]  # both workers are training
    parent.send_signal(getattr(signal, how))
    parent.wait(timeout=60)
    deadline = time.time() + 60
    while [p for p in Path("/proc").glob("[0-9]*") if _is_our_worker(p, out)] and time.time() < deadline:
        time.sleep(0.5)
    assert not [p for p in Path("/proc").glob("[0-9]*") if _is_our_worker(p, out)]


def test_storage_urls_are_printed_without_their_password():
    from deepfake_lightning.sweep.study import redact_url

    assert (
        redact_url("postgresql+psycopg2://user:s3cr:et@dbhost:5432/optuna")
        == "postgresql+psycopg2://user:***@dbhost:5432/optuna"
    )
    assert redact_url("sqlite:///sweeps/demo/study.db") == "sqlite:///sweeps/demo/study.db"


def test_backbone_comparison_lists_complete_trials_with_whole_images_per_second(tmp_path):
    from deepfake_lightning.sweep.outputs import write_comparison

    table = pd.DataFrame(
        {
            "state": ["COMPLETE", "PRUNED", "COMPLETE"],
            "param:model.backbone": ["test_resnet", "test_convnext", "test_efficientnet"],
            "val/auroc": [0.99587, 0.5, 0.97231],
            "params": [372785.0, 207193.0, 99453.0],
            "train_images_per_s": [195.035, 209.3526, 222.4725],
        }
    )
    write_comparison(table, tmp_path)
    lines = (tmp_path / "comparison.md").read_text().splitlines()
    assert lines[0] == "| backbone | AUROC | parameters | train images/s |"
    assert lines[2:] == ["| test_resnet | 0.9959 | 372785 | 195 |", "| test_efficientnet | 0.9723 | 99453 | 222 |"]
    assert pd.read_csv(tmp_path / "comparison.csv")["train images/s"].tolist() == [195, 222]
