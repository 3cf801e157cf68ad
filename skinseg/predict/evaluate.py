"""A checkpoint scored on a split: :func:`evaluate_checkpoint`, both operating points
(:func:`operating_points`), the JSON of ``skinseg evaluate``, and the decision variants (thresholds x TTA) chosen
on the tuning split and reported on the evaluated one (:func:`decision_variants`), with the tables notebook 05
shows."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from skinseg.checkpoint import load_checkpoint
from skinseg.data.dataset import make_loader
from skinseg.data.isic import ATTRIBUTES
from skinseg.errors import DataError
from skinseg.predict.decisions import DecisionRule, decision_thresholds, stored_operating_points
from skinseg.predict.load import load_for_inference
from skinseg.predict.loop import EvalResult, evaluate_model
from skinseg.scoring import Scores


def evaluate_checkpoint(checkpoint, data_root, split: str = "val", tta: str | None = None, tuned: bool = True,
                        device: str = "auto", per_image: bool = False, num_workers: int = 0,
                        operating_point: str = "micro") -> EvalResult:
    """Official score of a checkpoint on a split, with its tuned thresholds at ``operating_point`` (and, at the
    micro one, its gates) unless ``tuned=False`` (0.5 everywhere). The result's sweep scores any other
    thresholds exactly (:func:`operating_points`)."""
    model, cfg, state, dev, amp_dtype = load_for_inference(checkpoint, device)
    cfg = cfg.replace(data_root=str(data_root), num_workers=num_workers)
    loader = make_loader(cfg, split, train=False)
    if not loader.dataset.cache.has_masks:
        raise DataError(f"split {split!r} below {data_root} has no ground truth; use `skinseg predict` instead")
    rule = DecisionRule.from_checkpoint(state, cfg, checkpoint, operating_point, tuned, tta)
    return evaluate_model(model, loader, dev, rule.thresholds, rule.gates, tta=rule.tta, amp_dtype=amp_dtype,
                          channels_last=cfg.channels_last, per_image=per_image, reduce=False)


def operating_points(result: EvalResult, checkpoint) -> dict[str, dict]:
    """The scores of an evaluation (at the micro operating point) at both operating points, with their
    thresholds: ``micro`` (tuned for the overall score, the leaderboard's) and ``per_attribute`` (each
    attribute's own best, what per-attribute and macro figures in later papers use), when the checkpoint has it.
    The per-attribute scores come from the evaluation's threshold histograms: exact, ungated. ``checkpoint``: a
    path, or the checkpoint's state already loaded (a mapping)."""
    state = checkpoint if isinstance(checkpoint, Mapping) else load_checkpoint(checkpoint, mmap=True)
    out = {}
    for name in stored_operating_points(state):
        thresholds = decision_thresholds(state, name, checkpoint)
        out[name] = {"thresholds": thresholds,
                     "scores": result.scores if name == "micro" else result.sweep.scores(thresholds)}
    return out


def evaluation_json(result: EvalResult, checkpoint, split: str) -> dict:
    """What ``skinseg evaluate --json`` writes: the official scorer's shape at the micro operating point, the split
    and checkpoint file, then both operating points with their thresholds, and the per-attribute presence AUC."""
    points = operating_points(result, checkpoint)
    out = result.scores.to_official_json()
    out["split"] = split
    if not isinstance(checkpoint, Mapping):
        out["checkpoint"] = str(checkpoint)  # which file was scored (a run folder's rule names one)
    out["operating_points"] = {name: {"thresholds": p["thresholds"], **p["scores"].to_official_json()}
                               for name, p in points.items()}
    out["presence_auc"] = result.presence_auc()
    return out


THRESHOLD_VARIANTS = ("0.5", "micro", "per_attribute")


def decision_variants(checkpoint, data_root, tuning_split: str, evaluated_split: str,
                      tta_modes=("none", "hflip", "hvflip"), device: str = "auto") -> "DecisionVariants":
    """Every decision variant of a checkpoint — thresholds (0.5, micro-tuned, per-attribute-tuned) x TTA —
    scored on the tuning split and on the evaluated split, one row each; the variant is chosen on the tuning
    split (its overall score), never on the split it is reported on.

    Returns the table (columns ``<split role> overall`` / ``macro``, and ``chosen``), the evaluated split's
    :class:`Scores` per variant and its presence AUC per TTA mode.
    """
    state = load_checkpoint(checkpoint, mmap=True)
    scores: dict[str, dict[tuple[str, str], Scores]] = {"tuning": {}, "evaluated": {}}
    auc: dict[str, dict[str, float]] = {}
    for role, split in (("tuning", tuning_split), ("evaluated", evaluated_split)):
        for tta in tta_modes:
            result = evaluate_checkpoint(checkpoint, data_root, split, tta=tta, device=device)
            points = operating_points(result, state)
            if role == "evaluated":
                auc[tta] = result.presence_auc()
                holding = dict(zip(ATTRIBUTES, (int(n) for n in np.asarray(result.image_present).sum(0))))
            scores[role][("0.5", tta)] = result.sweep.scores([0.5] * len(ATTRIBUTES))
            for name, point in points.items():
                scores[role][(name, tta)] = point["scores"]
    table = pd.DataFrame({key: {f"{role} {what}": getattr(scores[role][key], attr)
                                for role in ("tuning", "evaluated")
                                for what, attr in (("overall", "overall"), ("macro", "macro_jaccard"))}
                          for key in scores["tuning"]}).T
    table.index.names = ["thresholds", "TTA"]
    chosen = choose_variant(table)
    table["chosen"] = [key == chosen for key in table.index]
    return DecisionVariants(table, chosen, scores["evaluated"], auc, holding)


@dataclass
class DecisionVariants:
    """Decision variants of a checkpoint (see :func:`decision_variants`)."""

    table: pd.DataFrame  # one row per (thresholds, TTA): tuning and evaluated split, overall and macro
    chosen: tuple[str, str]  # chosen on the tuning split
    evaluated: dict[tuple[str, str], Scores]  # the evaluated split's scores per variant
    presence_auc: dict[str, dict[str, float]]  # the evaluated split's presence AUC per TTA mode
    holding: dict[str, int] = field(default_factory=dict)  # images of the evaluated split holding each attribute

    def absent(self) -> list[str]:
        """The attributes no image of the evaluated split holds: their Jaccard (1 for an empty prediction of an empty
        mask, 0 for any false positive) says nothing about the model."""
        return [a for a in ATTRIBUTES if self.holding.get(a, 1) == 0]

    def per_attribute(self) -> pd.DataFrame:
        """The evaluated split's Jaccard per attribute at both operating points, with the chosen TTA, the number of
        images holding each attribute and its presence AUC; an absent attribute's Jaccard is NaN (shown as absent)."""
        tta, absent = self.chosen[1], self.absent()
        columns = {f"{name} thresholds": {**{a: (np.nan if a in absent else v) for a, v in s.jaccard.items()},
                                          "micro_average (overall)": s.micro_jaccard, "macro_average": s.macro_jaccard}
                   for (name, t), s in self.evaluated.items() if t == tta and name != "0.5"}
        columns["presence AUC"] = self.presence_auc[tta]
        if self.holding:
            columns["images holding it"] = self.holding
        return pd.DataFrame(columns)


def choose_variant(table: pd.DataFrame) -> tuple[str, str]:
    """The (thresholds, TTA) row with the best tuning-split overall score; ties go to the simpler variant
    (0.5 before tuned, no TTA before flips), the order the rows come in."""
    return table["tuning overall"].idxmax()


def operating_points_table(result: EvalResult, checkpoint) -> pd.DataFrame:
    """Per-attribute Jaccard, micro and macro averages at each operating point, with the thresholds, one
    column per operating point."""
    columns = {}
    for name, point in operating_points(result, checkpoint).items():
        s = point["scores"]
        columns[f"jaccard ({name})"] = {**s.jaccard, "micro_average (overall)": s.micro_jaccard,
                                        "macro_average": s.macro_jaccard}
        columns[f"threshold ({name})"] = dict(zip(ATTRIBUTES, point["thresholds"]))
    return pd.DataFrame(columns)


def scores_table(scores: Scores) -> pd.DataFrame:
    """Per-attribute Jaccard and Dice, then the micro (overall) and macro averages."""
    rows = {a: {"jaccard": scores.jaccard[a], "dice": scores.dice[a]} for a in ATTRIBUTES}
    rows["micro_average (overall)"] = {"jaccard": scores.micro_jaccard, "dice": scores.micro_dice}
    rows["macro_average"] = {"jaccard": scores.macro_jaccard, "dice": scores.macro_dice}
    return pd.DataFrame(rows).T
