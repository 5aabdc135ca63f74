"""The cross-dataset table of `deepfake test` (named test sets in any layout) and `deepfake compare`."""

import json
import shutil

import pandas as pd
import pytest

from deepfake_lightning.cli import cli_main, main
from deepfake_lightning.cross_dataset import cross_dataset_table, markdown, matrix
from tests.helpers import CONFIGS
from tests.helpers.layouts import CSV_COLUMNS, LAYOUTS, relayout

METRICS = ["images", "auroc", "ap", "acc_human", "acc_ai", "f1_macro", "fpr"]


def test_table_rows_and_mean_from_a_report(capsys):
    split = {
        "n_images": 4, "n_ai": 2, "n_human": 2, "auroc": 0.75, "ap": 0.8,
        "at_tuned": {"acc_human": 1.0, "acc_ai": 0.5, "f1_macro": 0.7, "fpr": 0.0},
    }  # fmt: skip
    only_ai = split | {"n_ai": 4, "n_human": 0, "auroc": None, "ap": None}
    table = cross_dataset_table({"val": split, "a": split, "b": only_ai})
    assert table["set"].tolist() == ["a", "b", "mean"]  # validation is not a test set
    assert table.loc[1, "acc_human"] is None and table.loc[1, "acc_ai"] == 0.5  # one class: its side only
    assert table.loc[2, "images"] == 8 and table.loc[2, "auroc"] == 0.75 and table.loc[2, "acc_ai"] == 0.5
    assert markdown(table).splitlines()[:2] == [
        "| set | images | auroc | ap | acc_human | acc_ai | f1_macro | fpr |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    same = split | {"auroc": 0.97915}  # the mean of equal rows prints as they do (no float noise)
    rows = cross_dataset_table({"a": same, "b": same, "c": same})
    assert rows.loc[3, "auroc"] == 0.97915 and markdown(rows).splitlines()[-1].split(" | ")[2] == f"{0.97915:.4f}"
    with pytest.raises(SystemExit):
        main(["compare", "nope"])
    assert "nope does not exist; pass `deepfake test` output folders" in capsys.readouterr().err
    m = matrix({"m1": table, "m2": table.assign(auroc=[0.5, None, 0.5])}, "auroc")
    assert m.loc["m2", "mean"] == 0.5 and list(m.columns) == ["a", "b", "mean"]


@pytest.mark.slow
def test_the_same_images_give_the_same_row_in_every_layout_and_compare_assembles_the_matrix(
    demo_root, demo_run, tmp_path, console, capsys
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sets = {kind: str(relayout(demo_root, kind, tmp_path / kind)) for kind in LAYOUTS}
    sets["csv"] = {"root": sets["csv"], **CSV_COLUMNS}
    ckpt = tmp_path / "model.ckpt"  # evaluations are written beside a copy, not into the shared session run
    shutil.copy(demo_run / "checkpoints" / "last.ckpt", ckpt)
    cli_main(
        [
            "test",
            "--config", str(CONFIGS / "demo.yaml"),
            f"--data.root={demo_root}",
            f"--data.test_sets={json.dumps(sets)}",
            "--data.test_v2_csv=null",
            "--data.test_edited_csv=null",
            "--data.num_workers=0",
            f"--ckpt_path={ckpt}",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
            "--report.evidence=false",
        ]
    )  # fmt: skip
    out = tmp_path / "eval" / "test_model"
    table = pd.read_csv(out / "cross_dataset.csv").set_index("set")
    assert table.index.tolist() == ["test_v1", *LAYOUTS, "mean"]
    for kind in LAYOUTS:  # the demo's test_v1, read from four layouts: the same figures
        assert table.loc[kind, METRICS].tolist() == pytest.approx(table.loc["test_v1", METRICS].tolist())
    assert table.loc["test_v1", "images"] == 400 and 0.5 < table.loc["test_v1", "auroc"] <= 1.0
    report = json.loads((out / "report.json").read_text())
    assert [r["set"] for r in report["cross_dataset"]["rows"]] == table.index.tolist()
    assert report["cross_dataset"]["rows"][1]["auroc"] == pytest.approx(report["splits"]["cnndetection"]["auroc"])
    printed = console.getvalue()
    assert "Cross-dataset table (tuned threshold):\n| set | images | auroc |" in printed
    assert f"| genimage | 400 | {table.loc['genimage', 'auroc']:.4f} |" in printed
    events = EventAccumulator(str(out)).Reload()
    assert "cross_dataset/cifake/auroc" in events.Tags()["scalars"]

    shutil.copytree(out, tmp_path / "eval" / "other")
    main(["compare", str(out), str(tmp_path / "eval" / "other"), "--out", str(tmp_path / "matrix")])
    result = pd.read_csv(tmp_path / "matrix" / "matrix_auroc.csv", index_col="model")
    assert result.shape == (2, 6) and list(result.columns) == ["test_v1", *LAYOUTS, "mean"]
    assert result.iloc[0].tolist() == pytest.approx(table["auroc"].tolist())
    assert (tmp_path / "matrix" / "matrix_auroc.png").stat().st_size > 10_000
    assert "| model | test_v1 |" in capsys.readouterr().out
