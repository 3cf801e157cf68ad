"""Parameters and CPU latency of the four models at their default widths (U-Nets 32 wide, ConvNeXt-Tiny encoder).

Forward: eval mode under inference_mode. Forward+backward: train mode, a loss on the logits, backward.
fp32 and bf16 autocast, with the input and model in contiguous or channels_last memory format.
Times are medians of ``--repeats`` runs after one warm-up.

    .venv/bin/python benchmarks/models.py [--repeats 3] [--size 256] [--batch 4] [--threads N]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from skinseg.models import MODEL_NAMES, create_model  # noqa: E402


def median_ms(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up: allocator, oneDNN kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def benchmark(name: str, size: int, batch: int, repeats: int) -> list[tuple]:
    torch.manual_seed(0)
    model = create_model(name)
    params = sum(p.numel() for p in model.parameters())
    rows = []
    for channels_last in (False, True):
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=memory_format)
        x = torch.randn(batch, 3, size, size).to(memory_format=memory_format)
        for precision in ("fp32", "bf16"):
            def autocast():
                if precision == "bf16":
                    return torch.autocast("cpu", dtype=torch.bfloat16)
                return contextlib.nullcontext()

            def forward():
                model.eval()
                with torch.inference_mode(), autocast():
                    model(x)

            def forward_backward():
                model.train()
                model.zero_grad(set_to_none=True)
                with autocast():
                    logits = model(x)
                logits.float().square().mean().backward()

            rows.append((name, params, precision, channels_last, median_ms(forward, repeats),
                         median_ms(forward_backward, repeats)))
            print(format_row(rows[-1]), flush=True)
    return rows


HEADER = f"| {'model':<24} | {'params':>7} | {'precision':<9} | {'channels_last':<13} | {'forward ms':>10} | {'fwd+bwd ms':>10} |"


def format_row(row: tuple) -> str:
    name, params, precision, channels_last, forward, forward_backward = row
    return (f"| {name:<24} | {params / 1e6:>6.2f}M | {precision:<9} | {str(channels_last):<13} | {forward:>10.0f} | "
            f"{forward_backward:>10.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per cell, after one warm-up (median)")
    parser.add_argument("--size", type=int, default=256, help="input height and width")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"batch {args.batch} x 3 x {args.size} x {args.size}, median of {args.repeats} after 1 warm-up")
    print(HEADER)
    print("|" + "|".join("-" * (len(c)) for c in HEADER.split("|")[1:-1]) + "|", flush=True)
    for name in args.models:
        benchmark(name, args.size, args.batch, args.repeats)


if __name__ == "__main__":
    main()
