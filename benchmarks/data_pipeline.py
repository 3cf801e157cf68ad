"""Samples/s of the per-sample decode+resize path (the course project's) vs the preprocessing cache.

(a) decode the JPEG and the five mask PNGs at full size, resize to the training size, train augmentation;
(b) read the cache (memory-mapped, bit-packed masks), train augmentation.
Both produce the same tensors. Sources: the real 256 px training split (SKINSEG_ISIC_ROOT) and a synthetic
split at the official images' typical size (1022x767, with a few at 4000+ px).

    .venv/bin/python benchmarks/data_pipeline.py [--samples 200] [--synthetic-images 60]

With ``--loader-workers 0,2,4,8,16`` it prints instead the training DataLoader alone (cache, train augmentation,
collation, batch 32, 256 px; real data from SKINSEG_ISIC_ROOT or --data) in images/s per worker count: the
loader's headroom over the GPU's training step.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from skinseg.config import Config  # noqa: E402
from skinseg.data.augment import train_transform  # noqa: E402
from skinseg.data.cache import build_cache  # noqa: E402
from skinseg.data.dataset import ISICDataset  # noqa: E402
from skinseg.data.isic import ATTRIBUTES, get_split  # noqa: E402


def decode_per_sample(split, image_id: str, size: int, transform):
    """The course project's way: full decode of the JPEG and five PNGs every time, then resize."""
    image = cv2.cvtColor(cv2.imread(str(split.image_path(image_id))), cv2.COLOR_BGR2RGB)
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    masks = [
        cv2.resize(cv2.imread(str(split.mask_path(image_id, a)), cv2.IMREAD_GRAYSCALE), (size, size),
                   interpolation=cv2.INTER_NEAREST) > 127
        for a in ATTRIBUTES
    ]
    out = transform(image=image, mask=np.stack(masks, -1).astype(np.uint8))
    return out["image"], out["mask"].float()


def rate(fn, n: int, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for k in range(n):
            fn(k)
        times.append(time.perf_counter() - start)
    return n / statistics.median(times)


def bench(name: str, split, cfg: Config, samples: int, cache_root: Path) -> dict:
    transform = train_transform(cfg)
    start = time.perf_counter()
    cache = build_cache(split, cfg.image_size, cfg.resize_mode, root=cache_root, progress=False)
    build_s = time.perf_counter() - start
    ds = ISICDataset(cache, transform)
    n = min(samples, len(split))
    ids = split.ids
    a = rate(lambda k: decode_per_sample(split, ids[k % len(ids)], cfg.image_size, transform), n)
    b = rate(lambda k: ds[k % len(ds)], n)
    return {"source": name, "images": len(split), "cache build s": build_s, "(a) decode+resize /s": a,
            "(b) cache+augment /s": b, "ratio b/a": b / a}


def _batches(loader):
    """The loader's batches, epoch after epoch (its workers persist)."""
    while True:
        yield from loader


def loader_rates(root: str, workers: list[int], batches: int, batch_size: int = 32, size: int = 256) -> None:
    """images/s of the training DataLoader in steady state: after the first batch (which starts the workers)
    and after the batches the workers prefetched meanwhile (``prefetch_factor`` per worker), not timed."""
    from skinseg.data.dataset import make_loader

    print(f"training DataLoader alone: real ISIC train at {size} px, train augmentation, batch {batch_size}, "
          f"{batches} batches timed after the first and the prefetched ones, {os.cpu_count()} CPUs")
    print(f"{'workers':>7s} {'images/s':>9s}")
    for n in workers:
        cfg = Config(data_root=root, image_size=size, batch_size=batch_size, num_workers=n)
        loader = make_loader(cfg, "train", train=True)
        it = _batches(loader)
        for _ in range(1 + n * (loader.prefetch_factor or 0)):
            next(it)
        start, seen = time.perf_counter(), 0
        for _ in range(batches):
            seen += len(next(it)["image"])
        print(f"{n:7d} {seen / (time.perf_counter() - start):9.1f}", flush=True)
        del it, loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--synthetic-images", type=int, default=60)
    parser.add_argument("--loader-workers", help="comma-separated worker counts: time the DataLoader alone")
    parser.add_argument("--batches", type=int, default=20, help="batches per worker count (--loader-workers)")
    parser.add_argument("--data", default=os.environ.get("SKINSEG_ISIC_ROOT"), help="real data root")
    args = parser.parse_args()
    if args.loader_workers:
        if not args.data:
            raise SystemExit("--loader-workers needs the real data: --data ROOT or SKINSEG_ISIC_ROOT")
        loader_rates(args.data, [int(w) for w in args.loader_workers.split(",")], args.batches)
        return
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    cfg = Config(image_size=256)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        real = os.environ.get("SKINSEG_ISIC_ROOT")
        if real:
            rows.append(bench("real ISIC train, 256 px", get_split(real, "train"), cfg, args.samples, tmp / "c"))
        else:
            print("SKINSEG_ISIC_ROOT not set: skipping the real-data source")
        from skinseg.data.synth import write_synthetic

        n = args.synthetic_images
        sizes = [(1022, 767)] * (n - 3) + [(4000, 3000), (4288, 2848), (4499, 3000)]
        write_synthetic(tmp / "synth", n_train=n, n_val=0, n_test=0, seed=0, sizes=sizes, progress=False)
        rows.append(bench("synthetic 1022x767 (+3 at 4000+ px)", get_split(tmp / "synth", "train"), cfg,
                          args.samples, tmp / "c"))
    print(f"\nsingle process, 1 thread, train augmentation in both paths, image_size {cfg.image_size}")
    header = list(rows[0])
    print(" | ".join(header))
    for r in rows:
        print(" | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in r.values()))


if __name__ == "__main__":
    main()
