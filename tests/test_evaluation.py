"""`deepfake test` reports, robustness curves, `deepfake predict` files and test-time augmentation."""

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from deepfake_lightning import DeepfakeClassifier
from deepfake_lightning.cli import cli_main, main
from deepfake_lightning.data.transforms import create_transform
from deepfake_lightning.evaluation import equal_error_rate, perturbation, write_predictions
from tests.helpers import CONFIGS, best_checkpoint, copy_run, demo_command


@pytest.fixture(scope="module")
def demo_run(quick_run):
    """The session's quick run (conftest's ``quick_run``): this module checks formats, errors, options and parity
    between commands, not what a model learned."""
    return quick_run


@pytest.fixture(scope="module")
def run(demo_run, tmp_path_factory):
    """A copy of the session's trained run: evaluations write into their run (``RUN/eval/``) and record their
    results in its checkpoint, which the session's other tests read."""
    return copy_run(demo_run, tmp_path_factory.mktemp("evaluated") / "run")


def _run(subcommand, run, demo_root, out, *extra):
    return cli_main(demo_command(subcommand, demo_root, *extra, ckpt=best_checkpoint(run), out=out, run=run))


@pytest.fixture(scope="module")
def test_run(run, demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("test_run")
    cli = _run("test", run, demo_root, out, "--report.robustness=true")
    return Path(cli.trainer.log_dir)


@pytest.mark.slow
def test_report_equals_sklearn_on_the_saved_predictions(test_run):
    report = json.loads((test_run / "report.json").read_text())
    assert set(report["splits"]) == {"val", "test_v1", "test_v2", "test_edited"}
    t = report["threshold"]
    for split, r in report["splits"].items():
        pred = pd.read_csv(test_run / "predictions" / f"{split}.csv")
        y, p = pred["label"].to_numpy(), pred["prob_ai"].to_numpy()
        assert r["n_images"] == len(y) and r["n_ai"] == y.sum()
        assert r["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
        assert r["ap"] == pytest.approx(average_precision_score(y, p), abs=1e-9)
        for key, thr in (("at_0.5", 0.5), ("at_tuned", t)):
            hard = (p >= thr).astype(int)
            m = r[key]
            assert m["acc"] == pytest.approx(accuracy_score(y, hard), abs=1e-9)
            assert m["precision"] == pytest.approx(precision_score(y, hard, zero_division=0), abs=1e-9)
            assert m["recall"] == pytest.approx(recall_score(y, hard), abs=1e-9)
            assert m["f1"] == pytest.approx(f1_score(y, hard), abs=1e-9)
            assert m["f1_macro"] == pytest.approx(f1_score(y, hard, average="macro"), abs=1e-9)
            assert m["tp"] + m["fn"] == y.sum() and m["tn"] + m["fp"] == len(y) - y.sum()
        assert 0 <= r["eer"] <= 0.5 and 0 <= r["ece"] <= 1
    # the torchmetrics figures logged during the test agree with the report at both thresholds
    logged = json.loads((test_run / "metrics.json").read_text())
    for split, r in report["splits"].items():
        assert logged[f"test/{split}/acc"] == pytest.approx(r["at_0.5"]["acc"], abs=1e-6)
        assert logged[f"test/{split}/tuned/tp"] == r["at_tuned"]["tp"]
    for split in report["splits"]:
        assert (test_run / "plots" / f"{split}.png").stat().st_size > 10_000


@pytest.mark.slow
def test_robustness_identity_levels_reproduce_clean_metrics(test_run):
    table = pd.read_csv(test_run / "robustness.csv")
    kinds = {"jpeg_quality", "blur_sigma", "downscale", "reshare_chain"}
    assert len(table) == 16 and set(table["perturbation"]) == kinds
    clean = json.loads((test_run / "report.json").read_text())["splits"]["test_v1"]
    identity = table[
        ((table["perturbation"] == "jpeg_quality") & (table["level"] == 100))
        | ((table["perturbation"] == "blur_sigma") & (table["level"] == 0))
        | ((table["perturbation"] == "downscale") & (table["level"] == 1.0))
        | ((table["perturbation"] == "reshare_chain") & (table["level"] == 0))
    ]
    assert len(identity) == 4
    assert (identity["auroc"] == clean["auroc"]).all() and (identity["acc"] == clean["at_tuned"]["acc"]).all()
    assert (identity["changed_predictions"] == 0).all()
    strong = table[
        ((table["perturbation"] == "blur_sigma") & (table["level"] == 3))
        | ((table["perturbation"] == "jpeg_quality") & (table["level"] == 30))
        | ((table["perturbation"] == "reshare_chain") & (table["level"] == 3))
    ]
    assert (strong["changed_predictions"] > 0).all()
    assert (test_run / "robustness.png").is_file()


def test_perturbations_change_pixels_only_when_they_should():
    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    for kind, level in (("jpeg_quality", 100), ("blur_sigma", 0), ("downscale", 1.0), ("reshare_chain", 0)):
        assert perturbation(kind, level)(im) is im
    assert np.asarray(perturbation("jpeg_quality", 30)(im)).tolist() != np.asarray(im).tolist()
    assert perturbation("downscale", 0.5)(im).size == (20, 20)
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturbation("rotate", 1)


def test_predict_writes_kaggle_submission_in_split_order(run, demo_root, tmp_path):
    cli = _run("predict", run, demo_root, tmp_path, "--data.predict_split=test_v2")
    evaluation = Path(cli.trainer.log_dir)
    assert evaluation.parent == run / "eval" and evaluation.name.startswith("predict_best-epoch=")
    split = pd.read_csv(demo_root / "test.csv")
    sub = pd.read_csv(evaluation / "submission_test_v2.csv")
    assert list(sub.columns) == ["id", "label"]
    assert sub["id"].tolist() == split["id"].tolist() and sub["id"].is_unique
    assert set(sub["label"]) <= {0, 1}
    pred = pd.read_csv(evaluation / "predictions" / "test_v2.csv").set_index("id").loc[split["id"]]
    assert (pred["label"].to_numpy() == (pred["prob_ai"].to_numpy() >= cli.model.threshold)).all()
    assert (pred["label"].to_numpy() == sub["label"].to_numpy()).all()


def test_predict_on_a_folder_skips_and_reports_unreadable_files(run, demo_root, tmp_path, console, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    ids = pd.read_csv(demo_root / "test_v1.csv")["id"][:3]
    for f in ids:
        (folder / f.split("/")[-1]).write_bytes((demo_root / f).read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    missing_file = tmp_path / "gone.jpg"  # a missing path does not stop the others: a row with its error
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = _run("predict", run, demo_root, tmp_path / "out", f"--data.predict_paths=[{folder},{missing_file}]")
    # no Python warning drawn into the progress bar: the unreadable file is reported once, after it (below)
    assert not [w for w in caught if "broken.jpg" in str(w.message)]
    table = pd.read_csv(Path(cli.trainer.log_dir) / "predictions" / "files.csv", keep_default_na=False)
    scored = table[table["error"] == ""]
    assert sorted(scored["id"].map(lambda p: p.split("/")[-1])) == sorted(f.split("/")[-1] for f in ids)
    assert scored["prob_ai"].astype(float).between(0, 1).all()
    failed = table[table["error"] != ""].set_index("id")
    assert sorted(failed.index) == sorted([str(folder / "broken.jpg"), str(missing_file)])
    assert "Truncated File Read" in failed.loc[str(folder / "broken.jpg"), "error"]  # PIL's own reason
    assert "No such file or directory" in failed.loc[str(missing_file), "error"]
    assert (failed["prob_ai"] == "").all() and (failed["label"] == "").all()  # no probability, never a verdict
    lines = console.getvalue().splitlines()  # reported once more after the bar, with the result
    missing = [line for line in lines if line.startswith("deepfake: warning: 2 image(s) could not be read")]
    assert len(missing) == 1 and str(folder / "broken.jpg") in missing[0]
    assert lines.index(missing[0]) > next(i for i, line in enumerate(lines) if line.startswith("Predictions for files"))
    # nothing readable at all: the command fails (exit 2), predict and explain alike, after writing the rows
    ckpt = best_checkpoint(run)
    for command in (
        ["predict", "--config", str(CONFIGS / "demo.yaml"), f"--data.root={demo_root}", f"--ckpt_path={ckpt}",
         f"--data.predict_paths=[{folder / 'broken.jpg'},{missing_file}]", f"--trainer.default_root_dir={tmp_path}",
         "--data.num_workers=0", "--trainer.enable_progress_bar=false"],
        ["explain", str(folder / "broken.jpg"), str(missing_file), "--ckpt_path", str(ckpt),
         "--out", str(tmp_path / "x")],
    ):  # fmt: skip
        with pytest.raises(SystemExit) as e:
            main(command)
        assert e.value.code == 2
        assert "none of the 2 " in capsys.readouterr().err


def test_no_submission_when_an_id_has_no_prediction(tmp_path):
    written = write_predictions(tmp_path, "test_v2", ["a", "c"], np.array([0.9, 0.1]), 0.5, all_ids=["a", "b", "c"])
    assert written["missing"] == ["b"] and "submission" not in written
    written = write_predictions(
        tmp_path, "test_v2", ["c", "a", "b"], np.array([0.1, 0.9, 0.5]), 0.5, all_ids=["a", "b", "c"]
    )
    assert pd.read_csv(written["submission"]).values.tolist() == [["a", 1], ["b", 1], ["c", 0]]


def test_tta_with_one_view_equals_no_tta():
    torch.manual_seed(0)
    model = DeepfakeClassifier("test_resnet", pretrained=False).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        plain = model(x)
        assert torch.equal(model.predict_logits(x), plain)
        assert torch.equal(model.predict_logits(x.unsqueeze(1)), plain)  # one view
        five = torch.randn(4, 5, 3, 32, 32)
        per_view = torch.stack([model(five[:, v]) for v in range(5)], 1)
        assert torch.allclose(model.predict_logits(five), per_view.mean(1), atol=1e-6)
        model.hparams.tta_flip = True
        assert torch.allclose(model.predict_logits(x), (plain + model(x.flip(-1))) / 2, atol=1e-6)


def test_five_crop_views_include_the_plain_centre_crop():
    im = Image.fromarray(np.random.default_rng(1).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    five = create_transform(32, train=False, mode="crop", eval_views=5)(im)
    one = create_transform(32, train=False, mode="crop")(im)
    assert five.shape == (5, 3, 32, 32) and torch.equal(five[4], one)
    with pytest.raises(ValueError, match="eval_views"):
        create_transform(32, train=False, mode="resize", eval_views=5)


def test_equal_error_rate_on_a_known_case():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])  # one error each way at a threshold in (0.4, 0.6)
    assert equal_error_rate(p, y) == pytest.approx(0.25)


@pytest.mark.slow
def test_predict_adapts_the_threshold_for_opted_in_splits(run, demo_root, tmp_path):
    from deepfake_lightning.calibration import label_shift_report

    cli = _run(
        "predict", run, demo_root, tmp_path, "--data.predict_split=test_v2", "--calibration.adapt_splits=[test_v2]"
    )
    pred = pd.read_csv(Path(cli.trainer.log_dir) / "predictions" / "test_v2.csv")
    state = cli.model.calibration
    expected = label_shift_report(state.val_probs, state.val_labels, pred["prob_ai"].to_numpy(), cli.model.threshold)[
        "adapted_threshold"
    ]
    assert expected != pytest.approx(cli.model.threshold, abs=1e-4)
    assert (pred["label"].to_numpy() == (pred["prob_ai"].to_numpy() >= expected)).all()
