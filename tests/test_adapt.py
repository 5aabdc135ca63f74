"""``deepfake adapt``: a detector adapted to a new generator from a few of its images, with replay."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from deepfake_lightning.cli import main
from tests.helpers import best_checkpoint


def _new_generator_images(demo_root: Path, dest: Path, n: int) -> Path:
    """Copies of n AI images of the demo's held-out generator (test_v2's subpixel_texture, never trained on)."""
    dest.mkdir(parents=True, exist_ok=True)
    rows = pd.read_csv(demo_root / "test.csv")
    for name in rows.loc[rows["label"] == 1, "id"][:n]:
        shutil.copy(demo_root / name, dest / Path(name).name)
    return dest


def _adapt(ckpt, images, out, *extra) -> dict:
    main(["adapt", "--ckpt_path", str(ckpt), "--adapt.ai_paths", str(images), "--out", str(out), *extra])
    return json.loads((out / "adapt_report.json").read_text())


@pytest.mark.slow
def test_adapting_learns_the_new_generator_and_replay_limits_forgetting(demo_run, demo_root, tmp_path, capsys):
    """20 images of the unseen generator: with the defaults the held-out ones score higher against the validation
    human images after adaptation, at little cost elsewhere. The known case of forgetting: fine-tuning at the
    model's own training rate (1e-3) on the new AI images alone loses more validation and test_v1 AUROC than the
    same fine-tuning with replay of the training split."""
    ckpt = best_checkpoint(demo_run)
    images = _new_generator_images(demo_root, tmp_path / "new", 20)
    report = _adapt(ckpt, images, tmp_path / "default")
    table = capsys.readouterr().out
    new, val = report["auroc"]["new_generator"], report["auroc"]["val"]
    assert new["n_images"] == 6  # held out (0.3 of 20), scored against the validation human images
    assert new["auroc_after"] > new["auroc_before"] + 0.01
    assert report["forgetting"]["val"] < 0.01
    # the 14 images adapted on are copies of test_v2 images: left out of test_v2's figures
    assert report["auroc"]["test_v2"]["adapted_on_left_out"] == 14 and report["auroc"]["test_v2"]["n_images"] == 386
    assert len(report["images"]["ai_train"]) == 14 and len(report["images"]["ai_held_out"]) == 6
    assert not set(report["images"]["ai_train"]) & set(report["images"]["ai_held_out"])
    assert f"{val['auroc_before']:.4f}" in table and f"{new['auroc_after']:.4f}" in table
    assert "held-out new images vs val human" in table

    replay = _adapt(ckpt, images, tmp_path / "replay", "--adapt.lr", "1e-3")
    plain = _adapt(ckpt, images, tmp_path / "plain", "--adapt.lr", "1e-3", "--adapt.replay", "false")
    for split in ("val", "test_v1"):
        assert replay["forgetting"][split] < plain["forgetting"][split]
    assert plain["forgetting"]["val"] > 0.02


@pytest.mark.slow
def test_the_report_matches_an_independent_computation_and_the_checkpoint_records_it(demo_run, demo_root, tmp_path):
    """The adapted checkpoint, loaded as any detector, scores the held-out new images and the validation human
    images to the report's AUROC; its provenance and model card say which images, how many and how long."""
    from deepfake_lightning import load_detector
    from deepfake_lightning.checkpoints import load_checkpoint
    from deepfake_lightning.export.card import model_card

    ckpt = best_checkpoint(demo_run)
    images = _new_generator_images(demo_root, tmp_path / "new", 12)
    report = _adapt(ckpt, images, tmp_path / "out", "--adapt.steps", "10", "--adapt.batch_size", "16")

    detector = load_detector(tmp_path / "out" / "adapted.ckpt")
    split = pd.read_csv(demo_run / "split.csv")
    val_human = [str(demo_root / p) for p in split.loc[(split["split"] == "val") & (split["label"] == 0), "path"]]
    held = report["images"]["ai_held_out"]
    scores = detector.score_files([*held, *val_human])  # calibrated by a temperature: the same ranking as logits
    labels = np.r_[np.ones(len(held)), np.zeros(len(val_human))]
    assert report["auroc"]["new_generator"]["auroc_after"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    assert detector.threshold == pytest.approx(report["calibration"]["threshold"])

    stored = load_checkpoint(tmp_path / "out" / "adapted.ckpt")
    record = stored["provenance"]["adaptations"][0]
    assert record["ai_images"] == 12 and record["steps"] == 10 and record["replay"] is True
    assert sorted(record["ai_train"]) == sorted(report["images"]["ai_train"])
    assert "optimizer_states" not in stored
    original = load_checkpoint(ckpt)
    changed = [k for k in original["state_dict"] if not torch.equal(original["state_dict"][k], stored["state_dict"][k])]
    assert changed  # the weights moved
    card = model_card(detector.facts)
    assert "## Adaptations" in card and "12 AI and 0 human image(s)" in card and "10 steps" in card
    assert "held-out new images vs val human" in card and "deepfake adapt: AUROC after the latest adaptation" in card


def _error(capsys, *args) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["adapt", *args])
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip()


@pytest.mark.slow
def test_bad_inputs_are_one_line_errors(demo_run, demo_root, tmp_path, capsys):
    ckpt = str(best_checkpoint(demo_run))
    few = _new_generator_images(demo_root, tmp_path / "few", 4)
    err = _error(capsys, "--ckpt_path", ckpt, "--adapt.ai_paths", str(few), "--out", str(tmp_path / "o"))
    assert err == (
        "deepfake: error: --adapt.ai_paths: 4 image(s); adapting needs at least 5 (3 to adapt on, 2 or "
        "--adapt.holdout 0.3 of them kept aside to measure)"
    )
    broken = _new_generator_images(demo_root, tmp_path / "broken", 8)
    (broken / "notes.jpg").write_text("not an image")
    err = _error(capsys, "--ckpt_path", ckpt, "--adapt.ai_paths", str(broken), "--out", str(tmp_path / "o"))
    assert err.startswith(f"deepfake: error: --adapt.ai_paths: {broken / 'notes.jpg'}: not a readable image (")
    assert "\n" not in err
    err = _error(capsys, "--ckpt_path", ckpt, "--adapt.ai_paths", str(few), "--out", "o", "--data.rooot", "x")
    assert err == "deepfake: error: unknown data option(s) --data.rooot"
    err = _error(capsys, "--ckpt_path", ckpt, "--adapt.ai_paths", str(few), "--out", "o", "--adapt.holdout", "1.5")
    assert "--adapt.holdout must be in (0, 1)" in err
    assert not (tmp_path / "o").exists()  # nothing written on a refusal


@pytest.mark.slow
def test_adapting_an_export_folder_writes_a_checkpoint_every_command_reads(demo_run, demo_root, tmp_path):
    """An export folder (safetensors + JSON) adapts like a checkpoint; the adapted checkpoint then evaluates with
    `deepfake test` and loads as a detector with its new calibration."""
    from deepfake_lightning import load_detector
    from deepfake_lightning.checkpoints import load_checkpoint
    from tests.helpers import demo_command

    main(["export", "--ckpt_path", str(best_checkpoint(demo_run)), "--out", str(tmp_path / "export")])
    images = _new_generator_images(demo_root, tmp_path / "new", 10)
    report = _adapt(tmp_path / "export", images, tmp_path / "out", "--adapt.steps", "5", f"--data.root={demo_root}")
    adapted = tmp_path / "out" / "adapted.ckpt"
    assert report["source"] == str(tmp_path / "export")
    assert load_checkpoint(adapted)["provenance"]["adaptations"][0]["from"] == str(tmp_path / "export")
    assert load_detector(adapted).threshold == pytest.approx(report["calibration"]["threshold"])
    main(demo_command("test", demo_root, ckpt=adapted, out=tmp_path / "eval"))
    reports = list((tmp_path / "eval").glob("eval/test_adapted/report.json"))
    assert reports
    val = json.loads(reports[0].read_text())["splits"]["val"]
    assert val["auroc"] == pytest.approx(report["auroc"]["val"]["auroc_after"], abs=1e-4)
