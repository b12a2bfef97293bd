"""Optimizer and learning-rate schedule (GS-LRM / FaceLift recipe).

AdamW with betas (0.9, 0.95) and weight decay 0.05 on matrices only; norms, biases and
embeddings (learned tokens) are not decayed. Learning rate: linear warmup, then cosine decay.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based).

    Warmup: (step + 1) / warmup_steps for step < warmup_steps (so step 0 already trains).
    Then cosine from 1 to ``min_lr_ratio`` over the remaining ``total_steps - warmup_steps``
    steps; constant ``min_lr_ratio`` after ``total_steps``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR applying ``lr_factor``; call ``scheduler.step()`` once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup_steps, total_steps, min_lr_ratio))


def split_decay(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decay, no_decay) trainable parameters.

    No decay: parameters of normalization layers and of ``nn.Embedding``, every ``bias``, every
    parameter with fewer than 2 dims, and learned token tables whose name ends in
    ``embedding``/``embeddings`` (e.g. ``gaussian_position_embeddings`` [2, C]). Linear layers
    named ``*embedder*`` (e.g. the patch embedder) are ordinary matrices and are decayed.
    """
    decay, no_decay, seen = [], [], set()
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{mname}.{pname}" if mname else pname
            skip = (isinstance(module, _NORMS + (nn.Embedding,)) or pname == "bias" or p.ndim < 2
                    or full.endswith(("embedding", "embeddings")))
            (no_decay if skip else decay).append(p)
    return decay, no_decay


def param_groups(model: nn.Module, weight_decay: float = 0.05) -> list[dict]:
    """Optimizer groups; uses ``model.param_groups(weight_decay)`` when the model defines it."""
    if hasattr(model, "param_groups") and callable(model.param_groups):
        return list(model.param_groups(weight_decay))
    decay, no_decay = split_decay(model)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module | Iterable[dict], lr: float, weight_decay: float = 0.05,
                    betas: tuple[float, float] = (0.9, 0.95), fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over ``param_groups(model, weight_decay)`` (or given groups)."""
    groups = param_groups(model, weight_decay) if isinstance(model, nn.Module) else list(model)
    groups = [dict(g, params=list(g["params"])) for g in groups]
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused)
