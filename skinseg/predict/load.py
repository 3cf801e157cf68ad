"""A checkpoint or ensemble file as a model ready to predict: weights loaded, on its device, in eval mode."""
from __future__ import annotations

from pathlib import Path

import torch

from skinseg.checkpoint import (check_for_inference, checkpoint_config, is_ensemble, load_checkpoint,
                                load_model_weights)
from skinseg.config import Config
from skinseg.runtime import amp_for_model, pick_amp, pick_device


def load_for_inference(checkpoint: str | Path, device: str = "auto"):
    """(model in eval mode, config, checkpoint state, device, amp dtype) from a checkpoint or ensemble file."""
    from skinseg.models import model_from_config

    state = load_checkpoint(checkpoint)
    check_for_inference(state, checkpoint)
    if is_ensemble(state):
        from skinseg.predict.ensemble import ensemble_from_state

        model, cfg = ensemble_from_state(state, str(checkpoint))
    else:
        cfg = checkpoint_config(state["config"], str(checkpoint))
        model = model_from_config(cfg)
        load_model_weights(model, state, checkpoint)
    model, dev, amp_dtype = ready_for_inference(model, cfg, device)
    return model, cfg, state, dev, amp_dtype


def ready_for_inference(model: torch.nn.Module, cfg: Config, device: str):
    """The model on its device in eval mode (channels_last when configured), the device and the amp dtype."""
    dev = pick_device(device)
    model = model.to(dev).eval()
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp_dtype, _ = amp_for_model(pick_amp(cfg.amp, dev)[0], dev, model)
    return model, dev, amp_dtype
