"""The figures people look at instead of reading: every title inside the figure, captions that say what a map is,
legends beside the data rather than on it, and every line of a plot visible."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import optuna
import pytest
import torch

from deepfake_lightning import DeepfakeClassifier
from deepfake_lightning.evaluation import plot_groups
from deepfake_lightning.explain import CamExplainer, cam_grid, denormalize
from deepfake_lightning.sweep.outputs import _plots


def _inside(fig, artist) -> bool:
    fig.canvas.draw()
    box, frame = artist.get_window_extent(), fig.bbox
    return box.x0 >= frame.x0 - 1 and box.x1 <= frame.x1 + 1 and box.y0 >= frame.y0 - 1 and box.y1 <= frame.y1 + 1


@pytest.mark.slow
@pytest.mark.parametrize("n_layers", [1, 2])
def test_cam_grids_name_method_target_and_layers_and_keep_titles_inside(n_layers):
    torch.manual_seed(0)
    model = DeepfakeClassifier("test_resnet", pretrained=False).eval()
    images = torch.randn(6, 3, 32, 32)
    with CamExplainer(model, method="gradcam++", n_layers=n_layers, target="human") as explainer:
        result = explainer(images)
    rgb = denormalize(images, (0.5,) * 3, (0.25,) * 3)
    fig = cam_grid(rgb, result, labels=np.array([0, 1, 0, 1, 1, 0]), columns=3, per_layer=True)
    assert fig._suptitle.get_text() == "gradcam++, explaining the human class"
    titles = [ax.title for ax in fig.axes if ax.get_title()]
    names = {t.get_text() for t in titles}
    if n_layers == 1:
        assert names >= {"layer4.0"} and "combined" not in " ".join(names)  # a single map is named by its layer
    else:
        assert names >= {"2 layers combined", "layer3", "layer4.0"}
    assert all(_inside(fig, t) for t in [*titles, fig._suptitle])  # first row's two-line titles included


@pytest.mark.parametrize("mode", ["crop", "resize"])
def test_explanation_figure_shows_where_the_view_lies_in_the_whole_image(mode):
    """A 2048 x 1365 photograph's 64 px centre crop is outlined where CenterCrop takes it (scaled to the thumbnail);
    a resize-mode model's view is the whole image, which the panel says. The map has a colour bar, the figure the
    verdict as its title, and every title stays inside."""
    from matplotlib.patches import Rectangle
    from PIL import Image

    from deepfake_lightning.explain.figures import THUMBNAIL, explanation_figure, verdict_title, view_box
    from deepfake_lightning.settings import InferenceSettings

    settings = InferenceSettings(img_size=64, mode=mode)
    picture = Image.new("RGB", (2048, 1365), (200, 120, 90))
    assert view_box(settings, 2048, 1365) == ((992, 650, 64, 64) if mode == "crop" else (0, 0, 2048, 1365))
    five = InferenceSettings(mode="crop", eval_views=5)
    title = verdict_title("photo.jpg", 0.7, 0.5, five)
    assert title == "photo.jpg: AI-generated, P(AI) 0.700 on the model's 5 views (threshold 0.500)"
    one = verdict_title("photo.jpg", 0.2, 0.5, InferenceSettings(tta_flip=True))
    assert one == "photo.jpg: human, P(AI) 0.200 on the model's one view, mirrored (threshold 0.500)"
    cam = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    fig = explanation_figure(picture, np.full((64, 64, 3), 0.5, np.float32), [("layer4", cam)], settings, title)
    whole, view, bar = fig.axes
    boxes = [p for p in whole.patches if isinstance(p, Rectangle)]
    scale = THUMBNAIL / 2048
    if mode == "crop":
        (box,) = boxes
        assert box.get_xy() == pytest.approx((992 * scale, 650 * scale)) and box.get_width() == pytest.approx(
            64 * scale
        )
        assert "64 px centre crop" in whole.get_title()
    else:
        assert boxes == [] and "squashed to 64 x 64 px" in whole.get_title()
    assert "2048 x 1365 px" in whole.get_title() and "layer4" in view.get_title()
    assert bar.get_ylabel().startswith("relevance") and fig._suptitle.get_text() == title
    assert all(_inside(fig, t) for t in [whole.title, view.title, fig._suptitle])


def test_group_legend_sits_below_the_bars():
    groups = {
        split: {g: {"auroc": 0.9, "acc": 0.95, "n_images": 10} for g in ("sd", "midjourney", "dalle")}
        for split in ("val", "test_v1")
    }
    fig = plot_groups(groups, "generator")
    fig.canvas.draw()
    (legend,) = fig.legends
    box = legend.get_window_extent()
    assert [t.get_text() for t in legend.get_texts()] == ["AUROC vs human", "accuracy (tuned)"]
    assert all(not box.overlaps(ax.get_window_extent()) for ax in fig.axes)
    assert _inside(fig, legend)


def test_sweep_parallel_plot_draws_every_trial_visibly(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-2, log=True) * 0 + t.suggest_float("aug", 0, 1), 8)
    captured = {}

    import matplotlib.pyplot as plt

    savefig = matplotlib.figure.Figure.savefig

    def keep(fig, path, **kwargs):
        captured[str(path)] = fig
        return savefig(fig, path, **kwargs)

    matplotlib.figure.Figure.savefig = keep
    try:
        written = _plots(study, tmp_path)
    finally:
        matplotlib.figure.Figure.savefig = savefig
    fig = captured[str(written["parallel_png"])]
    from matplotlib.collections import LineCollection

    (lines,) = [c for c in fig.findobj(LineCollection) if c.get_array() is not None]  # the trials, colour-mapped
    colours = lines.get_colors()
    assert len(colours) == 8 and lines.get_cmap().name == "viridis"
    assert colours[:, :3].sum(axis=1).max() < 2.9  # no line near white (Optuna's "Blues" made low trials vanish)
    assert all(ax.get_facecolor()[:3] == (1.0, 1.0, 1.0) for ax in fig.axes[:1])
    plt.close("all")
