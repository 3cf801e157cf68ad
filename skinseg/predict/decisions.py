"""How probabilities become masks: the model's outputs (flip TTA, presence), per-attribute thresholds and
presence gates, and :class:`DecisionRule`, which reads them from a checkpoint in this one place."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from skinseg.config import Config
from skinseg.errors import CheckpointError
from skinseg.runtime import autocast

TTA_FLIPS = {"none": [()], "hflip": [(), (3,)], "hvflip": [(), (3,), (2,), (2, 3)]}
GATE_CUTOFFS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def split_output(output) -> tuple[torch.Tensor, torch.Tensor | None]:
    return (output[0], output[1]) if isinstance(output, (tuple, list)) else (output, None)


@torch.no_grad()
def predict_probs(model: torch.nn.Module, images: torch.Tensor, tta: str = "none",
                  amp_dtype: torch.dtype | None = None, output=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sigmoid probabilities B x C x H x W (and presence B x C with an aux head), averaged over flips.

    ``output``: the model's output on the unflipped images, when the caller already has it.
    """
    if tta not in TTA_FLIPS:
        raise ValueError(f"tta {tta!r} is not valid; choose one of {', '.join(TTA_FLIPS)}")
    probs, presence = 0.0, None
    flips = TTA_FLIPS[tta]
    for dims in flips:
        if not dims and output is not None:
            logits, pres = split_output(output)
        else:
            with autocast(images.device, amp_dtype):
                logits, pres = split_output(model(images.flip(dims) if dims else images))
        p = torch.sigmoid(logits.float())
        probs = probs + (p.flip(dims) if dims else p)
        if pres is not None:
            presence = (0.0 if presence is None else presence) + torch.sigmoid(pres.float())
    probs = probs / len(flips)
    return probs, None if presence is None else presence / len(flips)


def decide(probs: torch.Tensor, thresholds, presence: torch.Tensor | None = None, gates=None) -> torch.Tensor:
    """Binary masks from probabilities: per-attribute thresholds, and gating by presence when given."""
    thr = torch.as_tensor(thresholds, dtype=probs.dtype, device=probs.device).view(1, -1, 1, 1)
    masks = probs >= thr
    if presence is not None and gates is not None:
        cut = torch.as_tensor(gates, dtype=presence.dtype, device=presence.device).view(1, -1)
        masks = masks & (presence >= cut)[..., None, None]
    return masks


def decision_thresholds(state: dict[str, Any], operating_point: str, path: str | Path) -> list[float]:
    """The thresholds of a checkpoint at an operating point: ``micro`` (tuned for the overall score, the
    leaderboard's) or ``per_attribute`` (each attribute's own best, tuned on the same split)."""
    if operating_point == "micro":
        return [float(t) for t in state["thresholds"]]
    values = state.get("thresholds_per_attribute")
    if values is None:
        raise CheckpointError(f"checkpoint {path} holds no per-attribute thresholds (written before skinseg stored "
                              "them, or trained with tune_thresholds: false); use --operating-point micro, or "
                              "retrain")
    return [float(t) for t in values]


def tuned_on_own_weights(state: dict[str, Any]) -> bool:
    """Whether a checkpoint's thresholds were tuned on its own weights: ``thresholds_epoch`` is its epoch (every
    checkpoint since 2026-12-02), or, in an older one that lacks it, the best epoch it names is its own (a best.pt,
    or a last.pt of the best epoch; an older last.pt held the best epoch's thresholds)."""
    return thresholds_epoch(state) == state.get("epoch")


def thresholds_epoch(state: dict[str, Any]) -> int | None:
    """The epoch whose validation tuned a checkpoint's thresholds: ``thresholds_epoch``, or in an older checkpoint
    that lacks it the best epoch it names (what an older last.pt held)."""
    return state.get("thresholds_epoch", state.get("best", {}).get("epoch", state.get("epoch")))


def stored_operating_points(state: dict[str, Any]) -> tuple[str, ...]:
    """The operating points a checkpoint holds thresholds for: ``micro`` always, ``per_attribute`` when stored."""
    return ("micro", "per_attribute") if state.get("thresholds_per_attribute") is not None else ("micro",)


def decision_table(path: str | Path):
    """What a checkpoint decides with, one row each: the thresholds at each operating point it holds, and the
    presence cut-offs where its model has a presence head; a column per attribute. ``attrs``: its epoch and the
    epoch whose validation tuned them."""
    import pandas as pd

    from skinseg.checkpoint import load_checkpoint
    from skinseg.data.isic import ATTRIBUTES

    state = load_checkpoint(path, mmap=True)
    names = {"micro": "threshold (micro)", "per_attribute": "threshold (per attribute)"}
    rows = {names[p]: decision_thresholds(state, p, path) for p in stored_operating_points(state)}
    if state["config"].get("aux_head"):
        rows["presence cut-off"] = [float(g) for g in state["gates"]]
    table = pd.DataFrame(rows, index=list(ATTRIBUTES)).T
    table.attrs.update(epoch=state.get("epoch"), tuned_at=thresholds_epoch(state))
    return table


@dataclass(frozen=True)
class DecisionRule:
    """How a checkpoint's probabilities become masks: per-attribute thresholds at an operating point, the presence
    gates (a model with a presence head, at the micro operating point), and the flip TTA. Read from a checkpoint in
    this one place (:meth:`from_checkpoint`), for evaluation, prediction and the figures alike."""

    thresholds: list[float]
    gates: list[float] | None
    tta: str
    operating_point: str  # micro, per_attribute, or untuned (0.5 everywhere)

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any], cfg: Config, path: str | Path, operating_point: str = "micro",
                        tuned: bool = True, tta: str | None = None) -> "DecisionRule":
        """The checkpoint's tuned thresholds at ``operating_point`` (its gates too, at the micro one), or 0.5
        everywhere and no gates when not ``tuned``; ``tta`` None takes the run's."""
        tta = tta or cfg.tta
        if not tuned:
            return cls([0.5] * cfg.classes, None, tta, "untuned")
        gates = [float(g) for g in state["gates"]] if cfg.aux_head and operating_point == "micro" else None
        return cls(decision_thresholds(state, operating_point, path), gates, tta, operating_point)
