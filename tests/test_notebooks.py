"""Both notebooks run top to bottom against a checkpoint and a sweep study made here from the demo data."""

from pathlib import Path

import nbclient
import nbformat
import pytest
import torch

from tests.helpers import best_checkpoint

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


def test_explore_checkpoint_notebook_on_an_uncalibrated_checkpoint(demo_run, demo_root, tmp_path, monkeypatch):
    """Notebook 01 on a checkpoint without calibration (e.g. trained with --calibration.method none, or a failed
    calibration): shown as such, with the command that fixes it, and no share estimate. (The README test runs both
    notebooks after the quickstart on a calibrated checkpoint, with a sweep study: each notebook's other branch.)"""
    raw = torch.load(best_checkpoint(demo_run), map_location="cpu", weights_only=True)
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
    assert "UNCALIBRATED" in text and "Not available" in text
    # a command that runs from the project's root as printed (the notebook itself runs in notebooks/)
    assert f"deepfake calibrate --config configs/demo.yaml --ckpt_path {Path(ckpt).resolve()}" in text


def test_compare_runs_notebook_without_a_study(demo_run, tmp_path, monkeypatch):
    """Notebook 02 with training runs and no sweep study: the runs' table and curves, and how to make a study."""
    outputs = _execute(
        "02_compare_runs.ipynb", {"DEEPFAKE_LOGS": demo_run.parent, "DEEPFAKE_STUDY": tmp_path / "none"}, monkeypatch
    )
    assert _images(outputs) == 1  # learning curves
    text = "".join(str(o.get("data", {}).get("text/plain", "")) + o.get("text", "") for o in outputs)
    assert (
        "val/auroc" in text and "No sweep study" in text and "deepfake sweep --config configs/sweep_demo.yaml" in text
    )
