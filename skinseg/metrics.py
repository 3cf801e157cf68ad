"""The official ISIC 2018 Task 2 score as streaming accumulators on the device (:class:`OfficialScore`), the
threshold sweep that tunes decisions on it exactly (:class:`ThresholdSweep`), and image-level presence AUC.

The formula itself (per-image normalized TP, FP, FN, TN; Jaccard from their sums; the micro average as the
leaderboard number) lives in :mod:`skinseg.scoring`, torch-free; these accumulators run it on tensors.
"""
from __future__ import annotations

import numpy as np
import torch

from skinseg.data.isic import ATTRIBUTES
from skinseg.scoring import Scores, normalized_counts, scores_from_counts


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the DDP ranks, on its own device (itself without an initialized process group).
    The one running-total reduction: the metric's counts, the threshold histograms and the epoch loss use it;
    on nccl the sum is taken on the GPU."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return tensor
    out = tensor.cuda() if torch.distributed.get_backend() == "nccl" else tensor.clone()
    torch.distributed.all_reduce(out)
    return out.to(tensor.device)


class OfficialScore:
    """Streaming accumulator of the official score; counts stay on the device of the first update.

    Args:
        classes: number of attributes (channels).
        attributes: their names, for the report.
    """

    def __init__(self, classes: int = len(ATTRIBUTES), attributes: tuple[str, ...] = ATTRIBUTES):
        self.classes = classes
        self.attributes = attributes[:classes] if len(attributes) >= classes else tuple(f"c{i}" for i in range(classes))
        self.reset()

    def reset(self) -> None:
        self.counts = torch.zeros(4, self.classes, dtype=torch.float64)  # tp, fp, fn, tn
        self.images = 0

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``pred`` binary decisions (bool or 0/1), ``target`` 0/1 masks; both B x C x H x W.

        Images of different sizes are added one call each.
        """
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        if pred.dim() == 3:
            pred, target = pred[None], target[None]
        p, t = pred.bool(), target > 0.5
        self.add((p & t).sum((-1, -2)), p.sum((-1, -2)), t.sum((-1, -2)), p.shape[-1] * p.shape[-2])

    @torch.no_grad()
    def add(self, both, pred, truth, pixels) -> None:
        """Add images by their pixel counts, B x C each (tensors or arrays): positive in prediction and truth
        (``both``), in the prediction, in the truth; ``pixels`` is each image's pixel count (B, or one number).

        The official formula (:func:`skinseg.scoring.normalized_counts`): TP, FP, FN and TN of each image and
        attribute divided by the image's pixel count.
        """
        batch = normalized_counts(*(torch.as_tensor(x) for x in (both, pred, truth)), pixels)
        if self.counts.device != batch.device:
            self.counts = self.counts.to(batch.device)
        self.counts += batch
        self.images += len(both)

    def all_reduce(self) -> None:
        """Sum the counts across DDP ranks (no-op without an initialized process group)."""
        state = sum_over_ranks(torch.cat([self.counts.flatten(), torch.tensor(
            [float(self.images)], dtype=torch.float64, device=self.counts.device)]))
        self.counts = state[:-1].view(4, self.classes)
        self.images = int(round(float(state[-1])))

    def compute(self) -> Scores:
        tp, fp, fn, _ = self.counts
        return scores_from_counts(tp, fp, fn, self.attributes)


def official_score(preds, targets) -> Scores:
    """Official score of lists (or batches) of binary predictions and truths; sizes may differ per image."""
    acc = OfficialScore(classes=preds[0].shape[-3])
    for p, t in zip(preds, targets):
        acc.update(torch.as_tensor(p), torch.as_tensor(t))
    return acc.compute()


class ThresholdSweep:
    """Streams per-image normalized histograms of probabilities, to score every threshold at once.

    With ``bins`` thresholds at k / bins, TP(t) is the normalized count of positive pixels with probability
    >= t, summed over images; FP and FN likewise. That makes per-attribute threshold tuning (and gating by a
    presence probability) exact on the official metric without storing predictions.
    """

    def __init__(self, classes: int = len(ATTRIBUTES), bins: int = 100,
                 gate_cutoffs: tuple[float, ...] = (0.0,)):
        self.classes, self.bins = classes, bins
        self.gate_cutoffs = torch.tensor(gate_cutoffs, dtype=torch.float64)
        g = len(gate_cutoffs)
        self.pos = torch.zeros(g, classes, bins, dtype=torch.float64)  # gated-in positive pixels per bin
        self.neg = torch.zeros(g, classes, bins, dtype=torch.float64)
        self.pos_total = torch.zeros(classes, dtype=torch.float64)  # all positive pixels (FN when gated out)

    @torch.no_grad()
    def update(self, probs: torch.Tensor, target: torch.Tensor, presence: torch.Tensor | None = None) -> None:
        """``probs`` and ``target`` B x C x H x W; ``presence`` optional B x C presence probabilities."""
        if probs.dim() == 3:
            probs, target = probs[None], target[None]
            presence = None if presence is None else presence[None]
        b, c, h, w = probs.shape
        # NaN counted as 0: evaluation checks finiteness once, after the loop (skinseg.predict.loop.raise_non_finite)
        idx = (probs.float().nan_to_num(0.0).clamp(0, 1) * self.bins).long().clamp_max(self.bins - 1)
        idx = idx.reshape(b, c, -1)
        t = (target > 0.5).reshape(b, c, -1)
        offs = (torch.arange(b * c, device=idx.device) * self.bins).view(b, c, 1)
        flat = (idx + offs).reshape(-1)
        pos = torch.bincount(flat[t.reshape(-1)], minlength=b * c * self.bins).view(b, c, self.bins)
        neg = torch.bincount(flat[~t.reshape(-1)], minlength=b * c * self.bins).view(b, c, self.bins)
        pos, neg = pos.double() / (h * w), neg.double() / (h * w)
        if self.pos.device != pos.device:  # the histograms live where the probabilities are: no copy per batch
            self._to(pos.device)
        if presence is None:
            keep = torch.ones(len(self.gate_cutoffs), b, c, dtype=torch.float64, device=pos.device)
        else:
            keep = (presence.double()[None] >= self.gate_cutoffs.view(-1, 1, 1)).double()
        self.pos += torch.einsum("gbc,bck->gck", keep, pos)
        self.neg += torch.einsum("gbc,bck->gck", keep, neg)
        self.pos_total += pos.sum((0, 2))

    def _to(self, device) -> None:
        """Move the histograms (to the probabilities' device while counting; to the CPU, once, to be read)."""
        for name in ("pos", "neg", "pos_total", "gate_cutoffs"):
            setattr(self, name, getattr(self, name).to(device))

    def all_reduce(self) -> None:
        for name in ("pos", "neg", "pos_total"):
            setattr(self, name, sum_over_ranks(getattr(self, name)))

    def counts(self, thresholds, gate: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """TP, FP, FN per attribute at per-attribute thresholds (probability >= t is positive)."""
        self._to("cpu")
        k = torch.as_tensor([int(round(float(t) * self.bins)) for t in thresholds]).clamp(0, self.bins)
        ar = torch.arange(self.bins)
        above = (ar[None, :] >= k[:, None]).double()
        tp = (self.pos[gate] * above).sum(-1)
        fp = (self.neg[gate] * above).sum(-1)
        fn = self.pos_total - tp
        return tp, fp, fn

    def scores(self, thresholds, gate: int = 0) -> Scores:
        return scores_from_counts(*self.counts(thresholds, gate))

    def tune_each(self, grid: tuple[float, ...] | None = None) -> list[float]:
        """Each attribute's own best threshold: the one maximizing that attribute's Jaccard, whatever it does to
        the overall score (the per-attribute operating point, behind later papers' per-attribute and macro
        figures). The micro-optimal thresholds of :meth:`tune` instead switch an attribute off whenever its
        Jaccard is below the overall. Of equal scores the highest threshold wins (fewest false positives), so
        an attribute absent from the split, or never found, gets the highest."""
        self._to("cpu")
        grid = grid or tuple(k / self.bins for k in range(1, self.bins))
        ks = torch.as_tensor([int(round(t * self.bins)) for t in grid])
        tp_at = torch.cat([self.pos[0].flip(-1).cumsum(-1).flip(-1), torch.zeros(self.classes, 1,
                                                                                  dtype=torch.float64)], -1)
        fp_at = torch.cat([self.neg[0].flip(-1).cumsum(-1).flip(-1), torch.zeros(self.classes, 1,
                                                                                  dtype=torch.float64)], -1)
        tp, fp = tp_at[:, ks], fp_at[:, ks]
        union = tp + fp + (self.pos_total[:, None] - tp)
        jaccard = torch.where(union > 0, tp / union.clamp_min(1e-300), torch.ones_like(tp))
        best = len(grid) - 1 - jaccard.flip(-1).argmax(-1)  # of equal scores, the highest threshold
        return [round(float(grid[int(k)]), 4) for k in best]

    def tune(self, rounds: int = 3, grid: tuple[float, ...] | None = None,
             tune_gate: bool = False) -> tuple[list[float], list[float], float]:
        """Per-attribute thresholds (and, with ``tune_gate``, one presence cut-off per attribute chosen from
        ``gate_cutoffs``) maximizing the overall micro Jaccard, by coordinate ascent from 0.5.

        Returns:
            thresholds, gate cut-offs (list per attribute; 0.0 means no gating), and the tuned overall score.
        """
        self._to("cpu")
        grid = grid or tuple(k / self.bins for k in range(1, self.bins))
        ks = [int(round(t * self.bins)) for t in grid]
        # TP/FP of every (gate, attribute, threshold bin) at once: sums of the histogram from the bin up
        zero = torch.zeros(*self.pos.shape[:2], 1, dtype=torch.float64)
        tp_at = torch.cat([self.pos.flip(-1).cumsum(-1).flip(-1), zero], -1).numpy()
        fp_at = torch.cat([self.neg.flip(-1).cumsum(-1).flip(-1), zero], -1).numpy()
        positives = self.pos_total.numpy()
        g_options = range(len(self.gate_cutoffs)) if tune_gate else [0]

        def counts(c: int, g: int, k: int) -> tuple[float, float, float]:
            return tp_at[g, c, k], fp_at[g, c, k], positives[c] - tp_at[g, c, k]

        def jaccard(t: float, f: float, n: float) -> float:
            return t / (t + f + n) if t + f + n > 0 else 1.0

        k50 = int(round(0.5 * self.bins))
        thr, gates = [0.5] * self.classes, [0] * self.classes
        chosen = [counts(c, 0, k50) for c in range(self.classes)]
        totals = [sum(x[i] for x in chosen) for i in range(3)]
        best = jaccard(*totals)
        for _ in range(rounds):
            improved = False
            for c in range(self.classes):
                for g in g_options:
                    for t, k in zip(grid, ks):
                        cand = counts(c, g, k)
                        new = [totals[i] - chosen[c][i] + cand[i] for i in range(3)]
                        score = jaccard(*new)
                        if score > best + 1e-12:
                            best, totals, chosen[c], thr[c], gates[c], improved = score, new, cand, t, g, True
            if not improved:
                break
        cutoffs = [float(self.gate_cutoffs[g]) for g in gates]
        return [round(t, 4) for t in thr], cutoffs, float(best)


def presence_auc(scores, present) -> dict[str, float]:
    """Per-attribute image-level presence AUC (ROC): how well an image score (the map's peak probability, or a
    presence head's) ranks the images holding the attribute above those without it; NaN when the split holds
    only one kind. Mann-Whitney U with average ranks for ties."""
    from scipy.stats import rankdata

    scores, present = np.asarray(scores, dtype=np.float64), np.asarray(present, dtype=bool)
    out = {}
    for c, attribute in enumerate(ATTRIBUTES[: scores.shape[1]]):
        pos, n = int(present[:, c].sum()), len(present)
        if pos in (0, n):
            out[attribute] = float("nan")
            continue
        ranks = rankdata(scores[:, c])
        out[attribute] = float((ranks[present[:, c]].sum() - pos * (pos + 1) / 2) / (pos * (n - pos)))
    return out
