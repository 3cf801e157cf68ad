"""Per-step overhead of the trainer: a one-convolution model through the real ``Trainer`` (loader, loss, optimizer,
schedule, logging, validation with threshold tuning, checkpoints), batch 16, 64 px, so that almost all of a step
is the trainer's own work. Prints steps/s and the epoch split (training / validation / checkpoints).

    .venv/bin/python benchmarks/trainer_overhead.py [--epochs 4] [--images 480] [--log-every 10]

To compare with another version of skinseg, run this file with that version first on PYTHONPATH, e.g. a
``git worktree add /tmp/old <commit>`` and ``PYTHONPATH=/tmp/old``; it uses only what both versions have.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import skinseg  # noqa: E402
import skinseg.train.loop as loop  # noqa: E402
from skinseg.config import Config  # noqa: E402
from skinseg.data.synth import write_synthetic  # noqa: E402
from skinseg.runs import read_metrics  # noqa: E402


class OneConv(nn.Module):
    """The smallest segmentation model: one 3x3 convolution from RGB to the 5 attribute logits."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--images", type=int, default=480)
    p.add_argument("--log-every", type=int, default=10, help="(versions that have it) steps between loss reads")
    p.add_argument("--no-augment", action="store_true", help="every augmentation off: the trainer's own cost")
    args = p.parse_args()
    torch.manual_seed(0)
    loop.model_from_config = lambda cfg: OneConv()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["SKINSEG_CACHE_DIR"] = str(tmp / "cache")
        write_synthetic(tmp / "data", n_train=args.images, n_val=48, n_test=0, seed=0, sizes=[(64, 64)],
                        progress=False)
        values = dict(data_root=str(tmp / "data"), image_size=64, batch_size=16, epochs=args.epochs,
                      model="unet", output_dir=str(tmp / "runs"), amp="off", num_workers=0, scheduler="cosine")
        if args.no_augment:
            values.update(aug_flip_p=0.0, aug_rotate90_p=0.0, aug_rotate_p=0.0, aug_scale_p=0.0, aug_color_p=0.0)
        if "log_every" in Config.keys():
            values["log_every"] = args.log_every
        trainer = loop.Trainer(Config(**values), progress=False)
        trainer.fit()
        step_rows, epochs = read_metrics(trainer.run_dir)
    epochs = epochs.reset_index(drop=True)
    steps = len(trainer.train_loader)
    # an epoch's wall time, from the previous epoch's row to its own (so the first epoch, with warm-up, is left out)
    ends = epochs["time"].to_numpy()
    per_epoch = list(ends[1:] - ends[:-1])
    train_s = epochs["epoch_seconds"][1:]
    med_epoch, med_train = statistics.median(per_epoch), statistics.median(train_s)
    print(f"skinseg {Path(skinseg.__file__).parent}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"one-convolution model, batch 16, 64 px, {args.images} images ({steps} steps per epoch), "
          f"augmentation {'off' if args.no_augment else 'on'}, "
          f"{args.epochs} epochs; medians over epochs 2-{args.epochs}")
    print(f"training: {steps / med_train:.1f} steps/s ({1000 * med_train / steps:.1f} ms per step)")
    line = f"epoch {med_epoch:.2f} s: training {med_train:.2f} s ({100 * med_train / med_epoch:.0f}%)"
    if "val_seconds" in epochs:
        v, c = statistics.median(epochs["val_seconds"][1:]), statistics.median(epochs["checkpoint_seconds"][1:])
        line += f", validation {v:.2f} s ({100 * v / med_epoch:.0f}%), checkpoints {c:.2f} s ({100 * c / med_epoch:.0f}%)"
    else:
        rest = med_epoch - med_train
        line += f", validation + checkpoints {rest:.2f} s ({100 * rest / med_epoch:.0f}%)"
    print(line)
    print(f"step rows logged: {len(step_rows)}")


if __name__ == "__main__":
    main()
