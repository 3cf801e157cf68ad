"""Residual U-Net: the U-Net with residual blocks in place of double convolutions."""
from __future__ import annotations

from skinseg.models.blocks import ResidualBlock
from skinseg.models.unet import UNet


class ResidualUNet(UNet):
    """U-Net whose encoder and decoder stages are residual blocks (1x1 projection shortcut where the width changes).

    Takes the same arguments as :class:`~skinseg.models.unet.UNet`.
    """

    block = ResidualBlock
