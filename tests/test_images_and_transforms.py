import numpy as np
import pytest
import torch
from PIL import Image

from deepfake_lightning.data.dataset import BadImageError, ImageDataset, collate_skip_bad, load_image
from deepfake_lightning.data.transforms import create_transform


@pytest.mark.parametrize(
    ("mode", "fmt"), [("L", "JPEG"), ("RGB", "PNG"), ("P", "PNG"), ("CMYK", "JPEG"), ("RGB", "WEBP"), ("I;16", "PNG")]
)
def test_any_mode_and_format_loads_as_rgb(tmp_path, mode, fmt):
    im = Image.new("RGB", (8, 6), (200, 100, 50)).convert(mode)
    path = tmp_path / f"x.{fmt.lower()}"
    im.save(path, fmt)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (8, 6)


def test_rgba_is_composited_on_white(tmp_path):
    im = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # fully transparent black
    im.putpixel((0, 0), (255, 0, 0, 255))
    im.save(tmp_path / "a.png")
    out = np.asarray(load_image(tmp_path / "a.png"))
    assert out[0, 0].tolist() == [255, 0, 0] and out[3, 3].tolist() == [255, 255, 255]


def test_exif_orientation_is_honoured(tmp_path):
    im = Image.new("RGB", (20, 10), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    im.save(tmp_path / "o.jpg", exif=exif.tobytes())
    assert load_image(tmp_path / "o.jpg").size == (10, 20)


@pytest.mark.parametrize("content", [b"", b"not an image at all", "truncated"])
def test_bad_files_raise_naming_the_file(tmp_path, content):
    path = tmp_path / "bad.jpg"
    if content == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:300])
    else:
        path.write_bytes(content)
    with pytest.raises(BadImageError, match="bad.jpg"):
        load_image(path)


def test_skip_policy_collates_good_images_and_reports_bad(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "good.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"junk")
    t = create_transform(8, train=False)
    ds = ImageDataset(tmp_path, ["good.jpg", "bad.jpg"], [0, 1], t, bad_images="skip")
    batch = collate_skip_bad([ds[0], ds[1]])
    assert batch["image"].shape == (1, 3, 8, 8) and batch["label"].tolist() == [0.0]
    assert batch["skipped"] == ["bad.jpg"]
    with pytest.raises(BadImageError):
        ImageDataset(tmp_path, ["bad.jpg"], [1], t, bad_images="fail")[0]


def _photo(h=50, w=70, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("mode", ["resize", "crop"])
@pytest.mark.parametrize("train", [True, False])
def test_output_shape_and_normalization(mode, train):
    t = create_transform(32, train=train, mode=mode, aug_strength=0.5, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x = t(_photo())
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0


def test_eval_crop_is_native_resolution_centre_crop():
    im = _photo()
    x = create_transform(32, train=False, mode="crop", mean=(0, 0, 0), std=(1, 1, 1))(im)
    arr = np.asarray(im)[9:41, 19:51]  # centre 32x32 of 50x70, no resampling
    assert torch.allclose(x, torch.from_numpy(arr).permute(2, 0, 1).float() / 255)


def test_small_images_are_padded_in_crop_mode():
    assert create_transform(64, train=True, mode="crop")(_photo(20, 30)).shape == (3, 64, 64)


def test_aug_strength_zero_only_crops_and_one_changes_pixels():
    im = _photo(64, 64)
    no_aug = create_transform(64, train=True, mode="crop", aug_strength=0.0)
    eval_t = create_transform(64, train=False, mode="crop")
    assert torch.equal(no_aug(im), eval_t(im))  # same size: the random crop is the identity
    strong = create_transform(64, train=True, mode="crop", aug_strength=1.0)
    torch.manual_seed(0)
    changed = sum(not torch.equal(strong(im), eval_t(im)) for _ in range(10))
    assert changed >= 8  # flip alone changes ~half; blur/JPEG/jitter the rest


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_aug_strength_out_of_range(bad):
    with pytest.raises(ValueError, match="aug_strength"):
        create_transform(32, train=True, aug_strength=bad)


def _big_jpeg(path, size=(1600, 1200)):
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
    small.resize(size, Image.Resampling.BICUBIC).save(path, "JPEG", quality=95)


def test_jpeg_draft_decodes_at_a_reduced_scale_that_covers_the_target(tmp_path):
    _big_jpeg(tmp_path / "big.jpg")
    full, draft = load_image(tmp_path / "big.jpg"), load_image(tmp_path / "big.jpg", draft_size=128)
    assert full.size == (1600, 1200)
    assert draft.size == (200, 150)  # libjpeg's 1/8 scale: the smallest that keeps both sides >= 128
    t = create_transform(128, train=False, mode="resize", mean=(0, 0, 0), std=(1, 1, 1))
    assert (t(full) - t(draft)).abs().mean() < 0.02  # same picture, after the resize both paths do
    Image.open(tmp_path / "big.jpg").save(tmp_path / "big.png")
    assert load_image(tmp_path / "big.png", draft_size=128).size == (1600, 1200)  # only JPEGs have a draft mode


def test_draft_only_in_resize_mode(kaggle_root):
    from deepfake_lightning.data import DeepfakeDataModule

    for mode, draft, expected in (("resize", True, 32), ("crop", True, None), ("resize", False, None)):
        dm = DeepfakeDataModule(str(kaggle_root), img_size=32, mode=mode, jpeg_draft=draft, num_workers=0)
        dm.setup("fit")
        assert dm.dataset("train").draft_size == expected
