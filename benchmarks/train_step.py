"""Seconds per training step and images/s per model at 256 px, batch 8: fp32 vs bf16 autocast, channels_last
on/off, on the CPU here and on a GPU when one is visible (bf16 and fp16 there).

    .venv/bin/python benchmarks/train_step.py [--steps 3] [--batch 8] [--size 256] [--models unet,...]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from skinseg.config import Config  # noqa: E402
from skinseg.losses import CombinedLoss  # noqa: E402
from skinseg.models import MODEL_NAMES, create_model  # noqa: E402
from skinseg.train.optim import build_optimizer  # noqa: E402


def step_time(name: str, device: torch.device, dtype, channels_last: bool, batch: int, size: int,
              steps: int) -> float:
    torch.manual_seed(0)
    model = create_model(name).to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    y = (torch.rand(batch, 5, size, size, device=device) > 0.9).float()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = build_optimizer(Config(), model)
    loss_fn = CombinedLoss({"bce": 1.0, "dice": 1.0})
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    times = []
    for k in range(steps + 1):  # the first step warms up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(x)
        loss = loss_fn(out, y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if k:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--models", default=",".join(MODEL_NAMES))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = p.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          (args.device if args.device != "auto" else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        modes = [("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)]
        label = torch.cuda.get_device_name()
    else:
        modes = [("fp32", None), ("bf16", torch.bfloat16)]
        label = f"CPU, {torch.get_num_threads()} threads"
    print(f"train step (forward + loss + backward + AdamW), {args.size} px, batch {args.batch}, {label}, "
          f"median of {args.steps}")
    print(f"{'model':26s} {'precision':9s} {'channels_last':13s} {'s/step':>8s} {'images/s':>9s}")
    for name in args.models.split(","):
        for mode, dtype in modes:
            for cl in (False, True):
                t = step_time(name, device, dtype, cl, args.batch, args.size, args.steps)
                print(f"{name:26s} {mode:9s} {str(cl):13s} {t:8.3f} {args.batch / t:9.1f}", flush=True)


if __name__ == "__main__":
    main()
