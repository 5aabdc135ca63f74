"""Model files are never unpickled: a checkpoint crafted to run code is refused by every command and loader, with one
error line naming the file and what was refused, and nothing runs or is written (checkpoints.py)."""

import os
from pathlib import Path

import pytest
import torch

from deepfake_lightning import load_detector
from deepfake_lightning.api import datamodule_for
from deepfake_lightning.checkpoints import (
    SafeCheckpointIO,
    load_checkpoint,
    stored_settings,
    update_checkpoint,
)
from deepfake_lightning.cli import main
from deepfake_lightning.errors import CheckpointError
from deepfake_lightning.models import DeepfakeClassifier


class _RunsCode:
    """Unpickling this creates ``marker``: the proof that a loader ran code from the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _checkpoint(model: DeepfakeClassifier, root: Path) -> dict:
    """A complete, valid checkpoint of ``model`` (as `deepfake fit` writes one), for a demo-layout data root."""
    return {
        "state_dict": model.state_dict(),
        "epoch": 0,
        "global_step": 1,
        "pytorch-lightning_version": "2.6.0",
        "hyper_parameters": dict(model.hparams),
        "datamodule_hyper_parameters": {"root": str(root), "demo": False, "img_size": 32, "mode": "crop"},
    }


@pytest.fixture(scope="module")
def model() -> DeepfakeClassifier:
    return DeepfakeClassifier("test_resnet", pretrained=False)


@pytest.fixture
def evil(tmp_path, model, kaggle_root) -> tuple[Path, Path]:
    """``(evil.ckpt, marker)``: a checkpoint that would load and work, plus one object that runs a shell command."""
    marker = tmp_path / "marker"
    ckpt = _checkpoint(model, kaggle_root)
    ckpt["hyper_parameters"]["note"] = _RunsCode(marker)
    path = tmp_path / "evil.ckpt"
    torch.save(ckpt, path)
    return path, marker


def test_the_crafted_file_does_run_code_when_unpickled(evil):
    """The fixture is what it claims: torch.load(weights_only=False) runs its command (so the tests below prove
    something)."""
    path, marker = evil
    torch.load(path, weights_only=False)
    assert marker.exists()


def _one_error_line(capsys, argv: list[str], path: Path) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("deepfake: error: ") and str(path) in err[0]
    assert "Unsupported global: GLOBAL posix.system" in err[0], err[0]
    return err[0]


@pytest.mark.parametrize(
    "command",
    [
        ["export", "--out", "{out}"],
        ["explain", "{image}", "--out", "{out}"],
        ["serve", "--port", "0"],
        ["calibrate", "--data.root", "{root}"],
        ["fit", "--data.root", "{root}", "--model.backbone", "test_resnet", "--trainer.default_root_dir", "{out}"],
        ["validate", "--data.root", "{root}", "--trainer.default_root_dir", "{out}"],
        ["test", "--data.root", "{root}", "--trainer.default_root_dir", "{out}"],
        ["predict", "--data.predict_paths", "[{image}]", "--trainer.default_root_dir", "{out}"],
    ],
)
def test_every_command_refuses_a_checkpoint_that_runs_code(command, evil, tmp_path, kaggle_root, capsys):
    path, marker = evil
    out = tmp_path / "out"
    image = next((kaggle_root / "test_data_v1").glob("*.jpg"))
    argv = [a.format(out=out, image=image, root=kaggle_root) for a in command]
    line = _one_error_line(capsys, [argv[0], "--ckpt_path", str(path), *argv[1:]], path)
    assert "refused to unpickle" in line
    assert not marker.exists()
    assert not out.exists()  # nothing written


def test_fit_resuming_last_refuses_a_crafted_last_ckpt(evil, tmp_path, kaggle_root, capsys, monkeypatch):
    path, marker = evil
    run = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    run.mkdir(parents=True)
    (run / "last.ckpt").write_bytes(path.read_bytes())
    monkeypatch.chdir(tmp_path)
    _one_error_line(
        capsys,
        ["fit", "--data.root", str(kaggle_root), "--model.backbone", "test_resnet", "--ckpt_path", "last"],
        Path("lightning_logs/version_0/checkpoints/last.ckpt"),
    )
    assert not marker.exists()
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_0"]


def test_python_loaders_raise_checkpoint_error(evil):
    path, marker = evil
    for load in (load_detector, datamodule_for, load_checkpoint, stored_settings):
        with pytest.raises(CheckpointError, match="Unsupported global: GLOBAL posix.system"):
            load(path)
    with pytest.raises(CheckpointError, match="refused"):
        SafeCheckpointIO().load_checkpoint(path)  # Lightning's own --ckpt_path reads go through this plugin
    assert not marker.exists()


def test_a_file_that_is_not_a_checkpoint_is_one_clear_error(tmp_path, capsys):
    for i, text in enumerate(["not a checkpoint", "hello", ""]):
        (tmp_path / f"{i}.ckpt").write_text(text)
        with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
            load_checkpoint(tmp_path / f"{i}.ckpt")
    junk = tmp_path / "0.ckpt"
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="no state_dict"):
        load_checkpoint(tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="folder without detector.json"):
        load_checkpoint(tmp_path)
    with pytest.raises(SystemExit):
        main(["export", "--ckpt_path", str(junk), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(junk) in err[0] and "not a PyTorch checkpoint" in err[0]


def test_a_plain_checkpoint_loads_once_with_its_settings(tmp_path, model, kaggle_root):
    path = tmp_path / "good.ckpt"
    torch.save(_checkpoint(model, kaggle_root), path)
    settings = stored_settings(path)
    assert settings["model"]["backbone"] == "test_resnet"
    assert settings["data"] == {"root": str(kaggle_root), "demo": False, "img_size": 32, "mode": "crop"}
    rebuilt = DeepfakeClassifier.from_checkpoint(load_checkpoint(path))
    assert not rebuilt.training
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key
    detector = load_detector(path)
    assert detector.img_size == 32 and detector.threshold == 0.5


def test_update_checkpoint_changes_entries_atomically(tmp_path, model, kaggle_root):
    path = tmp_path / "good.ckpt"
    torch.save(_checkpoint(model, kaggle_root), path)
    copy = update_checkpoint(path, lambda c: c.update(extra={"n": 3}), out=tmp_path / "copy.ckpt")
    assert load_checkpoint(copy)["extra"] == {"n": 3}
    assert "extra" not in load_checkpoint(path)

    def fails(ckpt):
        raise RuntimeError("disk full")

    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        update_checkpoint(path, fails)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.ckpt", "good.ckpt"]
