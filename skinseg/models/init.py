"""Weight initialisation schemes for convolution and linear layers."""
from __future__ import annotations

import math

from torch import nn

from skinseg.choices import INITS as INIT_SCHEMES

NORMAL_STD = 0.02
HEAD_PRIOR = 0.05

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def _init_weight(weight, scheme: str) -> None:
    if scheme == "xavier":
        nn.init.xavier_uniform_(weight)
    elif scheme == "kaiming":
        nn.init.kaiming_normal_(weight, mode="fan_in", nonlinearity="relu")
    elif scheme == "orthogonal":
        nn.init.orthogonal_(weight)
    elif scheme == "normal":
        nn.init.normal_(weight, 0.0, NORMAL_STD)


def initialize(module: nn.Module, scheme: str = "kaiming") -> None:
    """Initialise every conv/linear layer of ``module`` by ``scheme`` (biases 0) and every norm layer to 1/0.

    ``"none"`` keeps PyTorch's defaults.
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"init: unknown scheme {scheme!r}; choose one of {', '.join(INIT_SCHEMES)}")
    if scheme == "none":
        return
    for m in module.modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            _init_weight(m.weight, scheme)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, _NORMS) and getattr(m, "weight", None) is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def set_head_prior(head: nn.Conv2d, prior: float = HEAD_PRIOR) -> None:
    """Start the mask logits at the sigmoid of ``prior`` (RetinaNet's prior trick).

    The attributes cover a few percent of the pixels at most; a head starting at p = 0.5 spends its first
    epochs learning "mostly background", and rare attributes can collapse to all-empty meanwhile.
    """
    nn.init.constant_(head.bias, math.log(prior / (1 - prior)))
