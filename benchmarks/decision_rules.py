"""Would a decision rule beyond per-attribute thresholds raise a trained model's official score? Scores, without
retraining, gating each attribute of an image by a statistic of its own probability map (its peak, raw or averaged
over 9 or 31 px windows, or its mean), the gate's cut-off tuned together with the thresholds
(``ThresholdSweep.tune(tune_gate=True)``), against thresholds alone. Each rule is scored three ways: tuned and
scored on dev (optimistic), 2-fold on dev (tuned on one seeded half, scored on the other, mean of both), and tuned
on dev, scored on val. ``--bins 1000`` makes the threshold grid ten times finer.

Not a speed benchmark: a score study on real data, quoted in the README's real-data results.

    .venv/bin/python benchmarks/decision_rules.py CHECKPOINT [--data ROOT] [--bins 100] [--probs FILE]
        [--rules none,peak1,peak9,peak31,mean]
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from skinseg.data.dataset import make_loader  # noqa: E402
from skinseg.metrics import ThresholdSweep  # noqa: E402
from skinseg.predict.load import load_for_inference  # noqa: E402
from skinseg.predict.loop import predict_batches  # noqa: E402
from skinseg.scoring import Scores, scores_from_counts  # noqa: E402

RULES = ("none", "peak1", "peak9", "peak31", "mean")
CUTOFFS = (0.0,) + tuple(float(c) for c in np.round(np.arange(0.1, 1.0, 0.05), 3))


def predict(checkpoint: str, data: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities (fp16) and truth (bool) of a split, N x C x H x W, at the model's input size."""
    model, cfg, _, dev, amp = load_for_inference(checkpoint, "cpu")
    loader = make_loader(cfg.replace(data_root=data, num_workers=0), split, train=False)
    probs, truth = [], []
    for pb in predict_batches(model, loader, dev, "none", amp, cfg.channels_last):
        probs.append(pb.probs.half())
        truth.append(pb.target.bool())
    return torch.cat(probs), torch.cat(truth)


def statistic(probs: torch.Tensor, rule: str) -> torch.Tensor | None:
    """The image-level statistic (N x C, in [0, 1]) a rule gates by; None for thresholds alone."""
    if rule == "none":
        return None
    p = probs.float()
    if rule == "mean":
        return (p.mean((2, 3)) * 5).clamp(0, 1)  # x5: the mean probability is small, the cut-off grid is [0, 1)
    k = int(rule.removeprefix("peak"))
    return (p if k == 1 else F.avg_pool2d(p, k, 1, k // 2)).amax((2, 3))


def sweep(probs, truth, stat, index, bins: int) -> ThresholdSweep:
    s = ThresholdSweep(probs.shape[1], bins=bins, gate_cutoffs=CUTOFFS if stat is not None else (0.0,))
    for start in range(0, len(index), 32):
        j = index[start:start + 32]
        s.update(probs[j].float(), truth[j].float(), None if stat is None else stat[j])
    return s


def score(s: ThresholdSweep, thresholds, cutoffs) -> Scores:
    """Official scores at per-attribute thresholds and per-attribute gate cut-offs (``counts`` takes one gate)."""
    gates = s.gate_cutoffs.tolist()
    rows = [[x[c] for x in s.counts(thresholds, gates.index(cutoffs[c]))] for c in range(len(thresholds))]
    return scores_from_counts(*(torch.stack(column) for column in zip(*rows)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--data", default=os.environ.get("SKINSEG_ISIC_ROOT"), help="default: $SKINSEG_ISIC_ROOT")
    parser.add_argument("--bins", type=int, default=100, help="threshold grid steps")
    parser.add_argument("--probs", help="keep the dev and val predictions in this file and reuse them")
    parser.add_argument("--rules", default=",".join(RULES))
    args = parser.parse_args()
    if not args.data:
        parser.error("pass --data or set SKINSEG_ISIC_ROOT")
    if args.probs and Path(args.probs).exists():
        pd_, td, pv, tv = torch.load(args.probs)
    else:
        (pd_, td), (pv, tv) = (predict(args.checkpoint, args.data, split) for split in ("dev", "val"))
        if args.probs:
            torch.save((pd_, td, pv, tv), args.probs)
    perm = np.random.default_rng(0).permutation(len(pd_))
    halves = perm[: len(perm) // 2], perm[len(perm) // 2:]
    for rule in args.rules.split(","):
        sd, sv = statistic(pd_, rule), statistic(pv, rule)
        gate = sd is not None
        thresholds, cutoffs, on_dev = sweep(pd_, td, sd, np.arange(len(pd_)), args.bins).tune(tune_gate=gate)
        val = score(sweep(pv, tv, sv, np.arange(len(pv)), args.bins), thresholds, cutoffs)
        folds = []
        for a, b in ((0, 1), (1, 0)):
            t2, c2, _ = sweep(pd_, td, sd, halves[a], args.bins).tune(tune_gate=gate)
            folds.append(score(sweep(pd_, td, sd, halves[b], args.bins), t2, c2).overall)
        print(f"{rule:7s} dev tuned on dev {on_dev:.4f}  dev 2-fold {np.mean(folds):.4f} ({folds[0]:.4f} "
              f"{folds[1]:.4f})  val {val.overall:.4f}  val per attribute "
              f"{[round(v, 3) for v in val.jaccard.values()]}  thresholds {thresholds}  cut-offs {cutoffs}",
              flush=True)


if __name__ == "__main__":
    main()
