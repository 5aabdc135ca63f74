"""Class activation maps for the one-logit detector, on top of pytorch-grad-cam.

:class:`CamExplainer` is shared by the ``GradCamExport`` callback, ``deepfake explain`` and notebooks. It picks
target layers by backbone family (overridable by module name), computes one or several layers' maps in one
batched forward/backward pass in float32 outside autocast, and always leaves the model as it found it: same
train/eval mode, same ``requires_grad`` flags, no parameter gradients, no consumed random numbers, no hooks.
Plotting lives in :func:`overlay` and :func:`cam_grid`, apart from the maps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from pytorch_grad_cam import (
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget
from torch import nn

from deepfake_lightning.errors import ConfigError
from deepfake_lightning.scoring import UNCALIBRATED_THRESHOLD, decide
from deepfake_lightning.settings import DEFAULTS

CAM_METHODS = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
    "eigengradcam": EigenGradCAM,
    "gradcamelementwise": GradCAMElementWise,
    "scorecam": ScoreCAM,
}


def _is_vit(net: nn.Module) -> bool:
    return hasattr(net, "patch_embed") and hasattr(net, "blocks") and hasattr(net, "num_prefix_tokens")


def default_target_layers(net: nn.Module, n_layers: int = 1) -> list[str]:
    """Module names to explain for a timm model, deepest last.

    ResNet: the last block of ``layer4``; ConvNeXt: the last stage; EfficientNet: ``conv_head``; ViT-style:
    the last block's ``norm1`` (with a token-to-grid reshape). Any other model: the last stage in timm's
    ``feature_info``. With ``n_layers > 1``, the deepest layer is preceded by the ends of earlier stages
    (timm's ``feature_info``), so shallow and deep stages can be compared.
    """
    if _is_vit(net):
        deep = f"blocks.{len(net.blocks) - 1}.norm1"
        earlier = [f"blocks.{i}.norm1" for i in range(len(net.blocks) - 1)]
    else:
        stages = [f["module"] for f in getattr(net, "feature_info", [])]
        if hasattr(net, "layer4"):
            deep, earlier = f"layer4.{len(net.layer4) - 1}", stages[:-1]
        elif hasattr(net, "conv_head"):
            deep, earlier = "conv_head", stages
        elif stages:
            deep, earlier = stages[-1], stages[:-1]
        else:
            raise ConfigError(f"cannot pick a CAM target layer for {type(net).__name__}; pass layers=[module names]")
    return (earlier[-(n_layers - 1) :] if n_layers > 1 else []) + [deep]


def resolve_layers(net: nn.Module, layers: list[str] | None, n_layers: int = 1) -> list[str]:
    """The modules of ``net`` to explain: ``layers`` by name (a ``ValueError`` names any that ``net`` lacks and
    lists its top-level modules), or else its last ``n_layers`` stages."""
    names = list(layers) if layers else default_target_layers(net, n_layers)
    modules = dict(net.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        top = [n for n in modules if n and "." not in n]
        raise ConfigError(f"unknown layer name(s) {unknown} in {type(net).__name__}; top-level modules: {top}")
    return names


def vit_reshape(net: nn.Module):
    """Token sequence (B, prefix + H*W, C) to a feature map (B, C, H, W), for ViT-style timm models."""
    prefix = int(getattr(net, "num_prefix_tokens", 1))

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        grid = tokens[:, prefix:, :]
        h, w = getattr(net.patch_embed, "grid_size", (0, 0))
        if h * w != grid.shape[1]:  # another input size than the model's default: assume a square grid
            h = w = int(math.isqrt(grid.shape[1]))
        return grid.reshape(tokens.shape[0], h, w, tokens.shape[-1]).permute(0, 3, 1, 2)

    return reshape


@dataclass
class CamResult:
    """Maps for a batch: ``cam`` (B, H, W) in [0, 1] (the layers combined), ``per_layer`` {name: (B, H, W)},
    the model's ``logits`` (B,) and its (calibrated, if the model has calibration) ``probs`` (B,)."""

    cam: np.ndarray
    per_layer: dict[str, np.ndarray] = field(default_factory=dict)
    logits: np.ndarray | None = None
    probs: np.ndarray | None = None
    method: str = ""  # the CAM method and the explained class, for captions
    target: str = ""


class CamExplainer:
    """Batched CAMs for a one-logit detector. Use as a context manager (or call :meth:`close`): the hooks on the
    target layers live exactly as long as the explainer.

    Args:
        model: A ``DeepfakeClassifier`` (its ``net`` is explained) or any module returning (B,) logits.
        method: One of :data:`CAM_METHODS`.
        layers: Module names of the network to explain (e.g. ``["layer3", "layer4"]``); default by family.
        n_layers: With ``layers`` unset, explain this many stages (multi-layer Grad-CAM); the combined map is the
            pytorch-grad-cam mean of the per-layer maps.
        target: ``ai`` (default) explains the AI-generated logit, ``human`` its negation.
    """

    def __init__(
        self,
        model: nn.Module,
        method: str = "gradcam",
        layers: list[str] | None = None,
        n_layers: int = 1,
        target: str = "ai",
    ):
        if method not in CAM_METHODS:
            raise ConfigError(f"unknown CAM method {method!r}; choose from {sorted(CAM_METHODS)}")
        if target not in ("ai", "human"):
            raise ConfigError(f"target must be 'ai' or 'human', got {target!r}")
        self.model = model
        self.net = getattr(model, "net", model)
        self.layer_names = resolve_layers(self.net, layers, n_layers)
        self.method, self.target_name = method, target
        self.target = BinaryClassifierOutputTarget(1 if target == "ai" else 0)
        reshape = vit_reshape(self.net) if _is_vit(self.net) else None
        was_training = self.model.training
        self._cam = CAM_METHODS[method](
            model=_Logit(self.model),
            target_layers=[self.net.get_submodule(n) for n in self.layer_names],
            reshape_transform=reshape,
        )
        # Gradients flow from a grad-requiring input instead of the (temporarily frozen) parameters.
        self._cam.compute_input_gradient = True
        self.model.train(was_training)  # pytorch-grad-cam switches the model to eval in its constructor

    def __call__(self, images: torch.Tensor) -> CamResult:
        """Explains a batch of preprocessed images (B, 3, H, W), or of test-time views (B, V, 3, H, W) such as
        ``data.eval_views: 5``: then the centre view is explained (see :func:`centre_view`), while the
        probabilities are those of the model's own test-time prediction over every view (and its mirror with
        ``tta_flip``), the same numbers as in the metrics and the prediction files."""
        model = self.model
        views, images = images, centre_view(images)
        device = next(model.parameters()).device
        was_training = model.training
        flags = [p.requires_grad for p in model.parameters()]
        try:
            model.eval()
            for p in model.parameters():  # gradients flow from the input: no parameter .grad is touched
                p.requires_grad_(False)
            # Also callable from Lightning's evaluation hooks, which run under inference mode and autocast.
            with (
                torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
                torch.inference_mode(False),
                torch.enable_grad(),
                torch.autocast(device.type, enabled=False),
            ):
                x = images.to(device)
                normalize = getattr(model, "normalize_input", None)  # uint8 from the data module's loaders
                x = (
                    (normalize(x) if normalize is not None else x).float().clone()
                )  # a normal tensor, even in inference mode
                targets = [self.target] * len(x)
                cam = self._cam(input_tensor=x, targets=targets)
                per_layer = self._cam.compute_cam_per_layer(x, targets, False)
                logits = self._cam.outputs.detach().float().reshape(-1)
            predict_logits = getattr(model, "predict_logits", None)
            if predict_logits is not None and (views.ndim == 5 or getattr(model, "settings", DEFAULTS).tta_flip):
                with torch.no_grad():
                    logits = predict_logits(views.to(device)).float()
        finally:
            for p, f in zip(model.parameters(), flags, strict=False):
                p.requires_grad_(f)
            model.train(was_training)
            self._cam.activations_and_grads.gradients = []
            self._cam.activations_and_grads.activations = []
        calibrated = getattr(model, "calibrated_probs", None)
        probs = calibrated(logits) if calibrated is not None else torch.sigmoid(logits)
        return CamResult(
            cam=cam.astype(np.float32),
            per_layer={n: m[:, 0].astype(np.float32) for n, m in zip(self.layer_names, per_layer, strict=False)},
            logits=logits.cpu().numpy(),
            probs=probs.cpu().numpy(),
            method=self.method,
            target=self.target_name,
        )

    def close(self) -> None:
        self._cam.activations_and_grads.release()

    def __enter__(self) -> CamExplainer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()  # unlike pytorch-grad-cam's own __exit__, never swallows an exception


def centre_view(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) as it is; of test-time views (B, V, 3, H, W), the last one: the centre crop of
    torchvision's ``FiveCrop`` (corners first), which ``data.eval_views: 5`` produces."""
    return images[:, -1] if images.ndim == 5 else images


class _Logit(nn.Module):
    """Presents the detector to pytorch-grad-cam as a module returning (B,) logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).reshape(-1)


# --------------------------------------------------------------------------- display
def denormalize(images: torch.Tensor, mean, std) -> np.ndarray:
    """Normalized (B, 3, H, W) tensors (or uint8 pixels) back to (B, H, W, 3) float RGB in [0, 1] for display."""
    if images.dtype == torch.uint8:
        return (images.detach().cpu().float() / 255).permute(0, 2, 3, 1).numpy()
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (images.detach().cpu().float() * s + m).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def overlay(rgb: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """A heat map over an (H, W, 3) float RGB image, as uint8."""
    return show_cam_on_image(rgb.astype(np.float32), cam, use_rgb=True)


def cam_grid(
    rgb: np.ndarray,
    result: CamResult,
    labels=None,
    threshold: float = UNCALIBRATED_THRESHOLD,
    columns: int = 4,
    per_layer: bool = False,
):
    """A matplotlib Figure: per image, the picture and its overlay (and each layer's map with ``per_layer``),
    titled with the true label (if known), the AI probability and the prediction at ``threshold``; the figure's
    caption names the CAM method and the explained class. A map is titled by its layer (``combined`` when several
    layers are averaged)."""
    import matplotlib.pyplot as plt

    layers = list(result.per_layer)
    main = layers[0] if len(layers) == 1 else f"{len(layers)} layers combined" if layers else "CAM"
    maps = [(main, result.cam)] + (list(result.per_layer.items()) if per_layer and len(layers) > 1 else [])
    panels = 1 + len(maps)
    n = len(rgb)
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    # Constrained layout gives every title (two lines, three with a file name) its own room: tight_layout let the
    # second row's titles run over the first row's images.
    fig, axes = plt.subplots(
        rows, columns * panels, figsize=(2.2 * columns * panels, 2.7 * rows), squeeze=False, layout="constrained"
    )
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, columns)
        prob = float(result.probs[i])
        pred = "AI" if decide(prob, threshold) else "human"
        title = f"p(AI)={prob:.2f} -> {pred}"
        if labels is not None and int(labels[i]) in (0, 1):
            truth = "AI" if int(labels[i]) == 1 else "human"
            title = f"true {truth}\n{title}" + ("" if truth == pred else "  (wrong)")
        axes[r, c * panels].imshow(rgb[i])
        axes[r, c * panels].set_title(title, fontsize=8, color="black" if labels is None or truth == pred else "red")
        for k, (name, m) in enumerate(maps, start=1):
            axes[r, c * panels + k].imshow(overlay(rgb[i], m[i]))
            if i < columns:
                axes[r, c * panels + k].set_title(name, fontsize=8)
    if result.method:
        target = "AI-generated" if result.target == "ai" else "human"
        fig.suptitle(f"{result.method}, explaining the {target} class", fontsize=9)
    return fig
