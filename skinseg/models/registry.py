"""Model names -> classes, ``create_model`` and ``model_from_config``."""
from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from skinseg.choices import MODEL_ALIASES
from skinseg.errors import UnknownModelError, did_you_mean
from skinseg.models.base import SegmentationModel
from skinseg.models.unet import UNet
from skinseg.models.unet_attention import AttentionUNet
from skinseg.models.unet_residual import ResidualUNet
from skinseg.models.unet_timm import TimmAttentionUNet

if TYPE_CHECKING:
    from skinseg.config import Config

# one entry per name of skinseg.choices.MODELS (a test checks both lists agree)
MODELS: dict[str, type[SegmentationModel]] = {
    "unet": UNet,
    "unet-residual": ResidualUNet,
    "unet-attention": AttentionUNet,
    "unet-timm-attention": TimmAttentionUNet,
}
MODEL_NAMES = tuple(MODELS)

_CONFIG_OPTIONS = ("base_channels", "bilinear", "init", "pretrained", "pretrained_path", "encoder", "freeze_encoder",
                   "aux_head", "presence_pool", "deep_supervision")





def model_options(name: str) -> tuple[str, ...]:
    return tuple(inspect.signature(_model_class(name)).parameters)[2:]


def unused_options(name: str) -> set[str]:
    """Config options that model ``name`` does not take (e.g. ``base_channels`` of ``unet-timm-attention``): they
    do not change what it trains, so :func:`skinseg.runs.find_complete_run` does not compare them."""
    return {key for key in _CONFIG_OPTIONS if key not in model_options(name)}


def create_model(name: str, in_channels: int = 3, classes: int = 5, **options: Any) -> SegmentationModel:
    """Build model ``name`` mapping (B, in_channels, H, W) images to (B, classes, H, W) logits.

    Options set to None are dropped, so they take the model's default.
    """
    model_class = _model_class(name)
    options = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(options) - set(model_options(name)))
    if unknown:
        raise TypeError(f"{name}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(model_options(name))}")
    return model_class(in_channels, classes, **options)


def model_from_config(cfg: Config) -> SegmentationModel:
    """Build the model of a :class:`skinseg.config.Config`; options a model does not take (the encoder options of
    the scratch U-Nets, ``base_channels`` of ``unet-timm-attention``) are ignored."""
    accepted = model_options(cfg.model)
    options = {key: getattr(cfg, key) for key in _CONFIG_OPTIONS if key in accepted}
    if "freeze_encoder" in options:
        # the config counts epochs; the model only needs to know whether training starts frozen
        options["freeze_encoder"] = cfg.freeze_encoder > 0
    return create_model(cfg.model, in_channels=3, classes=cfg.classes, **options)


def _model_class(name: str) -> type[SegmentationModel]:
    try:
        return MODELS[MODEL_ALIASES.get(name, name)]
    except (KeyError, TypeError):
        raise UnknownModelError(f"unknown model {name!r}{did_you_mean(name, MODEL_NAMES)}; "
                                f"valid names: {', '.join(MODEL_NAMES)}") from None
