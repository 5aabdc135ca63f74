"""Calibration through training, checkpoints and the CLI, on the demo data."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from deepfake_lightning import DeepfakeClassifier
from deepfake_lightning.cli import cli_main
from deepfake_lightning.commands.calibration import calibrate_main
from tests.helpers import CONFIGS, best_checkpoint, copy_run


@pytest.fixture(scope="module")
def demo_run(demo_run, tmp_path_factory):
    """A copy of the session's trained run (conftest's ``demo_run``): this module's evaluations write into it
    (``RUN/eval/``, results recorded in its checkpoint), not into the run the session's other tests read."""
    return copy_run(demo_run, tmp_path_factory.mktemp("run_copy") / "version_0")


@pytest.mark.slow  # what the whole demo fit calibrated (a nearly separable validation set)
def test_fit_stores_temperature_and_threshold_in_the_checkpoints(demo_run):
    for path in (best_checkpoint(demo_run), demo_run / "checkpoints" / "last.ckpt"):
        state = torch.load(path, map_location="cpu", weights_only=True)["calibration"]
        assert state["calibrator"]["method"] == "temperature" and state["calibrator"]["temperature"] > 0
        assert 0.0 < state["threshold"] < 1.0 and state["criterion"] == "f1"
        assert state["val_after"]["nll"] <= state["val_before"]["nll"]
        assert state["val_after"]["ece"] <= state["val_before"]["ece"]
    info = json.loads((demo_run / "calibration" / "calibration.json").read_text())
    metrics = json.loads((demo_run / "metrics.json").read_text())
    assert metrics["val/ece"] == pytest.approx(info["val/ece"]) and metrics["val/ece"] <= metrics["val/ece_before"]
    # The demo's 160 nearly separable validation images: the NLL fit wants T ~ 0.16 (probabilities of exactly 0 and
    # 1 on new images); the bound keeps the model's own logits (calibrators.temperature_bound)
    assert info["temperature_bounded_on"] == 160 and info["temperature"] == pytest.approx(1.0)
    assert info["temperature_unbounded"] < 0.5
    assert metrics["calibration/temperature"] == pytest.approx(info["temperature"])
    assert (demo_run / "calibration" / "reliability_val.png").stat().st_size > 10_000


def test_loaded_model_predicts_calibrated_probabilities(quick_run):
    model = DeepfakeClassifier.load_from_checkpoint(best_checkpoint(quick_run), map_location="cpu")
    t = model.calibration.calibrator.temperature
    logits = torch.tensor([-3.0, 0.0, 0.4, 2.0])
    expected = torch.sigmoid(logits / t)
    assert torch.allclose(model.calibrated_probs(logits).float(), expected, atol=1e-6)
    assert model.threshold == pytest.approx(model.calibration.threshold)


@pytest.mark.slow  # a full `deepfake test` with reports (13 s); the fast tier tests calibration without it
def test_deepfake_test_reports_calibration_and_thresholds(demo_run, demo_root, tmp_path):
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
            "--calibration.adapt_splits=[test_v2]",
            f"--ckpt_path={best_checkpoint(demo_run)}",
        ]
    )
    run = Path(cli.trainer.log_dir)
    m = json.loads((run / "metrics.json").read_text())
    for split in ("test_v1", "test_v2"):
        for k in ("ece", "nll", "brier", "mce"):
            assert 0 <= m[f"test/{split}/{k}"] and 0 <= m[f"test/{split}/{k}_before"]
        assert {f"test/{split}/f1", f"test/{split}/tuned/f1", f"test/{split}/ai_share_em"} <= m.keys()
        assert (run / "calibration" / f"reliability_{split}.png").is_file()
    # test_v1 shares the training generators and a 50 % AI share: EM recovers it
    assert m["test/test_v1/ai_share_em"] == pytest.approx(0.5, abs=0.08)
    # the tuned threshold differs from 0.5, so the tuned confusion counts follow it (same images)
    assert m["test/test_v2/tuned/tp"] + m["test/test_v2/tuned/fn"] == m["test/test_v2/tp"] + m["test/test_v2/fn"] == 120
    adapted = m["test/test_v2/adapted_threshold"]
    state = cli.model.calibration
    prior, share = float(state.val_probs.mean()), m["test/test_v2/ai_share_em"]
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    expected = logit(state.threshold) - (math.log(share / prior) - math.log((1 - share) / (1 - prior)))
    assert logit(adapted) == pytest.approx(expected, abs=1e-6)


def test_calibrate_command_writes_a_calibrated_copy(quick_run, demo_root, tmp_path, capsys):
    src = quick_run / "checkpoints" / "last.ckpt"
    before = src.read_bytes()
    out = tmp_path / "platt.ckpt"
    state = calibrate_main(
        [
            "--config",
            str(CONFIGS / "demo.yaml"),
            f"--data.root={demo_root}",
            "--data.num_workers=0",
            f"--data.split_file={quick_run / 'split.csv'}",
            f"--ckpt_path={src}",
            f"--out={out}",
            "--calibration.method=platt",
            "--calibration.threshold=youden",
        ]
    )
    assert src.read_bytes() == before  # the original is untouched
    saved = torch.load(out, map_location="cpu", weights_only=True)["calibration"]
    assert saved["calibrator"]["method"] == "platt" and saved["criterion"] == "youden"
    assert saved["threshold"] == pytest.approx(state.threshold)
    assert "Calibrated" in capsys.readouterr().out
    model = DeepfakeClassifier.load_from_checkpoint(out, map_location="cpu")
    a, b = saved["calibrator"]["platt"]
    z = torch.tensor([0.5])
    assert model.calibrated_probs(z).item() == pytest.approx(1 / (1 + np.exp(-(a * 0.5 + b))), abs=1e-6)


def test_failed_calibration_warns_and_keeps_the_trained_checkpoint(kaggle_root, tmp_path, monkeypatch, console):
    from deepfake_lightning.calibration import CalibrationState

    def fail(*args, **kwargs):
        raise ValueError("need both classes among the labels")

    monkeypatch.setattr(CalibrationState, "fit", fail)
    cli = cli_main(_tiny_fit(kaggle_root, tmp_path))
    warned = [line for line in console.getvalue().splitlines() if "calibration failed" in line]
    assert len(warned) == 2 and all(line.startswith("deepfake: warning: calibration failed for ") for line in warned)
    assert "left uncalibrated (threshold 0.5)" in warned[0] and ".py:" not in console.getvalue()
    assert cli.model.calibration is None and cli.model.threshold == 0.5
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert "calibration" not in torch.load(last, map_location="cpu", weights_only=True)


def test_the_result_line_says_which_checkpoint_it_calibrated_when_another_failed(
    kaggle_root, tmp_path, monkeypatch, console
):
    """last.ckpt fails (a warning), the best checkpoint is calibrated: the result line says its figures are the
    best checkpoint's, not the one the warning just named."""
    from deepfake_lightning.calibration import CalibrationState

    fit, calls = CalibrationState.fit, []

    def fail_first(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # last.ckpt comes first
            raise ValueError("need both classes among the labels")
        return fit(*args, **kwargs)

    monkeypatch.setattr(CalibrationState, "fit", fail_first)
    cli_main(_tiny_fit(kaggle_root, tmp_path))
    assert "deepfake: warning: calibration failed for last.ckpt: need both classes" in console.getvalue()
    checkpoints = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    best = next(checkpoints.glob("best-*.ckpt"))
    assert "calibration" in torch.load(best, map_location="cpu", weights_only=True)
    assert "calibration" not in torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    lines = [line for line in console.getvalue().splitlines() if line.startswith("Calibration (temperature)")]
    assert len(lines) == 1 and lines[0].endswith(f"(for {best.name}; last.ckpt left uncalibrated)")


def _tiny_fit(root, out) -> list[str]:
    return [
        "fit",
        "--config",
        str(CONFIGS / "demo.yaml"),
        f"--data.root={root}",
        "--data.demo=false",
        "--data.group_column=null",
        "--data.test_v1_csv=test_v1.csv",
        f"--trainer.default_root_dir={out}",
        "--trainer.max_epochs=1",
        "--data.num_workers=0",
        "--data.img_size=32",
        "--trainer.enable_progress_bar=false",
    ]
