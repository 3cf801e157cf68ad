"""The four U-Nets of the study behind one registry: ``create_model(name, in_channels, classes, **options)``.
``unet-timm-attention`` is the one on a timm encoder, pretrained or not."""
from skinseg.models.base import SegmentationModel
from skinseg.models.encoders import PretrainedWeightsError
from skinseg.models.init import INIT_SCHEMES, initialize
from skinseg.models.registry import MODEL_NAMES, MODELS, UnknownModelError, create_model, model_from_config
from skinseg.models.unet import UNet
from skinseg.models.unet_attention import AttentionUNet
from skinseg.models.unet_residual import ResidualUNet
from skinseg.models.unet_timm import ConvNeXtUNet, TimmAttentionUNet

__all__ = [
    "INIT_SCHEMES",
    "MODELS",
    "MODEL_NAMES",
    "AttentionUNet",
    "ConvNeXtUNet",
    "PretrainedWeightsError",
    "ResidualUNet",
    "SegmentationModel",
    "TimmAttentionUNet",
    "UNet",
    "UnknownModelError",
    "create_model",
    "initialize",
    "model_from_config",
]
