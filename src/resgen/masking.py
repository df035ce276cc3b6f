"""Hierarchical forward masking: tokens are masked from the finest depth down.

Training draws a masked fraction ``gamma(r)``, ``r ~ U(0, 1)``, picks ``n = ceil(gamma L D)``
of the ``L x D`` slots uniformly without replacement, and masks at every position ``l``
the finest ``m_l`` depths, ``m_l`` being the number of slots picked at ``l`` (so the
``m_l`` follow a multivariate hypergeometric law). The masked depths of a position are
always a suffix.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

Schedule = Callable[[Tensor], Tensor]


def cosine_schedule(r: Tensor) -> Tensor:
    """``gamma(r) = cos(pi r / 2)``: 1 at r = 0 (all masked), 0 at r = 1."""
    return torch.cos(math.pi / 2 * r)


def linear_schedule(r: Tensor) -> Tensor:
    """``gamma(r) = 1 - r``."""
    return 1 - r


SCHEDULES: dict[str, Schedule] = {"cosine": cosine_schedule, "linear": linear_schedule}


def get_schedule(name: str) -> Schedule:
    """Look up a masking schedule by name (``cosine`` or ``linear``)."""
    try:
        return SCHEDULES[name]
    except KeyError:
        raise ValueError(f"unknown mask schedule {name!r}; choose one of {sorted(SCHEDULES)}") from None


def counts_to_mask(counts: Tensor, depth: int) -> Tensor:
    """Masked counts ``m [..., L]`` -> suffix mask ``BoolTensor [..., L, D]``."""
    d = torch.arange(depth, device=counts.device)
    return d >= (depth - counts).unsqueeze(-1)


def hierarchical_mask(
    batch: int,
    length: int,
    depth: int,
    *,
    ratio: float | Tensor | None = None,
    schedule: str | Schedule = "cosine",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw a hierarchical mask.

    Args:
        batch: B.
        length: L positions.
        depth: D depths.
        ratio: masked fraction, a float or a ``[B]`` tensor; ``ceil(ratio * L * D)`` tokens are
            masked, clamped to ``[1, L * D]``. None draws ``gamma(r)``, ``r ~ U(0, 1)`` per sample.
        schedule: ``gamma`` used when ``ratio`` is None (name or callable).
        generator: source of randomness (on ``device``).
        device: where the mask is made.

    Returns:
        ``BoolTensor [B, L, D]``, True = masked; a suffix of depths at every position.
    """
    if batch < 1 or length < 1 or depth < 1:
        raise ValueError(f"batch, length and depth must be >= 1; got {batch}, {length}, {depth}.")
    if device is None and generator is not None:
        device = generator.device
    total = length * depth
    if ratio is None:
        gamma = get_schedule(schedule) if isinstance(schedule, str) else schedule
        r = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
        ratio_t = gamma(r)
    else:
        ratio_t = torch.as_tensor(ratio, dtype=torch.float64, device=device).expand(batch)
        if bool(((ratio_t < 0) | (ratio_t > 1)).any()):
            raise ValueError("ratio (the masked fraction) must lie in [0, 1].")
    n = torch.ceil(ratio_t * total).long().clamp(1, total)  # [B]
    # A uniformly random subset of n slots: the n smallest of i.i.d. uniform keys.
    keys = torch.rand(batch, total, generator=generator, device=device)
    rank = keys.argsort(-1).argsort(-1)
    picked = rank < n.unsqueeze(-1)  # [B, L*D]
    counts = picked.view(batch, length, depth).sum(-1)  # slots picked per position: m_l
    return counts_to_mask(counts, depth)
