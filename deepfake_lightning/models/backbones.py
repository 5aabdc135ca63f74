"""timm backbones with a one-logit head, and their preprocessing."""

from __future__ import annotations

import os
import socket

import timm
import torch.nn as nn

from deepfake_lightning.errors import ConfigError, PretrainedWeightsUnavailable


def create_backbone(
    name: str,
    pretrained: bool = False,
    weights: str | None = None,
    **kwargs,
) -> nn.Module:
    """Creates a timm model with a single output logit (``num_classes=1``).

    Args:
        name: Any timm model name, e.g. ``convnext_tiny``, ``resnet50``, ``efficientnet_b0``, ``test_convnext``.
        pretrained: Load timm's ImageNet weights (downloaded through the Hugging Face hub, or its cache).
        weights: Path to a local weights file (``.safetensors``, ``.pth``, ``.bin``) in timm's format for
            this architecture; loaded instead of downloading. The ImageNet classifier is dropped and a new
            one-logit head initialised, as timm does for any ``num_classes``.
        **kwargs: Passed to ``timm.create_model`` (e.g. ``drop_rate``, ``drop_path_rate``).
    """
    if not timm.is_model(name):
        raise ConfigError(f"unknown timm model {name!r}; see timm.list_models() for the names")
    if weights is not None:
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"model.weights: no such file {weights!r}")
        return timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay={"file": os.fspath(weights)}, num_classes=1, **kwargs
        )
    if not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=1, **kwargs)
    unreachable = _hub_unreachable()
    if unreachable:  # fail now: the hub client would retry for about 45 s before saying the same
        raise PretrainedWeightsUnavailable(
            f"Could not load the pretrained weights of '{name}': the Hugging Face hub cannot be reached "
            f"({unreachable}).\n"
            "  If they are in your Hugging Face cache, run offline: HF_HUB_OFFLINE=1 deepfake ...\n"
            "  Otherwise train from scratch: --model.pretrained false\n"
            "  or use a local weights file for this architecture: --model.weights PATH"
        )
    try:
        return timm.create_model(name, pretrained=True, num_classes=1, **kwargs)
    except Exception as e:  # network, hub and cache errors come in many types; all mean "no weights"
        raise PretrainedWeightsUnavailable(
            f"Could not load the pretrained weights of '{name}' ({type(e).__name__}: {e}).\n"
            "  Either train from scratch: --model.pretrained false\n"
            "  or use a local weights file for this architecture: --model.weights PATH "
            "(e.g. timm's model.safetensors copied from a machine with internet access)."
        ) from e


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached (one quick connection attempt), or None when it can or when
    ``HF_HUB_OFFLINE`` is set (then the hub client reads its cache only, and says itself what is missing)."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return None
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError as e:
        return f"{url.hostname}: {e.strerror or type(e).__name__}"
    return None
