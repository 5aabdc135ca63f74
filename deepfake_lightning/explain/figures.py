"""The Grad-CAM figure of one image, shared by ``deepfake explain`` and the served ``?explain=true``.

A network sees one ``img_size`` view of an image: the centre crop at native resolution (``crop`` mode), or the whole
image squashed (``resize``). A map of that view alone says nothing about where it lies: a 2048 x 1365 photograph's
crop is a small square of it. So the figure shows the whole image with the view outlined, then the view's map(s)
with a colour bar, under a title with the model's own verdict (on its own views, as ``deepfake predict`` gives it).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from deepfake_lightning.explain.cam import CamExplainer, denormalize, overlay
from deepfake_lightning.scoring import decide
from deepfake_lightning.settings import InferenceSettings

THUMBNAIL = 768  # longest side of the whole image in the figure, in pixels


def short_name(name: str, width: int = 26) -> str:
    """A file name that fits above a picture: long ones (Kaggle's are 36 characters) keep their start and end."""
    return name if len(name) <= width else f"{name[: width // 2 - 1]}…{name[-(width - width // 2) :]}"


def view_box(settings: InferenceSettings, width: int, height: int) -> tuple[int, int, int, int]:
    """``(left, top, width, height)`` of the network's single view in the image's pixels: the centre crop (as
    torchvision's ``CenterCrop`` places it; it may stick out of a small image, which is padded) or the whole image."""
    if settings.mode != "crop":
        return 0, 0, width, height
    size = settings.img_size
    return int(round((width - size) / 2.0)), int(round((height - size) / 2.0)), size, size


def verdict_title(name: str, prob: float, threshold: float, settings: InferenceSettings) -> str:
    """``photo.jpg: AI-generated, P(AI) 0.700 on the model's 5 views (threshold 0.500)``: the views as
    :meth:`InferenceSettings.describe` names them."""
    verdict = "AI-generated" if decide(prob, threshold) else "human"
    return (
        f"{short_name(name, 40)}: {verdict}, P(AI) {prob:.3f} on the model's {settings.describe()} "
        f"(threshold {threshold:.3f})"
    )


def explanation_figure(
    picture: Image.Image,
    view_rgb: np.ndarray,
    maps: list[tuple[str, np.ndarray]],
    settings: InferenceSettings,
    title: str,
    method: str = "gradcam",
):
    """A matplotlib Figure in one row: ``picture`` whole with the network's view outlined, then each map (name,
    (H, W) in [0, 1]) over ``view_rgb`` ((H, W, 3) in [0, 1]), the last with a colour bar; ``title`` above."""
    import matplotlib.pyplot as plt
    from matplotlib import cm, colors, patches

    width, height = picture.size
    thumb = picture.copy()
    thumb.thumbnail((THUMBNAIL, THUMBNAIL))
    scale = thumb.width / width
    fig, axes = plt.subplots(
        1, 1 + len(maps), figsize=(3.2 * (1 + len(maps)) + 0.6, 3.9), squeeze=False, layout="constrained"
    )
    axes = axes[0]
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].imshow(thumb)
    left, top, w, h = view_box(settings, width, height)
    if settings.mode == "crop":
        box = patches.Rectangle((left * scale, top * scale), w * scale, h * scale, fill=False, ec="red", lw=1.5)
        axes[0].add_patch(box)
        where = f"red: the {settings.img_size} px centre crop it explains"
    else:
        where = f"squashed to {settings.img_size} x {settings.img_size} px for the network"
    decoded = "whole image" if settings.draft_size is None else "whole image as decoded"
    axes[0].set_title(f"{decoded}, {width} x {height} px\n{where}", fontsize=8)
    for ax, (name, cam) in zip(axes[1:], maps, strict=True):
        ax.imshow(overlay(view_rgb, cam))
        ax.set_title(f"{method}: {name}\nwhat raised the AI-generated logit", fontsize=8)
    bar = fig.colorbar(cm.ScalarMappable(norm=colors.Normalize(0, 1), cmap="jet"), ax=axes[-1], fraction=0.05, pad=0.02)
    bar.set_label("relevance (per image, 0 to 1)", fontsize=7)
    bar.ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=9)
    return fig


def explanation_png(detector, picture: Image.Image, name: str, prob: float, method: str = "gradcam") -> bytes:
    """PNG bytes of :func:`explanation_figure` for one image: Grad-CAM of ``detector``'s single view, titled with
    the verdict ``prob`` (the model's own, on its own views)."""
    import matplotlib.pyplot as plt

    view = detector.transform(picture).unsqueeze(0)
    with CamExplainer(detector.model, method=method) as explainer:
        result = explainer(view)
    layers = list(result.per_layer)
    main = layers[0] if len(layers) == 1 else f"{len(layers)} layers"
    title = verdict_title(name, prob, detector.threshold, detector.settings)
    rgb = denormalize(view, detector.settings.mean, detector.settings.std)[0]
    fig = explanation_figure(picture, rgb, [(main, result.cam[0])], detector.settings, title, method)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
