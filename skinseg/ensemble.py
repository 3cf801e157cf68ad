"""Ensembles of trained checkpoints: probabilities averaged over members, thresholds tuned again on a hold-out.

Members may differ in architecture and input size: each sees the input resized to its own ``image_size`` and its
logits are resized back before the sigmoid probabilities are averaged. The ensemble file is a skinseg checkpoint
that holds every member's config and weights (it does not depend on the member files) plus the thresholds tuned
for the ensemble, so ``skinseg evaluate`` and ``skinseg predict`` take it like any checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from skinseg.config import Config, ConfigError
from skinseg.errors import CheckpointError
from skinseg.inference import split_output

KIND = "ensemble"
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


def is_ensemble(state: dict) -> bool:
    return state.get("kind") == KIND


def member_config(values: dict, source: str) -> Config:
    cfg = Config.from_dict(dict(values), source=source)
    return cfg.replace(pretrained=False, pretrained_path=None, load=None)  # weights come from the checkpoint


def ensemble_config(configs: list[Config], tune_split: str) -> Config:
    """The config an ensemble runs under: the members' common data settings at the largest input size.

    Raises ConfigError when members cannot be combined, or when ``tune_split`` is ``dev`` and the members
    did not hold out the same dev images (tuning on images a member trained on would inflate the score).
    """
    first = configs[0]
    for name in ("classes", "resize_mode", "mean", "std"):
        values = {str(getattr(c, name)) for c in configs}
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


def load_members(state: dict, source: str, model_from_config, load_weights) -> tuple[ModelEnsemble, Config]:
    """The ensemble model and its config from an ensemble checkpoint's state."""
    members, sizes = [], []
    for k, member in enumerate(state["members"]):
        cfg = member_config(member["config"], f"{source} (member {k}: {member.get('source', '?')})")
        model = model_from_config(cfg)
        load_weights(model, member, f"{source} member {k}")
        members.append(model)
        sizes.append(cfg.image_size)
    cfg = member_config(state["config"], source)
    return ModelEnsemble(members, sizes, cfg.image_size), cfg


def build_ensemble(checkpoints: list[str | Path], data_root: str | Path, out: str | Path, tune_split: str = "dev",
                   tta: str = "none", device: str = "auto", num_workers: int = 0) -> dict:
    """Combine checkpoints, tune per-attribute thresholds on ``tune_split`` with the official score, save.

    Returns a summary: the ensemble file, tuned thresholds, and the tuned score on the tune split.
    """
    from skinseg.data.dataset import make_loader
    from skinseg.inference import evaluate
    from skinseg.models import model_from_config
    from skinseg.train.checkpoint import load_checkpoint, load_model_weights, save_checkpoint
    from skinseg.train.distributed import pick_amp, pick_device

    if len(checkpoints) < 2:
        raise ConfigError("an ensemble needs at least two checkpoints")
    states = [load_checkpoint(p) for p in checkpoints]
    for p, s in zip(checkpoints, states):
        if is_ensemble(s):
            raise CheckpointError(f"{p} is itself an ensemble; list its member checkpoints instead")
    configs = [member_config(s["config"], str(p)) for p, s in zip(checkpoints, states)]
    cfg = ensemble_config(configs, tune_split).replace(data_root=str(data_root), num_workers=num_workers, tta=tta)
    dev = pick_device(device)
    members = []
    for p, s, c in zip(checkpoints, states, configs):
        model = model_from_config(c)
        load_model_weights(model, s, p)
        members.append(model)
    model = ModelEnsemble(members, [c.image_size for c in configs], cfg.image_size).to(dev).eval()
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp_dtype, _ = pick_amp(cfg.amp, dev)
    loader = make_loader(cfg, tune_split, train=False)
    result = evaluate(model, loader, dev, tta=tta, amp_dtype=amp_dtype, channels_last=cfg.channels_last)
    thresholds, _, score = result.sweep.tune()
    state = {
        "kind": KIND,
        "config": cfg.replace(data_root=None, num_workers=0).to_dict(),
        "members": [{"source": str(p), "config": s["config"], "model": s["model"]}
                    for p, s in zip(checkpoints, states)],
        "thresholds": thresholds,
        "gates": [0.0] * cfg.classes,
        "best": {"score": score, "split": tune_split, "score_at_0.5": result.scores.overall},
    }
    save_checkpoint(state, out)
    return {"ensemble": str(out), "members": [str(p) for p in checkpoints], "tune_split": tune_split,
            "thresholds": thresholds, "tuned_score": score, "score_at_0.5": result.scores.overall}
