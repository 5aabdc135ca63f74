"""``deepfake timeline``: the chronological protocol over generators in release order."""

import json

import numpy as np
import pandas as pd
import pytest

from deepfake_lightning.cli import main
from deepfake_lightning.errors import DataError
from deepfake_lightning.timeline import assign_windows, read_release_dates, windows_of
from tests.helpers import CONFIGS, QUIET


def _dates(tmp_path, text: str):
    path = tmp_path / "dates.csv"
    path.write_text(text)
    return path


def test_release_dates_are_checked_and_grouped_into_windows(tmp_path):
    dates = read_release_dates(
        _dates(tmp_path, "generator,release_date\nc,2023-05-01\na,2022-01-10\nb,2022-02-20\nd,2023-05-01\n")
    )
    assert windows_of(dates, "date") == [["a"], ["b"], ["c", "d"]]
    assert windows_of(dates, "Q") == [["a", "b"], ["c", "d"]]
    assert windows_of(dates, "Y") == [["a", "b"], ["c", "d"]]
    with pytest.raises(DataError, match=r"row 3: release_date 'soon' is not a date"):
        read_release_dates(_dates(tmp_path, "generator,release_date\na,2022-01-01\nb,soon\n"))
    with pytest.raises(DataError, match=r"needs the columns generator,release_date; missing release_date"):
        read_release_dates(_dates(tmp_path, "generator,date\na,2022-01-01\n"))
    with pytest.raises(DataError, match=r"generator 'a' appears twice"):
        read_release_dates(_dates(tmp_path, "generator,release_date\na,2022-01-01\na,2023-01-01\n"))
    with pytest.raises(DataError, match=r"--timeline.period 'W': choose one of date, M, Q, Y"):
        windows_of(dates, "W")


def test_images_go_to_their_generators_window_and_humans_are_shared_out():
    rng = np.random.default_rng(0)
    rows = pd.DataFrame(
        {
            "file": [f"f{i}.png" for i in range(130)],
            "label": [1] * 40 + [1] * 30 + [0] * 60,
            "generator": ["a"] * 40 + ["b"] * 30 + ["real"] * 60,
        }
    ).sample(frac=1, random_state=1)
    out = assign_windows(rows, [["a"], ["b"]], eval_share=0.25, seed=int(rng.integers(100)))
    assert (out.loc[out["generator"] == "a", "window"] == 0).all() and (
        out.loc[out["generator"] == "b", "window"] == 1
    ).all()
    humans = out[out["label"] == 0]
    assert humans["window"].value_counts().to_dict() == {0: 30, 1: 30}
    held = out[out["part"] == "eval"].groupby(["window", "label"]).size().to_dict()
    assert held == {(0, 0): 8, (0, 1): 10, (1, 0): 8, (1, 1): 8}  # round(0.25 n) of each window and class
    assert sorted(out["file"]) == sorted(rows["file"])
    with pytest.raises(DataError, match=r"generator has no release date: b \(30 images\)"):
        assign_windows(rows, [["a"]], 0.25, 0)
    with pytest.raises(DataError, match=r"no AI images of the window 'c'"):
        assign_windows(rows, [["a"], ["b"], ["c"]], 0.25, 0)


@pytest.mark.slow
def test_the_timeline_command_writes_its_table_csv_and_plot(demo_root, tmp_path, capsys):
    out = tmp_path / "timeline"
    main(
        [
            "timeline",
            "--config",
            str(CONFIGS / "demo.yaml"),
            f"--data.root={demo_root}",
            *QUIET,
            "--timeline.release_dates",
            str(CONFIGS / "demo_release_dates.csv"),
            "--timeline.initial_steps",
            "30",
            "--adapt.steps",
            "10",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    table = pd.read_csv(out / "timeline.csv")
    assert list(table["protocol"]) == ["replay"] * 4 + ["plain"] * 4
    assert list(table["trained_on"][:4]) == ["tconv", "nearest_smooth", "bilinear_sharpen", "subpixel_texture"]
    first = table[table["step"] == 0].drop(columns="protocol")
    assert first.iloc[0].equals(first.iloc[1])  # one model trained on the first window, measured once per protocol
    assert table["next_auroc"].isna().tolist() == [False, False, False, True] * 2  # no window after the last
    assert table["past_auroc"].isna().tolist() == [True, False, False, False] * 2  # none before the first
    values = table[["next_auroc", "current_auroc", "past_auroc"]].to_numpy()
    assert np.all((values[~np.isnan(values)] >= 0) & (values[~np.isnan(values)] <= 1))
    assert table.loc[table["step"] > 0, "train_images"].gt(0).all()
    text = (out / "timeline.json").read_text()
    assert "NaN" not in text  # strict JSON: no next window after the last, no past before the first, as null
    record = json.loads(text)
    assert record["steps"][0]["past_auroc"] is None and record["steps"][3]["next_auroc"] is None
    assert record["windows"] == [["tconv"], ["nearest_smooth"], ["bilinear_sharpen"], ["subpixel_texture"]]
    assert record["adapt"]["steps"] == 10 and record["timeline"]["initial_steps"] == 30
    # every labelled image of train, val, test_v1 and test_v2 (not the edited split, which has masks) in a window
    n = sum(len(pd.read_csv(demo_root / f)) for f in ("train.csv", "test_v1.csv", "test.csv"))
    assert sum(c["images"] for c in record["images"]) == n
    assert (out / "timeline.png").stat().st_size > 10_000
    assert f"{table['next_auroc'][0]:.4f}" in printed
    assert "replay step 3 of 3: trained on subpixel_texture" in printed
    assert "plain step 0 of 3: trained on tconv (the same first training)" in printed
