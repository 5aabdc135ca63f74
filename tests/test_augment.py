"""The training data pipeline: one augmentation distribution, its CPU and device executors, uint8 through the
loaders with normalization in the model, ``data.augment_on`` and ``data.decode``."""

import itertools
import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageEnhance
from scipy.ndimage import gaussian_filter

from deepfake_lightning.cli import cli_main
from deepfake_lightning.data import DataError, DeepfakeDataModule
from deepfake_lightning.data.augment import (
    BRIGHTNESS,
    CONTRAST,
    SATURATION,
    CpuAugment,
    _enhance,
    apply_plan,
    augment_batch,
    gaussian_blur_cv2,
    sample_plan,
)
from deepfake_lightning.data.dataset import BadImageError, collate_skip_bad, load_image
from deepfake_lightning.data.device import decode_batch, read_encoded
from deepfake_lightning.data.transforms import create_transform
from deepfake_lightning.models import DeepfakeClassifier
from tests.helpers import CONFIGS

OPS = ("flip", "jitter", "blur", "jpeg")


def photo(seed: int = 0, size: tuple[int, int] = (64, 80)) -> np.ndarray:
    """Smooth structure plus sensor-like noise, (H, W, 3) uint8: blur, jitter and JPEG all have work to do."""
    rng = np.random.default_rng(seed)
    h, w = size
    base = Image.fromarray(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    return np.clip(np.asarray(base, dtype=np.float32) + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)


def only(op: str, plan):
    """The plan with every step but ``op`` switched off."""
    for name in OPS:
        setattr(plan, name, torch.full_like(getattr(plan, name), name == op))
    return plan


# --------------------------------------------------------------------------- the distribution
@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_plan_probabilities_and_ranges(strength):
    n = 200_000
    plan = sample_plan(n, strength, torch.Generator().manual_seed(0))
    tolerance = 4 * np.sqrt(0.25 / n)  # four standard errors of a share
    assert abs(plan.flip.float().mean() - 0.5) < tolerance
    for step in ("jitter", "blur", "jpeg"):
        assert abs(getattr(plan, step).float().mean() - 0.5 * strength) < tolerance, step
    low, high = 1 - 0.2 * strength, 1 + 0.2 * strength
    assert plan.factors.min() >= low and plan.factors.max() <= high
    assert plan.factors.min() < low + 0.001 and plan.factors.max() > high - 0.001  # uniform over the whole range
    assert torch.allclose(plan.factors.mean(0), torch.ones(3), atol=0.002)
    assert plan.sigma.min() >= 0.1 and plan.sigma.max() <= 3.0 * strength
    assert abs(plan.sigma.mean() - (0.1 + 3.0 * strength) / 2) < 0.01
    q_low = round(100 - 70 * strength)
    counts = torch.bincount(plan.quality - q_low)
    assert plan.quality.min() == q_low and plan.quality.max() == 100 and len(counts) == 101 - q_low
    assert (counts - n / len(counts)).abs().max() < 5 * np.sqrt(n / len(counts))  # every quality equally likely
    orders = torch.unique(plan.order, dim=0, return_counts=True)
    assert sorted(map(tuple, orders[0].tolist())) == sorted(itertools.permutations(range(3)))
    assert (orders[1].float() / n - 1 / 6).abs().max() < 0.005  # every order of jitter steps equally likely


def test_choices_are_independent():
    plan = sample_plan(200_000, 1.0, torch.Generator().manual_seed(1))
    both = (plan.blur & plan.jpeg).float().mean()
    assert abs(both - 0.25) < 0.005
    assert abs(plan.quality[plan.jpeg].float().mean() - plan.quality[~plan.jpeg].float().mean()) < 0.2


def test_no_augmentation_at_strength_zero_and_the_cpu_path_above_it():
    def names(transform):
        return [type(t).__name__ for t in transform.transforms]

    assert "CpuAugment" not in names(create_transform(32, train=True, aug_strength=0.0))
    assert "CpuAugment" in names(create_transform(32, train=True, aug_strength=0.3))
    assert "CpuAugment" not in names(create_transform(32, train=True, aug_strength=0.3, augment_on="device"))
    assert "CpuAugment" not in names(create_transform(32, train=False, aug_strength=1.0))  # never at evaluation


# --------------------------------------------------------------------------- the executors
@pytest.mark.parametrize("sigma", [0.5, 1.3, 3.0])
def test_blur_matches_a_reference_gaussian(sigma):
    pixels = photo(2)
    reference = gaussian_filter(pixels.astype(np.float64), sigma=(sigma, sigma, 0), mode="mirror", truncate=3.0)
    cpu = gaussian_blur_cv2(pixels, sigma).astype(np.float64)
    plan = only("blur", sample_plan(1, 1.0))
    plan.sigma[:] = sigma
    device = augment_batch(torch.from_numpy(pixels).permute(2, 0, 1)[None], plan)[0].permute(1, 2, 0).double()
    for out in (cpu, device.numpy()):
        error = np.abs(out - reference)
        assert error.max() <= 2.0 and error.mean() < 0.6
    assert np.abs(pixels - reference).mean() > 4 * np.abs(cpu - reference).mean()  # it did blur


def test_jitter_is_pil_image_enhance():
    image = Image.fromarray(photo(3))
    enhancers = {BRIGHTNESS: ImageEnhance.Brightness, CONTRAST: ImageEnhance.Contrast, SATURATION: ImageEnhance.Color}
    for op, enhancer in enhancers.items():
        for factor in (0.8, 0.93, 1.07, 1.2):
            ours = _enhance(np.array(image), op, factor).astype(int)
            pil = np.asarray(enhancer(image).enhance(factor)).astype(int)
            assert np.abs(ours - pil).max() <= (1 if op == SATURATION else 0), (op, factor)


@pytest.mark.parametrize("op", OPS)
def test_cpu_and_device_executors_agree_on_every_step(op):
    images = [photo(seed) for seed in range(6)]
    batch = torch.stack([torch.from_numpy(p).permute(2, 0, 1) for p in images])
    plan = only(op, sample_plan(len(images), 1.0, torch.Generator().manual_seed(4)))
    device = augment_batch(batch, plan)
    cpu = torch.stack([apply_plan(Image.fromarray(p), plan.row(i)) for i, p in enumerate(images)])
    assert device.dtype == cpu.dtype == torch.uint8 and device.shape == cpu.shape == batch.shape
    diff = (device.int() - cpu.int()).abs()
    assert diff.max() <= (0 if op in ("flip", "jpeg") else 3) and diff.float().mean() < 0.15
    assert (device != batch).any()  # something happened


def test_jpeg_quality_sets_the_damage():
    pixels = photo(5)
    batch = torch.from_numpy(pixels).permute(2, 0, 1)[None]
    errors = []
    for quality in (30, 95):
        plan = only("jpeg", sample_plan(1, 1.0))
        plan.quality[:] = quality
        out = apply_plan(Image.fromarray(pixels), plan)
        errors.append((out.int() - batch[0].int()).abs().float().mean())
    assert errors[0] > 1.5 * errors[1] > 0


def test_a_seeded_worker_draws_the_same_augmentation():
    image = Image.fromarray(photo(6))
    augment = CpuAugment(1.0)
    torch.manual_seed(7)
    first = [augment(image) for _ in range(5)]
    torch.manual_seed(7)
    assert all(torch.equal(a, augment(image)) for a in first)
    assert not all(torch.equal(first[0], x) for x in first[1:])


# --------------------------------------------------------------------------- uint8 loaders, normalization in the model
@pytest.mark.parametrize("eval_views", [1, 5, "tiles"])
def test_uint8_loaders_give_the_model_what_the_float_transform_gave(kaggle_root, eval_views):
    dm = DeepfakeDataModule(
        root=str(kaggle_root), test_v1_csv="test_v1.csv", img_size=32, mode="crop", eval_views=eval_views
    )
    dm.setup()
    item = dm.dataset("test_v1")[0]
    assert item["image"].dtype == torch.uint8
    model = DeepfakeClassifier(backbone="test_resnet", pretrained=False)
    # the normalization the CLI links from the model to the data module
    mean, std = model.input_mean, model.input_std
    floats = create_transform(32, train=False, mode="crop", eval_views=eval_views, mean=mean, std=std)
    image = Image.open(kaggle_root / dm.indexes["test_v1"]["path"][0]).convert("RGB")
    expected = floats(image)
    expected = expected["image"] if isinstance(expected, dict) else expected
    assert torch.equal(model.normalize_input(item["image"]), expected)  # bit for bit
    batch = collate_skip_bad([dm.dataset("test_v1")[i] for i in range(3)])
    with torch.no_grad():
        ours = model.eval().predict_logits(batch["image"], n_tiles=batch.get("n_tiles"))
        floats_batch = model.normalize_input(batch["image"])
        theirs = model.predict_logits(floats_batch, n_tiles=batch.get("n_tiles"))
    assert torch.equal(ours, theirs)
    assert batch["image"].element_size() == 1  # a quarter of float32's bytes


# --------------------------------------------------------------------------- augment_on, decode
def attach(dm, device: str, training: bool = True, predicting: bool = False):
    dm.trainer = SimpleNamespace(
        training=training,
        predicting=predicting,
        strategy=SimpleNamespace(root_device=torch.device(device)),
        loggers=[],
        checkpoint_callback=None,
    )
    return dm


def test_augment_on_auto_picks_the_device_on_a_gpu_only(kaggle_root):
    def where(augment_on, device, decode="cpu"):
        dm = DeepfakeDataModule(root=str(kaggle_root), augment_on=augment_on, decode=decode, aug_strength=1.0)
        return attach(dm, device).augment_location

    assert where("auto", "cpu") == "cpu"
    assert where("auto", "cuda") == "device"
    assert where("cpu", "cuda") == "cpu"
    assert where("device", "cpu") == "device"
    assert where("auto", "cpu", decode="device") == "device"  # no pixels in the workers to augment


def test_device_augmentation_applies_to_training_batches_only(kaggle_root):
    dm = attach(DeepfakeDataModule(root=str(kaggle_root), img_size=32, augment_on="device", aug_strength=1.0), "cpu")
    dm.setup()
    assert "CpuAugment" not in repr(dm.dataset("train", train=True).transform)
    batch = collate_skip_bad([dm.dataset("train", train=True)[i] for i in range(16)])
    torch.manual_seed(3)
    plan = sample_plan(16, 1.0)
    torch.manual_seed(3)
    augmented = dm.on_after_batch_transfer({**batch}, 0)["image"]
    assert augmented.dtype == torch.uint8 and augmented.shape == batch["image"].shape
    changed = (augmented != batch["image"]).flatten(1).any(1)
    drawn = plan.flip | plan.jitter | plan.blur | plan.jpeg  # each image by its own draw
    assert not (changed & ~drawn).any() and 0 < drawn.sum() < 16  # nothing changes that drew nothing
    assert changed.sum() >= drawn.sum() - 2  # (a flip of a symmetric image or a jitter factor near 1 may not show)
    dm.trainer.training = False
    assert torch.equal(dm.on_after_batch_transfer({**batch}, 0)["image"], batch["image"])  # never at evaluation


def test_decode_on_the_device_gives_the_cpu_pixels(kaggle_root):
    paths = sorted((kaggle_root / "test_data_v1").glob("*.jpg"))[:6]
    encoded = [read_encoded(p) for p in paths]
    centre = create_transform(32, train=False, mode="crop", normalize=False)
    images, keep, bad = decode_batch(encoded, [str(p) for p in paths], 32, "crop", False, torch.device("cpu"))
    assert keep == list(range(6)) and bad == []
    assert torch.equal(images, torch.stack([centre(load_image(p)) for p in paths]))  # same libjpeg-turbo, same crop
    resize = create_transform(32, train=False, mode="resize", normalize=False)
    images, _, _ = decode_batch(encoded, [str(p) for p in paths], 32, "resize", False, torch.device("cpu"))
    expected = torch.stack([resize(load_image(p)) for p in paths])
    assert (images.int() - expected.int()).abs().float().mean() < 2.0  # PIL's and torch's antialiased resize
    images, _, _ = decode_batch(encoded, [str(p) for p in paths], 32, "crop", True, torch.device("cpu"))
    assert images.shape == (6, 3, 32, 32)  # random crops of the 40x48 images


def test_decode_on_the_device_is_for_training_batches(kaggle_root):
    dm = DeepfakeDataModule(root=str(kaggle_root), test_v1_csv="test_v1.csv", img_size=32, mode="crop", decode="device")
    dm.setup()
    assert dm.dataset("train", train=True).encoded
    assert not any(dm.dataset(split).encoded for split in ("val", "test_v1", "test_v2"))  # calibration, reports...
    train = attach(dm, "cpu")
    batch = train.on_before_batch_transfer(collate_skip_bad([dm.dataset("train", train=True)[i] for i in range(8)]), 0)
    assert batch["image"].shape == (8, 3, 32, 32) and batch["image"].dtype == torch.uint8 and "encoded" not in batch


def test_decode_on_the_device_takes_other_files_and_reports_bad_ones(tmp_path, kaggle_root):
    root = tmp_path / "data"
    shutil.copytree(kaggle_root, root)
    ids = list(pd.read_csv(root / "test_v1.csv")["id"])
    Image.open(root / ids[0]).save(root / ids[0], "PNG")  # a PNG named .jpg: decoded by the worker
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees": nvJPEG would ignore it, so the worker decodes this one
    Image.open(root / ids[3]).save(root / ids[3], "JPEG", exif=exif.tobytes())
    data = (root / ids[1]).read_bytes()
    (root / ids[1]).write_bytes(data[: data.find(b"\xff\xda") + 40])  # whole headers, the scan cut short
    for policy in ("skip", "fail"):
        dm = attach(
            DeepfakeDataModule(
                root=str(root), test_v1_csv="test_v1.csv", img_size=32, mode="crop", decode="device", bad_images=policy
            ),
            "cpu",
        )
        dm.setup()
        dataset = dm.dataset("test_v1", train=True)  # read as the training loader reads
        items = [dataset[i] for i in range(4)]
        assert [item["encoded"].ndim for item in items] == [3, 1, 1, 3]  # pixels beside bytes
        if policy == "fail":
            with pytest.raises(BadImageError, match=ids[1].replace(".", r"\.")):
                dm.on_before_batch_transfer(collate_skip_bad(items), 0)
            continue
        with pytest.warns(UserWarning, match="Skipped 1 unreadable image"):
            batch = dm.on_before_batch_transfer(collate_skip_bad(items), 0)
        assert batch["index"].tolist() == [0, 2, 3] and len(batch["image"]) == 3
        assert dm.skipped_paths == [ids[1]]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (dict(decode="device", augment_on="cpu"), "no pixels in the loader workers"),
        (dict(decode="device", aug_reshare=0.5), "aug_reshare re-shares decoded images"),
        (dict(augment_on="gpu"), "data.augment_on must be auto, cpu or device"),
        (dict(decode="gpu"), "data.decode must be cpu or device"),
    ],
)
def test_device_settings_that_cannot_work_are_one_line_errors(args, message):
    with pytest.raises(DataError, match=message):
        DeepfakeDataModule(root="anywhere", **args)


@pytest.mark.parametrize("extra", [["--data.augment_on=device"], ["--data.decode=device", "--data.mode=crop"]])
def test_fit_with_device_augmentation_or_decoding(kaggle_root, tmp_path, extra):
    cli = cli_main(
        [
            "fit",
            "--config",
            str(CONFIGS / "convnext.yaml"),
            f"--data.root={kaggle_root}",
            f"--trainer.default_root_dir={tmp_path}",
            "--model.backbone=test_resnet",
            "--model.pretrained=false",
            "--data.img_size=32",
            "--data.batch_size=8",
            "--data.num_workers=0",
            "--data.aug_strength=1.0",
            "--trainer.fast_dev_run=2",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            *extra,
        ]
    )
    assert cli.trainer.state.finished and cli.datamodule.augment_location == "device"
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss_step"])
    assert "val/auroc" in cli.trainer.callback_metrics
