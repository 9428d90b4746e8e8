"""Optimisers (SGD with momentum / Nesterov, Adam, AdamW) and per-step learning-rate schedules.

Schedules are a LambdaLR over minibatch steps, so they resume exactly from the scheduler's
state_dict (its step counter) and behave the same whatever the batch count per epoch:
    constant   lr (after an optional linear warm-up)
    step       lr * step_gamma ** (epoch // step_epochs)   (after warm-up)
    cosine     half-cosine from lr to lr * min_lr_ratio    (after warm-up)
    onecycle   Smith's one-cycle: cosine rise from lr/25 to lr over onecycle_pct of the steps, then
               cosine fall to lr * min_lr_ratio (or lr/25e4 when min_lr_ratio is 0); momentum is not cycled
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from training.config import TrainConfig


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on biases and norm parameters (1-D tensors).
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    betas = (cfg.momentum, 0.999)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=betas)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas)


def lr_factor(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Multiplier of cfg.lr at minibatch ``step`` (0-based)."""
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.schedule == "onecycle":
        up = max(1, int(cfg.onecycle_pct * total))
        lo, end = 1.0 / 25.0, cfg.min_lr_ratio or 1.0 / 25e4
        if step < up:
            return lo + (1.0 - lo) * 0.5 * (1 - math.cos(math.pi * step / up))
        t = min(1.0, (step - up) / max(1, total - up))
        return end + (1.0 - end) * 0.5 * (1 + math.cos(math.pi * t))
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warm:
        return cfg.warmup_start + (1.0 - cfg.warmup_start) * step / warm
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        return cfg.step_gamma ** (step // steps_per_epoch // cfg.step_epochs)
    t = min(1.0, (step - warm) / max(1, total - warm))  # cosine
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def make_scheduler(
    opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, cfg, steps_per_epoch))
