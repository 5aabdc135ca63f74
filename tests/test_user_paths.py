"""Where features meet: the command line against a checkpoint's stored settings, test-time views against every
test-time consumer, Lightning's switches against the framework's callbacks, and the console. Each test here
failed before the fix it covers (issue 13)."""

import json
import logging
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from deepfake_lightning.api import newest_checkpoint
from deepfake_lightning.cli import cli_main, main
from deepfake_lightning.commands.export import export_main
from tests.helpers import CONFIGS, copy_run


@pytest.fixture(scope="module")
def demo_run(quick_run, tmp_path_factory):
    """A copy of the session's quick run (conftest's ``quick_run``: this module checks formats, errors, options and
    parity, not what a model learned): its evaluations write into the copy (``RUN/eval/``), not into the run the
    session's other tests read."""
    return copy_run(quick_run, tmp_path_factory.mktemp("run_copy") / "version_0")


FAST = ["--data.num_workers=0", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
EVAL_LIMITS = ["--trainer.limit_test_batches=2", "--trainer.limit_predict_batches=2"]  # 128 images per split
TINY_FIT = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2"]


@pytest.fixture(scope="module")
def export_dir(demo_run, tmp_path_factory) -> Path:
    return export_main(
        [
            "--ckpt_path",
            str(demo_run / "checkpoints" / "last.ckpt"),
            "--out",
            str(tmp_path_factory.mktemp("export") / "demo_v1"),
        ]
    )


def _logged(console) -> str:
    return console.getvalue()


def _run(subcommand: str, root: Path, out: Path, *extra: str):
    return cli_main(
        [
            subcommand,
            "--config",
            str(CONFIGS / "demo.yaml"),
            f"--data.root={root}",
            f"--trainer.default_root_dir={out}",
            *FAST,
            *extra,
        ]
    )


def _eval(subcommand, demo_run, demo_root, out, *extra, ckpt=None, cams=False):
    """`deepfake test|predict` of the demo checkpoint; without the demo config's Grad-CAM export unless ``cams``."""
    cli = _run(
        subcommand,
        demo_root,
        out,
        f"--ckpt_path={ckpt or demo_run / 'checkpoints' / 'last.ckpt'}",
        *([] if cams else ["--trainer.callbacks=[]"]),
        *EVAL_LIMITS,
        *extra,
    )
    return cli, Path(cli.trainer.log_dir)


def _predictions(run: Path, split: str = "test_v2") -> pd.DataFrame:
    return pd.read_csv(run / "predictions" / f"{split}.csv").set_index("id").sort_index()


class _Plain(dict):
    """Reference `test` and `predict` of the demo checkpoint with no extra flag, each run when first asked for (the
    fast tier asks for `predict` only)."""

    def __init__(self, demo_run, demo_root, out):
        super().__init__()
        self.args = demo_run, demo_root, out

    def __missing__(self, subcommand: str) -> pd.DataFrame:
        _, run = _eval(subcommand, *self.args)
        self[subcommand] = _predictions(run)
        return self[subcommand]


@pytest.fixture(scope="module")
def plain(demo_run, demo_root, tmp_path_factory):
    return _Plain(demo_run, demo_root, tmp_path_factory.mktemp("plain"))


# --------------------------------------------------------------------------- {test, predict} x flags
@pytest.mark.slow
@pytest.mark.parametrize("subcommand", [pytest.param("test", marks=pytest.mark.slow), "predict"])
def test_command_line_beats_the_checkpoint_tta_flip(subcommand, demo_run, demo_root, plain, tmp_path):
    cli, run = _eval(subcommand, demo_run, demo_root, tmp_path, "--model.tta_flip=true")
    assert cli.model.hparams.tta_flip is True
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["tta_flip"] is True  # what was used
    diff = (_predictions(run)["prob_ai"] - plain[subcommand]["prob_ai"]).abs()
    assert diff.max() > 1e-3  # mirrored views change the probabilities (they were identical before)


@pytest.mark.slow
@pytest.mark.parametrize("subcommand", [pytest.param("test", marks=pytest.mark.slow), "predict"])
def test_five_views_reach_metrics_predictions_and_gradcam(subcommand, demo_run, demo_root, plain, tmp_path):
    cli, run = _eval(subcommand, demo_run, demo_root, tmp_path, "--data.eval_views=5", cams=True)
    preds = _predictions(run)
    assert len(preds) == len(plain[subcommand]) and (preds["prob_ai"] - plain[subcommand]["prob_ai"]).abs().max() > 1e-3
    if subcommand == "test":
        report = json.loads((run / "report.json").read_text())
        assert report["splits"]["test_v2"]["n_images"] == 128
        for split in ("val", "test_v1", "test_v2"):  # the demo config's GradCamExport at test time
            assert (run / "gradcam" / split / "samples.png").stat().st_size > 5000


def test_gradcam_tiles_carry_the_multi_view_probability(demo_run, demo_root):
    from deepfake_lightning.api import datamodule_for, load_detector
    from deepfake_lightning.explain import CamExplainer

    ckpt = demo_run / "checkpoints" / "last.ckpt"
    detector = load_detector(ckpt)
    dm = datamodule_for(ckpt, root=str(demo_root), eval_views=5)
    views = torch.stack([dm.dataset("test_v1")[i]["image"] for i in range(4)])
    assert views.shape[1] == 5
    with CamExplainer(detector.model) as explainer:
        result = explainer(views)
    with torch.no_grad():
        expected = detector.model.calibrated_probs(detector.model.predict_logits(views)).numpy()
    assert result.cam.shape == (4, 64, 64)  # the centre view's map
    assert np.allclose(result.probs, expected, atol=1e-6)


@pytest.mark.parametrize("subcommand", [pytest.param("test", marks=pytest.mark.slow), "predict"])
def test_no_logger_still_writes_the_evaluation_files(subcommand, demo_run, demo_root, plain, tmp_path):
    _, run = _eval(subcommand, demo_run, demo_root, tmp_path, "--trainer.logger=false")
    assert run.parent == demo_run / "eval" and not list(run.glob("events.out.tfevents.*"))
    assert np.allclose(_predictions(run)["prob_ai"], plain[subcommand]["prob_ai"], atol=1e-9)


@pytest.mark.parametrize("subcommand", [pytest.param("test", marks=pytest.mark.slow), "predict"])
def test_checkpointing_off_is_accepted_at_evaluation(subcommand, demo_run, demo_root, plain, tmp_path):
    _, run = _eval(subcommand, demo_run, demo_root, tmp_path, "--trainer.enable_checkpointing=false")
    assert np.allclose(_predictions(run)["prob_ai"], plain[subcommand]["prob_ai"], atol=1e-9)


@pytest.mark.parametrize("subcommand", [pytest.param("test", marks=pytest.mark.slow), "predict"])
def test_bf16_evaluation(subcommand, demo_run, demo_root, plain, tmp_path):
    cli, run = _eval(subcommand, demo_run, demo_root, tmp_path, "--trainer.precision=bf16-mixed")
    assert cli.trainer.precision == "bf16-mixed"
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["precision"] == "bf16-mixed"
    diff = (_predictions(run)["prob_ai"] - plain[subcommand]["prob_ai"]).abs()
    assert 0 < diff.max() < 0.05  # bfloat16 autocast really ran, and stays close to float32


@pytest.mark.parametrize("subcommand", [pytest.param("test", marks=pytest.mark.slow), "predict"])
def test_export_folder_as_ckpt_path(subcommand, demo_run, demo_root, plain, export_dir, tmp_path):
    cli, run = _eval(subcommand, demo_run, demo_root, tmp_path, ckpt=export_dir)
    assert run == tmp_path / "eval" / f"{subcommand}_demo_v1"  # outside any training run
    assert np.allclose(_predictions(run)["prob_ai"], plain[subcommand]["prob_ai"], atol=1e-6)


def test_export_folder_with_tta_flip_on_the_command_line(demo_run, demo_root, export_dir, tmp_path):
    cli, run = _eval("predict", demo_run, demo_root, tmp_path, "--model.tta_flip=true", ckpt=export_dir)
    assert cli.model.hparams.tta_flip is True
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["tta_flip"] is True


@pytest.mark.slow
def test_checkpoint_settings_beat_the_config_file(demo_run, demo_root, tmp_path):
    # demo.yaml says 64 px crop; the command line keeps the checkpoint's own preprocessing unless told otherwise
    cli, run = _eval("test", demo_run, demo_root, tmp_path, "--data.img_size=48")
    assert cli.datamodule.hparams.img_size == 48
    config = json.loads(json.dumps(yaml.safe_load((run / "config.yaml").read_text())))
    assert config["data"]["img_size"] == 48 and config["model"]["backbone"] == "test_resnet"


def test_a_contradicting_backbone_is_one_clear_error(demo_run, demo_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "test",
                "--config",
                str(CONFIGS / "demo.yaml"),
                f"--data.root={demo_root}",
                f"--ckpt_path={demo_run / 'checkpoints' / 'last.ckpt'}",
                "--model.backbone=resnet50",
            ]
        )
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert err.count("deepfake: error:") == 1 and "contradicts" in err and "test_resnet" in err


# --------------------------------------------------------------------------- fit x flags
@pytest.mark.slow
def test_fit_with_tta_flip_and_five_views_validates_and_calibrates_as_it_tests(demo_root, tmp_path):
    cli = _run("fit", demo_root, tmp_path, *TINY_FIT, "--model.tta_flip=true", "--data.eval_views=5")
    run = Path(cli.trainer.log_dir)
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["tta_flip"] is True
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]["tta_flip"] is True
    assert cli.model.calibration.val_probs.shape == (160,)  # every validation image, five views each


def test_fit_without_checkpointing_steps_aside_with_one_line(demo_root, tmp_path, console):
    cli = _run("fit", demo_root, tmp_path, *TINY_FIT, "--trainer.enable_checkpointing=false")
    run = Path(cli.trainer.log_dir)
    assert not (run / "checkpoints").exists()
    assert cli.model.calibration is not None  # calibrated in memory
    assert "calibration/threshold" in json.loads((run / "metrics.json").read_text())
    assert _logged(console).count("enable_checkpointing=false") == 1


@pytest.mark.slow
def test_fit_without_logger_steps_aside_with_one_line(demo_root, tmp_path, console):
    cli = _run("fit", demo_root, tmp_path, *TINY_FIT, "--trainer.logger=false")
    assert cli.trainer.log_dir == str(tmp_path) and not (tmp_path / "lightning_logs").exists()
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file() and (tmp_path / "metrics.json").is_file()
    split = pd.read_csv(tmp_path / "split.csv")  # beside the checkpoints, where `deepfake test` looks for it
    assert (split["split"] == "val").sum() == len(cli.datamodule.indexes["val"])
    assert not list(tmp_path.glob("events.out.tfevents.*"))
    assert _logged(console).count("logger=false") == 1


@pytest.mark.slow
def test_fit_in_bf16(demo_root, tmp_path):
    cli = _run("fit", demo_root, tmp_path, *TINY_FIT, "--trainer.precision=bf16-mixed")
    run = Path(cli.trainer.log_dir)
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["precision"] == "bf16-mixed"
    metrics = json.loads((run / "metrics.json").read_text())
    assert np.isfinite(metrics["train/loss_epoch"]) and 0 <= metrics["val/auroc"] <= 1


def test_fit_from_an_export_folder_says_how_to_start_from_its_weights(demo_root, export_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "demo.yaml"), f"--data.root={demo_root}", f"--ckpt_path={export_dir}"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("deepfake: error:") == 1
    assert f"--model.weights {export_dir / 'model.safetensors'}" in err
    from safetensors.torch import load_file

    from deepfake_lightning.models import DeepfakeClassifier

    model = DeepfakeClassifier("test_resnet", pretrained=False, weights=str(export_dir / "model.safetensors"))
    exported = load_file(export_dir / "model.safetensors")
    own = model.net.state_dict()
    body = [k for k in exported if not k.startswith("fc.")]
    assert body and all(torch.equal(own[k], exported[k]) for k in body)  # the advice works: the body is loaded


@pytest.mark.slow
def test_max_time_says_where_it_stopped(demo_root, tmp_path, console):
    cli = _run("fit", demo_root, tmp_path, "--trainer.max_epochs=1000", "--trainer.max_time=00:00:00:03")
    assert cli.trainer.current_epoch < 1000
    lines = [line for line in _logged(console).splitlines() if "Stopped by trainer.max_time" in line]
    assert len(lines) == 1 and f"epoch {cli.trainer.current_epoch}" in lines[0]


def test_barebones_conflict_is_one_clear_error(demo_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # demo.yaml sets log_every_n_steps, which barebones refuses
        main(
            [
                "fit",
                "--config",
                str(CONFIGS / "demo.yaml"),
                f"--data.root={demo_root}",
                "--trainer.barebones=true",
                f"--trainer.default_root_dir={tmp_path}",
            ]
        )
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and "barebones" in err


# --------------------------------------------------------------------------- console
@pytest.mark.slow
def test_console_has_no_library_noise_and_real_flops(demo_root, tmp_path, console, capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli_main(
            [
                "fit",
                "--config",
                str(CONFIGS / "demo.yaml"),
                f"--data.root={demo_root}",
                f"--trainer.default_root_dir={tmp_path}",
                "--data.num_workers=0",
                *TINY_FIT,
                "--trainer.enable_progress_bar=false",
            ]
        )
    # Lightning's ModelSummary logs "32.8 M    Total Flops"; its RichModelSummary (the default when `rich` is
    # installed) prints "Total FLOPs: 32.8 M" to stdout
    text = _logged(console) + capsys.readouterr().out
    assert "litlogger" not in text and "estimate number of stepping batches" not in text
    flops = [
        line.replace("Total FLOPs:", "").replace("Total Flops", "").strip()
        for line in text.splitlines()
        if re.search(r"Total Flops$|^Total FLOPs:", line.strip())
    ]
    assert len(flops) == 1 and flops[0] not in ("0", "")  # counted on one 64-px image
    assert not [w for w in caught if "not recommended" in str(w.message)]


def test_calibrate_and_platt_are_quiet(demo_run, demo_root, tmp_path, monkeypatch):
    from deepfake_lightning.commands.calibration import calibrate_main

    monkeypatch.setattr(sys, "argv", ["deepfake", "calibrate", "--anything"])  # as from the console script
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # LightningCLI's "args ... not recommended", scikit-learn's FutureWarning
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        calibrate_main(
            [
                "--config",
                str(CONFIGS / "demo.yaml"),
                f"--data.root={demo_root}",
                "--data.num_workers=0",
                f"--ckpt_path={demo_run / 'checkpoints' / 'last.ckpt'}",
                f"--out={tmp_path / 'p.ckpt'}",
                "--calibration.method=platt",
            ]
        )


@pytest.mark.slow
def test_results_are_printed_after_the_progress_bar_closes(demo_run, demo_root, tmp_path):
    out = subprocess.run(
        [
            "deepfake",
            "predict",
            "--config",
            str(CONFIGS / "demo.yaml"),
            f"--data.root={demo_root}",
            f"--ckpt_path={demo_run / 'checkpoints' / 'last.ckpt'}",
            f"--trainer.default_root_dir={tmp_path}",
            "--data.num_workers=0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
        env={**_env(), "PYTHONUNBUFFERED": "1"},
    )
    console = out.stdout  # the bar and the info lines, interleaved as a terminal shows them
    assert out.returncode == 0, console
    # "Predicting DataLoader 0: 100%" (tqdm), or "Predicting ━━━ 7/7" (Lightning's RichProgressBar, with `rich`)
    bar, result = console.rfind("Predicting"), console.find("Predictions for test_v2 (400 images")
    assert 0 <= bar < result  # the bar was drawn, and the result comes after it ...
    assert console[result - 1] == "\n"  # ... on a line of its own, not drawn into the bar
    assert "\nKaggle submission: " in console[result:]


@pytest.mark.slow
def test_result_lines_wait_for_a_live_progress_bar_to_stop(demo_root, tmp_path, console):
    """Lightning's RichProgressBar (its default when `rich` is installed) keeps a live display until its own
    teardown, which Lightning runs after ours, and redraws it over lines printed beneath: the calibration line
    vanished from the terminal. A stand-in bar that says when it stops: the result line comes after that."""
    from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar

    class LiveBar(TQDMProgressBar):
        def teardown(self, trainer, pl_module, stage):
            if not getattr(self, "stopped", False):
                logging.getLogger("lightning.pytorch").info("<live display stopped>")
                self.stopped = True

    cli = cli_main(
        [
            "--config",
            str(CONFIGS / "demo.yaml"),
            f"--data.root={demo_root}",
            "--data.num_workers=0",
            f"--trainer.default_root_dir={tmp_path}",
            *TINY_FIT,
        ],
        run=False,
    )
    trainer = cli.trainer
    trainer.callbacks = [LiveBar() if isinstance(c, ProgressBar) else c for c in trainer.callbacks]
    assert isinstance(trainer.progress_bar_callback, LiveBar)
    trainer.fit(cli.model, datamodule=cli.datamodule)
    lines = _logged(console).splitlines()
    calibration = [i for i, line in enumerate(lines) if line.startswith("Calibration (temperature)")]
    assert lines.count("<live display stopped>") == 1 and calibration
    assert lines.index("<live display stopped>") < calibration[0]


def test_a_mistyped_key_gets_one_line_and_a_suggestion(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "demo.yaml"), "--data.img_sise", "64"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) <= 2
    assert err.startswith("deepfake: error:") and "did you mean --data.img_size?" in err


def test_unknown_command_and_no_command(capsys):
    with pytest.raises(SystemExit):
        main(["fitt"])
    assert "did you mean fit?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([])
    listed = capsys.readouterr().out
    assert all(f"  {c} " in listed for c in ("fit", "calibrate", "explain", "export", "sweep"))


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["sweep", "--help"],
        ["export", "--help"],
        ["calibrate", "--help"],
        ["explain", "--help"],
        ["serve", "--help"],
    ],
)
def test_help_does_not_import_torch(argv):
    code = (
        "import sys\nfrom deepfake_lightning.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n"
        "    pass\nimport deepfake_lightning\nprint('torch imported:', 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120, env=_env())
    assert "usage:" in out.stdout and out.stdout.strip().endswith("torch imported: False")


# --------------------------------------------------------------------------- finding runs
def test_newest_checkpoint_is_the_best_of_the_newest_training_run(tmp_path):
    import os
    import time

    def run(name, files, when):
        d = tmp_path / name
        (d / "checkpoints").mkdir(parents=True)
        (d / "config.yaml").write_text("x: 1")
        for f in files:
            (d / "checkpoints" / f).write_bytes(b"")
        os.utime(d / "config.yaml", (when, when))
        return d

    now = time.time()
    run("version_0", ["best-epoch=07-auroc=0.9000.ckpt", "last.ckpt"], now - 100)
    newest = run("version_1", ["best-epoch=03-auroc=0.8000.ckpt", "last.ckpt"], now - 50)
    # evaluations of the old run are newer, and have their own config.yaml: they are not runs
    (tmp_path / "version_0" / "eval" / "test_last" / "checkpoints").mkdir(parents=True)
    (tmp_path / "version_0" / "eval" / "test_last" / "config.yaml").write_text("x: 1")
    assert newest_checkpoint(tmp_path) == newest / "checkpoints" / "best-epoch=03-auroc=0.8000.ckpt"
    assert newest_checkpoint(tmp_path, kind="last") == newest / "checkpoints" / "last.ckpt"
    with pytest.raises(FileNotFoundError, match="deepfake fit --config configs/demo.yaml"):
        newest_checkpoint(tmp_path / "nothing")


def test_validate_prints_one_line_saying_where_it_wrote(demo_run, demo_root, tmp_path, console, capsys):
    cli, run = _eval("validate", demo_run, demo_root, tmp_path)
    assert run == demo_run / "eval" / "validate_last"
    metrics = json.loads((run / "metrics.json").read_text())
    lines = [line for line in _logged(console).splitlines() if line.startswith("Validation (160 images): AUROC")]
    assert len(lines) == 1 and f"AUROC {metrics['val/auroc']:.4f}" in lines[0] and str(run / "metrics.json") in lines[0]
    assert "Validate metric" not in capsys.readouterr().out  # not Lightning's wide table of raw floats


# --------------------------------------------------------------------------- a new user's walkthrough (issue 23)
def _one_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("deepfake: error: ") and len(err) <= 2, err  # the line, and where --help is
    return err[0]


def test_resuming_the_newest_run_of_another_backbone_names_both(demo_run, kaggle_root, tmp_path, capsys, monkeypatch):
    """`fit --config configs/convnext.yaml --ckpt_path last` while the newest run is a test_resnet one: one line, not
    a traceback listing hundreds of missing state-dict keys."""
    run = tmp_path / "lightning_logs" / "version_9" / "checkpoints"
    run.mkdir(parents=True)
    (run / "last.ckpt").write_bytes((demo_run / "checkpoints" / "last.ckpt").read_bytes())
    monkeypatch.chdir(tmp_path)
    line = _one_error(
        capsys, ["fit", "--config", str(CONFIGS / "convnext.yaml"), f"--data.root={kaggle_root}", "--ckpt_path", "last"]
    )
    assert "is a test_resnet model, but this run configures convnext_tiny" in line
    assert "lightning_logs/version_9" in line
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_9"]  # nothing started


def test_an_explicit_checkpoint_of_another_backbone_says_its_backbone_is_used(demo_run, demo_root, tmp_path, console):
    ckpt = tmp_path / "resnet.ckpt"
    ckpt.write_bytes((demo_run / "checkpoints" / "last.ckpt").read_bytes())
    cli = cli_main(
        [
            "fit",
            "--config",
            str(CONFIGS / "convnext.yaml"),
            f"--data.root={demo_root}",
            "--data.img_size=64",
            "--data.batch_size=64",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.max_epochs=2",  # one epoch more than the quick run's
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=2",
            "--trainer.precision=32-true",
            *FAST,
            "--ckpt_path",
            str(ckpt),
        ]
    )
    assert cli.model.hparams.backbone == "test_resnet" and cli.trainer.current_epoch == 2
    said = [line for line in _logged(console).splitlines() if "its backbone is used" in line]
    assert said == [
        f"--ckpt_path {ckpt} is a test_resnet model: its backbone is used instead of the configured convnext_tiny"
    ]


def test_a_typo_in_a_config_file_names_the_file_and_the_key(tmp_path, capsys):
    config = tmp_path / "mine.yaml"
    config.write_text("data:\n  img_sise: 64\n")
    line = _one_error(capsys, ["fit", "--config", str(CONFIGS / "demo.yaml"), "--config", str(config)])
    assert line.startswith(f"deepfake: error: {config}: ") and "'data.img_sise'" in line
    assert line.endswith("(did you mean --data.img_size?)")


def test_offline_pretrained_weights_fail_at_once_naming_hf_hub_offline(monkeypatch):
    """Without HF_HUB_OFFLINE the hub client retried for ~45 s before its error; now one connection attempt."""
    import socket

    import timm
    from huggingface_hub import constants

    from deepfake_lightning.errors import PretrainedWeightsUnavailable
    from deepfake_lightning.models.backbones import create_backbone

    attempts = []

    def unreachable(address, timeout=None):
        attempts.append((address, timeout))
        raise socket.gaierror(-2, "Name or service not known")

    def no_download(*args, **kwargs):
        raise AssertionError("timm was asked to download")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(timm, "create_model", no_download)
    with pytest.raises(PretrainedWeightsUnavailable) as error:
        create_backbone("resnet18", pretrained=True)
    assert "HF_HUB_OFFLINE=1" in str(error.value) and "Name or service not known" in str(error.value)
    assert attempts == [(("huggingface.co", 443), 3.0)]


def test_ctrl_c_in_fit_says_where_the_checkpoint_is_and_how_to_resume(kaggle_root, tmp_path, console):
    import signal

    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning's graceful shutdown exits with status 1
            cli_main(
                [
                    "fit",
                    f"--data.root={kaggle_root}",
                    "--model.backbone=test_resnet",
                    "--model.pretrained=false",
                    "--data.img_size=32",
                    "--data.batch_size=8",
                    "--trainer.max_epochs=3",
                    f"--trainer.default_root_dir={tmp_path}",
                    *FAST,
                    '--trainer.callbacks=[{"class_path": "tests.test_user_paths.CtrlCAtEpoch1"}]',
                ]
            )
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl+C while it shuts down
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    said = [line for line in _logged(console).splitlines() if line.startswith("Interrupted.")]
    assert said == [
        f"Interrupted. The latest checkpoint is {last}: resume this run with the same command plus "
        f"--ckpt_path last (or --ckpt_path {last})"
    ]
    assert last.is_file()


class CtrlCAtEpoch1(__import__("lightning").Callback):
    """Presses Ctrl+C (raises KeyboardInterrupt) in the second epoch, after epoch 0's checkpoint."""

    def on_train_batch_end(self, trainer, *args):
        if trainer.current_epoch == 1:
            raise KeyboardInterrupt


def test_predicting_files_with_an_export_needs_no_training_data(export_dir, demo_root, tmp_path, monkeypatch):
    """In a folder holding only the export and a photo (no data/ at all), as the README's predict example runs."""
    import shutil

    shutil.copytree(export_dir, tmp_path / "models" / "demo_v1")
    shutil.copy(demo_root / pd.read_csv(demo_root / "test_v1.csv")["id"][0], tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    for config in ([], ["--config", str(CONFIGS / "demo.yaml")]):  # with the demo config: no demo data built
        cli = cli_main(
            ["predict", *config, "--ckpt_path", "models/demo_v1", "--data.predict_paths", "[photo.jpg]", *FAST]
        )
        table = pd.read_csv(Path(cli.trainer.log_dir) / "predictions" / "files.csv")
        assert table["id"].tolist() == ["photo.jpg"] and table["prob_ai"].between(0, 1).all()
        assert not (tmp_path / "data").exists()


def test_calibrating_an_export_folder_says_what_to_do(export_dir, capsys):
    """It said "no such file" for a folder that exists."""
    line = _one_error(capsys, ["calibrate", "--config", str(CONFIGS / "demo.yaml"), "--ckpt_path", str(export_dir)])
    assert line == (
        f"deepfake: error: --ckpt_path {export_dir} is an export folder, a published model that is not changed: "
        "calibrate the checkpoint it was exported from, then export it again"
    )


def test_predicting_a_missing_file_writes_nothing(export_dir, tmp_path, capsys, monkeypatch):
    """It said so, but left an evaluation folder behind (config.yaml, TensorBoard events), so the next run was _v1."""
    monkeypatch.chdir(tmp_path)
    line = _one_error(capsys, ["predict", "--ckpt_path", str(export_dir), "--data.predict_paths", "[nope.jpg]"])
    assert line == "deepfake: error: no such file or directory: nope.jpg"
    assert list(tmp_path.iterdir()) == []


def test_a_mistyped_class_path_is_one_short_line(capsys):
    """jsonargparse listed every Union subtype it had tried: about 2,500 characters on one line."""
    callbacks = '[{"class_path": "deepfake_lightning.callbacks.GradCamExportt"}]'
    line = _one_error(capsys, ["fit", "--config", str(CONFIGS / "demo.yaml"), "--trainer.callbacks", callbacks])
    assert line == (
        "deepfake: error: trainer.callbacks: class_path 'deepfake_lightning.callbacks.GradCamExportt' cannot be "
        "used (module 'deepfake_lightning.callbacks' has no attribute 'GradCamExportt')"
    )
