"""Conditioning: turns a modality's condition into prefix tokens for the backbone.

A conditioner gives ``P`` prefix tokens ``[B, P, W]`` that the backbone attends to along
with the ``L`` token positions. Rows flagged ``drop`` get the null condition: that is how
classifier-free guidance is trained (randomly dropped rows) and sampled (the
unconditional half of the batch).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor, nn

from resgen.config import Configurable


class Conditioner(Configurable, nn.Module, ABC):
    """Base class. ``width`` is given by the model through :meth:`bind`, never by hand.

    Args:
        p_uncond: probability that a training row is dropped to the null condition.
    """

    def __init__(self, p_uncond: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= p_uncond < 1.0:
            raise ValueError(f"p_uncond must lie in [0, 1), got {p_uncond}.")
        self.p_uncond = p_uncond
        self.width: int | None = None

    @abstractmethod
    def bind(self, width: int) -> None:
        """Create the parameters for backbone width ``width``."""

    @abstractmethod
    def forward(self, cond: Any, drop: Tensor) -> Tensor:
        """``cond`` (batch of B) and ``drop [B]`` -> prefix tokens ``[B, P, W]``."""

    @abstractmethod
    def batch_size(self, cond: Any) -> int:
        """Number of rows in ``cond``."""

    def validate(self, cond: Any) -> None:
        """Raise ``ValueError`` if ``cond`` is not a valid condition (override)."""

    def prepare(self, cond: Any, device: torch.device) -> Any:
        """Bring a user-given condition to the model's form and device (override)."""
        return cond.to(device) if isinstance(cond, Tensor) else cond

    def draw_drop(self, cond: Any, generator: torch.Generator | None, device: torch.device) -> Tensor:
        """Training-time condition dropout: ``BoolTensor [B]``."""
        b = self.batch_size(cond)
        if self.p_uncond == 0:
            return torch.zeros(b, dtype=torch.bool, device=device)
        return torch.rand(b, generator=generator, device=device) < self.p_uncond


class ClassConditioner(Conditioner):
    """Class label -> one learned prefix token; the extra index ``num_classes`` is the null class.

    Args:
        num_classes: number of classes; labels must lie in ``[0, num_classes)``.
        p_uncond: training dropout to the null class (0.1 as in the paper).
    """

    def __init__(self, num_classes: int, p_uncond: float = 0.1) -> None:
        super().__init__(p_uncond)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        self.num_classes = num_classes

    def bind(self, width: int) -> None:
        self.width = width
        self.embedding = nn.Embedding(self.num_classes + 1, width)
        nn.init.trunc_normal_(self.embedding.weight, std=0.02)

    def prepare(self, cond: Any, device: torch.device) -> Tensor:
        """Labels as ``LongTensor [B]`` on ``device`` (accepts a tensor, a list or an int)."""
        if isinstance(cond, int):
            cond = [cond]
        if isinstance(cond, (list, tuple)):
            if not all(isinstance(c, int) and not isinstance(c, bool) for c in cond):
                raise ValueError(f"class conditions must be integer labels, got {cond!r}.")
            cond = torch.tensor(cond, dtype=torch.long)
        if isinstance(cond, Tensor) and cond.dtype in (torch.int32, torch.int16, torch.uint8):
            cond = cond.long()
        return cond.to(device) if isinstance(cond, Tensor) else cond

    def validate(self, cond: Any) -> None:
        if not isinstance(cond, Tensor) or cond.dtype != torch.long or cond.ndim != 1:
            raise ValueError(
                "class conditions must be integer labels [B] (a LongTensor, a list of ints or an int), "
                f"got {type(cond).__name__}" + (f" of shape {tuple(cond.shape)}" if isinstance(cond, Tensor) else "")
                + "."
            )
        if cond.numel() and (int(cond.min()) < 0 or int(cond.max()) >= self.num_classes):
            raise ValueError(
                f"class label out of range: got labels in [{int(cond.min())}, {int(cond.max())}] "
                f"but the model knows classes 0..{self.num_classes - 1}."
            )

    def forward(self, cond: Tensor, drop: Tensor) -> Tensor:
        labels = torch.where(drop, torch.full_like(cond, self.num_classes), cond)
        return self.embedding(labels).unsqueeze(1)

    def batch_size(self, cond: Tensor) -> int:
        return int(cond.shape[0])


class Unconditional(Conditioner):
    """No condition: one learned start token (CFG is then meaningless; use cfg_scale 0)."""

    def __init__(self) -> None:
        super().__init__(p_uncond=0.0)

    def bind(self, width: int) -> None:
        self.width = width
        self.token = nn.Parameter(torch.zeros(1, 1, width))

    def forward(self, cond: Tensor, drop: Tensor) -> Tensor:
        return self.token.expand(drop.shape[0], -1, -1)

    def batch_size(self, cond: Tensor) -> int:
        return int(cond.shape[0])
