"""The four U-Nets: shapes for any input size, gradients, initialisation, the timm encoder contract, pretrained
weights from a local file, errors that say what to do, aux head, channels_last and bf16 autocast."""
from __future__ import annotations

import os
import time

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may be downloaded

import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from skinseg.choices import MODELS as CONFIG_MODELS  # noqa: E402
from skinseg.config import Config  # noqa: E402
from skinseg.errors import ConfigError  # noqa: E402
from skinseg.models import (  # noqa: E402
    MODEL_NAMES,
    ConvNeXtUNet,
    PretrainedWeightsError,
    UNet,
    create_model,
    model_from_config,
)
from skinseg.models.init import NORMAL_STD  # noqa: E402

CONVNEXT = "unet-timm-attention"
SCRATCH = [name for name in MODEL_NAMES if name != CONVNEXT]
SIZES = [(256, 256), (250, 333), (517, 389)]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def tiny(name: str, **options) -> nn.Module:
    """The smallest useful version of each model: 8-wide scratch U-Nets, a convnext_atto encoder."""
    if name == CONVNEXT:
        options = dict(encoder="convnext_atto", decoder_channels=(32, 16, 16, 8, 8), stem_channels=8) | options
    else:
        options = dict(base_channels=8) | options
    torch.manual_seed(0)
    return create_model(name, **options)


def weighted_loss(out) -> torch.Tensor:
    # random weights: a plain sum through batch norm has zero gradient
    outs = out if isinstance(out, tuple) else (out,)
    generator = torch.Generator().manual_seed(1)
    return sum((o.float() * torch.randn(o.shape, generator=generator)).sum() for o in outs)


def weights(model: nn.Module, min_numel: int = 0):
    return [m.weight for m in model.modules()
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)) and m.weight.numel() >= min_numel]


# ---- shapes ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bilinear", [True, False], ids=["bilinear", "transposed"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_logits_have_the_input_size_for_any_size(name, bilinear):
    model = tiny(name, bilinear=bilinear).eval()
    with torch.no_grad():
        for height, width in SIZES:
            out = model(torch.randn(1, 3, height, width))
            assert isinstance(out, torch.Tensor)
            assert out.shape == (1, 5, height, width)
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_classes_and_in_channels_are_honoured(name):
    model = tiny(name, in_channels=1, classes=2).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 40, 72)).shape == (2, 2, 40, 72)


def test_tiny_input_below_the_padding_multiple_works():
    model = tiny(CONVNEXT).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 7, 20)).shape == (1, 5, 7, 20)


# ---- gradients ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bilinear", [True, False], ids=["bilinear", "transposed"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_gradients_reach_every_parameter(name, bilinear):
    model = tiny(name, bilinear=bilinear, aux_head=True).train()
    weighted_loss(model(torch.randn(2, 3, 64, 64))).backward()
    named = list(model.named_parameters())
    missing = [n for n, p in named if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for _, p in named)
    zero = [n for n, p in named if not p.grad.abs().sum() > 0]
    assert len(zero) <= 0.02 * len(named), f"zero gradient for {zero}"


# ---- initialisation ----------------------------------------------------------------------------------------------
def fans(weight: torch.Tensor) -> tuple[int, int]:
    receptive = weight[0][0].numel()
    return weight.shape[1] * receptive, weight.shape[0] * receptive


@pytest.mark.parametrize("scheme", ["xavier", "kaiming", "orthogonal", "normal"])
def test_init_schemes_give_expected_weight_statistics(scheme):
    torch.manual_seed(0)
    model = create_model("unet-residual", base_channels=16, bilinear=False, aux_head=True, init=scheme)
    checked = 0
    for weight in weights(model, min_numel=4096):
        w = weight.detach()
        fan_in, fan_out = fans(w)
        if scheme == "xavier":
            bound = (6 / (fan_in + fan_out)) ** 0.5
            assert w.abs().max() <= bound
            assert w.std().item() == pytest.approx((2 / (fan_in + fan_out)) ** 0.5, rel=0.1)
        elif scheme == "kaiming":
            assert w.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.1)
        elif scheme == "normal":
            assert w.std().item() == pytest.approx(NORMAL_STD, rel=0.1)
        else:
            flat = w.reshape(w.shape[0], -1)
            gram = flat @ flat.T if flat.shape[0] <= flat.shape[1] else flat.T @ flat
            torch.testing.assert_close(gram, torch.eye(len(gram)), atol=1e-4, rtol=0)
        assert abs(w.mean().item()) < 0.1 * w.std().item()
        checked += 1
    assert checked >= 20
    head = model.segmentation_head
    # the mask head starts at the attributes' prior (p = 0.05), every other bias at 0
    torch.testing.assert_close(torch.sigmoid(head.bias), torch.full_like(head.bias, 0.05))
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)) and m.bias is not None and m is not head:
            assert (m.bias == 0).all()
        if isinstance(m, nn.BatchNorm2d):
            assert (m.weight == 1).all() and (m.bias == 0).all()


def test_init_none_keeps_pytorch_defaults():
    torch.manual_seed(0)
    model = create_model("unet", base_channels=16, init="none")
    conv = model.encoder.stages[2][1][0][0]
    bound = 1 / fans(conv.weight)[0] ** 0.5  # PyTorch's default kaiming_uniform(a=sqrt(5))
    assert conv.weight.abs().max() <= bound
    assert conv.weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.1)


def test_unknown_init_scheme_lists_the_valid_ones():
    with pytest.raises(ValueError, match="xavier, kaiming, orthogonal, normal, none"):
        tiny("unet", init="he")


def test_convnext_init_covers_the_encoder_when_not_pretrained():
    model = tiny(CONVNEXT, init="orthogonal")
    for weight in [*weights(model.encoder, 4096), *weights(model.decoder, 4096)]:
        flat = weight.detach().reshape(weight.shape[0], -1)
        gram = flat @ flat.T if flat.shape[0] <= flat.shape[1] else flat.T @ flat
        torch.testing.assert_close(gram, torch.eye(len(gram)), atol=1e-4, rtol=0)
    norms = [m for m in model.encoder.modules() if isinstance(m, nn.LayerNorm)]
    assert norms and all((m.weight == 1).all() and (m.bias == 0).all() for m in norms)


# ---- the timm encoder --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoder", ["convnext_atto", "resnet10t"])
def test_encoder_features_match_timm_feature_info(encoder):
    model = create_model(CONVNEXT, encoder=encoder, decoder_channels=(32, 16, 16, 8, 8)).eval()
    info = model.encoder.feature_info
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        features = model.encoder(x)
        assert [f.shape[1] for f in features] == info.channels()
        assert [(64 // f.shape[2], 96 // f.shape[3]) for f in features] == [(r, r) for r in info.reduction()]
        # the stem supplies every stride below the encoder's first, down to full resolution
        stem = model.stem(x)
        assert [64 // f.shape[2] for f in stem] + info.reduction() == [2**i for i in range(6)]
        assert model(x).shape == (1, 5, 64, 96)


def test_convnext_tiny_default_is_wired_to_full_resolution():
    model = create_model(CONVNEXT).eval()
    assert model.encoder.feature_info.channels() == [96, 192, 384, 768]
    assert model.encoder.feature_info.reduction() == [4, 8, 16, 32]
    assert model.stem.reductions == [1, 2]
    assert [b.conv.conv2[0].out_channels for b in model.decoder.blocks] == [256, 128, 64, 32, 16]
    seen = {}
    model.decoder.blocks[-1].register_forward_hook(lambda m, i, o: seen.update(last=o.shape))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5, 64, 64)
    # the last learned decoder stage already runs at full resolution: no final x4 up-sampling
    assert seen["last"][-2:] == (64, 64)
    assert isinstance(model.segmentation_head, nn.Conv2d) and model.segmentation_head.kernel_size == (1, 1)


def test_encoder_with_strides_that_do_not_double_is_a_clear_error():
    with pytest.raises(ValueError, match="double"):
        create_model(CONVNEXT, encoder="vit_tiny_patch16_224")


# ---- pretrained weights ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pretrained", [True, None], ids=["pretrained", "path-implies-pretrained"])
def test_pretrained_path_round_trip_restores_the_encoder_exactly(tmp_path, pretrained):
    torch.manual_seed(123)
    state = timm.create_model("convnext_atto").state_dict()
    path = tmp_path / "convnext_atto.pth"
    torch.save(state, path)
    model = create_model(CONVNEXT, encoder="convnext_atto", pretrained=pretrained, pretrained_path=str(path),
                         init="orthogonal")
    encoder_state = model.encoder.state_dict()
    for key, value in encoder_state.items():
        # features_only flattens timm's stem.0 / stages.0 into stem_0 / stages_0
        original = key.replace("stem_", "stem.", 1).replace("stages_", "stages.", 1)
        assert torch.equal(value, state[original]), key
    assert len(encoder_state) > 50
    # init touched the decoder, stem and head, not the loaded encoder
    for weight in [*weights(model.decoder, 1024), *weights(model.stem, 1024)]:
        flat = weight.detach().reshape(weight.shape[0], -1)
        gram = flat @ flat.T if flat.shape[0] <= flat.shape[1] else flat.T @ flat
        torch.testing.assert_close(gram, torch.eye(len(gram)), atol=1e-4, rtol=0)


def test_pretrained_without_path_offline_fails_fast_and_says_what_to_do():
    start = time.perf_counter()
    with pytest.raises(PretrainedWeightsError, match="pretrained_path") as error:
        create_model(CONVNEXT, encoder="convnext_atto", pretrained=True)
    assert time.perf_counter() - start < 10
    assert "pretrained: false" in str(error.value)


def test_missing_pretrained_path_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="pretrained_path"):
        create_model(CONVNEXT, encoder="convnext_atto", pretrained_path=str(tmp_path / "nope.pth"))


@pytest.mark.parametrize("name", SCRATCH)
def test_scratch_unets_refuse_pretrained(name):
    with pytest.raises(ValueError, match="from scratch.*pretrained: false"):
        create_model(name, pretrained=True)


# ---- errors ------------------------------------------------------------------------------------------------------
def test_bad_model_name_lists_the_valid_names():
    for error_type in (KeyError, ValueError):
        with pytest.raises(error_type) as error:
            create_model("unet-atention")
        message = str(error.value)
        assert "did you mean 'unet-attention'" in message
        assert all(name in message for name in MODEL_NAMES)


def test_bad_encoder_name_suggests_a_timm_model():
    with pytest.raises(ValueError, match="unknown timm model 'convnext_tinyy'.*did you mean.*'convnext_tiny'"):
        create_model(CONVNEXT, encoder="convnext_tinyy")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_wrong_channel_count_says_expected_and_got(name):
    model = tiny(name)
    with pytest.raises(ValueError, match=r"expected .*\(batch, 3, height, width\), got \(1, 1, 64, 64\)"):
        model(torch.randn(1, 1, 64, 64))


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(TypeError, match="unknown option.*encoder.*valid: base_channels"):
        create_model("unet", encoder="convnext_tiny")


def test_none_options_take_the_default():
    model = create_model("unet", base_channels=None, bilinear=None, aux_head=None)
    assert model.encoder.out_channels[0] == 32 and model.presence_head is None


# ---- behaviour ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_aux_head_returns_masks_and_presence_logits(name):
    model = tiny(name, aux_head=True, classes=4).eval()
    with torch.no_grad():
        masks, presence = model(torch.randn(2, 3, 48, 80))
    assert masks.shape == (2, 4, 48, 80)
    assert presence.shape == (2, 4)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_eval_forward_is_deterministic(name):
    model = tiny(name).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.slow
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_channels_last_and_bf16_autocast(name):
    model = tiny(name, aux_head=True).to(memory_format=torch.channels_last).train()
    x = torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        masks, presence = model(x)
    assert masks.dtype == torch.bfloat16 and masks.shape == (2, 5, 64, 64)
    assert presence.shape == (2, 5)
    weighted_loss((masks, presence)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        reference = model(x.contiguous())[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)[0].float()
    assert (low - reference).abs().mean() < 0.1 * reference.abs().mean() + 1e-3


def test_freeze_encoder_stops_encoder_gradients_and_batch_norm_updates():
    model = create_model(CONVNEXT, encoder="resnet10t", decoder_channels=(32, 16, 16, 8, 8), freeze_encoder=True)
    model.train()
    assert not any(p.requires_grad for p in model.encoder_parameters())
    assert all(p.requires_grad for p in model.decoder_parameters())
    encoder_norms = [m for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert encoder_norms and not any(m.training for m in encoder_norms)
    before = [m.running_mean.clone() for m in encoder_norms]
    weighted_loss(model(torch.randn(2, 3, 64, 64))).backward()
    assert all(p.grad is None for p in model.encoder_parameters())
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, encoder_norms))
    model.freeze_encoder(False)
    assert all(p.requires_grad for p in model.encoder_parameters())
    assert all(m.training for m in encoder_norms)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_encoder_and_decoder_parameters_partition_the_model(name):
    model = tiny(name)
    encoder, decoder = model.encoder_parameters(), model.decoder_parameters()
    assert encoder and decoder
    assert {id(p) for p in encoder}.isdisjoint(id(p) for p in decoder)
    assert len(encoder) + len(decoder) == len(list(model.parameters()))


# ---- registry and config -----------------------------------------------------------------------------------------
def test_registry_names_match_the_config_choices():
    assert MODEL_NAMES == CONFIG_MODELS


def test_model_from_config_scratch_unet_ignores_encoder_options():
    cfg = Config(model="unet-attention", base_channels=8, bilinear=False, init="xavier", aux_head=True,
                 encoder="resnet34", freeze_encoder=3)
    model = model_from_config(cfg)
    assert isinstance(model, UNet) and model.attention
    assert model.encoder.out_channels[0] == 8
    assert isinstance(model.decoder.blocks[0].up, nn.ConvTranspose2d)
    masks, presence = model(torch.randn(1, 3, 32, 32))
    assert masks.shape == (1, 5, 32, 32) and presence.shape == (1, 5)


def test_model_from_config_convnext_uses_encoder_options():
    cfg = Config(model=CONVNEXT, encoder="convnext_atto", freeze_encoder=2, base_channels=8)
    model = model_from_config(cfg)
    assert isinstance(model, ConvNeXtUNet)
    assert model.encoder.feature_info.channels() == [40, 80, 160, 320]
    assert model.encoder_frozen and not any(p.requires_grad for p in model.encoder_parameters())


def test_model_from_config_pretrained_scratch_unet_is_an_error():
    with pytest.raises(ValueError, match="pretrained"):
        model_from_config(Config(model="unet", pretrained=True))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_deep_supervision_adds_lower_resolution_logits_in_training_only(name):
    model = tiny(name, deep_supervision=2, aux_head=True, classes=4).train()
    masks, presence, deep = model(torch.randn(2, 3, 50, 75))  # padded to the encoder's multiple inside
    assert masks.shape == (2, 4, 50, 75) and presence.shape == (2, 4)
    assert [tuple(d.shape) for d in deep] == [(2, 4, 25, 38), (2, 4, 13, 19)]  # 1/2 and 1/4, rounded up
    assert all(torch.isfinite(d).all() for d in deep)
    plain = tiny(name, deep_supervision=1).train()
    masks, presence, deep = plain(torch.randn(1, 3, 64, 64))
    assert presence is None and [tuple(d.shape) for d in deep] == [(1, 5, 32, 32)]
    with torch.no_grad():
        assert plain.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 5, 64, 64)  # inference: just the masks


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_deep_supervision_heads_leave_inference_unchanged(name):
    deep = tiny(name, deep_supervision=3)
    plain = tiny(name)
    missing, unexpected = plain.load_state_dict(deep.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith("deep_heads.") for k in unexpected)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(deep.eval()(x), plain.eval()(x))
    # the heads start at the same rare-positive prior as the main head
    assert all(torch.equal(h.bias, deep.segmentation_head.bias) for h in deep.deep_heads)


@pytest.mark.parametrize("depth", [-1, 5])
def test_deep_supervision_deeper_than_the_decoder_names_the_key(depth):
    if depth < 0:
        with pytest.raises(ConfigError, match="deep_supervision"):
            Config(deep_supervision=depth)
    else:
        with pytest.raises(ConfigError, match=r"deep_supervision: 5 must be between 1 and 3"):
            model_from_config(Config(model="unet", base_channels=8, deep_supervision=depth))


def test_deep_supervision_heads_get_gradients():
    model = tiny("unet-residual", deep_supervision=2).train()
    masks, _, deep = model(torch.randn(2, 3, 32, 32))
    sum(weighted_loss(d) for d in deep).backward()
    assert all(h.weight.grad is not None and h.weight.grad.abs().sum() > 0 for h in model.deep_heads)
    assert model.segmentation_head.weight.grad is None  # the deep losses reach the decoder, not the main head


def test_the_avgmax_presence_head_sees_a_small_region_the_average_dilutes():
    """Chen et al.'s heads pool by average and by max: one hot pixel of 256 moves the average by 1/256 of itself
    and the max by all of it. The layer names are those of the average-pooled head (old checkpoints load)."""
    import torch

    from skinseg.config import Config
    from skinseg.errors import ConfigError
    from skinseg.models.blocks import PresenceHead

    x = torch.zeros(1, 4, 16, 16)
    x[0, 1, 3, 5] = 10.0
    head = PresenceHead(4, 2, "avgmax")
    pooled = head[1](head[0](x))
    assert pooled.shape == (1, 8)
    assert pooled[0, 1].item() == pytest.approx(10 / 256) and pooled[0, 5].item() == 10.0
    assert pooled[0, [0, 2, 3, 4, 6, 7]].abs().sum().item() == 0
    assert head[2].in_features == 8 and PresenceHead(4, 2)[2].in_features == 4
    assert set(head.state_dict()) == set(PresenceHead(4, 2).state_dict()) == {"2.weight", "2.bias"}
    model = model_from_config(Config(model="unet", base_channels=8, aux_head=True, presence_pool="avgmax"))
    assert model.presence_head[2].in_features == 2 * model.encoder.out_channels[-1]
    with pytest.raises(ConfigError, match="presence_pool"):
        Config(presence_pool="max")


def test_the_former_name_of_the_timm_u_net_still_builds_it():
    """`unet-convnext-attention` (the name of the model behind every pretrained recipe until it was renamed for what
    it is, a U-Net on any timm encoder) is an alias: the registry, the config and old class name all accept it."""
    from skinseg.models import MODELS, TimmAttentionUNet

    assert "unet-convnext-attention" not in MODEL_NAMES and MODELS[CONVNEXT] is TimmAttentionUNet
    assert ConvNeXtUNet is TimmAttentionUNet
    assert type(create_model("unet-convnext-attention", encoder="convnext_atto")) is TimmAttentionUNet
    assert Config(model="unet-convnext-attention").model == CONVNEXT
    with pytest.raises(ConfigError, match="did you mean"):
        Config.from_dict({"model": "unet-convnext-atention"})
