"""What a model looks like: parameters, stage shapes, output shape and forward time at a given size."""
from __future__ import annotations

import statistics
import time

import torch

from skinseg.models.base import SegmentationModel, pad_to_multiple


@torch.no_grad()
def stage_shapes(model: SegmentationModel, size: int = 256) -> list[tuple[str, int, int]]:
    """(stage name, channels, resolution) of every encoder feature map and decoder block, input to output."""
    model.eval()
    x = pad_to_multiple(torch.zeros(1, model.in_channels, size, size), model.size_multiple)
    features = model.extract_features(x)
    rows = [(f"enc{k} /{size // f.shape[-1]}", f.shape[1], f.shape[-1]) for k, f in enumerate(features)]
    outputs: list[torch.Tensor] = []
    hooks = [b.register_forward_hook(lambda m, i, o: outputs.append(o)) for b in model.decoder.blocks]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    rows += [(f"dec{k} /{size // o.shape[-1]}", o.shape[1], o.shape[-1]) for k, o in enumerate(outputs)]
    return rows


@torch.no_grad()
def summarize(model: SegmentationModel, size: int = 256, batch: int = 1, repeats: int = 3) -> dict:
    """Parameters (total, trainable), output shape and median eval-mode forward time in ms on the CPU."""
    model.eval()
    x = torch.randn(batch, model.in_channels, size, size)
    out = model(x)
    logits = out[0] if isinstance(out, tuple) else out
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return {
        "parameters (M)": sum(p.numel() for p in model.parameters()) / 1e6,
        "output shape": tuple(logits.shape),
        "forward ms": 1000 * statistics.median(times),
    }
