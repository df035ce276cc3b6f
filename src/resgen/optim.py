"""AdamW with decoupled weight decay on matrices only, linear warm-up and cosine decay."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def build_optimizer(
    module: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float = 0.0,
) -> dict[str, Any]:
    """Lightning ``configure_optimizers`` output for ``module``'s trainable parameters.

    Weight decay applies to weight matrices only (not to biases, norms, embeddings of
    positions or counts). The learning rate rises linearly for ``warmup_steps`` and then
    follows a cosine to ``min_lr_ratio * lr`` at ``total_steps``.
    """
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "embed" not in name else no_decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=betas,
    )
    total = max(total_steps, 1) if total_steps and total_steps > 0 and math.isfinite(total_steps) else None

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if total is None:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
