"""U-Net (Ronneberger et al., 2015), trained from scratch."""
from __future__ import annotations

from torch import nn

from skinseg.models.base import SegmentationModel
from skinseg.models.blocks import DoubleConv, PresenceHead, StagedFeatures, UNetDecoder
from skinseg.errors import ConfigError
from skinseg.models.init import initialize


class UNetEncoder(StagedFeatures):
    """The contracting path: a block at full resolution, then ``depth`` stages of 2x2 max-pooling and a block,
    each doubling the width.

    Args:
        in_channels: channels of the input image.
        base_channels: width of the first stage.
        depth: number of down-sampling stages; the deepest features are at stride ``2**depth``.
        block: the convolution block of every stage.
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 32, depth: int = 4,
                 block: type[nn.Module] = DoubleConv):
        super().__init__()
        self.out_channels = [base_channels * 2**i for i in range(depth + 1)]
        self.reductions = [2**i for i in range(depth + 1)]
        self.stages = nn.ModuleList([block(in_channels, self.out_channels[0])])
        for c_in, c_out in zip(self.out_channels, self.out_channels[1:]):
            self.stages.append(nn.Sequential(nn.MaxPool2d(2), block(c_in, c_out)))


class UNet(SegmentationModel):
    """U-Net with double-conv stages; the residual and attention variants subclass it.

    Args:
        in_channels: channels of the input image.
        classes: number of output masks (attributes).
        base_channels: width of the first stage; stage ``i`` has ``base_channels * 2**i`` channels.
        depth: number of down-sampling stages.
        bilinear: decoder up-sampling by bilinear interpolation if True, else by transposed convolution.
        aux_head: also return image-level presence logits (B, classes) from the deepest features.
        deep_supervision: mask heads on this many decoder stages below full resolution, whose logits the forward
            also returns in training mode (see :class:`~skinseg.models.base.SegmentationModel`); 0 for none.
        init: weight initialisation, one of ``skinseg.models.init.INIT_SCHEMES``.
        pretrained: must be False; only ``unet-timm-attention`` has a pretrained encoder.
        pretrained_path: must be None, as ``pretrained``.
    """

    block: type[nn.Module] = DoubleConv
    attention: bool = False

    def __init__(self, in_channels: int = 3, classes: int = 5, *, base_channels: int = 32, depth: int = 4,
                 bilinear: bool = True, aux_head: bool = False, deep_supervision: int = 0, init: str = "kaiming",
                 pretrained: bool = False, pretrained_path: str | None = None, presence_pool: str = "avg"):
        super().__init__()
        if pretrained or pretrained_path:
            raise ConfigError(
                f"{type(self).__name__} is trained from scratch and has no pretrained weights; set pretrained: false "
                "(and no pretrained_path), or use unet-timm-attention for an ImageNet-pretrained encoder"
            )
        self.in_channels = in_channels
        self.size_multiple = 2**depth
        self.encoder = UNetEncoder(in_channels, base_channels, depth, self.block)
        self.decoder = UNetDecoder(
            self.encoder.out_channels, self.encoder.out_channels[-2::-1],
            bilinear=bilinear, block=self.block, attention=self.attention,
        )
        self.segmentation_head = nn.Conv2d(self.decoder.out_channels, classes, 1)
        self.presence_head = PresenceHead(self.encoder.out_channels[-1], classes, presence_pool) if aux_head else None
        self.add_deep_supervision(self.encoder.out_channels[-2::-1], classes, deep_supervision)
        initialize(self, init)
        if init != "none":
            self.set_head_priors()
