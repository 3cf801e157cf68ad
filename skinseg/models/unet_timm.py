"""``unet-timm-attention``: a U-Net on a timm encoder (ConvNeXt-Tiny by default, EfficientNet-Lite in the pretrained
recipes), pretrained or not, with a decoder of attention-gated skips and residual blocks. Formerly
``unet-convnext-attention`` / ``ConvNeXtUNet``; both names still work."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from skinseg.models.base import SegmentationModel
from skinseg.models.blocks import PresenceHead, ResidualBlock, StagedFeatures, UNetDecoder, conv_bn_relu
from skinseg.models.encoders import create_timm_encoder
from skinseg.errors import ConfigError
from skinseg.models.init import initialize


class InputStem(StagedFeatures):
    """Light skip connections at the strides the encoder skips (1 and 2 for ConvNeXt's stride-4 first stage):
    a 3x3 conv at full resolution, then one strided 3x3 conv per further halving.

    Args:
        in_channels: channels of the input image.
        reductions: the strides to produce, e.g. ``[1, 2]``.
        base_channels: width at full resolution, doubled at every halving (at most 64).
    """

    def __init__(self, in_channels: int, reductions: Sequence[int], base_channels: int = 16):
        super().__init__()
        self.out_channels = [min(base_channels * r, 64) for r in reductions]
        self.reductions = list(reductions)
        self.stages = nn.ModuleList()
        for reduction, width in zip(reductions, self.out_channels):
            self.stages.append(conv_bn_relu(in_channels, width, stride=1 if reduction == 1 else 2))
            in_channels = width


def _stem_reductions(encoder: str, reductions: list[int]) -> list[int]:
    first = reductions[0]
    if first & (first - 1) or reductions != [first * 2**i for i in range(len(reductions))]:
        raise ConfigError(
            f"encoder {encoder!r} has feature strides {reductions}; the decoder needs strides that double at every "
            "stage, e.g. 4, 8, 16, 32 (ConvNeXt) or 2, 4, 8, 16, 32 (ResNet, EfficientNet)"
        )
    return [2**i for i in range(first.bit_length() - 1)]


class TimmAttentionUNet(SegmentationModel):
    """U-Net with a timm encoder (ConvNeXt-Tiny by default) and a decoder of attention-gated skips and residual
    blocks.

    Full resolution is reached through learned decoder stages at strides 2 and 1, whose skips come from a light
    :class:`InputStem` on the input, not through a final x4 up-sampling. The decoder is wired from the encoder's
    ``feature_info``, so any timm encoder with ``features_only`` and doubling strides works.

    Args:
        in_channels: channels of the input image.
        classes: number of output masks (attributes).
        encoder: timm model name.
        pretrained: load ImageNet weights for the encoder through timm (needs the hub or its cache).
        pretrained_path: local weights file for the encoder; implies ``pretrained``.
        decoder_channels: output widths of the decoder stages, deepest first, one per skip connection;
            by default 256, 128, 64, 32, 16.
        stem_channels: width of the full-resolution stem.
        bilinear: decoder up-sampling by bilinear interpolation if True, else by transposed convolution.
        aux_head: also return image-level presence logits (B, classes) from the deepest features.
        deep_supervision: mask heads on this many decoder stages below full resolution, whose logits the forward
            also returns in training mode (see :class:`~skinseg.models.base.SegmentationModel`); 0 for none.
        init: initialisation of the layers that do not come from pretrained weights.
        freeze_encoder: start with the encoder frozen (see :meth:`freeze_encoder`).
    """

    pretrained_encoder = True

    def __init__(self, in_channels: int = 3, classes: int = 5, *, encoder: str = "convnext_tiny",
                 pretrained: bool = False, pretrained_path: str | None = None,
                 decoder_channels: Sequence[int] | None = None, stem_channels: int = 16, bilinear: bool = True,
                 aux_head: bool = False, deep_supervision: int = 0, init: str = "kaiming",
                 freeze_encoder: bool = False, presence_pool: str = "avg"):
        super().__init__()
        self.in_channels = in_channels
        self.encoder = create_timm_encoder(encoder, in_channels, pretrained, pretrained_path)
        reductions = self.encoder.feature_info.reduction()
        channels = self.encoder.feature_info.channels()
        self.size_multiple = reductions[-1]
        self.stem = InputStem(in_channels, _stem_reductions(encoder, reductions), stem_channels)
        encoder_channels = [*self.stem.out_channels, *channels]
        skips = len(encoder_channels) - 1
        decoder_channels = decoder_channels or [min(16 * 2**i, 256) for i in reversed(range(skips))]
        self.decoder = UNetDecoder(encoder_channels, decoder_channels, bilinear=bilinear, block=ResidualBlock,
                                   attention=True)
        self.segmentation_head = nn.Conv2d(self.decoder.out_channels, classes, 1)
        self.presence_head = PresenceHead(channels[-1], classes, presence_pool) if aux_head else None
        self.add_deep_supervision(decoder_channels, classes, deep_supervision)
        pretrained = pretrained or pretrained_path is not None
        for part in self.children():
            if part is not self.encoder or not pretrained:
                initialize(part, init)
        if init != "none":
            self.set_head_priors()
        self.freeze_encoder(freeze_encoder)

    def extract_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [*self.stem(x), *self.encoder(x)]


ConvNeXtUNet = TimmAttentionUNet  # the former name
