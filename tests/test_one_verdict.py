"""One model, one verdict: the same images scored through every entry point (deepfake predict, deepfake explain with
and without --map, Detector.score_images on PyTorch and ONNX Runtime, the served API on both) give the same
probability and label, for a one-view, a five-view and a tiled model, a small and a 16-megapixel image."""

import base64
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from deepfake_lightning.api import load_detector
from deepfake_lightning.cli import main
from deepfake_lightning.serving.worker import DetectorAPI
from tests.helpers import demo_command

pytestmark = pytest.mark.slow  # several commands per model, end to end


@pytest.fixture(scope="module")
def images(demo_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("verdict_images")
    ids = pd.read_csv(demo_root / "test_v1.csv")["id"]
    files = []
    for i in (0, 1):
        files.append(folder / f"small{i}.jpg")
        files[-1].write_bytes((demo_root / ids[i]).read_bytes())
    with Image.open(demo_root / ids[2]) as im:  # 16 MP: 4608 x 3456
        im.convert("RGB").resize((4608, 3456), Image.Resampling.BICUBIC).save(folder / "large.jpg", quality=92)
    files.append(folder / "large.jpg")
    return files


@pytest.fixture(scope="module")
def models(demo_run, demo_root, tmp_path_factory):
    """The demo checkpoint (one view), and copies calibrated on five views and on tiles (the verdict's views are the
    calibration's)."""
    out = tmp_path_factory.mktemp("verdict_models")
    ckpt = demo_run / "checkpoints" / "last.ckpt"
    made = {1: out / "views_1.ckpt"}  # evaluations are written beside these copies, not into the shared session run
    shutil.copy(ckpt, made[1])
    for views in (5, "tiles"):
        made[views] = out / f"views_{views}.ckpt"
        main(
            [*demo_command("calibrate", demo_root, f"--data.eval_views={views}", ckpt=ckpt), "--out", str(made[views])]
        )
    return made


def _predict(ckpt, images, demo_root, out) -> pd.Series:
    paths = f"--data.predict_paths=[{','.join(map(str, images))}]"
    main(demo_command("predict", demo_root, paths, "--report.evidence=false", ckpt=ckpt, out=out))
    table = pd.read_csv(next(out.glob("eval/predict_*/predictions/files.csv")))
    return table.set_index(table["id"].map(lambda p: p.rsplit("/", 1)[-1]))["prob_ai"]


def _served(ckpt, images, runtime="torch") -> list[dict]:
    api = DetectorAPI(str(ckpt), runtime)
    api.setup("cpu")
    uploads = [api.decode_request({"image": base64.b64encode(f.read_bytes()).decode(), "map": True}) for f in images]
    return api.predict(uploads)


@pytest.mark.parametrize("views", [1, 5, "tiles"])
def test_every_entry_point_gives_the_same_verdict(views, models, images, demo_root, tmp_path):
    ckpt = models[views]
    detector = load_detector(ckpt)
    assert detector.views == views
    with_pil = [Image.open(f).convert("RGB") for f in images]
    direct = detector.score_images(with_pil)
    predicted = _predict(ckpt, images, demo_root, tmp_path / "predict")
    names = [f.name for f in images]
    assert predicted[names].to_numpy() == pytest.approx(direct, abs=1e-5)

    main(["explain", *map(str, images), "--ckpt_path", str(ckpt), "--out", str(tmp_path / "maps"), "--map", "true"])
    explained = pd.read_csv(tmp_path / "maps" / "explanations.csv").set_index("file")
    rows = explained.loc[[str(f) for f in images]]
    assert rows["prob_ai"].to_numpy() == pytest.approx(direct, abs=1e-5)
    assert rows["label"].tolist() == [int(p >= detector.threshold) for p in direct]
    assert rows["verdict_views"].astype(str).tolist() == [str(views)] * 3
    assert rows["map_is_verdict"].tolist() == [views == "tiles"] * 3
    if views == "tiles":  # the map is the verdict: its pooled tiles are the verdict's probability
        assert rows["map_prob_ai"].to_numpy() == pytest.approx(direct, abs=1e-5)

    main(["explain", *map(str, images), "--ckpt_path", str(ckpt), "--out", str(tmp_path / "cams"), "--map", "false"])
    cams = pd.read_csv(tmp_path / "cams" / "explanations.csv").set_index("file").loc[[str(f) for f in images]]
    assert cams["prob_ai"].to_numpy() == pytest.approx(direct, abs=1e-5)  # Grad-CAM's figure, the same verdict
    assert cams["verdict_views"].astype(str).tolist() == [str(views)] * 3

    served = _served(ckpt, images)
    assert [a["prob_ai"] for a in served] == pytest.approx(direct, abs=1e-5)
    assert [a["label"] for a in served] == rows["label"].tolist()
    assert [a["map"]["is_verdict"] for a in served] == [views == "tiles"] * 3
    assert [a["map"]["prob_ai"] for a in served] == pytest.approx(rows["map_prob_ai"].to_numpy(), abs=1e-5)

    export = tmp_path / "export"
    main(["export", "--ckpt_path", str(ckpt), "--out", str(export), "--format", "safetensors", "onnx"])
    assert json.loads((export / "detector.json").read_text())["eval_views"] == views
    on_onnx = load_detector(export, runtime="onnx")
    assert on_onnx.runtime == "onnx" and on_onnx.settings == detector.settings
    assert on_onnx.score_images(with_pil) == pytest.approx(direct, abs=1e-4)
    onnx = _served(export, images, "onnx")
    assert [a["prob_ai"] for a in onnx] == pytest.approx(direct, abs=1e-4)  # ONNX Runtime's float arithmetic
    assert np.array([a["label"] for a in onnx]).tolist() == rows["label"].tolist()


def test_a_resize_mode_model_decodes_a_large_jpeg_as_predict_does(demo_run, demo_root, images, tmp_path):
    """A resize-mode model: `deepfake predict` decodes JPEGs at a reduced DCT scale (data.jpeg_draft). The Detector,
    `deepfake explain` and the served API decode the same way, so the 16-megapixel photo gets one verdict; decoded
    in full it would score otherwise."""
    from deepfake_lightning.checkpoints import update_checkpoint

    ckpt = tmp_path / "resize.ckpt"
    update_checkpoint(
        demo_run / "checkpoints" / "last.ckpt",
        lambda c: c["datamodule_hyper_parameters"].update(mode="resize", eval_views=1),
        ckpt,
    )
    detector = load_detector(ckpt)
    assert detector.settings.mode == "resize" and detector.settings.draft_size == detector.settings.img_size
    direct = detector.score_files(images)
    predicted = _predict(ckpt, images, demo_root, tmp_path / "predict")
    assert predicted[[f.name for f in images]].to_numpy() == pytest.approx(direct, abs=1e-5)
    full = detector.score_images([Image.open(images[-1]).convert("RGB")])[0]  # no draft: another verdict input
    assert abs(full - direct[-1]) > 1e-4

    main(["explain", *map(str, images), "--ckpt_path", str(ckpt), "--out", str(tmp_path / "cams")])
    cams = pd.read_csv(tmp_path / "cams" / "explanations.csv").set_index("file").loc[[str(f) for f in images]]
    assert cams["prob_ai"].to_numpy() == pytest.approx(direct, abs=1e-5)
    api = DetectorAPI(str(ckpt), "torch")
    api.setup("cpu")
    served = api.predict([api.decode_request({"image": base64.b64encode(f.read_bytes()).decode()}) for f in images])
    assert [a["prob_ai"] for a in served] == pytest.approx(direct, abs=1e-5)


@pytest.mark.parametrize("views", [1, "tiles"])
def test_detector_predict_files_is_deepfake_predicts_files_csv(views, models, images, demo_root, tmp_path):
    """Detector.predict_files gives the rows of `deepfake predict --report.stability 3`'s files.csv: the same
    columns, probabilities, stability (the same seeded copies) and evidence, and the unreadable file's error."""
    ckpt = models[views]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    files = [*images, broken]
    paths = f"--data.predict_paths=[{','.join(map(str, files))}]"
    main(demo_command("predict", demo_root, paths, "--report.stability=3", ckpt=ckpt, out=tmp_path / "p"))
    written = pd.read_csv(next((tmp_path / "p").glob("eval/predict_*/predictions/files.csv")), keep_default_na=False)
    ours = load_detector(ckpt).predict_files(files, stability=3)
    assert list(ours.columns) == list(written.columns)
    written = written.set_index("id").loc[[str(f) for f in files]]
    ours = ours.set_index("id").loc[[str(f) for f in files]]
    scored = [str(f) for f in images]
    for column in ("prob_ai", "prob_min", "prob_max", "flip_rate"):
        assert ours.loc[scored, column].astype(float).to_numpy() == pytest.approx(
            written.loc[scored, column].astype(float).to_numpy(), abs=1e-5
        )
    for column in ("label", "verdict", "evidence_summary"):
        assert ours.loc[scored, column].astype(str).tolist() == written.loc[scored, column].astype(str).tolist()
    assert ours.loc[str(broken), "error"] != "" and pd.isna(ours.loc[str(broken), "prob_ai"])  # no verdict
    assert ours.loc[str(broken), "error"] == written.loc[str(broken), "error"]
