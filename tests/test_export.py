"""`deepfake export`: safetensors + JSON model directories, loaded without unpickling anything."""

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from safetensors.torch import load_file

from deepfake_lightning import __version__
from deepfake_lightning.api import datamodule_for, load_detector, predict_split
from deepfake_lightning.cli import cli_main, main
from deepfake_lightning.commands.explain import explain_main
from deepfake_lightning.commands.export import export_main
from deepfake_lightning.errors import ExportError
from deepfake_lightning.export import load_export
from tests.helpers import CONFIGS, best_checkpoint


@pytest.fixture(scope="module")
def demo_run(quick_run):
    """The session's quick run (conftest's ``quick_run``): this module checks formats, errors, options and parity
    between commands, not what a model learned."""
    return quick_run


class _Refused:
    """Stands in for torch.load, pickle.load(s) and pickle.Unpickler: any call fails the test."""

    def __init__(self, *args, **kwargs):
        raise AssertionError("something tried to unpickle")


def _refuse_unpickling(monkeypatch):
    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(module, name, _Refused)


@pytest.mark.slow
def test_export_loads_without_unpickling_and_predicts_the_same(demo_run, demo_root, tmp_path, monkeypatch):
    ckpt = best_checkpoint(demo_run)
    out = export_main(["--ckpt_path", str(ckpt), "--out", str(tmp_path / "export")])
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    config = json.loads((out / "detector.json").read_text())
    assert config["backbone"] == "test_resnet" and config["package_version"] == __version__
    assert (config["img_size"], config["mode"]) == (64, "crop")
    assert config["mean"] == list(raw["datamodule_hyper_parameters"]["mean"])
    assert config["temperature"] == raw["calibration"]["calibrator"]["temperature"]
    assert config["threshold"] == raw["calibration"]["threshold"]
    net = timm.create_model("test_resnet", pretrained=False, num_classes=1)
    net.load_state_dict(load_file(out / "model.safetensors"))  # plain timm weights
    reference = predict_split(load_detector(ckpt), datamodule_for(ckpt, root=str(demo_root)), "test_v2")

    _refuse_unpickling(monkeypatch)
    detector = load_detector(out)
    assert detector.threshold == config["threshold"] and detector.img_size == 64
    table = predict_split(detector, datamodule_for(out, root=str(demo_root)), "test_v2")
    assert np.allclose(table["prob_ai"], reference["prob_ai"], atol=1e-6)
    assert (table["pred"] == reference["pred"]).all()

    # deepfake predict --ckpt_path EXPORT_DIR
    cli = cli_main(
        [
            "predict",
            "--config",
            str(CONFIGS / "demo.yaml"),
            f"--data.root={demo_root}",
            f"--ckpt_path={out}",
            f"--trainer.default_root_dir={tmp_path / 'predict'}",
            "--data.num_workers=0",
            "--trainer.enable_progress_bar=false",
            "--data.predict_split=test_v2",
        ]
    )
    assert Path(cli.trainer.log_dir) == tmp_path / "predict" / "eval" / f"predict_{out.name}"  # outside any run
    sub = pd.read_csv(tmp_path / "predict" / "eval" / f"predict_{out.name}" / "submission_test_v2.csv")
    assert (sub.set_index("id").loc[reference["id"], "label"].to_numpy() == reference["pred"].to_numpy()).all()

    # deepfake explain --ckpt_path EXPORT_DIR
    files = [str(demo_root / f) for f in reference["id"][:2]]
    cams = explain_main([*files, "--ckpt_path", str(out), "--out", str(tmp_path / "cams")])
    assert np.allclose(cams["prob_ai"], reference["prob_ai"][:2], atol=1e-5)
    assert len(list((tmp_path / "cams").glob("*.png"))) == 2


def test_broken_exports_name_the_file(demo_run, tmp_path):
    out = export_main(
        ["--ckpt_path", str(next((demo_run / "checkpoints").glob("last.ckpt"))), "--out", str(tmp_path / "e")]
    )
    config = json.loads((out / "detector.json").read_text())
    (out / "detector.json").write_text(json.dumps({**config, "backbone": "test_convnext"}))
    with pytest.raises(ExportError, match="model.safetensors does not fit backbone 'test_convnext'"):
        load_export(out)
    (out / "detector.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(ExportError, match="detector.json: format_version 99 is newer"):
        load_export(out)
    (out / "detector.json").write_text(json.dumps(config))
    (out / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ExportError, match="model.safetensors: cannot be read as safetensors"):
        load_export(out)


@pytest.mark.parametrize(
    ("target", "message"),
    [("folder", "is a folder without detector.json"), ("absent", "no such checkpoint file or export folder")],
)
def test_ckpt_path_that_is_neither_a_checkpoint_nor_an_export(
    target, message, demo_root, tmp_path, monkeypatch, capsys
):
    (tmp_path / "folder").mkdir()
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "deepfake",
            "predict",
            "--config",
            str(CONFIGS / "demo.yaml"),
            f"--data.root={demo_root}",
            f"--ckpt_path={tmp_path / target}",
            f"--trainer.default_root_dir={tmp_path}",
        ],
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
