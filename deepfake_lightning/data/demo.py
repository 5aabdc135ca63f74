"""A small offline dataset in the Kaggle layout, built deterministically from a seed.

Human images are random crops of the photographs that scikit-learn and matplotlib ship
(``china.jpg``, ``flower.jpg``, ``grace_hopper.jpg``): nothing is downloaded.
Each AI counterpart is the same crop passed through a simulated generator that leaves the fingerprints
real up-sampling generators leave (Zhang, Karaman & Chang 2019, "Detecting and Simulating Artifacts in
GAN Fake Images"): the image is down-sampled, then re-up-sampled by a transposed convolution, by
nearest-neighbour or bilinear interpolation with smoothing. Both classes are saved as JPEG with the same
quality range, so the file format is no cue.

``test_edited`` holds partly edited photographs, for localization: a ``edited_size`` crop (256 px, so a 64-px model
scores 16 tiles) in which one rectangle (30-50 % of each side) was passed through one of the training generators,
labelled 1, with its mask (white where edited) named in the ``mask`` column; and the unedited original, labelled 0
with an empty mask. ``pair`` links the two. A centre crop sees the edit only when the rectangle happens to cover it.

``test_v2`` mimics the seed's newer test set: a held-out generator (sub-pixel up-sampling plus synthesized
fine texture, as newer generators hallucinate detail), a different AI share, and post-processing unlike
training (blur and stronger JPEG compression, applied to both classes). A detector that learned
"AI images are smoother" misses these AI images; blur/JPEG augmentation pushes it toward the periodic
up-sampling traces, which survive.

Layout written under ``root``::

    train.csv            ,file_name,label,group,generator   (unnamed index column as in Kaggle; group pairs a crop
                                                  and its fake; generator: the simulated generator, ``real`` for
                                                  human images)
    train_data/<hex>.jpg
    test_v1.csv          id,label,generator
    test_data_v1/<hex>.jpg
    test.csv             id,label,generator       (test_v2)
    test_data_v2/<hex>.jpg
    test_edited.csv      id,label,generator,mask,pair   (partly edited images and their originals)
    test_data_edited/<hex>.jpg, test_data_edited/masks/<hex>.png
    demo.json            the build parameters; a mismatch triggers a rebuild
"""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

DEMO_VERSION = 3  # 2: a generator column in every CSV (same images as 1); 3: the test_edited split (others unchanged)


@dataclass(frozen=True)
class DemoSpec:
    """Sizes of the demo dataset. Counts are images; train holds pairs (a crop and its fake)."""

    seed: int = 0
    size: int = 96
    train_pairs: int = 800
    test_v1: int = 400
    test_v2: int = 400
    test_v2_ai_share: float = 0.3
    edited_pairs: int = 60
    edited_size: int = 256
    version: int = DEMO_VERSION
    # A planted file-format shortcut, to show the audits catching one: "png" saves every AI image of train, test_v1
    # and test_v2 as PNG (human images stay JPEG). "none" (the demo) leaves the format no cue.
    shortcut: Literal["none", "png"] = "none"

    def to_json(self) -> dict:
        """What demo.json records (without ``shortcut`` when there is none: unbiased builds of earlier versions
        stay current)."""
        spec = asdict(self)
        if spec["shortcut"] == "none":
            del spec["shortcut"]
        return spec


TRAIN_GENERATORS = ("tconv", "nearest_smooth", "bilinear_sharpen")
HELD_OUT_GENERATOR = "subpixel_texture"


def source_photos() -> list[np.ndarray]:
    """The photographs shipped inside installed packages, as uint8 HxWx3 arrays."""
    import matplotlib.cbook
    from sklearn.datasets import load_sample_images

    photos = list(load_sample_images().images)
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        photos.append(np.asarray(Image.open(f).convert("RGB")))
    return photos


def _random_crop(photos: list[np.ndarray], size: int, rng: np.random.Generator) -> torch.Tensor:
    """A random square crop (10-100 % of the short side), resized to ``size``; float (3, size, size) in [0, 1]."""
    photo = photos[rng.integers(len(photos))]
    h, w = photo.shape[:2]
    side = int(rng.uniform(0.1, 1.0) * min(h, w))
    side = max(side, size // 2)
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    crop = Image.fromarray(photo[y : y + side, x : x + side]).resize((size, size), Image.Resampling.LANCZOS)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    t = torch.from_numpy(np.asarray(crop).copy()).permute(2, 0, 1).float() / 255
    gamma = rng.uniform(0.8, 1.25)  # exposure variety, so the three photos give many looks
    return t.clamp(0, 1) ** gamma


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(round(3 * sigma)))
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=torch.float32) ** 2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[0]
    x = F.conv2d(F.pad(x[None], (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return x[0]


def simulate_generator(x: torch.Tensor, kind: str, rng: np.random.Generator) -> torch.Tensor:
    """Passes a (3, H, W) image in [0, 1] through a simulated up-sampling generator."""
    h, w = x.shape[-2:]
    low = F.interpolate(x[None], scale_factor=0.5, mode="bilinear", antialias=True, align_corners=False)
    if kind == "tconv":
        # Transposed convolution, stride 2, with a slightly uneven bilinear kernel: the four output
        # phases get different gains, the checkerboard pattern of GAN decoders.
        base = torch.tensor([0.25, 0.75, 0.75, 0.25])
        kernel = torch.outer(base, base) * (1 + torch.from_numpy(rng.normal(0, 0.15, (4, 4))).float())
        kernel = kernel / kernel.sum() * 4
        up = F.conv_transpose2d(
            F.pad(low, (1, 1, 1, 1), mode="replicate"), kernel.view(1, 1, 4, 4).repeat(3, 1, 1, 1), stride=2, groups=3
        )
        y = up[0, :, 3 : 3 + h, 3 : 3 + w]
    elif kind == "nearest_smooth":
        y = _blur(F.interpolate(low, size=(h, w), mode="nearest")[0], sigma=rng.uniform(0.4, 0.7))
    elif kind == "bilinear_sharpen":
        up = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[0]
        y = up + rng.uniform(0.5, 1.0) * (up - _blur(up, 1.0))
    elif kind == "subpixel_texture":
        # Sub-pixel convolution (pixel shuffle) with uneven phase gains, then synthesized fine texture.
        gains = 1 + torch.from_numpy(rng.normal(0, 0.04, 4)).float()
        up = F.interpolate(low, size=(h, w), mode="bicubic", align_corners=False)[0]
        phase = gains.view(2, 2).repeat(h // 2 + 1, w // 2 + 1)[:h, :w]
        texture = _blur(torch.from_numpy(rng.normal(0, 0.05, (3, h, w))).float(), 0.5)
        y = up * phase + texture
    else:
        raise ValueError(f"unknown generator {kind!r}")
    return y.clamp(0, 1)


def _to_pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray((x.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))


def _post_process_v2(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """test_v2 distribution shift, identical for both classes: mild blur on half the images, then strong JPEG."""
    if rng.random() < 0.5:
        im = im.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.5, 1.5)))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=int(rng.integers(50, 76)))
    return Image.open(io.BytesIO(buf.getvalue()))


def _save(im: Image.Image, path: Path, rng: np.random.Generator, as_png: bool = False) -> None:
    quality = int(rng.integers(88, 97))  # drawn either way: the other images stay those of the unbiased build
    if as_png:
        im.convert("RGB").save(path, "PNG")
    else:
        im.convert("RGB").save(path, "JPEG", quality=quality)


def _edited_split(spec: DemoSpec, photos, rng: np.random.Generator, root: Path, name) -> pd.DataFrame:
    """Pairs of an original crop (label 0) and a copy with one rectangle passed through a training generator (label 1,
    its mask a PNG): see the module docstring."""
    rows = []
    size = spec.edited_size
    for pair in range(spec.edited_pairs):
        original = _random_crop(photos, size, rng)
        generator = TRAIN_GENERATORS[pair % len(TRAIN_GENERATORS)]
        h, w = (2 * int(rng.uniform(0.15, 0.25) * size) for _ in range(2))  # even: generators halve and double
        y, x = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
        edited = original.clone()
        edited[:, y : y + h, x : x + w] = simulate_generator(original[:, y : y + h, x : x + w], generator, rng)
        mask = np.zeros((size, size), dtype=np.uint8)
        mask[y : y + h, x : x + w] = 255
        mask_file = f"test_data_edited/masks/{rng.bytes(16).hex()}.png"
        Image.fromarray(mask).save(root / mask_file)
        for label, img, source, m in ((0, original, "real", ""), (1, edited, generator, mask_file)):
            f = name("test_data_edited")
            _save(_to_pil(img), root / f, rng)
            rows.append((f, label, source, m, f"pair{pair:05d}"))
    return pd.DataFrame(rows, columns=["id", "label", "generator", "mask", "pair"])


def demo_is_built(root: str | os.PathLike, spec: DemoSpec = DemoSpec()) -> bool:
    """Whether ``root`` holds a complete demo build of ``spec`` (what :func:`build_demo_dataset` would reuse)."""
    marker = Path(root) / "demo.json"
    try:
        return marker.is_file() and json.loads(marker.read_text()) == spec.to_json()
    except (OSError, json.JSONDecodeError):
        return False


def build_demo_dataset(root: str | os.PathLike, spec: DemoSpec = DemoSpec()) -> Path:
    """Builds the demo dataset under ``root`` unless an identical build is already there.

    The build is deterministic for a given ``spec`` (same bytes on the same library versions). An existing
    demo folder built with other parameters is rebuilt; a non-empty folder that is not a demo build is
    left alone with an error, so user data is never overwritten.
    """
    root = Path(root)
    marker = root / "demo.json"
    if spec.shortcut not in ("none", "png"):
        raise ValueError(f"demo shortcut must be none or png, got {spec.shortcut!r}")
    wanted = spec.to_json()
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return root
    if root.exists() and any(root.iterdir()) and not marker.is_file():
        raise FileExistsError(
            f"{root} exists and is not a demo dataset (no demo.json); refusing to overwrite it. "
            "Point --data.root at an empty or new folder."
        )
    root.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"incomplete": True}))  # marks the folder as ours, and an interrupted build
    for sub in ("train_data", "test_data_v1", "test_data_v2", "test_data_edited"):
        shutil.rmtree(root / sub, ignore_errors=True)
        (root / sub).mkdir(parents=True)

    rng = np.random.default_rng(spec.seed)
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: threads only add overhead and nondeterminism
    try:
        photos = source_photos()

        def name(folder: str, png: bool = False) -> str:
            return f"{folder}/{rng.bytes(16).hex()}.{'png' if png else 'jpg'}"

        rows = []
        for pair in range(spec.train_pairs):
            human = _random_crop(photos, spec.size, rng)
            generator = TRAIN_GENERATORS[pair % len(TRAIN_GENERATORS)]
            fake = simulate_generator(human, generator, rng)
            for label, img, source in ((0, human, "real"), (1, fake, generator)):
                f = name("train_data", png=label == 1 and spec.shortcut == "png")
                _save(_to_pil(img), root / f, rng, as_png=f.endswith(".png"))
                rows.append((f, label, f"pair{pair:05d}", source))
        train = pd.DataFrame(rows, columns=["file_name", "label", "group", "generator"])
        train = train.sample(frac=1.0, random_state=spec.seed).reset_index(drop=True)
        train.to_csv(root / "train.csv")  # keeps the unnamed index column, as Kaggle's file has

        def test_split(n: int, ai_share: float, folder: str, generators, post=None) -> pd.DataFrame:
            labels = np.zeros(n, dtype=int)
            labels[: int(round(n * ai_share))] = 1
            rng.shuffle(labels)
            out = []
            for i, label in enumerate(labels):
                img = _random_crop(photos, spec.size, rng)
                source = generators[i % len(generators)] if label else "real"
                if label:
                    img = simulate_generator(img, source, rng)
                im = _to_pil(img)
                if post is not None:
                    im = post(im, rng)
                f = name(folder, png=bool(label) and spec.shortcut == "png")
                _save(im, root / f, rng, as_png=f.endswith(".png"))
                out.append((f, int(label), source))
            return pd.DataFrame(out, columns=["id", "label", "generator"])

        test_split(spec.test_v1, 0.5, "test_data_v1", TRAIN_GENERATORS).to_csv(root / "test_v1.csv", index=False)
        test_split(spec.test_v2, spec.test_v2_ai_share, "test_data_v2", (HELD_OUT_GENERATOR,), _post_process_v2).to_csv(
            root / "test.csv", index=False
        )
        # Last, so that the images of the splits above are those of earlier demo versions.
        (root / "test_data_edited" / "masks").mkdir()
        _edited_split(spec, photos, rng, root, name).to_csv(root / "test_edited.csv", index=False)
    finally:
        torch.set_num_threads(torch_threads)
    marker.write_text(json.dumps(wanted, indent=2))
    return root
