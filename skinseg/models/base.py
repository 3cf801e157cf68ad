"""What every model shares: the input check, padding to the size the encoder needs, the optional presence head,
parameter groups and encoder freezing."""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from skinseg.models.blocks import DeepSupervisionHeads
from skinseg.models.init import set_head_prior


def check_input(x: torch.Tensor, in_channels: int, model_name: str) -> None:
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(
            f"{model_name} expected an input of shape (batch, {in_channels}, height, width), got {tuple(x.shape)}; "
            f"pass {in_channels}-channel images or build the model with in_channels={x.shape[1] if x.ndim == 4 else '?'}"
        )


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    height, width = x.shape[-2:]
    pad_bottom, pad_right = -height % multiple, -width % multiple
    if not pad_bottom and not pad_right:
        return x
    # reflect needs the padding to be smaller than the image; tiny inputs fall back to zeros
    mode = "reflect" if pad_bottom < height and pad_right < width else "constant"
    return F.pad(x, (0, pad_right, 0, pad_bottom), mode=mode)


class SegmentationModel(nn.Module):
    """Base of the four U-Nets: maps (B, in_channels, H, W) to (B, classes, H, W) mask logits for any H and W.

    The input is padded to a multiple of ``size_multiple`` and the logits cropped back. With a presence head the
    forward returns ``(mask_logits, presence_logits)``, the latter (B, classes) from the deepest features.
    Subclasses set ``encoder``, ``decoder``, ``segmentation_head``, ``presence_head`` (or None), ``in_channels``
    and ``size_multiple``, and may override :meth:`extract_features`.

    With deep supervision (``deep_heads``, built by :meth:`add_deep_supervision`) the forward of a model in
    training mode returns ``(mask_logits, presence_logits or None, [logits at 1/2, 1/4, ... resolution])`` for
    :class:`skinseg.losses.CombinedLoss`; in eval mode it returns what a model without it returns.
    """

    in_channels: int
    size_multiple: int
    encoder: nn.Module
    decoder: nn.Module
    segmentation_head: nn.Module
    presence_head: nn.Module | None
    deep_heads: nn.Module | None  # set by add_deep_supervision (None without)
    encoder_frozen: bool = False
    # the class can start from a pretrained (ImageNet) encoder: options `pretrained` / `pretrained_path`
    pretrained_encoder: ClassVar[bool] = False

    def extract_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        check_input(x, self.in_channels, type(self).__name__)
        height, width = x.shape[-2:]
        features = self.extract_features(pad_to_multiple(x, self.size_multiple))
        presence = None if self.presence_head is None else self.presence_head(features[-1])
        if self.deep_heads is not None and self.training:
            stages = self.decoder(features, stages=True)
            masks = self.segmentation_head(stages[-1])[..., :height, :width]
            deep = [
                logits[..., : -(-height // 2**k), : -(-width // 2**k)]  # the unpadded part, rounded up
                for k, logits in enumerate(self.deep_heads(stages), start=1)
            ]
            return masks, presence, deep
        masks = self.segmentation_head(self.decoder(features))[..., :height, :width]
        return masks if presence is None else (masks, presence)

    def add_deep_supervision(self, decoder_channels, classes: int, depth: int) -> None:
        """Mask heads on the ``depth`` decoder stages below full resolution (none for ``depth`` 0)."""
        self.deep_heads = DeepSupervisionHeads(decoder_channels, classes, depth) if depth else None

    def set_head_priors(self) -> None:
        """Start every mask head (the main one and the deep-supervision ones) at the rare-positive prior."""
        for head in [self.segmentation_head, *(self.deep_heads or ())]:
            set_head_prior(head)

    def encoder_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())

    def decoder_parameters(self) -> list[nn.Parameter]:
        encoder = {id(p) for p in self.encoder.parameters()}
        return [p for p in self.parameters() if id(p) not in encoder]

    def freeze_encoder(self, frozen: bool = True) -> "SegmentationModel":
        self.encoder_frozen = bool(frozen)
        self.encoder.requires_grad_(not frozen)
        return self.train(self.training)

    def train(self, mode: bool = True) -> "SegmentationModel":
        super().train(mode)
        if self.encoder_frozen:
            # frozen batch norm must not keep updating its running statistics
            for module in self.encoder.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self
