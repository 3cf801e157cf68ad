"""Attention U-Net (Oktay et al., 2018): the U-Net with additive attention gates on its skip connections."""
from __future__ import annotations

from skinseg.models.unet import UNet


class AttentionUNet(UNet):
    """U-Net whose skip connections are re-weighted by attention gates driven by the decoder's features.

    Takes the same arguments as :class:`~skinseg.models.unet.UNet`.
    """

    attention = True
