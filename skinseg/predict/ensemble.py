"""Ensembles of trained checkpoints: probabilities averaged over members, thresholds tuned again on a hold-out.

Members may differ in architecture and input size: each sees the input resized to its own ``image_size`` and its
logits are resized back before the sigmoid probabilities are averaged. The ensemble file holds every member's config and weights plus the thresholds tuned for the ensemble,
so ``skinseg evaluate`` and ``skinseg predict`` take it like any checkpoint. :func:`build_ensemble` makes it; the
file's state is built and read here too (:func:`ensemble_state`, :func:`ensemble_from_state`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from skinseg.checkpoint import (ENSEMBLE_KIND, check_for_inference, checkpoint_config, is_ensemble, load_checkpoint,
                                load_model_weights, save_checkpoint)
from skinseg.config import Config
from skinseg.data.dataset import make_loader
from skinseg.errors import CheckpointError, ConfigError
from skinseg.predict.decisions import split_output
from skinseg.predict.load import ready_for_inference
from skinseg.predict.loop import evaluate_model

_EPS = 1e-6


class ModelEnsemble(nn.Module):
    """Mean of the members' sigmoid probabilities, returned as logits (so TTA, thresholds and scoring apply)."""

    def __init__(self, members: list[nn.Module], sizes: list[int], size: int):
        super().__init__()
        if not members or len(members) != len(sizes):
            raise ValueError("an ensemble needs one input size per member, and at least one member")
        self.members = nn.ModuleList(members)
        self.sizes, self.size = list(sizes), size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        probs = 0.0
        for member, s in zip(self.members, self.sizes):
            hw = (round(h * s / self.size), round(w * s / self.size))
            xi = x if hw == (h, w) else F.interpolate(x, size=hw, mode="bilinear", antialias=True,
                                                      align_corners=False)
            logits, _ = split_output(member(xi))
            logits = logits.float()
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            probs = probs + torch.sigmoid(logits)
        return torch.logit((probs / len(self.members)).clamp(_EPS, 1 - _EPS))


def ensemble_config(configs: list[Config], tune_split: str) -> Config:
    """The config an ensemble runs under: the members' common data settings at the largest input size.

    Raises ConfigError when members cannot be combined, or when ``tune_split`` is ``dev`` and the members
    did not hold out the same dev images (tuning on images a member trained on would inflate the score).
    """
    if len(configs) < 2:
        raise ConfigError("an ensemble needs at least two checkpoints")
    first = configs[0]
    for name in ("classes", "resize_mode", "mean", "std"):
        values = {str(getattr(c.resolved(), name)) for c in configs}
        if len(values) > 1:
            raise ConfigError(f"ensemble members differ in {name} ({', '.join(sorted(values))}); "
                              "combine checkpoints trained with the same value")
    if tune_split == "dev":
        holdouts = {(c.dev_fraction, c.holdout_seed, c.train_split) for c in configs}
        if len(holdouts) > 1 or first.dev_fraction == 0.0:
            raise ConfigError(
                "tuning on dev needs members that all held out the same dev split (same dev_fraction > 0, "
                f"dev_seed (else seed) and train_split); got (dev_fraction, dev seed, train_split) = "
                f"{sorted(holdouts)}. Tune on val instead (--tune-split val), or train members with one dev_seed."
            )
    primary = max(configs, key=lambda c: c.image_size)
    return primary.replace(aux_head=False, crop_size=None)


def load_members(checkpoints: list[str | Path]) -> tuple[list[dict], list[Config]]:
    """The states and configs of would-be ensemble members (ensembles themselves are refused)."""
    states = [load_checkpoint(p) for p in checkpoints]
    for p, s in zip(checkpoints, states):
        if is_ensemble(s):
            raise CheckpointError(f"{p} is itself an ensemble; list its member checkpoints instead")
        check_for_inference(s, p)
    return states, [checkpoint_config(s["config"], str(p)) for p, s in zip(checkpoints, states)]


def check_ensemble_target(out: str | Path, members: list[str | Path]) -> Path:
    """``out`` resolved, when an ensemble file may be written there: a new file, or an older ensemble file (which
    only ``skinseg ensemble`` writes). A member, another checkpoint, any other file, a folder, a ground-truth
    folder or a read-only folder is refused before any work."""
    from skinseg.files import check_file_target

    hint = "name a new file, e.g. --out runs/ensemble.pt"
    if Path(out).expanduser().resolve() in {Path(p).expanduser().resolve() for p in members}:
        raise CheckpointError(f"--out {out} is one of the member checkpoints and would be overwritten; {hint}")
    return check_file_target(out, "--out", _is_ensemble_file, "an ensemble file that `skinseg ensemble` wrote", hint)


def _is_ensemble_file(path: Path) -> bool:
    try:
        return is_ensemble(load_checkpoint(path, mmap=True))
    except CheckpointError:
        return False


def ensemble_state(checkpoints: list[str | Path], states: list[dict], cfg: Config) -> dict[str, Any]:
    """The state of an ensemble file: the ensemble's config and every member's config and weights."""
    return {"kind": ENSEMBLE_KIND, "config": cfg.to_dict(),
            "members": [{"source": str(p), "config": s["config"], "model": s["model"]}
                        for p, s in zip(checkpoints, states)]}


def ensemble_from_state(state: dict, source: str):
    """The ensemble model and its config from an ensemble file's state (members' configs and weights)."""
    from skinseg.models import model_from_config

    members, sizes = [], []
    for k, member in enumerate(state["members"]):
        cfg = checkpoint_config(member["config"], f"{source} (member {k}: {member.get('source', '?')})")
        model = model_from_config(cfg)
        load_model_weights(model, member, f"{source} member {k}")
        members.append(model)
        sizes.append(cfg.image_size)
    cfg = checkpoint_config(state["config"], source)
    return ModelEnsemble(members, sizes, cfg.image_size), cfg


def build_ensemble(checkpoints: list[str | Path], data_root: str | Path, out: str | Path, tune_split: str = "dev",
                   tta: str = "none", device: str = "auto", num_workers: int = 0) -> dict:
    """Combine checkpoints into an ensemble file, its per-attribute thresholds tuned on ``tune_split`` with the
    official score. Returns a summary: the ensemble file, tuned thresholds, and the scores on the tune split.
    """
    out = check_ensemble_target(out, checkpoints)  # before any work
    states, configs = load_members(checkpoints)
    cfg = ensemble_config(configs, tune_split).replace(tta=tta)
    state = ensemble_state(checkpoints, states, cfg)
    model, dev, amp_dtype = ready_for_inference(ensemble_from_state(state, str(out))[0], cfg, device)
    loader = make_loader(cfg.replace(data_root=str(data_root), num_workers=num_workers), tune_split, train=False)
    result = evaluate_model(model, loader, dev, tta=tta, amp_dtype=amp_dtype, channels_last=cfg.channels_last)
    thresholds, _, score = result.sweep.tune()
    state.update(thresholds=thresholds, thresholds_per_attribute=result.sweep.tune_each(), gates=[0.0] * cfg.classes,
                 best={"score": score, "split": tune_split, "score_at_0.5": result.scores.overall})
    save_checkpoint(state, out)
    return {"ensemble": str(out), "members": [str(p) for p in checkpoints], "tune_split": tune_split,
            "thresholds": thresholds, "tuned_score": score, "score_at_0.5": result.scores.overall}
