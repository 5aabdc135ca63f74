"""Provenance in every checkpoint, model cards in every export, and demo models that say they are not detectors."""

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from deepfake_lightning.api import load_detector
from deepfake_lightning.cli import cli_main
from deepfake_lightning.commands.explain import explain_main
from deepfake_lightning.commands.export import export_main
from deepfake_lightning.data.demo import DemoSpec
from deepfake_lightning.export.card import read_card_metadata
from deepfake_lightning.files import file_sha256
from deepfake_lightning.provenance import DEMO_WARNING, UNKNOWN, recorded_evaluation, with_recorded_evaluation
from tests.helpers import CONFIGS, best_checkpoint


@pytest.fixture(scope="module")
def demo_run(quick_run):
    """The session's quick run (conftest's ``quick_run``): this module checks formats, errors, options and parity
    between commands, not what a model learned."""
    return quick_run


QUIET = ["--data.num_workers=0", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def _split_hash(split_csv: Path) -> str:
    df = pd.read_csv(split_csv)
    rows = sorted(f"{p},{s}" for p, s in zip(df["path"], df["split"], strict=True))
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def test_a_fresh_demo_checkpoint_records_its_provenance(demo_run, demo_root):
    best = best_checkpoint(demo_run)
    ckpt = torch.load(best, map_location="cpu", weights_only=True)  # plain values only: safe to load
    p = ckpt["provenance"]
    assert p["data"] == {"kind": "demo", "spec": DemoSpec().to_json(), "root": str(demo_root.resolve())}
    assert p["split_sha256"] == _split_hash(demo_run / "split.csv")
    assert f"auroc={p['validation']['val/auroc']:.4f}" in best.name  # the metrics of that very checkpoint
    assert {"val/f1", "val/acc", "val/loss"} <= p["validation"].keys()
    assert set(p["versions"]) == {"deepfake-lightning", "torch", "lightning", "timm"}
    assert p["versions"]["torch"] == str(torch.__version__)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True)
    if head.returncode == 0:  # running from a checkout
        assert p["git_commit"].removesuffix("+dirty") == head.stdout.strip()
    assert ckpt["calibration"]["criterion"] == "f1"  # the calibration summary is the checkpoint's own entry


def test_csv_training_data_is_identified_by_its_content(kaggle_root, tmp_path):
    cli = cli_main(
        [
            "fit",
            "--config",
            str(CONFIGS / "demo.yaml"),
            f"--data.root={kaggle_root}",
            "--data.demo=false",
            "--data.group_column=null",
            "--data.img_size=32",
            "--trainer.max_epochs=1",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.callbacks=[]",
            *QUIET,
        ]
    )
    run = Path(cli.trainer.log_dir)
    data = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["provenance"]["data"]
    csv = kaggle_root / "train.csv"
    assert data == {
        "kind": "csv",
        "train_csv": str(csv.resolve()),
        "rows": 40,
        "ai_share": 0.5,
        "sha256": hashlib.sha256(csv.read_bytes()).hexdigest(),
        "kaggle": False,
    }


@pytest.fixture(scope="module")
def tested_copy(demo_run, demo_root, tmp_path_factory) -> Path:
    """A copy of the demo run's best checkpoint in a run folder of its own, after `deepfake test` on it."""
    run = tmp_path_factory.mktemp("copy") / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "best.ckpt"
    shutil.copy(best_checkpoint(demo_run), ckpt)
    cli_main(
        [
            "test",
            "--config",
            str(CONFIGS / "demo.yaml"),
            f"--data.root={demo_root}",
            f"--ckpt_path={ckpt}",
            f"--data.split_file={demo_run / 'split.csv'}",
            "--trainer.callbacks=[]",
            *QUIET,
        ]
    )
    return ckpt


@pytest.mark.slow
def test_deepfake_test_leaves_the_checkpoint_as_it_was_and_its_facts_read_the_report(tested_copy, demo_run):
    report_file = tested_copy.parent.parent / "eval" / "test_best" / "report.json"
    report = json.loads(report_file.read_text())
    # the report names the exact file it evaluated, and that file was not rewritten (its hash is the original's)
    assert report["model"] == {"path": str(tested_copy.resolve()), "sha256": file_sha256(tested_copy)}
    assert file_sha256(tested_copy) == file_sha256(best_checkpoint(demo_run))
    stored = torch.load(tested_copy, map_location="cpu", weights_only=True)["provenance"]
    assert "test" not in stored and stored["data"]["kind"] == "demo"
    facts = load_detector(tested_copy).facts  # gathered from the run's evaluation folders
    assert set(facts.test) == {"val", "test_v1", "test_v2", "test_edited"}
    assert facts.test_report == str(report_file) and facts.test_settings == report["settings"]
    for split, r in facts.test.items():
        assert r["auroc"] == report["splits"][split]["auroc"] and r["n_images"] == report["splits"][split]["n_images"]
        assert r["f1_macro"] == report["splits"][split]["at_tuned"]["f1_macro"]


def test_results_of_a_model_file_that_changed_since_are_not_its_facts(tmp_path):
    """A report whose model hash is not the file's (re-calibrated since) is not gathered; the newest match is."""
    run = tmp_path / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "best.ckpt"
    ckpt.write_bytes(b"weights")
    split = {"n_images": 4, "auroc": 0.9, "ap": 0.8, "ece": 0.1, "at_tuned": {"acc": 0.75, "f1_macro": 0.7}}
    for name, digest in (("test_best", "0" * 64), ("test_best_v1", file_sha256(ckpt))):
        report = {"model": {"path": str(ckpt), "sha256": digest}, "splits": {"test_v1": split}, "settings": {}}
        (run / "eval" / name).mkdir(parents=True)
        (run / "eval" / name / "report.json").write_text(json.dumps(report))
    found = recorded_evaluation(ckpt)
    assert found["test_report"] == str(run / "eval" / "test_best_v1" / "report.json")
    assert found["test"] == {
        "test_v1": {"n_images": 4, "auroc": 0.9, "ap": 0.8, "ece": 0.1, "acc": 0.75, "f1_macro": 0.7}
    }
    ckpt.write_bytes(b"other weights")  # changed since: no figure of either report describes it
    assert recorded_evaluation(ckpt) == {}
    old = {"test": {"val": {"auroc": 0.5}}, "data": {"kind": "demo"}}  # an earlier version's record is kept as is
    assert with_recorded_evaluation(old, ckpt) == old


@pytest.mark.slow
def test_export_writes_a_model_card_that_matches_the_checkpoint(tested_copy, tmp_path):
    out = export_main(["--ckpt_path", str(tested_copy), "--out", str(tmp_path / "card")])
    ckpt = torch.load(tested_copy, map_location="cpu", weights_only=True)
    meta = read_card_metadata(out / "README.md")
    assert meta["library_name"] == "deepfake-lightning" and meta["pipeline_tag"] == "image-classification"
    assert {"test_resnet", "demo", "not-a-real-detector"} <= set(meta["tags"])
    assert "datasets" not in meta  # the demo is no published dataset
    results = {
        r["dataset"]["name"]: {m["type"]: m["value"] for m in r["metrics"]} for r in meta["model-index"][0]["results"]
    }
    val = ckpt["provenance"]["validation"]
    assert results["validation"]["roc_auc"] == round(val["val/auroc"], 4)
    tested = load_detector(tested_copy).facts.test
    assert set(tested) == {"val", "test_v1", "test_v2", "test_edited"}
    for split, r in tested.items():
        assert results[split] == {
            "roc_auc": round(r["auroc"], 4),
            "f1": round(r["f1_macro"], 4),
            "accuracy": round(r["acc"], 4),
        }
    body = (out / "README.md").read_text()
    assert "**Not a detector.**" in body and f"{ckpt['calibration']['threshold']:.4f}" in body
    assert f"temperature {ckpt['calibration']['calibrator']['temperature']:.4f}" in body

    facts, exported = load_detector(tested_copy).facts, load_detector(out).facts
    assert facts.trained_on_demo and exported.trained_on_demo
    for key in (
        "backbone",
        "img_size",
        "mode",
        "calibration",
        "temperature",
        "threshold",
        "threshold_criterion",
        "training_data",
        "split_sha256",
        "validation",
        "test",
        "versions",
    ):
        assert getattr(exported, key) == getattr(facts, key), key
    assert facts.img_size == 64 and facts.mode == "crop" and facts.threshold == ckpt["calibration"]["threshold"]
    assert exported.source == str(out)


def test_older_checkpoints_without_provenance_read_as_unknown(demo_run, tmp_path):
    raw = torch.load(demo_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    del raw["provenance"]
    raw["datamodule_hyper_parameters"]["demo"] = False  # nothing says what it was trained on
    old = tmp_path / "old.ckpt"
    torch.save(raw, old)
    facts = load_detector(old).facts
    assert facts.training_data == UNKNOWN and facts.validation == UNKNOWN and facts.split_sha256 == UNKNOWN
    assert facts.dataset == UNKNOWN and facts.test == {} and not facts.trained_on_demo
    out = export_main(["--ckpt_path", str(old), "--out", str(tmp_path / "old_export")])
    body = (out / "README.md").read_text()
    assert "## Training data\n\nunknown" in body and "carries no metrics" in body
    assert read_card_metadata(out / "README.md")["library_name"] == "deepfake-lightning"


def test_a_checkpoint_that_recorded_its_test_results_shows_them_as_recorded(demo_run, tmp_path):
    """Earlier versions' `deepfake test` wrote its summary into the checkpoint: such a file loads, and its facts and
    card show those results as recorded (with the report they name), since no evaluation folder matches it."""
    raw = torch.load(demo_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    recorded = {
        "test_v1": {"n_images": 400, "auroc": 0.9123, "ap": 0.9, "ece": 0.05, "acc": 0.8456, "f1_macro": 0.8321}
    }
    raw["provenance"] |= {
        "test": recorded,
        "test_settings": {"tta_flip": True, "eval_views": 1},
        "test_report": "/old/run/eval/test_last/report.json",
    }
    old = tmp_path / "version_0" / "checkpoints" / "old.ckpt"
    old.parent.mkdir(parents=True)
    torch.save(raw, old)
    before = file_sha256(old)
    facts = load_detector(old).facts
    assert facts.test == recorded and facts.test_report == "/old/run/eval/test_last/report.json"
    out = export_main(["--ckpt_path", str(old), "--out", str(tmp_path / "old_export")])
    results = {r["dataset"]["name"]: r for r in read_card_metadata(out / "README.md")["model-index"][0]["results"]}
    assert {m["type"]: m["value"] for m in results["test_v1"]["metrics"]} == {
        "roc_auc": 0.9123,
        "f1": 0.8321,
        "accuracy": 0.8456,
    }
    body = (out / "README.md").read_text()
    assert "test-time augmentation: mirrored (tta_flip); eval/test_last/report.json" in body
    assert file_sha256(old) == before


def _photo(path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 90, 3), dtype=np.uint8)).save(path)
    return path


def test_demo_models_warn_on_images_that_are_not_demo_images(demo_run, demo_root, tmp_path, capsys, console):
    ckpt = demo_run / "checkpoints" / "last.ckpt"
    own = str(demo_root / pd.read_csv(demo_root / "test_v1.csv")["id"][0])
    photo = str(_photo(tmp_path / "mine" / "photo.png"))

    explain_main([own, "--ckpt_path", str(ckpt), "--out", str(tmp_path / "cams_demo")])
    assert DEMO_WARNING not in capsys.readouterr().err
    explain_main([photo, "--ckpt_path", str(ckpt), "--out", str(tmp_path / "cams_mine")])
    assert capsys.readouterr().err.count(f"deepfake: warning: {DEMO_WARNING}") == 1

    for files, warned in (([own], False), ([photo], True)):
        console.seek(0)
        console.truncate()
        cli_main(
            [
                "predict",
                "--config",
                str(CONFIGS / "demo.yaml"),
                f"--data.root={demo_root}",
                f"--ckpt_path={ckpt}",
                f"--data.predict_paths=[{','.join(files)}]",
                "--trainer.callbacks=[]",
                *QUIET,
            ]
        )
        shown = console.getvalue()
        assert (DEMO_WARNING in shown) is warned, shown[-1500:]


@pytest.mark.slow  # the whole demo fit (conftest's trained run, which this module's quick one stands in for)
def test_last_ckpt_is_the_final_state_and_exports_are_readable_by_others(trained_run, tmp_path):
    """Lightning 2.6 stops refreshing last.ckpt after the best epoch; ours is the state at the end of training.
    Exported files get the usual permissions (safetensors creates owner-only files)."""
    import os
    import stat

    last = torch.load(trained_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 7 and last["global_step"] == 8 * 22  # demo.yaml: 8 epochs of 22 batches
    out = export_main(["--ckpt_path", str(trained_run / "checkpoints" / "last.ckpt"), "--out", str(tmp_path / "e")])
    mask = os.umask(0)
    os.umask(mask)
    for name in ("model.safetensors", "detector.json", "README.md"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~mask, name


def test_the_card_says_which_test_time_augmentation_its_test_figures_used():
    from deepfake_lightning.export.card import model_card
    from deepfake_lightning.provenance import ModelFacts

    facts = ModelFacts(
        backbone="test_resnet",
        test={"test_v1": {"auroc": 0.9, "f1_macro": 0.8, "acc": 0.85}},
        test_settings={"tta_flip": True, "eval_views": 5},
    )
    assert "test-time augmentation: 5 views, mirrored (tta_flip)" in model_card(facts)
    facts.test_settings = {"tta_flip": False, "eval_views": 1}
    assert "test-time augmentation" not in model_card(facts)


def test_last_ckpt_keeps_following_training_after_the_best_epoch(kaggle_root, tmp_path):
    # monitoring the step in "min" mode makes the first validation the best one, for certain
    cli = cli_main(
        [
            "fit",
            "--config",
            str(CONFIGS / "demo.yaml"),
            f"--data.root={kaggle_root}",
            "--data.demo=false",
            "--data.group_column=null",
            "--data.img_size=32",
            "--trainer.max_epochs=3",
            "--checkpoint.monitor=step",
            "--checkpoint.mode=min",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.callbacks=[]",
            *QUIET,
        ]
    )
    folder = Path(cli.trainer.log_dir) / "checkpoints"
    best = torch.load(next(folder.glob("best-*.ckpt")), map_location="cpu", weights_only=True)
    last = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)
    assert best["epoch"] == 0 and last["epoch"] == 2 and last["global_step"] == cli.trainer.global_step
