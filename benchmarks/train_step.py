"""Seconds per training step and images/s per model at 256 px, batch 8: fp32 vs bf16 autocast, channels_last
on/off, on the CPU here and on a GPU when one is visible (bf16 and fp16 there). The last column says what skinseg
runs for `amp: bf16` (``skinseg.runtime.amp_for_model``): on a CPU, fp32 wherever bf16 is slower.

    .venv/bin/python benchmarks/train_step.py [--steps 3] [--batch 8] [--size 256] [--models unet,...]

A model is a registry name, optionally with an encoder: ``unet-timm-attention:tf_efficientnet_lite0``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from skinseg.config import Config  # noqa: E402
from skinseg.losses import CombinedLoss  # noqa: E402
from skinseg.models import MODEL_NAMES, create_model  # noqa: E402
from skinseg.runtime import amp_for_model  # noqa: E402
from skinseg.train.optim import build_optimizer  # noqa: E402


def build(spec: str) -> torch.nn.Module:
    name, _, encoder = spec.partition(":")
    return create_model(name, **({"encoder": encoder} if encoder else {}))


def step_time(name: str, device: torch.device, dtype, channels_last: bool, batch: int, size: int,
              steps: int) -> float:
    torch.manual_seed(0)
    model = build(name).to(device)
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
    p.add_argument("--models", default=",".join([*MODEL_NAMES, "unet-timm-attention:tf_efficientnet_lite0"]))
    p.add_argument("--channels-last", default="both", choices=("both", "on", "off"))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--json", help="also append one JSON line per row to this file")
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
    print(f"{'model':48s} {'precision':9s} {'channels_last':13s} {'s/step':>8s} {'images/s':>9s}  amp: bf16 runs")
    layouts = {"both": (False, True), "on": (True,), "off": (False,)}[args.channels_last]
    for name in args.models.split(","):
        chosen, _ = amp_for_model(torch.bfloat16, device, build(name))
        runs = "bf16" if chosen == torch.bfloat16 else "fp32"
        for mode, dtype in modes:
            for cl in layouts:
                t = step_time(name, device, dtype, cl, args.batch, args.size, args.steps)
                print(f"{name:48s} {mode:9s} {str(cl):13s} {t:8.3f} {args.batch / t:9.1f}  {runs}", flush=True)
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps({"model": name, "precision": mode, "channels_last": cl, "batch": args.batch,
                                            "size": args.size, "seconds_per_step": t,
                                            "images_per_s": args.batch / t}) + "\n")


if __name__ == "__main__":
    main()
