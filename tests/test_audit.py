"""Shortcut audits (audit/): the dataset audit on biased and unbiased Kaggle-layout folders, the JPEG facts it
reads, the model audit of `deepfake test --report.reencode true` against an independent computation, and the
demo with a planted shortcut."""

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from deepfake_lightning.audit.shortcuts import FLAG_AUROC, file_features, jpeg_quality, reencode
from deepfake_lightning.commands.audit import audit_main
from deepfake_lightning.data import DataError
from deepfake_lightning.data.demo import DemoSpec, build_demo_dataset
from tests.helpers import CONFIGS, best_checkpoint, copy_run


@pytest.fixture(scope="module")
def demo_run(demo_run, tmp_path_factory):
    """A copy of the session's trained run (conftest's ``demo_run``): this module's evaluations write into it
    (``RUN/eval/``, results recorded in its checkpoint), not into the run the session's other tests read."""
    return copy_run(demo_run, tmp_path_factory.mktemp("run_copy") / "version_0")


def layout(root: Path, ai_format: str = "JPEG", n_train: int = 60, n_test: int = 24, seed: int = 0) -> Path:
    """A Kaggle-layout folder whose two classes come from one distribution of files (sizes, content, JPEG quality
    drawn the same way whatever the label), except that ``ai_format="PNG"`` saves every AI image as PNG: a planted
    format shortcut."""
    rng = np.random.default_rng(seed)

    def write(folder: str, i: int, label: int) -> str:
        h, w = (int(v) for v in rng.choice([40, 48, 56], 2))
        smooth = rng.random() < 0.5
        pixels = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3) if smooth else (h, w, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).resize((w, h), Image.Resampling.BILINEAR) if smooth else Image.fromarray(pixels)
        png = label == 1 and ai_format == "PNG"
        name = f"{folder}/{i:05d}.{'png' if png else 'jpg'}"
        (root / folder).mkdir(parents=True, exist_ok=True)
        image.save(root / name, **({} if png else {"quality": int(rng.integers(80, 96))}))
        return name

    labels = rng.permutation(np.arange(n_train) % 2)
    train = pd.DataFrame({"file_name": [write("train_data", i, y) for i, y in enumerate(labels)], "label": labels})
    train.to_csv(root / "train.csv")
    labels = rng.permutation(np.arange(n_test) % 2)
    pd.DataFrame({"id": [write("test_data_v1", i, y) for i, y in enumerate(labels)], "label": labels}).to_csv(
        root / "test_v1.csv", index=False
    )
    return root


def audit(root: Path, out: Path, *extra: str) -> dict:
    return audit_main(
        [
            "--out",
            str(out),
            "--config",
            str(CONFIGS / "convnext.yaml"),
            f"--data.root={root}",
            "--data.test_v1_csv=test_v1.csv",
            "--data.test_v2_csv=null",
            "--model.backbone=test_resnet",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    return layout(tmp_path_factory.mktemp("plain")), layout(tmp_path_factory.mktemp("shortcut"), ai_format="PNG")


@pytest.mark.slow
def test_the_audit_flags_a_planted_format_shortcut_and_passes_the_plain_data(roots, tmp_path, capsys):
    plain, shortcut = roots
    clean = audit(plain, tmp_path / "plain")
    flagged = audit(shortcut, tmp_path / "shortcut")
    printed = capsys.readouterr().out
    for split in ("train", "test_v1"):
        assert not clean["splits"][split]["flagged"] and clean["splits"][split]["metadata_auroc"] <= FLAG_AUROC
        assert flagged["splits"][split]["flagged"] and flagged["splits"][split]["metadata_auroc"] >= 0.95
        top = flagged["splits"][split]["top_features"][0]
        assert top["auroc"] == 1.0  # one feature alone separates the classes
        classes = flagged["splits"][split]["classes"]
        assert classes["ai"]["format"] == {"PNG": classes["ai"]["images"]}
        assert classes["human"]["format"] == {"JPEG": classes["human"]["images"]}
        assert classes["ai"]["jpeg_quality"]["median"] != classes["ai"]["jpeg_quality"]["median"]  # NaN: no JPEG
        assert 80 <= classes["human"]["jpeg_quality"]["median"] <= 95  # as saved
    assert {f["feature"] for f in flagged["splits"]["train"]["top_features"]} & {"format_PNG", "format_JPEG"}
    assert flagged["flagged"] and not clean["flagged"]
    assert clean["splits"]["train"]["metadata_auroc_with_size"] <= FLAG_AUROC  # one distribution of files
    written = json.loads((tmp_path / "shortcut" / "audit.json").read_text())
    assert written["splits"]["train"]["metadata_auroc"] == flagged["splits"]["train"]["metadata_auroc"]
    md = (tmp_path / "shortcut" / "audit.md").read_text()
    assert "FLAGGED: a shortcut" in md and "| format | JPEG" in md
    assert "| jpeg_quality | min " in md and "| n/a |" in md  # the AI class has no JPEG to measure
    assert "train: 60 images, metadata_auroc 1.0 (FLAGGED; with the file size 1.0)" in printed and "(ok;" in printed


def test_the_audit_names_an_unreadable_image(roots, tmp_path):
    root = Path(shutil.copytree(roots[0], tmp_path / "data"))
    bad = pd.read_csv(root / "train.csv")["file_name"][3]
    (root / bad).write_bytes(b"not an image")
    with pytest.raises(DataError, match=f"cannot read image .*{bad}"):
        audit(root, tmp_path / "out")
    result = audit(root, tmp_path / "out", "--data.bad_images=skip")
    assert result["splits"]["train"]["skipped"] == [bad]
    assert result["splits"]["train"]["images"] == 59


@pytest.mark.parametrize("quality", [30, 50, 75, 90, 95])
def test_jpeg_quality_is_read_from_the_quantization_tables(tmp_path, quality):
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.jpg", quality=quality)
    with Image.open(tmp_path / "x.jpg") as im:
        assert jpeg_quality(im) == quality


def test_file_features_read_format_subsampling_and_metadata(tmp_path):
    pixels = np.zeros((30, 60, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x010F] = "Canon"
    Image.fromarray(pixels).save(tmp_path / "a.jpg", quality=80, subsampling=0, exif=exif.tobytes())
    Image.fromarray(pixels).save(tmp_path / "b.jpg", quality=80, subsampling=2)
    Image.fromarray(pixels).save(tmp_path / "c.png")
    a, b, c = (file_features(tmp_path / n) for n in ("a.jpg", "b.jpg", "c.png"))
    assert (a["subsampling"], b["subsampling"], c["subsampling"]) == ("4:4:4", "4:2:0", "none")
    assert (a["has_exif"], b["has_exif"]) == (True, False)
    assert (a["width"], a["height"], a["aspect"], c["format"], c["jpeg_quality"]) == (60, 30, 2.0, "PNG", -1)


def test_reencode_gives_the_same_file_whatever_the_input():
    pixels = np.random.default_rng(1).integers(0, 256, (1500, 900, 3), dtype=np.uint8)
    as_png = Image.open(io.BytesIO(_saved(pixels, "PNG")))
    as_jpeg = Image.open(io.BytesIO(_saved(pixels, "JPEG")))
    out_png, out_jpeg = reencode(as_png), reencode(as_jpeg)
    assert out_png.size == out_jpeg.size == (614, 1024)  # the longer side to 1024
    assert out_png.mode == "RGB"


def _saved(pixels, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


@pytest.mark.slow  # a `deepfake test` end to end, and every test_v1 image scored again by hand
def test_deepfake_test_reencode_reports_metrics_before_and_after(demo_run, kaggle_root, tmp_path, console):
    from deepfake_lightning.api import load_detector
    from deepfake_lightning.callbacks import EvaluationReport
    from deepfake_lightning.cli import cli_main
    from deepfake_lightning.data.dataset import load_image

    ckpt = best_checkpoint(demo_run)
    cli = cli_main(
        [
            "test",
            "--config",
            str(CONFIGS / "demo.yaml"),
            f"--ckpt_path={ckpt}",
            f"--data.root={kaggle_root}",
            "--data.demo=false",
            "--data.test_v1_csv=test_v1.csv",
            "--data.num_workers=0",
            f"--trainer.default_root_dir={tmp_path}",
            "--report.reencode=true",
            "--trainer.enable_progress_bar=false",
        ]
    )
    report = next(c for c in cli.trainer.callbacks if isinstance(c, EvaluationReport)).report
    assert set(report["reencode"]) == {s for s in report["splits"]}
    result = report["reencode"]["test_v1"]
    assert result["auroc"]["before"] == pytest.approx(report["splits"]["test_v1"]["auroc"])
    # after: an independent computation, each test_v1 image re-encoded and scored by the loaded detector
    detector = load_detector(ckpt)
    table = pd.read_csv(kaggle_root / "test_v1.csv")
    images = torch.stack([detector.transform(reencode(load_image(kaggle_root / p))) for p in table["id"]])
    with torch.no_grad():
        probs = detector.model.calibrated_probs(detector.model.predict_logits(images)).numpy()
    assert result["auroc"]["after"] == pytest.approx(roc_auc_score(table["label"], probs), abs=1e-6)
    assert result["auroc"]["change"] == pytest.approx(result["auroc"]["after"] - result["auroc"]["before"])
    assert "Re-encoded (both classes: RGB, at most 1024 px, JPEG 90), before -> after:" in console.getvalue()
    after_header = console.getvalue().split("before -> after:", 1)[1].splitlines()
    row = next(line for line in after_header if line.strip().startswith("test_v1 "))
    assert f"{result['auroc']['before']:.4f} -> {result['auroc']['after']:.4f}" in row


def test_the_demo_with_a_planted_shortcut_saves_ai_images_as_png_and_nothing_else(tmp_path):
    small = dict(seed=5, size=32, train_pairs=6, test_v1=6, test_v2=6, edited_pairs=2, edited_size=64)
    plain = build_demo_dataset(tmp_path / "plain", DemoSpec(**small))
    planted = build_demo_dataset(tmp_path / "png", DemoSpec(**small, shortcut="png"))
    for csv, column in (("train.csv", "file_name"), ("test_v1.csv", "id"), ("test.csv", "id")):
        a, b = pd.read_csv(plain / csv), pd.read_csv(planted / csv)
        assert (b[column].str.endswith(".png") == (b["label"] == 1)).all()
        for x, y, label in zip(a[column], b[column], a["label"], strict=True):
            if label == 0:
                assert (plain / x).read_bytes() == (planted / y).read_bytes()  # the human images: the same bytes
            else:
                with Image.open(planted / y) as im:
                    assert im.format == "PNG"
    assert "shortcut" not in json.loads((plain / "demo.json").read_text())  # earlier unbiased builds stay current
    assert json.loads((planted / "demo.json").read_text())["shortcut"] == "png"


def format_only(root: Path, n_train: int = 240, n_test: int = 60) -> Path:
    """Classes that differ by nothing but the file: one distribution of images, human ones saved as JPEG quality 90,
    AI ones as PNG. A model can only learn the file here."""
    rng = np.random.default_rng(0)

    def write(folder: str, i: int, label: int) -> str:
        noise = rng.integers(0, 256, (48, 48, 3)).astype(float) - 128
        base = Image.fromarray(rng.integers(0, 256, (7, 7, 3), dtype=np.uint8)).resize((48, 48), Image.BILINEAR)
        image = Image.fromarray((np.asarray(base, float) + 0.3 * noise).clip(0, 255).astype(np.uint8))
        name = f"{folder}/{i:04d}.{'png' if label else 'jpg'}"
        (root / folder).mkdir(parents=True, exist_ok=True)
        image.save(root / name, **({} if label else {"quality": 90}))
        return name

    y = np.arange(n_train) % 2
    pd.DataFrame({"file_name": [write("train", i, v) for i, v in enumerate(y)], "label": y}).to_csv(root / "train.csv")
    y = np.arange(n_test) % 2
    pd.DataFrame({"id": [write("test", i, v) for i, v in enumerate(y)], "label": y}).to_csv(
        root / "test.csv", index=False
    )
    return root


@pytest.mark.slow  # a fit and a test, end to end
def test_the_model_audit_catches_a_model_that_learned_the_file(tmp_path, console):
    from deepfake_lightning.callbacks import EvaluationReport
    from deepfake_lightning.cli import cli_main

    root = format_only(tmp_path / "data")
    common = ["--config", str(CONFIGS / "convnext.yaml"), "--model.backbone=test_resnet", "--model.pretrained=false"]
    common += [f"--data.root={root}", "--data.img_size=32", "--data.mode=crop", "--data.batch_size=32"]
    common += ["--data.num_workers=0", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    fit = cli_main(
        [
            "fit",
            *common,
            "--trainer.max_epochs=4",
            "--model.optimizer.init_args.lr=0.003",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    ckpt = fit.trainer.checkpoint_callback.best_model_path
    cli = cli_main(["test", *common, f"--ckpt_path={ckpt}", "--report.reencode=true"])
    report = next(c for c in cli.trainer.callbacks if isinstance(c, EvaluationReport)).report
    auroc = report["reencode"]["test_v2"]["auroc"]
    assert auroc["before"] > 0.95 and auroc["after"] < 0.75  # it read the file, and re-encoding took it away
    assert "deepfake: warning: test_v2: AUROC drops by" in console.getvalue()
