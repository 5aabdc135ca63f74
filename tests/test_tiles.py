"""Whole-image verdicts: the tile grid, tiled batches, pooling, localization metrics, score maps, the edited demo
split, and the tiled verdict through calibrate, test, predict, export and serve."""

import base64
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from deepfake_lightning.api import Detector, load_detector
from deepfake_lightning.calibration import CalibrationState, evaluation_of
from deepfake_lightning.checkpoints import stored_settings
from deepfake_lightning.cli import main
from deepfake_lightning.data import DeepfakeDataModule, create_transform
from deepfake_lightning.data.demo import DemoSpec, build_demo_dataset
from deepfake_lightning.data.tiles import TileTransform, mask_coverage, pool_tile_logits, tile_grid, tile_origins
from deepfake_lightning.errors import ConfigError
from deepfake_lightning.explain.maps import map_files
from deepfake_lightning.files import file_sha256
from deepfake_lightning.localization import localization_report, score_tiles
from deepfake_lightning.models import DeepfakeClassifier
from deepfake_lightning.settings import InferenceSettings
from tests.helpers import best_checkpoint, copy_run


@pytest.fixture(scope="module")
def demo_run(demo_run, tmp_path_factory):
    """A copy of the session's trained run (conftest's ``demo_run``): this module's evaluations write into it
    (``RUN/eval/``, results recorded in its checkpoint), not into the run the session's other tests read."""
    return copy_run(demo_run, tmp_path_factory.mktemp("run_copy") / "version_0")


ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _photo(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


# --------------------------------------------------------------------------- the grid
def test_tile_origins_cover_the_edges_and_centre_a_short_side():
    assert tile_origins(256, 64, 64) == [0, 64, 128, 192]
    assert tile_origins(100, 64, 64) == [0, 36]  # the last tile shifted inward to end at the edge
    assert tile_origins(256, 64, 32) == list(range(0, 193, 32))
    assert tile_origins(64, 64, 64) == [0]
    assert tile_origins(40, 64, 64) == [-12]  # shorter than a tile: one tile, the image centred in it


def test_a_large_grid_thins_out_evenly_to_max_tiles():
    origins, total = tile_grid(4608, 3456, 64, 64, max_tiles=64)
    xs, ys = sorted({x for x, _ in origins}), sorted({y for _, y in origins})
    assert total == 72 * 54  # the full grid, reported
    assert len(origins) == len(xs) * len(ys) <= 64 and len(origins) >= 56
    assert xs[0] == 0 and xs[-1] == 4608 - 64 and ys[0] == 0 and ys[-1] == 3456 - 64  # spread edge to edge
    gaps = np.diff(xs)
    assert gaps.max() - gaps.min() <= 1  # evenly
    assert tile_grid(256, 256, 64, 32, max_tiles=64) == (
        [(x, y) for y in range(0, 193, 32) for x in range(0, 193, 32)],
        49,
    )


def test_tile_transform_cuts_exact_normalized_tiles():
    image = _photo(200, 130)
    out = TileTransform(64, 64, 64, MEAN, STD)(image)
    assert out["tiles_total"] == 4 * 3 and out["image"].shape == (12, 3, 64, 64)
    assert out["image_wh"].tolist() == [200, 130]
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    for tile, (x, y) in zip(out["image"], out["tile_xy"].tolist(), strict=True):
        assert torch.allclose(tile, (pixels[:, y : y + 64, x : x + 64] - mean) / std, atol=1e-6)
    assert out["tile_xy"][-1].tolist() == [200 - 64, 130 - 64]


def test_an_image_smaller_than_a_tile_is_one_padded_tile_like_the_centre_crop():
    image = _photo(40, 30)
    out = TileTransform(64, None, 64, MEAN, STD)(image)
    centre = create_transform(64, train=False, mode="crop", mean=MEAN, std=STD)(image)
    assert out["image"].shape == (1, 3, 64, 64) and out["tiles_total"] == 1
    assert out["tile_xy"].tolist() == [[-12, -17]]
    assert torch.allclose(out["image"][0], centre, atol=1e-6)


def test_pooling_mean_max_and_top_k():
    logits = torch.tensor([1.0, 5.0, 3.0, -2.0, 0.0, 4.0])
    n = torch.tensor([4, 2])
    assert pool_tile_logits(logits, n, "max").tolist() == [5.0, 4.0]
    assert pool_tile_logits(logits, n, "mean").tolist() == [1.75, 2.0]
    assert pool_tile_logits(logits, n, "topk", 0.5).tolist() == [4.0, 4.0]  # top 2 of 4, top 1 of 2
    assert pool_tile_logits(logits, n, "topk", 0.01).tolist() == [5.0, 4.0]  # at least one tile


def test_a_tiled_batch_pools_per_image_through_the_model(kaggle_root):
    model = DeepfakeClassifier("test_resnet", pretrained=False, tile_pooling="topk", tile_topk=0.5).eval()
    dm = DeepfakeDataModule(
        str(kaggle_root), img_size=16, mode="crop", eval_views="tiles", max_tiles=4, batch_size=9, num_workers=0
    )
    dm.setup("test")
    assert dm.images_per_batch() == 2  # 9 // 4: no batch holds more tiles than a training batch has images
    batch = next(iter(dm.loader("test_v2")))
    assert len(batch["n_tiles"]) == 2 and len(batch["image"]) == int(batch["n_tiles"].sum())
    with torch.inference_mode():
        pooled = model.predict_logits(batch["image"], n_tiles=batch["n_tiles"])
        first = model(batch["image"][: batch["n_tiles"][0]])
    assert pooled.shape == (2,)
    assert torch.allclose(pooled[0], first.topk(int(np.ceil(0.5 * len(first)))).values.mean(), atol=1e-6)


def test_bad_tile_settings_are_one_clear_error(kaggle_root):
    with pytest.raises(ConfigError, match=r"data.eval_views=tiles needs data.mode=crop.*but data.mode=resize"):
        DeepfakeDataModule(str(kaggle_root), mode="resize", eval_views="tiles")
    with pytest.raises(ConfigError, match="data.max_tiles must be at least 1"):
        DeepfakeDataModule(str(kaggle_root), mode="crop", eval_views="tiles", max_tiles=0)
    with pytest.raises(ConfigError, match="data.tile_stride must be a positive"):
        DeepfakeDataModule(str(kaggle_root), mode="crop", eval_views="tiles", tile_stride=0)
    with pytest.raises(ConfigError, match="data.eval_views must be 1, 5 or tiles"):
        DeepfakeDataModule(str(kaggle_root), mode="crop", eval_views=3)
    with pytest.raises(ConfigError, match="model.tile_pooling must be max, topk or mean"):
        DeepfakeClassifier("test_resnet", pretrained=False, tile_pooling="median")
    with pytest.raises(ConfigError, match=r"model.tile_topk must be in \(0, 1\]"):
        DeepfakeClassifier("test_resnet", pretrained=False, tile_topk=0)
    settings = InferenceSettings(img_size=32, mode="resize", mean=MEAN, std=STD)
    resize = Detector.from_model(DeepfakeClassifier("test_resnet", pretrained=False), settings)
    with pytest.raises(ConfigError, match="needs data.mode=crop"):
        resize.tile_transform()


# --------------------------------------------------------------------------- localization metrics
def test_mask_coverage_counts_pixels_and_centres():
    mask = np.zeros((128, 128), dtype=bool)
    mask[0:64, 32:96] = True
    share, centre = mask_coverage(mask, np.array([[0, 0], [32, 0], [64, 64], [-32, -32]]), 64)
    assert share.tolist() == [0.5, 1.0, 0.0, 0.0]
    assert centre.tolist() == [True, True, False, False]


def test_localization_report_on_known_scores():
    from deepfake_lightning.localization import TileScores

    xy = np.array([[0, 0], [64, 0], [0, 64], [64, 64]])
    mask = np.zeros((128, 128), dtype=bool)
    mask[64:, 64:] = True  # the bottom-right tile is edited
    hit = TileScores(xy, 64, np.array([0.0, 1.0, 0.5, 3.0]), 3.0, 4, (128, 128))
    miss = TileScores(xy, 64, np.array([2.0, 1.0, 0.5, 1.5]), 2.0, 4, (128, 128))
    original = TileScores(xy, 64, np.array([-1.0, -1.0, -1.0, -1.0]), -1.0, 4, (128, 128))
    r = localization_report([hit, miss, original], [mask, mask, None], np.array([1, 1, 0]), np.array([0.0, 0.0, 1.0]))
    assert r["n_edited"] == 2 and r["pointing_game"] == 0.5
    # inside: 3.0 and 1.5; outside: 0, 1, 0.5, 2, 1, 0.5 -> 3.0 beats all 6, 1.5 beats 5 of 6
    assert r["tile_auroc"] == pytest.approx(11 / 12)
    assert r["image_auroc_tiles"] == 1.0 and r["image_auroc_centre"] == 0.0


# --------------------------------------------------------------------------- calibration records the evaluation
def test_calibration_records_its_evaluation_and_the_model_defaults_to_it():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    z = rng.normal(2 * y - 1, 1.0)
    evaluation = evaluation_of({"eval_views": "tiles", "tile_stride": 32, "max_tiles": 16}, {"tile_pooling": "max"})
    state = CalibrationState.fit(z, y, evaluation=evaluation)
    again = CalibrationState.from_checkpoint(state.to_checkpoint())
    assert again.evaluation == {
        "data": {"eval_views": "tiles", "tile_stride": 32, "max_tiles": 16},
        "model": {"tile_pooling": "max"},
    }
    ckpt = {
        "hyper_parameters": {"backbone": "test_resnet", "tile_pooling": "mean"},
        "datamodule_hyper_parameters": {"img_size": 64, "mode": "crop", "eval_views": 1},
        "calibration": state.to_checkpoint(),
    }
    settings = stored_settings(ckpt)
    assert settings["data"]["eval_views"] == "tiles" and settings["data"]["tile_stride"] == 32
    assert settings["model"]["tile_pooling"] == "max"  # the pooling the calibration fits
    differs = again.evaluation_differs({"eval_views": 1}, {"tile_pooling": "max"})
    assert differs == ["data.eval_views=1 (calibrated with tiles)"]
    assert (
        again.evaluation_differs({"eval_views": "tiles", "tile_stride": 32, "max_tiles": 16}, {"tile_pooling": "max"})
        == []
    )


# --------------------------------------------------------------------------- the edited demo split
def test_the_demo_edited_split_pairs_originals_and_masked_edits(tmp_path):
    spec = DemoSpec(train_pairs=6, test_v1=4, test_v2=4, edited_pairs=4)
    root = build_demo_dataset(tmp_path / "demo", spec)
    table = pd.read_csv(root / "test_edited.csv", keep_default_na=False)
    assert list(table.columns) == ["id", "label", "generator", "mask", "pair"]
    assert table["label"].tolist() == [0, 1] * 4 and (table.groupby("pair").size() == 2).all()
    for _, rows in table.groupby("pair"):
        original, edited = rows.iloc[0], rows.iloc[1]
        assert original["mask"] == "" and original["generator"] == "real"
        mask = np.asarray(Image.open(root / edited["mask"])) > 0
        a = np.asarray(Image.open(root / original["id"]), dtype=float)
        b = np.asarray(Image.open(root / edited["id"]), dtype=float)
        assert a.shape == b.shape == (256, 256, 3) and mask.shape == (256, 256)
        assert 0.09 <= mask.mean() <= 0.26  # 30-50 % of each side
        ys, xs = np.nonzero(mask)
        assert mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].all()  # a rectangle
        inside, outside = np.abs(a - b)[mask].mean(), np.abs(a - b)[~mask].mean()
        assert inside > 3 * outside  # edited inside; outside only JPEG noise


# --------------------------------------------------------------------------- score maps
def test_score_maps_of_a_small_and_a_large_image(tmp_path):
    model = DeepfakeClassifier("test_resnet", pretrained=False).eval()
    detector = Detector.from_model(model, InferenceSettings(img_size=32, mode="crop", mean=MEAN, std=STD, max_tiles=16))
    _photo(96, 80, 1).save(tmp_path / "small.png")
    _photo(1600, 1200, 2).save(tmp_path / "large.jpg", quality=90)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    files = [tmp_path / "small.png", tmp_path / "large.jpg", tmp_path / "broken.jpg"]
    table = map_files(detector, files, tmp_path / "maps")
    small, large, broken = (table.iloc[i] for i in range(3))
    assert (small["n_tiles"], small["tiles_total"]) == (9, 9)  # 3 x 3 tiles of 32 px, the last shifted inward
    assert large["n_tiles"] <= 16 and large["tiles_total"] == 50 * 38
    assert broken["error"] and broken["png"] == ""
    tiles = pd.read_csv(tmp_path / "maps" / "small_tiles.csv")
    assert list(tiles.columns) == ["x", "y", "size", "prob_ai"] and len(tiles) == 9
    assert tiles[["x", "y"]].max().tolist() == [96 - 32, 80 - 32] and (tiles["size"] == 32).all()
    # each tile's probability is the calibrated score of that very crop of the original image
    x, y = (int(v) for v in tiles.iloc[4][["x", "y"]])
    crop = create_transform(32, train=False, mode="crop", normalize=False)(  # uint8: the model normalizes
        _photo(96, 80, 1).crop((x, y, x + 32, y + 32))
    )
    with torch.inference_mode():
        expected = float(model.calibrated_probs(model(crop[None]))[0])
    assert tiles.iloc[4]["prob_ai"] == pytest.approx(expected, abs=1e-6)
    assert small["map_prob_ai"] == pytest.approx(tiles["prob_ai"].max())  # max pooling: the hottest tile's
    # a one-view model: its verdict is its own centre view, as deepfake predict gives it, and the map says it is not
    assert small["prob_ai"] == pytest.approx(detector.score_images([_photo(96, 80, 1)])[0], abs=1e-6)
    assert detector.score_images([np.asarray(_photo(96, 80, 1))])[0] == pytest.approx(small["prob_ai"], abs=1e-6)
    assert small["verdict_views"] == "1" and not small["map_is_verdict"]
    for name in ("small_map.png", "large_map.png"):
        with Image.open(tmp_path / "maps" / name) as im:
            assert im.width == 700 and im.height >= 400  # the same readable figure size for 96 px and 1600 px
    written = pd.read_csv(tmp_path / "maps" / "explanations.csv", keep_default_na=False)
    assert written["png"].tolist() == ["small_map.png", "large_map.png", ""]


def test_score_tiles_keeps_each_images_tiles_apart():
    model = DeepfakeClassifier("test_resnet", pretrained=False).eval()
    from deepfake_lightning.data.tiles import collate_tiles

    tiler = TileTransform(32, None, 64, MEAN, STD)
    batch = collate_tiles([tiler(_photo(64, 64, 3)), tiler(_photo(96, 32, 4))])
    first, second = score_tiles(model, batch)
    assert (first.n_tiles, second.n_tiles) == (4, 3) and second.image_wh == (96, 32)
    with torch.inference_mode():
        alone = model(tiler(_photo(96, 32, 4))["image"]).numpy()
    assert np.allclose(second.logits, alone, atol=1e-6) and second.logit == pytest.approx(alone.max())


# --------------------------------------------------------------------------- end to end on the demo
def _ckpt(demo_run) -> Path:
    return best_checkpoint(demo_run)


@pytest.mark.slow
def test_test_reports_localization_and_calibrate_on_tiles_makes_the_verdict_tiled(
    demo_run, demo_root, tmp_path, console, capsys
):
    common = ["--config", str(ROOT / "configs" / "demo.yaml"), f"--data.root={demo_root}"]
    tiled = tmp_path / "tiled.ckpt"
    main(["calibrate", *common, "--ckpt_path", str(_ckpt(demo_run)), "--data.eval_views", "tiles", "--out", str(tiled)])
    assert "on tiles (max pooling)" in capsys.readouterr().out
    assert stored_settings(tiled)["data"]["eval_views"] == "tiles"
    main(["test", *common, "--ckpt_path", str(tiled), f"--trainer.default_root_dir={tmp_path}"])
    printed = console.getvalue() + capsys.readouterr().out
    report = json.loads(next(tmp_path.rglob("report.json")).read_text())
    loc = report["localization"]["test_edited"]
    assert loc["n_edited"] == 60 and loc["tiles_per_image"] == 49.0  # stride 32 on 256 px: 7 x 7
    assert loc["pointing_game"] >= 0.6 and loc["image_auroc_tiles"] > loc["image_auroc_centre"]
    assert "Localization of edited regions" in printed and "pointing game" in printed
    assert set(report["splits"]) == {"val", "test_v1", "test_v2", "test_edited"}
    assert report["settings"] == {"tta_flip": False, "eval_views": "tiles", "tile_pooling": "max"}
    assert report["model"]["sha256"] == file_sha256(tiled)  # the evaluated file, not rewritten by the evaluation
    # the notebooks' loaders give the same tiled verdicts
    from deepfake_lightning.api import datamodule_for, predict_split

    table = predict_split(load_detector(tiled), datamodule_for(tiled, root=str(demo_root)), "test_edited")
    tested = pd.read_csv(next(tmp_path.rglob("predictions/test_edited.csv")))
    assert (table["n_tiles"] == 49).all() and (table["id"] == tested["id"]).all()
    assert np.allclose(table["prob_ai"], tested["prob_ai"], atol=1e-6)

    # predict, export (ONNX too) and serve give the same tiled verdict
    files = [demo_root / i for i in pd.read_csv(demo_root / "test_edited.csv")["id"][:4]]
    main(
        [
            "predict",
            *common,
            "--ckpt_path",
            str(tiled),
            f"--data.predict_paths={[str(f) for f in files]}",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    predictions = pd.read_csv(next(tmp_path.rglob("predict_tiled/predictions/files.csv")))
    assert (predictions["n_tiles"] == 49).all() and (predictions["tiles_total"] == 49).all()
    out = tmp_path / "export"
    main(["export", "--ckpt_path", str(tiled), "--out", str(out), "--format", "safetensors", "onnx"])
    config = json.loads((out / "detector.json").read_text())
    assert (config["eval_views"], config["tile_stride"], config["tile_pooling"]) == ("tiles", 32, "max")
    from deepfake_lightning.serving.worker import DetectorAPI

    answers = {}
    for runtime in ("torch", "onnx"):
        api = DetectorAPI(str(out), runtime=runtime)
        api.setup("cpu")
        requests = [
            api.decode_request({"image": base64.b64encode(f.read_bytes()).decode(), "filename": f.name, "map": True})
            for f in files
        ]
        answers[runtime] = api.predict(requests)
    for name, a, b, expected in zip(
        predictions["id"], answers["torch"], answers["onnx"], predictions["prob_ai"], strict=True
    ):
        assert a["prob_ai"] == pytest.approx(expected, abs=1e-5), name
        assert b["prob_ai"] == pytest.approx(expected, abs=1e-4), name
        assert a["n_tiles"] == 49 and len(a["map"]["tiles"]) == 49 and a["map"]["width"] == 256
        assert max(t["prob_ai"] for t in a["map"]["tiles"]) == pytest.approx(a["prob_ai"], abs=1e-6)  # max pooling
    detector = load_detector(out)
    assert detector.tiled and detector.verdict_transform.stride == 32


@pytest.mark.slow
def test_tiles_with_a_centre_calibrated_model_warn_and_explain_maps_from_the_cli(demo_run, demo_root, tmp_path, capsys):
    common = ["--config", str(ROOT / "configs" / "demo.yaml"), f"--data.root={demo_root}"]
    with pytest.warns(UserWarning, match=r"data.eval_views=tiles \(calibrated with 1\).*deepfake calibrate"):
        main(
            [
                "test",
                *common,
                "--ckpt_path",
                str(_ckpt(demo_run)),
                "--data.eval_views=tiles",
                "--trainer.limit_test_batches=2",
                f"--trainer.default_root_dir={tmp_path}",
            ]
        )
    edited = pd.read_csv(demo_root / "test_edited.csv").iloc[1]
    main(
        [
            "explain",
            str(demo_root / edited["id"]),
            "--ckpt_path",
            str(_ckpt(demo_run)),
            "--out",
            str(tmp_path / "m"),
            "--map",
            "true",
        ]
    )
    printed = capsys.readouterr().out
    assert "49 tiles scored" in printed  # the demo config's stride 32 on 256 px: 7 x 7
    stem = Path(edited["id"]).stem
    assert (tmp_path / "m" / f"{stem}_map.png").is_file()
    assert len(pd.read_csv(tmp_path / "m" / f"{stem}_tiles.csv")) == 49


def test_missing_or_mismatched_masks_fail_before_the_evaluation(tmp_path):
    from types import SimpleNamespace

    from deepfake_lightning.callbacks import EvaluationReport
    from deepfake_lightning.errors import DataError
    from tests.helpers import make_kaggle_root

    root = make_kaggle_root(tmp_path / "kaggle", n_train=20, n_test=3)
    masks = pd.read_csv(root / "test_edited.csv", keep_default_na=False)["mask"]
    (root / masks[1]).unlink()
    Image.new("L", (10, 10)).save(root / masks[3])
    dm = DeepfakeDataModule(str(root), img_size=16, mode="crop", test_edited_csv="test_edited.csv", num_workers=0)
    dm.setup("test")
    assert dm.has_masks("test_edited") and not dm.has_masks("test_v1")
    with pytest.raises(DataError) as e:
        EvaluationReport().on_test_start(SimpleNamespace(datamodule=dm), None)
    message = str(e.value)
    assert message.startswith("test_edited: 2 bad mask(s) in its mask column")
    assert f"{root / masks[1]}: does not exist" in message
    assert f"{root / masks[3]}: 10x10, its image" in message and "is 48x40" in message


def test_gradcam_of_tiled_images_explains_each_images_top_tile_with_its_pooled_verdict():
    from deepfake_lightning.callbacks.gradcam import _top_tiles
    from deepfake_lightning.explain.cam import CamExplainer

    model = DeepfakeClassifier("test_resnet", pretrained=False).eval()
    tiler = TileTransform(32, None, 64, MEAN, STD)
    items = [tiler(_photo(64, 64, 5)), tiler(_photo(96, 40, 6))]  # 4 and 3 tiles: not stackable as views
    images, pooled = _top_tiles(model, items)
    assert images.shape == (2, 3, 32, 32)
    with torch.inference_mode():
        second = model(items[1]["image"])
    assert torch.equal(images[1], items[1]["image"][int(second.argmax())])
    assert pooled[1].item() == pytest.approx(second.max().item(), abs=1e-6)
    with CamExplainer(model) as explainer:
        assert explainer(images).cam.shape == (2, 32, 32)


def test_the_localization_table_prints_tile_counts_as_counts():
    from deepfake_lightning.localization import format_localization

    row = {"n_edited": 60, "pointing_game": 0.5, "tile_auroc": 0.75, "image_auroc_tiles": 0.8}
    printed = format_localization({"test_edited": row | {"image_auroc_centre": 0.6, "tiles_per_image": 49.0}})
    assert printed.splitlines()[1].split() == ["test_edited", "60", "0.5000", "0.7500", "0.8000", "0.6000", "49.0"]
