"""Blocks shared by the four U-Nets: convolution blocks, the attention gate, up-sampling and the decoder."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from skinseg.errors import ConfigError


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    # no conv bias: the batch norm right after it has one
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by batch norm and ReLU: one stage of the original U-Net.

    Args:
        in_channels: channels of the input.
        out_channels: channels of both convolutions' outputs.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(conv_bn_relu(in_channels, out_channels), conv_bn_relu(out_channels, out_channels))


class ResidualBlock(nn.Module):
    """Two 3x3 conv + batch norm layers around an identity shortcut, or a 1x1 projection when the width changes.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = conv_bn_relu(in_channels, out_channels)
        self.conv2 = nn.Sequential(
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.shortcut = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al., 2018, "Attention U-Net") that re-weights a skip connection.

    The gating signal is the decoder's feature map after up-sampling, so gate and skip share a resolution and the
    attention map needs no resampling.

    Args:
        gate_channels: channels of the gating signal (the up-sampled decoder features).
        skip_channels: channels of the skip connection being gated.
        inter_channels: width of the intermediate space; half the skip's width by default.
    """

    def __init__(self, gate_channels: int, skip_channels: int, inter_channels: int | None = None):
        super().__init__()
        inter_channels = inter_channels or max(skip_channels // 2, 1)
        self.gate = nn.Sequential(nn.Conv2d(gate_channels, inter_channels, 1, bias=False), nn.BatchNorm2d(inter_channels))
        self.skip = nn.Sequential(nn.Conv2d(skip_channels, inter_channels, 1, bias=False), nn.BatchNorm2d(inter_channels))
        self.psi = nn.Sequential(
            nn.ReLU(inplace=True), nn.Conv2d(inter_channels, 1, 1, bias=False), nn.BatchNorm2d(1), nn.Sigmoid()
        )

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return skip * self.psi(self.gate(gate) + self.skip(skip))


def upsample(in_channels: int, out_channels: int, bilinear: bool = True) -> nn.Module:
    if bilinear:
        # 1x1 conv and bilinear interpolation commute, so convolve at the lower resolution: 4x cheaper
        return nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        )
    return nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)


class DecoderBlock(nn.Module):
    """Up-sample x2, optionally gate the skip connection, concatenate and convolve.

    Args:
        in_channels: channels of the decoder input (the deeper feature map).
        skip_channels: channels of the skip connection at twice the input's resolution.
        out_channels: channels of the output.
        bilinear: bilinear interpolation (with a 1x1 conv) if True, else a 2x2 transposed convolution.
        block: the convolution block applied after concatenation (``DoubleConv`` or ``ResidualBlock``).
        attention: gate the skip connection with an :class:`AttentionGate`.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, *, bilinear: bool = True,
                 block: type[nn.Module] = DoubleConv, attention: bool = False):
        super().__init__()
        self.up = upsample(in_channels, out_channels, bilinear)
        self.attention = AttentionGate(out_channels, skip_channels) if attention else None
        self.conv = block(out_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if self.attention is not None:
            skip = self.attention(skip, x)
        return self.conv(torch.cat([x, skip], dim=1))


class UNetDecoder(nn.Module):
    """The expanding path: one :class:`DecoderBlock` per skip connection, from the deepest feature map up.

    Args:
        encoder_channels: channels of the encoder's feature maps, shallowest first; each map has half the resolution
            of the one before it. The deepest map is the decoder's input, the others are skip connections.
        decoder_channels: output channels of the decoder blocks, deepest first; one per skip connection.
        bilinear: up-sampling by bilinear interpolation if True, else by transposed convolution.
        block: the convolution block of every decoder stage.
        attention: gate every skip connection with an :class:`AttentionGate`.
    """

    def __init__(self, encoder_channels: Sequence[int], decoder_channels: Sequence[int], *, bilinear: bool = True,
                 block: type[nn.Module] = DoubleConv, attention: bool = False):
        super().__init__()
        if len(decoder_channels) != len(encoder_channels) - 1:
            raise ValueError(
                f"decoder_channels needs one width per skip connection ({len(encoder_channels) - 1}), "
                f"got {len(decoder_channels)}: {tuple(decoder_channels)}"
            )
        skip_channels = list(encoder_channels[:-1])[::-1]
        in_channels = [encoder_channels[-1], *decoder_channels[:-1]]
        self.blocks = nn.ModuleList(
            DecoderBlock(i, s, o, bilinear=bilinear, block=block, attention=attention)
            for i, s, o in zip(in_channels, skip_channels, decoder_channels)
        )
        self.out_channels = decoder_channels[-1]

    def forward(self, features: Sequence[torch.Tensor], stages: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """The full-resolution output; with ``stages``, every block's output, deepest first (the last one is the
        full-resolution output)."""
        x = features[-1]
        outputs = []
        for block, skip in zip(self.blocks, reversed(features[:-1])):
            x = block(x, skip)
            outputs.append(x)
        return outputs if stages else x


class DeepSupervisionHeads(nn.ModuleList):
    """1x1 convolutions giving mask logits at the decoder's lower resolutions (deep supervision, as nnU-Net): one
    for each of the ``depth`` decoder stages before the last, the 1/2-resolution stage first.

    Args:
        decoder_channels: output widths of the decoder stages, deepest first (the last is full resolution).
        classes: number of attributes.
        depth: how many lower-resolution stages get a head.
    """

    def __init__(self, decoder_channels: Sequence[int], classes: int, depth: int):
        if not 0 < depth < len(decoder_channels):
            raise ConfigError(
                f"deep_supervision: {depth} must be between 1 and {len(decoder_channels) - 1}, the number of decoder "
                "stages below full resolution (or 0 for none)"
            )
        super().__init__(nn.Conv2d(c, classes, 1) for c in list(decoder_channels)[-2::-1][:depth])

    def forward(self, stages: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Logits from the stage outputs of :meth:`UNetDecoder.forward` (deepest first), finest first."""
        return [head(x) for head, x in zip(self, list(stages)[-2::-1])]


class AvgMaxPool(nn.Module):
    """Global average- and max-pooled features side by side: (B, C, H, W) -> (B, 2C, 1, 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean((-2, -1), keepdim=True), x.amax((-2, -1), keepdim=True)], 1)


class PresenceHead(nn.Sequential):
    """Image-level presence logits, one per attribute: global pooling of the deepest features and a linear layer.

    Args:
        in_channels: channels of the (deepest) feature map it reads.
        classes: number of attributes.
        pool: ``avg`` (global average pooling) or ``avgmax`` (average- and max-pooled features side by side, as
            Chen et al.'s ISIC 2018 presence heads: a small attribute region barely moves the average). The layer
            names are the same for both, so checkpoints with the average-pooled head load as before.
    """

    def __init__(self, in_channels: int, classes: int, pool: str = "avg"):
        if pool not in ("avg", "avgmax"):
            raise ValueError(f"presence pool {pool!r}: choose avg or avgmax")
        width = in_channels * (2 if pool == "avgmax" else 1)
        super().__init__(nn.AdaptiveAvgPool2d(1) if pool == "avg" else AvgMaxPool(), nn.Flatten(),
                         nn.Linear(width, classes))


class StagedFeatures(nn.Module):
    """Runs ``self.stages`` one after another and returns every stage's output, shallowest first."""

    stages: nn.ModuleList

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
