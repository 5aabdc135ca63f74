"""Both notebooks run top to bottom against a checkpoint and a sweep study made here from the demo data."""

from pathlib import Path

import nbclient
import nbformat
import pytest
import torch
import yaml

from deepfake_lightning.commands.export import export_main
from deepfake_lightning.sweep import load_sweep, run_sweep
from tests.helpers import CONFIGS, best_checkpoint

pytestmark = pytest.mark.slow  # both notebooks, executed end to end

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _execute(name: str, env: dict, monkeypatch) -> list:
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    ).execute()  # raises on any failing cell
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def _images(outputs) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs)


@pytest.mark.parametrize("name", ["01_explore_checkpoint.ipynb", "02_compare_runs.ipynb"])
def test_committed_notebooks_have_no_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("source", ["checkpoint", "export", "uncalibrated"])
def test_explore_checkpoint_notebook(source, demo_run, demo_root, tmp_path, monkeypatch):
    ckpt = best_checkpoint(demo_run)
    if source == "export":  # a `deepfake export` directory works the same (no pickle involved)
        ckpt = export_main(["--ckpt_path", str(ckpt), "--out", str(tmp_path / "export")])
    if source == "uncalibrated":  # e.g. trained with --calibration.method none, or a failed calibration
        raw = torch.load(ckpt, map_location="cpu", weights_only=True)
        del raw["calibration"]
        ckpt = tmp_path / "uncalibrated.ckpt"
        torch.save(raw, ckpt)
    outputs = _execute(
        "01_explore_checkpoint.ipynb", {"DEEPFAKE_CKPT": ckpt, "DEEPFAKE_DATA_ROOT": demo_root}, monkeypatch
    )
    # ROC/PR/confusion per labelled split (4: val, test_v1, test_v2, test_edited), threshold trade-off, reliability
    # per split (4), Grad-CAM gallery
    assert _images(outputs) == 10
    text = "".join(str(o.get("data", {}).get("text/plain", "")) + o.get("text", "") for o in outputs)
    if source == "uncalibrated":  # shown as such, with the command that fixes it; no share estimate
        assert "UNCALIBRATED" in text and "Not available" in text
        # a command that runs from the project's root as printed (the notebook itself runs in notebooks/)
        assert f"deepfake calibrate --config configs/demo.yaml --ckpt_path {Path(ckpt).resolve()}" in text
    else:
        assert "ai_share_em" in text and "test_v2" in text


def test_compare_runs_notebook(demo_run, kaggle_root, tmp_path, monkeypatch):
    spec = {
        "study_name": "nb",
        "base_configs": [str(CONFIGS / "demo.yaml")],
        "out_dir": str(tmp_path),
        "n_trials": 2,
        "overrides": {
            "data.root": str(kaggle_root),
            "data.demo": False,
            "data.group_column": None,
            "data.img_size": 32,
            "data.num_workers": 0,
            "trainer.max_epochs": 2,
            "trainer.callbacks": [],
        },
        "pruner": {"type": "none"},
        "search_space": {
            "model.optimizer.init_args.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
            "data.aug_strength": {"type": "float", "low": 0.0, "high": 1.0},
        },
    }
    (tmp_path / "nb.yaml").write_text(yaml.safe_dump(spec))
    run_sweep(load_sweep(tmp_path / "nb.yaml"))
    outputs = _execute(
        "02_compare_runs.ipynb", {"DEEPFAKE_LOGS": demo_run.parent, "DEEPFAKE_STUDY": tmp_path / "nb"}, monkeypatch
    )
    assert _images(outputs) == 2  # learning curves, objective vs parameters
    text = "".join(str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "val/auroc" in text and "param:data.aug_strength" in text
