"""`deepfake` end to end through LightningCLI: every config, the output contract, precision and errors."""

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml

from deepfake_lightning import DeepfakeClassifier
from deepfake_lightning.cli import cli_main, main
from deepfake_lightning.lightning_cli import resolve_precision
from tests.helpers import CONFIGS

# clip_probe.yaml's ViT-L/14 (304 M parameters, 224 px only) is run with a tiny ViT in test_generalization.py.
ALL_CONFIGS = sorted(
    p.name for p in CONFIGS.glob("*.yaml") if not p.name.startswith("sweep") and p.name != "clip_probe.yaml"
)
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
BIG = {"convnext.yaml", "resnet50.yaml"}  # full-size backbones: 4 s each on 2 cores, so in the full suite only


def _args(config, root, out, *extra):
    """Arguments for a tiny CPU run of ``config``: the demo config on the demo data, the Kaggle configs on the
    Kaggle-layout fixture with small images and no pretrained download."""
    args = [
        "--config",
        str(CONFIGS / config),
        f"--data.root={root}",
        f"--trainer.default_root_dir={out}",
        "--data.num_workers=0",
        *QUIET,
    ]
    if config != "demo.yaml":
        args += [
            "--model.pretrained=false",
            "--data.img_size=32",
            "--data.batch_size=4",
            "--data.test_v1_csv=test_v1.csv",
        ]
    return [*args, *extra]


@pytest.mark.parametrize("config", [pytest.param(c, marks=pytest.mark.slow) if c in BIG else c for c in ALL_CONFIGS])
def test_fast_dev_run_every_config(config, kaggle_root, demo_root, tmp_path):
    root = demo_root if config == "demo.yaml" else kaggle_root
    cli = cli_main(["fit", *_args(config, root, tmp_path, "--trainer.fast_dev_run=1")])
    assert cli.trainer.state.finished
    assert {"train/loss_step", "val/auroc", "val/acc_ai"} <= set(cli.trainer.callback_metrics)
    expected = yaml.safe_load((CONFIGS / config).read_text())["model"]["backbone"]
    assert cli.model.hparams.backbone == expected


@pytest.mark.slow  # fit then test, end to end, per config
@pytest.mark.parametrize("config", ["demo.yaml", "convnext.yaml"])
def test_output_contract(config, kaggle_root, demo_root, tmp_path):
    root = demo_root if config == "demo.yaml" else kaggle_root
    limits = [
        "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=2",
        "--trainer.limit_test_batches=2",
    ]
    cli = cli_main(["fit", *_args(config, root, tmp_path, *limits)])
    run = tmp_path / "lightning_logs" / "version_0"
    assert run.is_dir() and cli.trainer.log_dir == str(run)

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["root"] == str(root) and saved["trainer"]["max_epochs"] == 2
    # resolved for this machine (16-bit mixed precision on a GPU) and recorded
    assert saved["trainer"]["precision"] == ("16-mixed" if torch.cuda.is_available() else "32-true")
    assert list(run.glob("events.out.tfevents.*"))

    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and any(p.startswith("best-epoch=") for p in ckpts)

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val/auroc"] == pytest.approx(float(cli.trainer.callback_metrics["val/auroc"]))
    assert {"train/loss_epoch", "val/f1", "val/tn", "val/acc_human"} <= metrics.keys()

    split = pd.read_csv(run / "split.csv")
    assert set(split["split"]) == {"train", "val"} and split["path"].is_unique

    # The checkpoint reloads from its own hyperparameters, and `test` reuses it and writes its metrics.
    model = DeepfakeClassifier.load_from_checkpoint(run / "checkpoints" / "last.ckpt")
    assert model.hparams.backbone == cli.model.hparams.backbone
    test = cli_main(
        [
            "test",
            *_args(config, root, tmp_path, "--trainer.limit_test_batches=2", f"--data.split_file={run / 'split.csv'}"),
            f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        ]
    )
    assert test.trainer.log_dir == str(run / "eval" / "test_last")  # evaluations stay with the run they evaluate
    assert [p.name for p in (tmp_path / "lightning_logs").iterdir()] == ["version_0"]
    test_metrics = json.loads((run / "eval" / "test_last" / "metrics.json").read_text())
    for split_name in ("test_v1", "test_v2"):
        assert 0.0 <= test_metrics[f"test/{split_name}/auroc"] <= 1.0
    assert test.model.hparams.pretrained is False  # the checkpoint supplies the weights: nothing fetched


def test_overrides_and_print_config(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(
            [
                "fit",
                "--config",
                str(CONFIGS / "convnext.yaml"),
                "--model.backbone=resnet50",
                "--trainer.max_epochs=3",
                "--data.root=/somewhere",
                "--print_config",
            ]
        )
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["backbone"] == "resnet50" and printed["trainer"]["max_epochs"] == 3
    assert printed["data"]["root"] == "/somewhere"
    assert printed["model"]["optimizer"]["init_args"]["lr"] == 1e-4  # from convnext.yaml
    assert printed["checkpoint"]["monitor"] == "val/auroc" and printed["checkpoint"]["save_last"] is True


def test_normalization_is_linked_from_the_backbone(kaggle_root, tmp_path):
    cli = cli_main(_args("efficientnet_b0.yaml", kaggle_root, tmp_path), run=False)
    assert cli.datamodule.hparams.mean == pytest.approx((0.485, 0.456, 0.406))
    cli = cli_main(_args("demo.yaml", kaggle_root, tmp_path, "--data.demo=false"), run=False)
    assert cli.datamodule.hparams.mean == (0.5, 0.5, 0.5)  # timm's test_resnet config


@pytest.mark.parametrize(
    ("precision", "accelerator", "cuda", "expected"),
    [
        (None, "auto", True, "16-mixed"),
        (None, "auto", False, "32-true"),
        (None, "cpu", True, "32-true"),
        ("16-mixed", "gpu", True, "16-mixed"),
        ("bf16-mixed", "cpu", False, "bf16-mixed"),
        ("32-true", "auto", True, "32-true"),
    ],
)
def test_resolve_precision(precision, accelerator, cuda, expected):
    assert resolve_precision(precision, accelerator, cuda) == expected


def test_fp16_on_cpu_falls_back_with_one_warning(kaggle_root, tmp_path):
    with pytest.warns(UserWarning, match="needs a CUDA GPU") as record:
        cli = cli_main(
            _args("convnext.yaml", kaggle_root, tmp_path, "--trainer.precision=16-mixed", "--trainer.accelerator=cpu"),
            run=False,
        )
    assert sum("needs a CUDA GPU" in str(w.message) for w in record) == 1
    assert cli.trainer.precision == "32-true"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_default_precision_on_gpu_is_16_mixed_with_grad_scaler(kaggle_root, tmp_path):
    cli = cli_main(_args("convnext.yaml", kaggle_root, tmp_path), run=False)
    assert cli.trainer.precision == "16-mixed"
    assert cli.trainer.precision_plugin.scaler is not None


def test_missing_data_root_exits_with_a_clear_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        sys,
        "argv",
        ["deepfake", "fit", "--config", str(CONFIGS / "convnext.yaml"), f"--data.root={tmp_path / 'absent'}"],
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "kaggle datasets download" in err and "configs/demo.yaml" in err


@pytest.mark.slow
def test_console_script_is_installed():
    out = subprocess.run(["deepfake", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and all(cmd in out.stdout for cmd in ("fit", "validate", "test", "predict"))


@pytest.mark.slow
@pytest.mark.parametrize("views", ["1", "tiles"])
def test_ddp_on_two_cpu_processes_matches_a_single_process_evaluation(kaggle_root, tmp_path, views):
    """Lightning's DDP on 2 CPU processes (gloo): the run ends, rank 0 alone writes the run directory, and the
    synchronised val/auroc equals a single-process validation of the same checkpoint. 5 validation images on 2
    ranks: a padding sampler would count one image twice. With tiles (4 per image), each rank pools its images'
    tiles and only per-image logits are gathered: still 5 calibration logits, not 20."""
    common = _args(
        "demo.yaml",
        kaggle_root,
        tmp_path,
        "--data.demo=false",
        "--data.group_column=null",
        "--data.test_v1_csv=test_v1.csv",
        "--data.img_size=32",
        "--data.val_fraction=0.125",
        f"--data.eval_views={views}",
        "--data.tile_stride=16",
    )
    args = [
        "deepfake",
        "fit",
        *common,
        "--trainer.max_epochs=2",
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--trainer.callbacks=[]",
        # rank 0 alone draws it: a synchronised value it shows must not wait for the other rank (train/loss did)
        "--trainer.enable_progress_bar=true",
    ]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)  # about 15 s; a deadlock times out
    assert out.returncode == 0, out.stderr[-3000:]
    assert "sync_dist" not in out.stderr  # every logged value is synchronised, or said to be rank 0's by design
    assert [p.name for p in (tmp_path / "lightning_logs").iterdir()] == ["version_0"]
    run = tmp_path / "lightning_logs" / "version_0"
    assert (pd.read_csv(run / "split.csv")["split"] == "val").sum() == 5
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["calibration"]["calibrator"]["method"] == "temperature"
    assert len(ckpt["calibration"]["val_probs"]) == 5  # calibrated on both ranks' validation logits
    metrics = json.loads((run / "metrics.json").read_text())
    assert sum(metrics[f"val/{k}"] for k in ("tp", "fp", "tn", "fn")) == 5  # every image counted exactly once
    ddp_auroc = metrics["val/auroc"]
    single = cli_main(
        [
            "validate",
            *common,
            f"--trainer.default_root_dir={tmp_path / 'single'}",
            f"--data.split_file={run / 'split.csv'}",
            f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        ]
    )
    assert float(single.trainer.callback_metrics["val/auroc"]) == pytest.approx(ddp_auroc, abs=1e-6)


def test_a_missing_checkpoint_fails_before_torch_is_imported():
    code = (
        "import sys\nfrom deepfake_lightning.cli import main\ntry:\n    main(['test', '--ckpt_path', 'nope.ckpt'])\n"
        "except SystemExit as e:\n    print(e.code, 'torch' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "2 False"  # exit 2, torch never loaded
    assert run.stderr.strip() == "deepfake: error: no such checkpoint file or export folder: 'nope.ckpt'"


def test_a_torch_torchvision_mismatch_is_one_line(monkeypatch, capsys):
    from importlib.metadata import version

    from deepfake_lightning import cli

    def broken(argv):
        raise RuntimeError("operator torchvision::nms does not exist")

    monkeypatch.setattr(cli, "_dispatch", broken)
    with pytest.raises(SystemExit) as e:
        cli.main(["fit"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1
    assert err[0].startswith(
        f"deepfake: error: torch {version('torch')} and torchvision {version('torchvision')} do not"
    )
    assert "pip install torch==2.14.1 torchvision==0.29.1" in err[0]
