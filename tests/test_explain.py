"""Grad-CAM engine, callback and `deepfake explain`."""

import shutil
import sys
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from deepfake_lightning import DeepfakeClassifier, DeepfakeDataModule
from deepfake_lightning.callbacks import GradCamExport
from deepfake_lightning.cli import main
from deepfake_lightning.commands.explain import explain_parser
from deepfake_lightning.data.demo import _random_crop, _to_pil, simulate_generator, source_photos
from deepfake_lightning.explain import CAM_METHODS, CamExplainer, default_target_layers
from tests.helpers import best_checkpoint


@pytest.fixture(scope="module")
def demo_run(quick_run):
    """The session's quick run (conftest's ``quick_run``): this module checks formats, errors, options and parity
    between commands, not what a model learned."""
    return quick_run


@pytest.mark.parametrize(
    ("name", "layer"),
    [
        ("resnet50", "layer4.2"),
        ("convnext_tiny", "stages.3"),
        ("efficientnet_b0", "conv_head"),
        ("test_resnet", "layer4.0"),
        ("test_vit", "blocks.5.norm1"),
    ],
)
def test_cam_shape_range_and_default_layers(name, layer):
    torch.manual_seed(0)
    model = DeepfakeClassifier(name, pretrained=False)
    assert default_target_layers(model.net) == [layer]
    with CamExplainer(model, n_layers=3) as explainer:
        result = explainer(torch.randn(3, 3, 64, 64))
    assert result.cam.shape == (3, 64, 64) and result.cam.dtype == np.float32
    assert result.cam.min() >= 0 and result.cam.max() <= 1 + 1e-6 and result.cam.max() > 0.5
    assert list(result.per_layer)[-1] == layer and len(result.per_layer) == 3
    assert all(m.shape == (3, 64, 64) for m in result.per_layer.values())
    assert result.probs.shape == (3,) and ((result.probs > 0) & (result.probs < 1)).all()


def test_layers_and_methods_are_validated():
    model = DeepfakeClassifier("test_resnet", pretrained=False)
    with pytest.raises(ValueError, match="unknown layer name.*'layer9'"):
        CamExplainer(model, layers=["layer9"])
    with pytest.raises(ValueError, match="unknown CAM method"):
        CamExplainer(model, method="magic")
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32)
    help_text = explain_parser().format_help()
    for method in CAM_METHODS:  # every method the command offers works, and its --help names it
        with CamExplainer(model, method=method, layers=["layer3"]) as explainer:
            result = explainer(images)
        assert result.cam.shape == (2, 32, 32) and np.isfinite(result.cam).all(), method
        assert result.method == method and method in help_text


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_model_state_restored_and_hooks_released_over_50_calls():
    torch.manual_seed(0)
    model = DeepfakeClassifier("test_resnet", pretrained=False)
    model.net.conv1.requires_grad_(False)  # a partly frozen model, as during transfer learning
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    hooks = _hooks(model)
    x = torch.randn(8, 3, 64, 64)
    for _ in range(5):  # warm-up: allocator and lazy imports
        with CamExplainer(model) as explainer:
            explainer(x)
    rss = _rss_mb()
    for _ in range(50):
        with CamExplainer(model, n_layers=2) as explainer:
            explainer(x)
    assert _hooks(model) == hooks
    assert _rss_mb() - rss < 50  # MB; a leak of activations would grow by ~1 MB per call
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    state = torch.get_rng_state()
    with CamExplainer(model, method="gradcam") as explainer:
        explainer(x)
    assert torch.equal(state, torch.get_rng_state())


def test_exceptions_inside_the_context_are_not_swallowed():
    model = DeepfakeClassifier("test_resnet", pretrained=False)
    with pytest.raises(IndexError):  # pytorch-grad-cam's own __exit__ would print and swallow this one
        with CamExplainer(model):
            raise IndexError("boom")
    assert _hooks(model) == 0


@pytest.fixture(scope="module")
def quadrant_model(tmp_path_factory):
    """test_resnet trained on pairs where the AI image differs from its photo only in the top-left quadrant,
    which went through a simulated up-sampling generator. Returns (model, AI validation images)."""
    root = tmp_path_factory.mktemp("quadrant")
    (root / "img").mkdir()
    rng = np.random.default_rng(0)
    photos, rows = source_photos(), []
    for i in range(300):
        human = _random_crop(photos, 64, rng)
        fake = human.clone()
        fake[:, :32, :32] = simulate_generator(human[:, :32, :32], "nearest_smooth", rng)
        for label, img in ((0, human), (1, fake)):
            f = f"img/{i}_{label}.jpg"
            _to_pil(img).save(root / f, quality=95)
            rows.append((f, label, i))
    pd.DataFrame(rows, columns=["file_name", "label", "group"]).to_csv(root / "train.csv")
    L.seed_everything(0)
    model = DeepfakeClassifier("test_resnet", pretrained=False, optimizer=partial(torch.optim.AdamW, lr=2e-3))
    dm = DeepfakeDataModule(
        str(root),
        test_v2_csv=None,
        group_column="group",
        img_size=64,
        mode="crop",
        batch_size=32,
        num_workers=0,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        val_fraction=0.2,
    )
    L.Trainer(
        max_epochs=6, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    ).fit(model, dm)
    ds = dm.dataset("val")
    images = torch.stack([ds[i]["image"] for i in range(len(ds)) if ds.labels[i] == 1])
    return model, images


def _quadrant_mass(cam):
    h = cam.shape[1] // 2
    return np.stack(
        [
            cam[:, :h, :h].sum((1, 2)),
            cam[:, :h, h:].sum((1, 2)),
            cam[:, h:, :h].sum((1, 2)),
            cam[:, h:, h:].sum((1, 2)),
        ],
        axis=1,
    )


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_cam_finds_the_artifact_quadrant(quadrant_model, method):
    """Threshold: for at least 75 % of the AI validation images, the top-left (artifact) quadrant holds more
    CAM mass than each other quadrant (measured: ~92 % for Grad-CAM, ~93 % for Grad-CAM++). Explaining the
    'human' target instead puts the artifact quadrant first for at most 25 % (measured: 0-3 %)."""
    model, images = quadrant_model
    with CamExplainer(model, method=method, target="ai") as explainer:
        mass = _quadrant_mass(explainer(images).cam)
    assert (mass[:, 0] > mass[:, 1:].max(axis=1)).mean() >= 0.75
    with CamExplainer(model, method=method, target="human") as explainer:
        mass = _quadrant_mass(explainer(images).cam)
    assert (mass[:, 0] > mass[:, 1:].max(axis=1)).mean() <= 0.25


def _fit(root, out, callbacks):
    L.seed_everything(0)
    model = DeepfakeClassifier("test_resnet", pretrained=False, optimizer=partial(torch.optim.AdamW, lr=3e-3))
    dm = DeepfakeDataModule(
        str(root),
        test_v1_csv="test_v1.csv",
        img_size=32,
        batch_size=8,
        num_workers=0,
        aug_strength=0.5,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
    )
    # CPU: the comparison below is bit-for-bit, which CUDA's non-deterministic kernels do not give run to run
    trainer = L.Trainer(
        max_epochs=2,
        default_root_dir=str(out),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
    )
    trainer.fit(model, dm)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    trainer.test(model, dm, verbose=False)
    return trainer, metrics


@pytest.mark.slow
def test_callback_writes_pngs_and_tensorboard_without_changing_training(kaggle_root, tmp_path):
    _, plain = _fit(kaggle_root, tmp_path / "plain", [])
    trainer, with_cam = _fit(
        kaggle_root, tmp_path / "cam", [GradCamExport(every_n_epochs=1, num_samples=4, num_mistakes=2, n_layers=2)]
    )
    assert with_cam == plain  # bit-identical metrics for the same seed
    run = Path(trainer.log_dir)
    for folder in ("epoch=0", "epoch=1", "test_v1", "test_v2"):
        assert (run / "gradcam" / folder / "samples.png").stat().st_size > 5000
    events = EventAccumulator(str(run), size_guidance={"images": 0}).Reload()
    assert {"gradcam/val/samples", "gradcam/test_v1/samples"} <= set(events.Tags()["images"])


def test_explain_command_with_an_unknown_layer_is_one_error_line(demo_run, demo_root, tmp_path, capsys):
    image = demo_root / pd.read_csv(demo_root / "test_v1.csv")["id"][0]
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "explain",
                str(image),
                "--ckpt_path",
                str(demo_run / "checkpoints" / "last.ckpt"),
                "--out",
                str(tmp_path / "out"),
                "--layers",
                "layer9",
            ]
        )
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "--layers: unknown layer name(s) ['layer9'] in ResNet; top-level modules:" in err and "'layer4'" in err
    assert not (tmp_path / "out").exists()  # checked before any work: no empty folder left


def test_explain_command_writes_pngs_and_csv_and_reports_bad_files(demo_run, demo_root, tmp_path, monkeypatch, capsys):
    images = tmp_path / "in"
    images.mkdir()
    test = pd.read_csv(demo_root / "test_v1.csv")
    for f in test["id"][:4]:
        shutil.copy(demo_root / f, images)
    (images / "readme.txt").write_text("not an image")
    ckpt = best_checkpoint(demo_run)
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "deepfake",
            "explain",
            str(images),
            "--ckpt_path",
            str(ckpt),
            "--out",
            str(tmp_path / "out"),
            "--n_layers",
            "2",
        ],
    )
    main()
    out = tmp_path / "out"
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(Path(f).stem for f in test["id"][:4])
    table = pd.read_csv(out / "explanations.csv", keep_default_na=False)
    assert len(table) == 5
    bad = table[table["file"].str.endswith("readme.txt")].iloc[0]
    assert bad["prob_ai"] == "" and "cannot identify image file" in bad["error"]
    good = table[table["error"] == ""]
    probs = good["prob_ai"].astype(float)
    assert ((probs >= 0) & (probs <= 1)).all() and set(good["label"].astype(int)) <= {0, 1}
    assert sorted(good["png"]) == sorted(f"{Path(f).stem}.png" for f in test["id"][:4])
    assert "skipped" in capsys.readouterr().err

    # A second run into the same --out adds its rows and keeps the first run's; a file explained again is replaced.
    more = tmp_path / "more"
    more.mkdir()
    for f in test["id"][4:6]:
        shutil.copy(demo_root / f, more)
    again = images / Path(test["id"][0]).name
    main(["explain", str(more), str(again), "--ckpt_path", str(ckpt), "--out", str(out)])
    table = pd.read_csv(out / "explanations.csv", keep_default_na=False)
    assert len(table) == 7 and table["file"].is_unique
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(Path(f).stem for f in test["id"][:6])
