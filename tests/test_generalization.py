"""Generalization tools: forensic front-ends, the frozen-feature probe, per-generator reports and the training
filter for leave-one-generator-out runs."""

import json
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from deepfake_lightning import DeepfakeClassifier, DeepfakeDataModule
from deepfake_lightning.cli import cli_main, main
from deepfake_lightning.data.index import DataError
from deepfake_lightning.models.frontends import create_frontend, srm_kernels
from tests.helpers import CONFIGS, best_checkpoint, copy_run


@pytest.fixture(scope="module")
def demo_run(quick_run, tmp_path_factory):
    """A copy of the session's quick run (conftest's ``quick_run``: this module checks formats, errors, options and
    parity, not what a model learned): its evaluations write into the copy (``RUN/eval/``), not into the run the
    session's other tests read."""
    return copy_run(quick_run, tmp_path_factory.mktemp("run_copy") / "version_0")


# --------------------------------------------------------------------------- front-ends
@pytest.mark.parametrize("name", ["rgb", "npr", "highpass"])
def test_frontends_keep_the_shape_have_no_state_and_pass_gradients(name):
    frontend = create_frontend(name)
    for h, w in ((64, 64), (33, 47)):
        x = torch.randn(2, 3, h, w, requires_grad=True)
        y = frontend(x)
        assert y.shape == x.shape
        y.square().sum().backward()  # Grad-CAM's input gradients flow through the front-end
        assert x.grad is not None and x.grad.abs().sum() > 0
    assert list(frontend.parameters()) == [] and frontend.state_dict() == {}


def test_npr_is_the_residual_of_nearest_resampling():
    low = torch.randn(1, 3, 8, 8)
    blocky = F.interpolate(low, scale_factor=2, mode="nearest")  # what nearest up-sampling makes: no residual
    assert torch.equal(create_frontend("npr")(blocky), torch.zeros_like(blocky))
    x = torch.randn(1, 3, 16, 16)
    expected = x - F.interpolate(F.interpolate(x, scale_factor=0.5, mode="nearest"), scale_factor=2, mode="nearest")
    torch.testing.assert_close(create_frontend("npr")(x), expected)


def test_highpass_kills_smooth_content_and_keeps_texture():
    kernels = srm_kernels()
    assert torch.allclose(kernels.sum(dim=(1, 2)), torch.zeros(3), atol=1e-6)  # every SRM kernel is a pure high-pass
    ramp = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(1, 3, 32, 32).contiguous()
    out = create_frontend("highpass")(ramp)
    assert out[..., 2:-2, 2:-2].abs().max() < 1e-5  # a linear ramp has no second- or higher-order residual
    noise = create_frontend("highpass")(torch.randn(1, 3, 32, 32))
    assert noise.abs().mean() > 0.1
    gray = torch.randn(1, 1, 32, 32)  # the output is the kernels on the channel mean
    expected = F.conv2d(F.pad(gray, (2, 2, 2, 2), mode="reflect"), kernels[:, None])
    torch.testing.assert_close(create_frontend("highpass")(gray.expand(1, 3, 32, 32)), expected, atol=1e-5, rtol=1e-4)


def test_the_frontend_is_part_of_the_model_and_its_export(tmp_path):
    from deepfake_lightning.export import export_checkpoint, load_export

    torch.manual_seed(0)
    model = DeepfakeClassifier("test_resnet", pretrained=False, frontend="npr").eval()
    rgb = DeepfakeClassifier("test_resnet", pretrained=False)
    assert set(model.state_dict()) == set(rgb.state_dict())  # checkpoints and exports keep their keys
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.net(create_frontend("npr")(x)).squeeze(-1))
    ckpt = tmp_path / "m.ckpt"
    torch.save({"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}, ckpt)
    loaded, config = load_export(export_checkpoint(ckpt, tmp_path / "export"))
    assert config["frontend"] == "npr" and loaded.hparams.frontend == "npr"
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert "| front-end | npr |" in (tmp_path / "export" / "README.md").read_text()


def test_pixel_level_frontend_with_resize_warns(kaggle_root, tmp_path):
    with pytest.warns(UserWarning, match="model.frontend=highpass .* data.mode=resize .* use data.mode=crop"):
        cli_main(
            [
                "fit",
                "--config",
                str(CONFIGS / "demo.yaml"),
                f"--data.root={kaggle_root}",
                "--data.demo=false",
                "--data.group_column=null",
                "--data.test_v1_csv=test_v1.csv",
                "--data.mode=resize",
                "--data.img_size=32",
                "--data.num_workers=0",
                "--model.frontend=highpass",
                "--trainer.fast_dev_run=1",
                f"--trainer.default_root_dir={tmp_path}",
            ]
        )


# --------------------------------------------------------------------------- frozen-feature probe
def test_frozen_backbone_trains_only_the_head(kaggle_root, tmp_path):
    L.seed_everything(0)
    model = DeepfakeClassifier(
        "test_vit", pretrained=False, freeze_backbone=True, optimizer=lambda p: torch.optim.SGD(p, lr=0.1)
    )
    head = model.net.get_classifier()
    head_ids = {id(p) for p in head.parameters()}
    before = {n: p.detach().clone() for n, p in model.net.named_parameters()}
    assert all(p.requires_grad == (id(p) in head_ids) for p in model.net.parameters())
    model.train()
    assert not model.net.training and head.training  # frozen features: body in eval mode, head trains
    dm = DeepfakeDataModule(root=str(kaggle_root), test_v1_csv="test_v1.csv", img_size=32, batch_size=8, num_workers=0)
    trainer = L.Trainer(
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(model, dm)
    for name, p in model.net.named_parameters():
        changed = not torch.equal(p.detach(), before[name])
        if id(p) in head_ids:
            assert changed, name
        else:
            assert not changed and p.grad is None, name
    with pytest.raises(ValueError, match="exclude each other"):
        DeepfakeClassifier("test_resnet", pretrained=False, freeze_backbone=True, freeze_backbone_epochs=1)


def test_clip_probe_config_is_the_univfd_probe_and_runs_offline_with_a_tiny_vit(kaggle_root, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", "configs/clip_probe.yaml", "--print_config"])
    import yaml

    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["backbone"] == "vit_large_patch14_clip_224.openai"
    assert printed["model"]["freeze_backbone"] is True and printed["model"]["pretrained"] is True
    cli = cli_main(
        [
            "fit",
            "--config",
            str(CONFIGS / "clip_probe.yaml"),
            "--model.backbone=test_vit",
            "--model.pretrained=false",
            f"--data.root={kaggle_root}",
            "--data.test_v1_csv=test_v1.csv",
            "--data.img_size=32",
            "--data.num_workers=0",
            "--trainer.fast_dev_run=1",
            "--trainer.precision=32-true",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    trainable = [n for n, p in cli.model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("net.head.") for n in trainable)


# --------------------------------------------------------------------------- leave-one-generator-out filter
@pytest.fixture
def generator_root(kaggle_root, tmp_path):
    import shutil

    root = tmp_path / "gen"
    shutil.copytree(kaggle_root, root)
    train = pd.read_csv(root / "train.csv", index_col=0)
    train["generator"] = np.where(train["label"] == 1, np.array(["a", "b"])[np.arange(len(train)) // 2 % 2], "real")
    train.to_csv(root / "train.csv")
    return root


def test_train_query_filters_before_the_split(generator_root):
    dm = DeepfakeDataModule(
        root=str(generator_root), train_query="generator != 'a'", group_column="group", num_workers=0
    )
    dm.setup("fit")
    train = pd.read_csv(generator_root / "train.csv", index_col=0)
    kept = set(train.loc[train["generator"] != "a", "file_name"])
    used = set(dm.indexes["train"]["path"]) | set(dm.indexes["val"]["path"])
    assert used == kept and len(kept) < len(train)
    assert dm.data_identity()["data"]["train_query"] == "generator != 'a'"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (
            "generatr != 'a'",
            r"train\.csv: query .* names an unknown column .*generatr.*; columns: \['file_name', 'label', "
            r"'group', 'generator'\]",
        ),
        ("generator == 'zzz'", r"train\.csv: query .* matches none of its 40 rows"),
        ("generator ==", r"train\.csv: query .* cannot be evaluated"),
    ],
)
def test_train_query_errors_name_the_problem(generator_root, query, message):
    dm = DeepfakeDataModule(root=str(generator_root), train_query=query, num_workers=0)
    with pytest.raises(DataError, match=message):
        dm.setup("fit")


# --------------------------------------------------------------------------- per-group reports
@pytest.mark.slow
def test_group_report_equals_sklearn_on_the_saved_predictions(demo_run, demo_root, tmp_path, console):
    ckpt = best_checkpoint(demo_run)
    cli = cli_main(
        [
            "test",
            "--config",
            str(CONFIGS / "demo.yaml"),
            f"--data.root={demo_root}",
            f"--trainer.default_root_dir={tmp_path}",
            "--data.num_workers=0",
            "--trainer.enable_progress_bar=false",
            f"--data.split_file={demo_run / 'split.csv'}",
            f"--ckpt_path={ckpt}",
            "--report.group_by=generator",
        ]
    )
    run = Path(cli.trainer.log_dir)
    report = json.loads((run / "report.json").read_text())
    groups = report["groups"]
    assert groups["column"] == "generator"
    assert set(groups["test_v1"]) == {"real", "tconv", "nearest_smooth", "bilinear_sharpen"}
    assert set(groups["test_v2"]) == {"real", "subpixel_texture"}
    t = report["threshold"]
    for split in ("val", "test_v1", "test_v2"):
        pred = pd.read_csv(run / "predictions" / f"{split}.csv")
        human = pred[pred["label"] == 0]
        for name, r in groups[split].items():
            g = pred[pred["generator"] == name]
            assert r["n_images"] == len(g) and r["n_ai"] == int(g["label"].sum())
            assert r["acc"] == pytest.approx(np.mean((g["prob_ai"] >= t) == g["label"]))
            ai = g[g["label"] == 1]
            if name == "real":
                assert r["auroc"] is None
            else:
                y = np.r_[np.zeros(len(human)), np.ones(len(ai))]
                assert r["auroc"] == pytest.approx(roc_auc_score(y, np.r_[human["prob_ai"], ai["prob_ai"]]))
    # the held-out generator of test_v2 is the split's whole AI part: its AUROC is the split's
    assert groups["test_v2"]["subpixel_texture"]["auroc"] == pytest.approx(report["splits"]["test_v2"]["auroc"])
    assert (run / "plots" / "groups.png").stat().st_size > 10_000
    printed = console.getvalue()
    assert "By generator:" in printed and "subpixel_texture" in printed.split("By generator:")[1]


def test_group_by_an_unknown_column_is_one_error(demo_run, demo_root, tmp_path, monkeypatch, capsys):
    ckpt = best_checkpoint(demo_run)
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "test",
                "--config",
                str(CONFIGS / "demo.yaml"),
                f"--data.root={demo_root}",
                f"--trainer.default_root_dir={tmp_path}",
                "--data.num_workers=0",
                "--trainer.enable_progress_bar=false",
                f"--ckpt_path={ckpt}",
                "--report.group_by=camera",
            ]
        )
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("deepfake: error:")]
    assert len(err) == 1 and "no column 'camera'" in err[0] and "generator" in err[0]


@pytest.mark.slow
def test_evaluating_a_filtered_run_reuses_its_filter(generator_root, tmp_path):
    """A model trained on a held-out-generator filter is validated on its own validation images: the checkpoint
    carries data.train_query, so `test` rebuilds the same split (and its split file matches)."""
    common = [
        "--config",
        str(CONFIGS / "demo.yaml"),
        f"--data.root={generator_root}",
        "--data.demo=false",
        "--data.test_v1_csv=test_v1.csv",
        "--data.img_size=32",
        "--data.num_workers=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.callbacks=[]",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    fit = cli_main(["fit", *common, "--trainer.max_epochs=1", "--data.train_query=generator != 'a'"])
    run = Path(fit.trainer.log_dir)
    test = cli_main(
        ["test", *common, f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"--data.split_file={run / 'split.csv'}"]
    )
    assert test.datamodule.hparams.train_query == "generator != 'a'"
    assert set(test.datamodule.indexes["val"]["path"]) == set(fit.datamodule.indexes["val"]["path"])


def test_group_by_column_is_checked_before_the_evaluation(demo_root):
    """The column is looked up when `test` starts, not after every image has been scored."""
    from types import SimpleNamespace

    from deepfake_lightning.callbacks import EvaluationReport

    dm = DeepfakeDataModule(root=str(demo_root), test_v1_csv="test_v1.csv", group_column="group", num_workers=0)
    dm.setup("test")
    trainer = SimpleNamespace(datamodule=dm)
    EvaluationReport(group_by="generator").on_test_start(trainer, None)  # every split has it
    with pytest.raises(
        DataError,
        match=r"test_v1\.csv: no column 'camera' to group the test_v1 split by|"
        r"train\.csv: no column 'camera' to group the val split by",
    ):
        EvaluationReport(group_by="camera").on_test_start(trainer, None)
