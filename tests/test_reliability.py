"""Resuming killed runs, atomic writes, numerical faults."""

import os
import signal
import subprocess
import sys
import time

import lightning.fabric.plugins.io.torch_io as torch_io
import pandas as pd
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from deepfake_lightning.api import scalars
from deepfake_lightning.checkpoints import SafeCheckpointIO
from deepfake_lightning.cli import cli_main
from deepfake_lightning.files import atomic_path
from tests.helpers import CONFIGS


def test_a_write_that_dies_midway_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = SafeCheckpointIO()
    io.save_checkpoint({"step": 1}, path)

    def dies_midway(checkpoint, filepath):  # what a kill during the write leaves behind: half a file
        with open(filepath, "wb") as f:
            f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch_io, "_atomic_save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, path)
    assert torch.load(path, weights_only=True)["step"] == 1
    assert os.listdir(tmp_path) == ["last.ckpt"]  # no temporary file left

    def crash_while_writing():
        with atomic_path(tmp_path / "report.json") as tmp:
            tmp.write_text("{")
            raise ValueError("crash while writing")

    with pytest.raises(ValueError, match="crash while writing"):
        crash_while_writing()
    assert os.listdir(tmp_path) == ["last.ckpt"]


def _fit_args(root, out, *extra):
    return [
        "fit",
        "--config",
        str(CONFIGS / "demo.yaml"),
        f"--data.root={root}",
        f"--trainer.default_root_dir={out}",
        "--data.num_workers=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.max_epochs=3",
        "--trainer.callbacks=[]",
        *extra,
    ]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_with_ckpt_path_last(demo_root, tmp_path):
    run = tmp_path / "lightning_logs" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    args = _fit_args(demo_root, tmp_path, "--checkpoint.last_every_n_steps=4")
    with open(tmp_path / "stderr.txt", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "deepfake_lightning.cli", *args], stdout=subprocess.DEVNULL, stderr=err
        )
        deadline = time.time() + 120
        while not last.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert last.exists(), (tmp_path / "stderr.txt").read_text()[-2000:]
    killed = torch.load(last, map_location="cpu", weights_only=True)  # no arbitrary objects in our checkpoints
    steps_per_epoch = (pd.read_csv(run / "split.csv")["split"] == "train").sum() // 64  # batch 64, drop_last
    assert killed["epoch"] == 0 and 0 < killed["global_step"] < steps_per_epoch  # killed in the middle of epoch 1
    assert "rng_states" in next(v for k, v in killed["callbacks"].items() if k.startswith("RunCheckpoint"))

    cli = cli_main([*args, "--ckpt_path=last"])
    assert cli.trainer.current_epoch == 3  # three epochs in total, not three more
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]  # continued in the same run directory
    assert cli.datamodule.hparams.split_file == str(run / "split.csv")
    final = torch.load(last, map_location="cpu", weights_only=True)
    assert final["global_step"] == 3 * steps_per_epoch and final["epoch"] == 2
    assert len(scalars(run, ["val/auroc"])) == 3  # one validation per epoch, none repeated or lost


def test_resume_without_a_run_says_so(tmp_path, demo_root):
    with pytest.raises(FileNotFoundError, match="no .*last.ckpt to resume"):
        cli_main([*_fit_args(demo_root, tmp_path), "--ckpt_path=last"])


class _PoisonWeights(Callback):
    """Makes the weights non-finite after optimizer step ``at`` (before the checkpoint callback sees them)."""

    def __init__(self, at: int):
        self.at = at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.at:
            with torch.no_grad():
                pl_module.net.fc.bias.fill_(float("nan"))


def test_non_finite_loss_keeps_the_last_good_checkpoint(demo_root, tmp_path):
    run = tmp_path / "lightning_logs" / "version_0"
    cli = cli_main(_fit_args(demo_root, tmp_path, "--checkpoint.last_every_n_steps=2")[1:], run=False)
    cli.trainer.callbacks.insert(0, _PoisonWeights(at=4))
    with pytest.raises(FloatingPointError, match=r"non-finite training loss \(nan\) at global step 4: lower") as e:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert f"the last good checkpoint is kept: {run / 'checkpoints' / 'last.ckpt'}" in str(e.value)
    good = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert good["global_step"] == 2  # step 4's weights were not finite: not written over it
    assert all(torch.isfinite(v).all() for v in good["state_dict"].values() if v.is_floating_point())


def test_the_config_of_an_older_run_still_parses(capsys):
    """Runs made before SafeCheckpointIO name files.AtomicCheckpointIO in their config.yaml, which `deepfake fit
    --config RUN/config.yaml` repeats: that class path stays valid (SafeCheckpointIO adds the safe reading)."""
    from deepfake_lightning.cli import main
    from deepfake_lightning.files import AtomicCheckpointIO

    assert issubclass(SafeCheckpointIO, AtomicCheckpointIO)
    plugins = '[{"class_path": "deepfake_lightning.files.AtomicCheckpointIO"}]'
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "configs/demo.yaml", "--trainer.plugins", plugins, "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["plugins"] == [{"class_path": "deepfake_lightning.files.AtomicCheckpointIO"}]


def test_resume_last_picks_the_newest_training_not_the_newest_tested_checkpoint(tmp_path, monkeypatch):
    """`deepfake test` records its results in the checkpoint it tests, which makes an older run's last.ckpt the
    newest file; `--ckpt_path last` still continues the run that trained last (its own TensorBoard events)."""
    import os
    from types import SimpleNamespace

    from deepfake_lightning.runs import resume_last

    logs = tmp_path / "lightning_logs"
    for i, (events_at, ckpt_at) in enumerate(((100, 300), (200, 250))):  # version_0 trained first, tested last
        run = logs / f"version_{i}"
        (run / "checkpoints").mkdir(parents=True)
        torch.save(
            {"hyper_parameters": {"backbone": "test_resnet"}, "state_dict": {}}, run / "checkpoints" / "last.ckpt"
        )
        (run / "events.out.tfevents.1").write_text("")
        os.utime(run / "events.out.tfevents.1", (events_at, events_at))
        os.utime(run / "checkpoints" / "last.ckpt", (ckpt_at, ckpt_at))
    logger = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": str(tmp_path)}}
    cfg = SimpleNamespace(
        trainer=SimpleNamespace(logger=logger),
        model=SimpleNamespace(backbone="test_resnet"),
        data=SimpleNamespace(split_file=None),
        ckpt_path="last",
    )
    resume_last(cfg)
    assert cfg.ckpt_path == str(logs / "version_1" / "checkpoints" / "last.ckpt")
    assert logger["init_args"]["version"] == "version_1"
