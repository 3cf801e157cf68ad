"""Optimizers (through timm.optim) and learning-rate schedulers (torch), all stepped per batch but reduce_lr.

Epoch-based settings (``t_max``, ``step_size``) are converted to optimizer steps, so onecycle, cosine and the
rest follow the batches; reduce_lr watches the validation score once per epoch.
"""
from __future__ import annotations

import math

import torch
from timm.utils import ModelEmaV3
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from torch.optim import lr_scheduler

from skinseg.config import Config

# config name -> timm optimizer name ("sgd" in timm is nesterov; the course project's SGD was plain momentum)
_TIMM_OPT = {"adam": "adam", "adamw": "adamw", "sgd": "momentum", "rmsprop": "rmsprop",
             "adabelief": "adabelief", "adagrad": "adagrad"}


def build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """timm's optimizer (no weight decay on biases and norms); with ``encoder_lr_mult`` != 1 the encoder's
    parameters get ``encoder_lr_mult * lr``."""
    kwargs = {"momentum": cfg.momentum} if cfg.optimizer in ("sgd", "rmsprop") else {}
    params = model
    if cfg.encoder_lr_mult != 1.0 and hasattr(model, "encoder_parameters"):
        params = _encoder_lr_groups(model, cfg.weight_decay, cfg.lr, cfg.lr * cfg.encoder_lr_mult)
    return create_optimizer_v2(params, opt=_TIMM_OPT[cfg.optimizer], lr=cfg.lr, weight_decay=cfg.weight_decay,
                               **kwargs)


def _encoder_lr_groups(model: torch.nn.Module, weight_decay: float, lr: float, encoder_lr: float) -> list[dict]:
    """timm's weight-decay groups, each split into the encoder's parameters (at ``encoder_lr``) and the rest."""
    encoder = {id(p) for p in model.encoder_parameters()}
    groups = []
    for group in param_groups_weight_decay(model, weight_decay):
        for in_encoder, group_lr in ((True, encoder_lr), (False, lr)):
            params = [p for p in group["params"] if (id(p) in encoder) == in_encoder]
            if params:
                groups.append({**group, "params": params, "lr": group_lr})
    return groups


def ema_model(model: torch.nn.Module, decay: float, warmup: bool) -> ModelEmaV3:
    """timm's ModelEmaV3 over ``model`` (parameters and buffers). With ``warmup`` its decay follows the step
    count, ``min(decay, 1 - (1 + step) ** (-2/3))`` (0.95 after 100 steps, 0.99 after 1000), so a short
    schedule's average does not lag behind on its random initial weights. The trainer updates it with
    ``ema.update(model, step=ema_step(step))`` at its optimizer step ``step`` (restored on resume, so a resumed
    run averages exactly as an unbroken one); the first update copies the weights."""
    return ModelEmaV3(model, decay=decay, use_warmup=warmup)


def ema_step(step: int) -> int:
    """The step ModelEmaV3 is given at the trainer's optimizer step ``step`` (0-based): timm counts from 1."""
    return step + 1


class Schedule:
    """One object the trainer steps: ``after_batch()`` every optimizer step, ``after_epoch(score)`` every epoch."""

    def __init__(self, cfg: Config, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
        self.name = cfg.scheduler
        spe = max(1, steps_per_epoch)
        total = cfg.epochs * spe
        warm = int(round(cfg.warmup_epochs * spe)) if cfg.scheduler != "onecycle" else 0
        t_max = (cfg.t_max or cfg.epochs) * spe
        main: lr_scheduler.LRScheduler | None
        if cfg.scheduler == "onecycle":
            main = lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                           total_steps=total)
        elif cfg.scheduler == "cosine":
            main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, t_max - warm), eta_min=cfg.eta_min)
        elif cfg.scheduler == "cosine_restart":
            main = lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=max(1, t_max), eta_min=cfg.eta_min)
        elif cfg.scheduler == "poly":  # nnU-Net's: lr * (1 - t / T) ** 0.9
            main = lr_scheduler.PolynomialLR(optimizer, total_iters=max(1, t_max - warm), power=0.9)
        elif cfg.scheduler == "step":
            main = lr_scheduler.StepLR(optimizer, step_size=cfg.step_size * spe, gamma=cfg.gamma)
        elif cfg.scheduler == "exp":
            main = lr_scheduler.ExponentialLR(optimizer, gamma=cfg.gamma ** (1 / spe))
        else:  # reduce_lr and none: nothing per batch but the warm-up
            main = None
        self.plateau = (
            lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=cfg.gamma, patience=cfg.reduce_lr_patience,
                                           min_lr=cfg.eta_min)
            if cfg.scheduler == "reduce_lr" else None
        )
        if warm and main is not None:
            warmup = lr_scheduler.LinearLR(optimizer, start_factor=1e-3, total_iters=warm)
            main = lr_scheduler.SequentialLR(optimizer, [warmup, main], milestones=[warm])
        elif warm:
            main = lr_scheduler.LinearLR(optimizer, start_factor=1e-3, total_iters=warm)
        self.batch = main
        self.warm = warm
        self.steps = 0

    def after_batch(self) -> None:
        self.steps += 1
        if self.batch is not None and (self.plateau is None or self.steps <= self.warm):
            self.batch.step()

    def after_epoch(self, score: float | None) -> None:
        """Once per epoch; ``score`` is None on epochs that were not validated (``val_every``)."""
        if self.plateau is not None and score is not None and not math.isnan(score):
            self.plateau.step(score)

    def state_dict(self) -> dict:
        return {
            "steps": self.steps,
            "batch": None if self.batch is None else self.batch.state_dict(),
            "plateau": None if self.plateau is None else self.plateau.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]
        if self.batch is not None and state["batch"] is not None:
            self.batch.load_state_dict(state["batch"])
        if self.plateau is not None and state["plateau"] is not None:
            self.plateau.load_state_dict(state["plateau"])
