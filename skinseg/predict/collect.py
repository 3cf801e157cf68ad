"""A checkpoint's predictions on a split, kept for figures and the browser.

:func:`collect_predictions` runs a checkpoint over a split once and keeps images, truth, decisions and per-image
scores in a :class:`PredictionSet`; notebook 06 draws its static figures from it and
:class:`skinseg.widgets.PredictionBrowser` pages through it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from skinseg.data.isic import ATTRIBUTES


@dataclass
class PredictionSet:
    """One split's images with ground truth, decisions and scores, ready to browse.

    Args:
        split: split name shown in the browser.
        ids: image ids, one per row of the arrays.
        images: N x S x S x 3 uint8 at cache resolution (for display).
        truth: N x 5 x S x S bool, or None for a split without ground truth.
        pred: N x 5 x S x S bool decisions (thresholds and gates applied).
        scores: per-image Jaccard at the original resolution, indexed by id, one column per attribute plus
            ``mean_jaccard``; None without ground truth.
        thresholds: the per-attribute thresholds that made ``pred``.
    """

    split: str
    ids: list[str]
    images: np.ndarray
    truth: np.ndarray | None
    pred: np.ndarray
    scores: pd.DataFrame | None = None
    thresholds: list[float] | None = None

    def __post_init__(self) -> None:
        self.ids = [str(i) for i in self.ids]
        n = len(self.ids)
        if self.images.ndim != 4 or self.images.shape[0] != n or self.images.shape[3] != 3:
            raise ValueError(f"images must be N x S x S x 3 with N = {n} ids, got {self.images.shape}")
        expected = (n, len(ATTRIBUTES)) + self.images.shape[1:3]
        for name in ("truth", "pred"):
            arr = getattr(self, name)
            if arr is not None and arr.shape != expected:
                raise ValueError(f"{name} must be N x {len(ATTRIBUTES)} x S x S = {expected}, got {arr.shape}")
        if self.scores is not None:
            missing = [c for c in (*ATTRIBUTES, "mean_jaccard") if c not in self.scores.columns]
            if missing:
                raise ValueError(f"scores lack the column(s) {', '.join(missing)}; build them with "
                                 "skinseg.predict.loop.evaluate_model(..., per_image=True)")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_truth(self) -> bool:
        return self.truth is not None

    def present(self) -> np.ndarray:
        """N x 5 bool: the attribute is in the truth or the prediction (at cache resolution)."""
        found = self.pred.any((2, 3))
        return found | self.truth.any((2, 3)) if self.truth is not None else found

    def attribute_jaccard(self) -> pd.Series:
        """Per image (by id), the mean Jaccard over the attributes in its truth or its prediction; NaN where neither
        holds any. ``mean_jaccard`` counts every attribute absent from both as 1, so an image without attributes
        predicted empty scores 1.00 there and tells nothing; this is the score the figures rank by."""
        if self.scores is None:
            raise ValueError(f"split {self.split!r} has no ground truth: no Jaccard to rank by")
        jac = self.scores.loc[self.ids, list(ATTRIBUTES)].to_numpy(dtype=float)
        present = self.present()
        n = present.sum(1)
        mean = np.where(n > 0, np.where(present, jac, 0.0).sum(1) / np.maximum(n, 1), np.nan)
        return pd.Series(mean, index=self.ids, name="attribute_jaccard")

    def ranked(self, n: int, worst: bool = False) -> list[str]:
        """The ids of ``n`` images that hold an attribute in the ground truth, best first (or worst first) by
        :meth:`attribute_jaccard`; ties keep the split's order."""
        score = self.attribute_jaccard()[self.truth.any((1, 2, 3))]
        return list(score.sort_values(ascending=worst, kind="stable").index[:n])


def collect_predictions(checkpoint: str | Path, data_root: str | Path, split: str = "val", tta: str | None = None,
                        limit: int | None = None, device: str = "auto", num_workers: int = 0) -> PredictionSet:
    """Run a checkpoint over a split with its tuned thresholds (and gates with an aux head).

    Masks are decided at cache resolution for display; the per-image scores come from
    :func:`skinseg.predict.loop.evaluate_model` at the ground truth's original resolution (a second pass over the
    split). ``limit`` keeps the first images only.
    """
    from skinseg.data.dataset import ISICDataset, make_dataset, make_loader
    from skinseg.predict.decisions import DecisionRule, decide
    from skinseg.predict.load import load_for_inference
    from skinseg.predict.loop import evaluate_model, predict_batches

    model, cfg, state, dev, amp_dtype = load_for_inference(checkpoint, device)
    cfg = cfg.replace(data_root=str(data_root), num_workers=num_workers)
    rule = DecisionRule.from_checkpoint(state, cfg, checkpoint, tta=tta)
    tta, thresholds, gates = rule.tta, rule.thresholds, rule.gates
    dataset = make_dataset(cfg, split, train=False)
    if limit is not None:
        dataset = ISICDataset(dataset.cache, dataset.transform, dataset.indices[:limit])
    loader = make_loader(cfg, split, train=False, dataset=dataset)
    pred = [decide(pb.probs, thresholds, pb.presence, gates).cpu().numpy()
            for pb in predict_batches(model, loader, dev, tta, amp_dtype, cfg.channels_last)]
    cache, indices = dataset.cache, dataset.indices
    truth, scores = None, None
    if cache.has_masks:
        truth = np.stack([cache.mask(int(i)) for i in indices]).astype(bool)
        result = evaluate_model(model, loader, dev, thresholds, gates, tta=tta, amp_dtype=amp_dtype,
                                channels_last=cfg.channels_last, per_image=True, reduce=False)
        scores = pd.DataFrame(result.per_image).set_index("id").drop(columns="index")
    return PredictionSet(
        split=split,
        ids=[cache.ids[int(i)] for i in indices],
        images=np.asarray(cache.images[indices]),
        truth=truth,
        pred=np.concatenate(pred),
        scores=scores,
        thresholds=thresholds,
    )
