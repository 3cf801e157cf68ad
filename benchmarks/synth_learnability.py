"""Are the synthetic textures learnable? A small U-Net trained for a few CPU minutes must clearly beat the empty mask.

Generates a small synthetic set to a temporary folder, loads it with cv2 at 128 px, trains a self-contained 3-level
U-Net with BCE + soft dice for ``--minutes`` of wall time, and scores the validation split with the official ISIC 2018
Task 2 Jaccard at the original image size, next to the empty prediction (whose official score is 0.0).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/synth_learnability.py [--minutes 3] [--boost]

Self-contained on purpose (its own model, loss and metric): it checks the data, not the rest of the package.
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from skinseg.data.isic import ATTRIBUTES, get_split
from skinseg.data.synth import DEFAULT_PREVALENCE, write_synthetic


def load_split(root: Path, split: str, width: int, height: int):
    """Images resized to width x height (float32 N x 3 x H x W, 0..1), resized masks (N x 5 x H x W) and the
    full-size masks (list of bool 5 x H x W) for scoring at the original resolution."""
    s = get_split(root, split)
    images, masks, full = [], [], []
    for image_id in s.ids:
        img = cv2.cvtColor(cv2.imread(str(s.image_path(image_id))), cv2.COLOR_BGR2RGB)
        m = np.stack([cv2.imread(str(s.mask_path(image_id, a)), cv2.IMREAD_GRAYSCALE) for a in ATTRIBUTES]) > 127
        images.append(cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA).transpose(2, 0, 1) / 255.0)
        masks.append(np.stack([cv2.resize(c.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
                               for c in m]) > 0.5)
        full.append(m)
    return (torch.tensor(np.stack(images), dtype=torch.float32),
            torch.tensor(np.stack(masks), dtype=torch.float32), full)


def conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class SmallUNet(nn.Module):
    """Three encoder levels (base, 2x, 4x channels), a bottleneck and a mirrored decoder with skip connections."""

    def __init__(self, in_channels: int = 3, classes: int = 5, base: int = 16):
        super().__init__()
        c = [base, 2 * base, 4 * base, 8 * base]
        self.down = nn.ModuleList([conv_block(in_channels, c[0]), conv_block(c[0], c[1]), conv_block(c[1], c[2])])
        self.bottleneck = conv_block(c[2], c[3])
        self.up = nn.ModuleList([nn.ConvTranspose2d(c[i + 1], c[i], 2, stride=2) for i in (2, 1, 0)])
        self.dec = nn.ModuleList([conv_block(2 * c[i], c[i]) for i in (2, 1, 0)])
        self.head = nn.Conv2d(c[0], classes, 1)
        # Start from a ~5 % foreground prior instead of 50 %: the first minutes then go to finding textures, not to
        # unlearning a uniform 0.5 that the soft dice term otherwise keeps propping up.
        nn.init.constant_(self.head.bias, -3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = dec(torch.cat([up(x), skip], 1))
        return self.head(x)


def bce_soft_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # Dice per attribute over the whole batch: rare attributes still get a gradient that BCE alone would drown.
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum((0, 2, 3))
    dice = (2 * inter + 1) / (prob.sum((0, 2, 3)) + target.sum((0, 2, 3)) + 1)
    return F.binary_cross_entropy_with_logits(logits, target) + (1 - dice).mean()


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seconds: float, batch: int, lr: float) -> int:
    """Train for ``seconds`` of wall time with a cosine learning rate over that time; returns the epochs run."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(0)
    start, epoch = time.perf_counter(), 0
    while (elapsed := time.perf_counter() - start) < seconds:
        model.train()
        losses = []
        for idx in torch.randperm(len(x), generator=gen).split(batch):
            frac = min(1.0, (time.perf_counter() - start) / seconds)
            for g in opt.param_groups:
                g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * frac))
            xb, yb = x[idx], y[idx]
            if torch.rand(1, generator=gen) < 0.5:  # flips keep the textures' statistics, double the data
                xb, yb = xb.flip(3), yb.flip(3)
            if torch.rand(1, generator=gen) < 0.5:
                xb, yb = xb.flip(2), yb.flip(2)
            loss = bce_soft_dice(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if time.perf_counter() - start >= seconds:
                break
        epoch += 1
        print(f"epoch {epoch:3d}  {elapsed:6.0f} s  loss {np.mean(losses):.4f}", flush=True)
    return epoch


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, full_masks: list[np.ndarray]) -> list[np.ndarray]:
    """Binary predictions (threshold 0.5) at each image's original size."""
    model.eval()
    probs = torch.sigmoid(torch.cat([model(b) for b in x.split(16)])).numpy()
    out = []
    for p, m in zip(probs, full_masks):
        h, w = m.shape[1:]
        out.append(np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR) for c in p]) >= 0.5)
    return out


def official_jaccard(preds: list[np.ndarray], truths: list[np.ndarray]) -> tuple[dict[str, float], float]:
    """ISIC 2018 Task 2 score: per image and attribute TP/FP/FN as fractions of the image's pixels, summed over
    images; per attribute TP / (TP + FP + FN) of the sums (1.0 when that is 0); overall from the sums of all."""
    tp = np.zeros(len(ATTRIBUTES))
    fp = np.zeros(len(ATTRIBUTES))
    fn = np.zeros(len(ATTRIBUTES))
    for p, t in zip(preds, truths):
        n = t[0].size
        tp += (p & t).reshape(len(ATTRIBUTES), -1).sum(1) / n
        fp += (p & ~t).reshape(len(ATTRIBUTES), -1).sum(1) / n
        fn += (~p & t).reshape(len(ATTRIBUTES), -1).sum(1) / n
    denom = tp + fp + fn
    per = {a: float(tp[i] / denom[i]) if denom[i] > 0 else 1.0 for i, a in enumerate(ATTRIBUTES)}
    return per, float(tp.sum() / denom.sum()) if denom.sum() > 0 else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="training wall time")
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--n-val", type=int, default=40)
    parser.add_argument("--size", type=int, default=128, help="training width in px (height 3/4 of it)")
    parser.add_argument("--boost", action="store_true", help="raise every attribute's prevalence to at least 0.4")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    prevalence = {a: max(p, 0.4) for a, p in DEFAULT_PREVALENCE.items()} if args.boost else None
    width, height = args.size, args.size * 3 // 4 // 8 * 8  # divisible by 8 for three poolings

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_synthetic(tmp, n_train=args.n_train, n_val=args.n_val, n_test=0, seed=args.seed,
                        prevalence=prevalence, progress=True)
        gen_s = time.perf_counter() - t0
        x, y, _ = load_split(Path(tmp), "train", width, height)
        xv, _, truths = load_split(Path(tmp), "val", width, height)
    print(f"generated {args.n_train}+{args.n_val} images in {gen_s:.1f} s; training at {width}x{height}, "
          f"{torch.get_num_threads()} thread(s), prevalence {'boosted' if args.boost else 'default'}")
    train_prev = (y.flatten(2).amax(2) > 0).float().mean(0).tolist()

    model = SmallUNet()
    epochs = train(model, x, y, args.minutes * 60, args.batch, args.lr)
    per, overall = official_jaccard(predict(model, xv, truths), truths)
    per0, overall0 = official_jaccard([np.zeros_like(t) for t in truths], truths)

    val_prev = np.mean([t.reshape(len(ATTRIBUTES), -1).any(1) for t in truths], 0)
    print(f"\nofficial ISIC 2018 Task 2 Jaccard on {len(truths)} val images after {epochs} epochs "
          f"({args.minutes:g} min):")
    print(f"{'attribute':18s} {'train prev':>10s} {'val prev':>9s} {'U-Net':>7s} {'empty':>7s}")
    for i, a in enumerate(ATTRIBUTES):
        print(f"{a:18s} {train_prev[i]:10.2f} {val_prev[i]:9.2f} {per[a]:7.3f} {per0[a]:7.3f}")
    print(f"{'overall (micro)':18s} {'':10s} {'':9s} {overall:7.3f} {overall0:7.3f}")


if __name__ == "__main__":
    main()
