"""Model files are read, never rewritten: every command that reads a checkpoint or an export folder leaves its bytes
as they were (the SHA-256 of each file before and after), and evaluation results live in the evaluation folders."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from deepfake_lightning.api import load_detector
from deepfake_lightning.cli import main
from deepfake_lightning.files import file_sha256
from deepfake_lightning.provenance import model_sha256
from tests.helpers import best_checkpoint, demo_command


def _hashes(path: Path) -> dict[str, str]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {str(f): file_sha256(f) for f in files}


@pytest.mark.slow
def test_no_command_rewrites_the_model_file_it_reads(demo_run, demo_root, tmp_path):
    run = tmp_path / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "best.ckpt"
    shutil.copy(best_checkpoint(demo_run), ckpt)
    ckpt.chmod(0o444)  # a read-only model file is evaluated as any other
    before = _hashes(ckpt)
    files = [demo_root / i for i in pd.read_csv(demo_root / "test_v1.csv")["id"][:3]]
    new = tmp_path / "new"  # a new generator's images for `deepfake adapt`: test_v2's held-out one
    new.mkdir()
    test_v2 = pd.read_csv(demo_root / "test.csv")
    for name in test_v2.loc[test_v2["label"] == 1, "id"][:10]:
        shutil.copy(demo_root / name, new / Path(name).name)
    paths = "[" + ",".join(map(str, files)) + "]"
    quick = ["--trainer.limit_test_batches=1", "--trainer.limit_val_batches=1"]
    export = tmp_path / "export"
    commands = {
        "test": demo_command("test", demo_root, *quick, ckpt=ckpt, run=demo_run, out=tmp_path / "root"),
        "validate": demo_command("validate", demo_root, *quick, ckpt=ckpt, run=demo_run, out=tmp_path / "root"),
        "predict": demo_command(
            "predict", demo_root, f"--data.predict_paths={paths}", ckpt=ckpt, out=tmp_path / "root"
        ),
        "explain": ["explain", str(files[0]), "--ckpt_path", str(ckpt), "--out", str(tmp_path / "cams")],
        "export": ["export", "--ckpt_path", str(ckpt), "--out", str(export), "--format", "safetensors", "onnx"],
        "adapt": [
            "adapt",
            "--ckpt_path",
            str(ckpt),
            "--adapt.ai_paths",
            str(new),
            "--adapt.steps",
            "2",
            "--data.num_workers",
            "0",
            "--out",
            str(tmp_path / "adapted"),
        ],  # fmt: skip
        "calibrate --out": [
            *demo_command("calibrate", demo_root, ckpt=ckpt, run=demo_run),
            "--out",
            str(tmp_path / "calibrated.ckpt"),
        ],
    }
    for name, args in commands.items():
        main(args)
        assert _hashes(ckpt) == before, f"deepfake {name} changed {ckpt}"
    exported = _hashes(export)
    for name, args in {
        "test": demo_command("test", demo_root, *quick, ckpt=export, run=demo_run, out=tmp_path / "root"),
        "predict": demo_command("predict", demo_root, f"--data.predict_paths={paths}", ckpt=export),
        "explain": ["explain", str(files[0]), "--ckpt_path", str(export), "--out", str(tmp_path / "cams2")],
    }.items():
        main(args)
        assert _hashes(export) == exported, f"deepfake {name} changed the export folder {export}"
    tested = json.loads(next((tmp_path / "root" / "eval").glob("test_export*/report.json")).read_text())
    assert tested["model"] == {"path": str(export.resolve()), "sha256": model_sha256(export)}  # the folder, by hash
    for runtime in ("torch", "onnx"):  # what `deepfake serve` loads
        load_detector(export, runtime=runtime)
    assert _hashes(export) == exported and _hashes(ckpt) == before

    # the test's results are in its evaluation folder, naming the file they were measured on
    report = json.loads((run / "eval" / "test_best" / "report.json").read_text())
    assert report["model"] == {"path": str(ckpt.resolve()), "sha256": before[str(ckpt)]}
    assert load_detector(ckpt).facts.test_report == str(run / "eval" / "test_best" / "report.json")
    # and the export gathered them into its card and facts, naming the report
    assert load_detector(export).facts.test == load_detector(ckpt).facts.test != {}
    assert "eval/test_best/report.json" in (export / "README.md").read_text()
