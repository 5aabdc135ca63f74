"""Verdicts that hold up: the re-share simulator, the stability check, false-positive-bounded thresholds."""

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageFilter
from scipy.stats import norm
from torchvision.transforms import v2

from deepfake_lightning.calibration import CalibrationState, check_criterion
from deepfake_lightning.calibration.thresholds import (
    clopper_pearson_upper,
    fpr_bound_threshold,
    humans_needed,
)
from deepfake_lightning.callbacks import Calibration, EvaluationReport
from deepfake_lightning.cli import main
from deepfake_lightning.data import create_transform
from deepfake_lightning.data import reshare as reshare_module
from deepfake_lightning.data.reshare import (
    OPERATIONS,
    RandomReshare,
    RandomReshareCrop,
    Reshare,
    Step,
    apply_operation,
    draw_step,
    plan_chain,
    reshare,
    reshare_window,
    run_step,
)
from deepfake_lightning.errors import ConfigError
from deepfake_lightning.stability import risk_coverage, stability_report, stability_table
from tests.helpers import best_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _photo(w: int = 120, h: int = 90, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 6, w // 6, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)


# --------------------------------------------------------------------------- the simulator
def test_each_operation_does_what_it_says_within_its_ranges():
    image = _photo()
    for seed in range(40):
        rng = np.random.default_rng(seed)
        for name in OPERATIONS:
            out, what = apply_operation(image, name, np.random.default_rng(rng.integers(1 << 30)))
            assert out.mode == "RGB" and what.startswith(name)
            if name in ("jpeg", "webp"):
                assert 60 <= int(what.split("q=")[1].rstrip(")")) <= 95 and out.size == image.size
            if name == "png":
                assert np.array_equal(np.asarray(out), np.asarray(image))  # lossless
            if name == "downscale":
                scale = float(what.split("(")[1].split(",")[0])
                assert (
                    0.5 <= scale <= 0.9 and abs(out.size[0] - 120 * scale) <= 1 and abs(out.size[1] - 90 * scale) <= 1
                )
            if name == "crop":
                keep = float(what[5:-1])
                assert 0.8 <= keep <= 0.95 and abs(out.size[0] - 120 * keep) <= 1 and abs(out.size[1] - 90 * keep) <= 1
            if name == "sharpen":
                assert out.size == image.size and not np.array_equal(np.asarray(out), np.asarray(image))


def test_jpeg_reencoding_uses_4_2_0_chroma():
    from deepfake_lightning.data import reshare as module

    saved = {}
    original = module._encode

    def spy(image, fmt, **options):
        saved[fmt] = options
        return original(image, fmt, **options)

    module._encode = spy
    try:
        apply_operation(_photo(), "jpeg", np.random.default_rng(0))
    finally:
        module._encode = original
    assert saved["JPEG"]["subsampling"] == 2  # PIL: 2 = 4:2:0
    buffer = io.BytesIO()
    _photo().save(buffer, "JPEG", quality=80, subsampling=2)
    from PIL import JpegImagePlugin

    assert JpegImagePlugin.get_sampling(Image.open(buffer)) == 2


def test_chains_are_seeded_one_to_three_operations_without_immediate_repeats():
    image = _photo()
    lengths = []
    for seed in range(60):
        rng_a, n = Reshare(seed).chain()
        out_a, done = reshare(image, rng_a, n)
        out_b, again = reshare(image, *Reshare(seed).chain())
        assert done == again and np.array_equal(np.asarray(out_a), np.asarray(out_b))  # same seed, same copy
        assert all(a.split("(")[0] != b.split("(")[0] for a, b in zip(done, done[1:], strict=False))
        lengths.append(n)
    assert set(lengths) == {1, 2, 3}
    other = _photo(seed=1)
    salted = Reshare(5, length=2, salt_with_image=True)
    assert salted.chain(image)[0].integers(1 << 30) != salted.chain(other)[0].integers(1 << 30)  # per image
    assert np.array_equal(np.asarray(salted(image)), np.asarray(salted(image)))


def test_training_reshare_follows_its_probability_and_torch_seed():
    image = _photo()
    never, always = RandomReshare(0.0), RandomReshare(1.0)
    assert never(image) is image
    torch.manual_seed(3)
    first = np.asarray(always(image))
    torch.manual_seed(3)
    assert np.array_equal(first, np.asarray(always(image)))
    torch.manual_seed(0)
    changed = sum(RandomReshare(0.3)(image) is not image for _ in range(400))
    assert 90 <= changed <= 150  # 30 % of 400, within about 3 standard deviations
    assert "RandomReshare(p=0.5)" in repr(create_transform(32, train=True, mode="resize", aug_reshare=0.5))
    assert "RandomReshareCrop(p=0.5, size=32)" in repr(create_transform(32, train=True, mode="crop", aug_reshare=0.5))
    with pytest.raises(ConfigError, match=r"data.aug_reshare must be a probability in \[0, 1\]"):
        create_transform(32, train=True, mode="crop", aug_reshare=1.5)


# --------------------------------------------------------------------------- chains on the crop's window
def _camera_photo(w: int, h: int, seed: int) -> Image.Image:
    """Smooth structure plus sensor-like noise: what makes JPEG and WebP work hard (a flat image would hide errors)."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (h // 30, w // 30, 3), dtype=np.uint8))
    pixels = np.asarray(base.resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16) + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _window_against_full_chain(names_from: tuple[str, ...], n: int, crop: int = 96, training: bool = False):
    """For n random chains of operations drawn from ``names_from`` on odd-sized photographs and a random crop of
    each result: (names, |windowed - full chain then crop|) per chain; ``training``: the window is run the training
    way, the full chain always the reference way."""
    out = []
    for seed in range(n):
        rng = np.random.default_rng(seed)
        image = _camera_photo(int(rng.integers(250, 520)), int(rng.integers(250, 420)), seed)
        steps, size = [], image.size
        for name in rng.choice(names_from, size=int(rng.integers(1, 4))):
            steps.append(draw_step(str(name), rng, size))
            size = steps[-1].size_out
        x, y = int(rng.integers(0, size[0] - crop + 1)), int(rng.integers(0, size[1] - crop + 1))
        full = image
        for step in steps:
            full = run_step(full, step)
        box = (x, y, x + crop, y + crop)
        window = reshare_window(image, steps, box, training=training)
        assert window.size == (crop, crop)
        diff = np.abs(np.asarray(window, dtype=np.int16) - np.asarray(full.crop(box), dtype=np.int16))
        out.append(([s.what for s in steps], diff))
    return out


def test_jpeg_chains_on_the_window_give_exactly_the_full_chains_pixels():
    """JPEG codes 16x16 units independently (the DC prediction is lossless): a window aligned to the grid of the
    image each JPEG step encodes, with a margin for the chroma upsampling, gives the same pixels, through crops
    (which move the grid) and PNG steps, at any position."""
    results = _window_against_full_chain(("jpeg", "png", "crop"), 60)
    assert sum(sum(w.startswith("jpeg") for w in names) >= 2 for names, _ in results) >= 5  # JPEG twice
    assert sum(any(w.startswith("crop(0") for w in names) for names, _ in results) >= 20
    for names, diff in results:
        assert diff.max() == 0, names


def test_scaling_and_sharpening_on_the_window_are_within_a_grey_level():
    """Rescaling (area, bicubic, Lanczos) and the unsharp mask read a neighbourhood: with their margins, the window
    gives the full chain's pixels up to the rounding of PIL's fixed-point filter weights (mean under one grey
    level per chain; a JPEG step after a one-level change may re-quantize a block, hence no bound on the max)."""
    results = _window_against_full_chain(("jpeg", "downscale", "crop", "sharpen"), 40)
    assert sum(any(w.startswith("downscale(0") for w in names) for names, _ in results) >= 15
    assert sum(any(w.startswith("sharpen") for w in names) for names, _ in results) >= 15
    means = [diff.mean() for _, diff in results]
    assert max(means) < 1.0
    assert np.mean(means) < 0.05  # almost every pixel exactly equal


def test_webp_on_the_window_is_within_its_stated_tolerance():
    """WebP predicts across macroblocks and picks its segment quantizers and loop filter from the whole picture,
    so a window is a different picture to it: the stated tolerance (docs/stability.md) is a mean absolute
    difference of at most 4.5 grey levels per 224-pixel crop and 3 on average, for chains of 1-3 WebP steps on
    camera-like photographs (measured: 2.9 on average, 4.2 at worst; one step alone: 2.2 and 2.8), where one WebP
    step itself moves them by about 4.7."""
    webp_only = _window_against_full_chain(("webp",), 30, crop=224)
    means = [diff.mean() for _, diff in webp_only]
    assert max(means) <= 4.5 and np.mean(means) <= 3.0


def test_the_training_way_is_within_its_stated_tolerance_of_the_reference_chain():
    """Training runs WebP at libwebp's effort 2 and the unsharp mask's blur through OpenCV (docs/stability.md):
    windows run that way stay within a grey level of the full reference chain for JPEG, rescaling, crops and
    sharpening (measured 0.13 on average, 0.88 at worst), and within 5 (3.5 on average) for WebP chains (measured
    3.3 and 4.6)."""
    results = _window_against_full_chain(("jpeg", "downscale", "crop", "sharpen"), 40, training=True)
    assert sum(any(w.startswith("sharpen") for w in names) for names, _ in results) >= 15
    means = [diff.mean() for _, diff in results]
    assert max(means) < 1.0 and np.mean(means) < 0.2
    webp = [diff.mean() for _, diff in _window_against_full_chain(("webp",), 30, crop=224, training=True)]
    assert max(webp) <= 5.0 and np.mean(webp) <= 3.5


def test_training_webp_has_the_reference_strength_of_artefacts():
    """Effort 2 moves a photograph as far from itself as effort 4 does at every quality (within 3 %; measured
    1-2 %)."""
    for q in (60, 75, 95):
        step = Step("webp", (320, 256), (320, 256), f"webp(q={q})", quality=q)
        strengths = []
        for training in (False, True):
            moved = [
                np.abs(
                    np.asarray(run_step(photo, step, training=training), dtype=np.int16)
                    - np.asarray(photo, dtype=np.int16)
                ).mean()
                for photo in (_camera_photo(320, 256, seed) for seed in range(6))
            ]
            strengths.append(np.mean(moved))
        assert abs(strengths[1] / strengths[0] - 1) < 0.03, (q, strengths)


def test_training_sharpen_is_pils_rule_on_opencvs_blur(monkeypatch):
    """Given PIL's blur, the training sharpen is PIL's unsharp mask pixel for pixel (the rule: |pixel - blur| above
    the threshold moves by percent of it, truncated towards zero)."""
    photo = _camera_photo(150, 110, 3)
    pil_blur = {}

    def pils_blur(pixels, ksize, radius, borderType):  # OpenCV's keywords
        pil_blur[radius] = np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(radius)))
        return pil_blur[radius]

    monkeypatch.setattr(reshare_module.cv2, "GaussianBlur", pils_blur)
    for radius, percent in ((1.0, 30), (1.6, 55), (2.0, 80)):
        step = Step("sharpen", photo.size, photo.size, "sharpen", radius=radius, percent=percent)
        reference = photo.filter(ImageFilter.UnsharpMask(radius=radius, percent=percent, threshold=2))
        assert np.array_equal(np.asarray(run_step(photo, step, training=True)), np.asarray(reference))
    assert len(pil_blur) == 3


def test_random_reshare_crop_is_the_chain_then_the_random_crop():
    """RandomReshareCrop(p, size) draws what RandomReshare(p) then RandomCrop(size) draw (torch's generator: the
    chain's seed, then the crop's position) and gives the same pixels (JPEG, PNG and crop chains exactly)."""
    image, size = _camera_photo(300, 260, 7), 64
    torch.manual_seed(0)
    plain = RandomReshareCrop(0.0, size)(image)
    torch.manual_seed(0)
    assert np.array_equal(np.asarray(plain), np.asarray(v2.RandomCrop(size)(image)))
    checked = 0
    for seed in range(200):
        torch.manual_seed(seed)
        got = RandomReshareCrop(1.0, size)(image)
        torch.manual_seed(seed)
        torch.rand(())  # the probability draw
        chain_seed = int(torch.randint(0, 2**31 - 1, ()).item())
        steps = plan_chain(*Reshare(chain_seed).chain(), image.size)
        if any(s.name in ("webp", "downscale", "sharpen") for s in steps):
            continue
        full, _ = reshare(image, *Reshare(chain_seed).chain())
        w, h = full.size
        x, y = int(torch.randint(0, w - size + 1, ())), int(torch.randint(0, h - size + 1, ()))
        assert np.array_equal(np.asarray(got), np.asarray(full.crop((x, y, x + size, y + size))))
        checked += 1
    assert checked >= 10
    small = _camera_photo(60, 50, 1)  # smaller than the crop: the whole chain, then the zero-padded crop
    torch.manual_seed(0)
    assert RandomReshareCrop(1.0, size)(small).size == (size, size)


# --------------------------------------------------------------------------- the stability check
@pytest.mark.parametrize(("mode", "views"), [("resize", 1), ("crop", 5), ("crop", "tiles")])
def test_the_copies_of_one_decoding_are_the_copies_of_k_decodings(demo_root, mode, views):
    """The stability check decodes each image once (ReshareCopies): its k copies are exactly what the data module
    gave when each copy re-read and re-decoded the file (Reshare(j, salt_with_image=True) before the transform), for
    one view, five views and tiles; and their logits go through the model batched."""
    from torch.utils.data import DataLoader, Subset

    from deepfake_lightning.data.dataset import collate_skip_bad
    from deepfake_lightning.models import DeepfakeClassifier
    from deepfake_lightning.stability import copy_logits
    from tests.helpers import datamodule

    k = 3
    dm = datamodule(
        demo_root, "test", test_v1_csv="test_v1.csv", img_size=64, mode=mode, eval_views=views, tile_stride=32
    )
    once = dm.dataset("test_v1", copies=k)
    for i in (0, 5):
        item = once[i]
        for j in range(1, k + 1):
            again = dm.dataset("test_v1", perturb=Reshare(j, salt_with_image=True))[i]
            if views == "tiles":
                start = int(item["copy_tiles"][: j - 1].sum())
                tiles = item["image"][start : start + int(item["copy_tiles"][j - 1])]
                assert torch.equal(tiles, again["image"])
            else:
                assert torch.equal(item["copies"][j - 1], again["image"])
    model = DeepfakeClassifier("test_resnet", pretrained=False, tile_pooling="max").eval()
    loader = DataLoader(Subset(once, range(8)), batch_size=4, collate_fn=collate_skip_bad)  # 8 images are enough
    n = len(once)
    logits = copy_logits(model, loader, n, k)
    assert logits.shape == (n, k) and np.isfinite(logits[:8]).all() and np.isnan(logits[8:]).all()
    with torch.inference_mode():  # copy 2 of image 5, scored alone as the per-copy loaders scored it
        alone = dm.dataset("test_v1", perturb=Reshare(2, salt_with_image=True))[5]
        x = alone["image"] if views != "tiles" else alone["image"]
        n_tiles = torch.tensor([len(x)]) if views == "tiles" else None
        expected = model.predict_logits(x if views == "tiles" else x[None], n_tiles=n_tiles)
    assert logits[5, 1] == pytest.approx(float(expected[0]), abs=1e-5)


def test_stability_table_and_report_on_known_numbers():
    probs = np.array([0.9, 0.8, 0.2, 0.1])
    copies = np.array(
        [
            [0.95, 0.85, 0.7, 0.9],  # stays AI
            [0.3, 0.2, 0.9, 0.1],  # 3 of 4 flip
            [0.6, 0.1, 0.2, np.nan],  # 1 of 3 flips (one copy unreadable)
            [0.0, 0.05, 0.1, 0.2],
        ]
    )
    table = stability_table(probs, copies, threshold=0.5, tolerance=0.25)
    assert table["flip_rate"].tolist() == pytest.approx([0.0, 0.75, 1 / 3, 0.0])
    assert table["verdict"].tolist() == ["ai", "uncertain", "uncertain", "human"]
    assert table["prob_min"].tolist() == pytest.approx([0.7, 0.1, 0.1, 0.0])
    assert table["prob_max"].tolist() == pytest.approx([0.95, 0.9, 0.6, 0.2])
    labels = np.array([1, 0, 1, 0])  # the uncertain two are the wrong ones
    r = stability_report(table, probs, labels, 0.5, 4)
    assert r["coverage"] == 0.5 and r["n_uncertain"] == 2
    assert r["all"]["acc"] == 0.5 and r["certain"]["acc"] == 1.0
    coverage, risk = risk_coverage(table, probs, labels, 0.5)
    assert coverage.tolist() == [0.25, 0.5, 0.75, 1.0] and risk.tolist() == [0.0, 0.0, 1 / 3, 0.5]


def test_bad_stability_and_threshold_settings_are_one_error_naming_the_key():
    with pytest.raises(
        ConfigError, match=r"report.stability must be a number of re-shared copies per image \(0: off\), got -1"
    ):
        EvaluationReport(stability=-1)
    with pytest.raises(ConfigError, match=r"report.stability_tolerance must be a share of copies in \[0, 1\]"):
        EvaluationReport(stability=4, stability_tolerance=1.5)
    for bad in ("fpr_bound=abc", "fpr_bound=2", "fpr_bound", "target_fpr=0"):
        with pytest.raises(ConfigError, match=f"threshold criterion '{bad}'.*needs a number in"):
            check_criterion(bad)
    with pytest.raises(ConfigError, match="f1 takes no value"):
        check_criterion("f1=3")
    with pytest.raises(ConfigError, match=r"calibration.confidence must be in \(0, 1\)"):
        Calibration(threshold="fpr_bound=0.01", confidence=1.5)


# --------------------------------------------------------------------------- false-positive-bounded thresholds
def test_clopper_pearson_and_the_human_images_needed():
    assert humans_needed(0.01, 0.95) == 299 and humans_needed(0.05, 0.95) == 59
    assert clopper_pearson_upper(0, 299) <= 0.01 < clopper_pearson_upper(0, 298)
    assert clopper_pearson_upper(5, 1000) == pytest.approx(0.0105, abs=2e-4)  # the textbook value
    y = np.r_[np.zeros(200), np.ones(200)].astype(int)
    p = np.r_[np.linspace(0, 0.6, 200), np.linspace(0.4, 1, 200)]
    with pytest.raises(ConfigError) as e:
        fpr_bound_threshold(p, y, 0.01)
    assert "needs at least 299 human validation images" in str(e.value) and "validation has 200" in str(e.value)


@pytest.mark.slow
def test_the_certified_bound_holds_in_95_percent_of_draws():
    """Over 2,000 seeded draws of 400 human and 400 AI validation scores from known distributions, the true
    false-positive rate at the chosen threshold (from the human distribution, N(0, 1)) exceeds the certified bound in
    at most about 5 % of them."""
    rng = np.random.default_rng(0)
    exceed, bounds, fprs = 0, [], []
    draws = 2000
    for _ in range(draws):
        scores = np.r_[rng.normal(0, 1, 400), rng.normal(2.5, 1, 400)]
        probs = 1 / (1 + np.exp(-scores))
        y = np.r_[np.zeros(400), np.ones(400)].astype(int)
        g = fpr_bound_threshold(probs, y, target=0.05, confidence=0.95)
        true_fpr = norm.sf(np.log(g["threshold"] / (1 - g["threshold"])))  # P(human score >= threshold)
        exceed += true_fpr > g["certified_fpr"]
        bounds.append(g["certified_fpr"])
        fprs.append(true_fpr)
        assert g["certified_fpr"] <= 0.05 and g["n_human"] == 400
    share = exceed / draws
    print(f"exceeded in {share:.2%} of draws; mean bound {np.mean(bounds):.4f}, mean true FPR {np.mean(fprs):.4f}")
    assert share <= 0.065  # 5 % plus sampling noise (sd 0.5 %)
    assert share >= 0.02  # and not vacuous: the bound is tight, as the exact order-statistic argument says


def test_calibration_state_carries_the_guarantee():
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(700), np.ones(300)].astype(int)
    z = np.r_[rng.normal(-2, 1, 700), rng.normal(2, 1, 300)]
    state = CalibrationState.fit(z, y, criterion="fpr_bound=0.01", confidence=0.9)
    g = state.guarantee
    assert g["target"] == 0.01 and g["confidence"] == 0.9 and g["n_human"] == 700
    observed = int(((state.probs(z) >= state.threshold) & (y == 0)).sum())
    assert g["false_positives"] == observed and g["certified_fpr"] == pytest.approx(
        clopper_pearson_upper(observed, 700, 0.9)
    )
    assert CalibrationState.from_checkpoint(state.to_checkpoint()).guarantee == g
    assert json.loads(json.dumps(state.to_json()))["guarantee"] == g
    assert state.summary()["fpr_guarantee/certified_fpr"] == g["certified_fpr"]


# --------------------------------------------------------------------------- end to end on the demo
def _ckpt(demo_run) -> Path:
    return best_checkpoint(demo_run)


@pytest.mark.slow
def test_stability_in_test_and_predict_and_an_fpr_bound_through_the_cli(demo_run, demo_root, tmp_path, capsys):
    common = ["--config", str(ROOT / "configs" / "demo.yaml"), f"--data.root={demo_root}"]
    bounded = tmp_path / "bounded.ckpt"
    with pytest.raises(SystemExit):  # 80 human validation images cannot certify 1 %
        main(["calibrate", *common, "--ckpt_path", str(_ckpt(demo_run)), "--calibration.threshold", "fpr_bound=0.01"])
    assert "needs at least 299 human validation images" in capsys.readouterr().err
    main(
        [
            "calibrate",
            *common,
            "--ckpt_path",
            str(_ckpt(demo_run)),
            "--calibration.threshold",
            "fpr_bound=0.05",
            "--out",
            str(bounded),
        ]
    )
    assert "false-positive rate <=" in capsys.readouterr().out
    guarantee = torch.load(bounded, weights_only=True)["calibration"]["guarantee"]
    assert guarantee["n_human"] == 80 and guarantee["certified_fpr"] <= 0.05
    main(
        [
            "test",
            *common,
            "--ckpt_path",
            str(bounded),
            "--report.stability",
            "2",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.limit_test_batches=2",
        ]
    )
    run = next(tmp_path.rglob("report.json")).parent
    report = json.loads((run / "report.json").read_text())
    assert report["fpr_guarantee"] == guarantee
    val = report["splits"]["val"]
    assert 0 <= val["at_tuned"]["fpr"] <= 1 and val["stability"]["copies"] == 2
    assert 0 < val["stability"]["coverage"] <= 1
    table = pd.read_csv(run / "predictions" / "val.csv")
    assert {"prob_min", "prob_max", "flip_rate", "verdict"} <= set(table.columns)
    assert set(table["verdict"]) <= {"ai", "human", "uncertain"}
    assert (table["prob_min"] <= table["prob_ai"]).all() and (table["prob_ai"] <= table["prob_max"]).all()
    assert Image.open(run / "plots" / "risk_coverage.png").size[0] > 0
    files = [demo_root / i for i in pd.read_csv(demo_root / "test_v1.csv")["id"][:5]]
    main(
        [
            "predict",
            *common,
            "--ckpt_path",
            str(bounded),
            f"--data.predict_paths={[str(f) for f in files]}",
            "--report.stability=3",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    predictions = pd.read_csv(next(tmp_path.rglob("predict_bounded/predictions/files.csv")))
    assert len(predictions) == 5 and set(predictions["verdict"]) <= {"ai", "human", "uncertain"}
    assert ((predictions["flip_rate"] * 3).round(6) % 1 == 0).all()  # a share of 3 copies
    from deepfake_lightning.commands.export import export_main
    from deepfake_lightning.serving.worker import Engine

    out = export_main(["--ckpt_path", str(bounded), "--out", str(tmp_path / "export")])
    assert "false-positive guarantee | at most" in (out / "README.md").read_text()
    assert Engine(str(out)).info()["fpr_guarantee"] == guarantee
