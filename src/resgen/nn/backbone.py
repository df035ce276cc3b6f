"""A bidirectional pre-norm transformer on ``[B, N, W]`` sequences (PyTorch SDPA)."""

from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class Attention(nn.Module):
    def __init__(self, width: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width {width} must be divisible by num_heads {num_heads}.")
        self.num_heads, self.dropout = num_heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: Tensor, key_padding: Tensor | None = None) -> Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (t h e) -> t b h n e", t=3, h=self.num_heads)
        attn_mask = None if key_padding is None else ~key_padding[:, None, None, :]
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(rearrange(y, "b h n e -> b n (h e)"))


class Block(nn.Module):
    def __init__(self, width: int, num_heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, num_heads, dropout)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, width)
        )

    def forward(self, x: Tensor, key_padding: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), key_padding)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """Bidirectional transformer encoder.

    Args:
        width: model width W.
        num_layers: number of blocks.
        num_heads: attention heads (W must be divisible by it).
        mlp_ratio: MLP hidden width over W.
        dropout: dropout in attention and MLP.
    """

    def __init__(
        self,
        *,
        width: int = 256,
        num_layers: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.width = width
        self.blocks = nn.ModuleList(
            Block(width, num_heads, mlp_ratio, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(width)
        self.apply(_init_weights)

    def forward(self, x: Tensor, key_padding: Tensor | None = None) -> Tensor:
        """``x [B, N, W]`` -> ``[B, N, W]``; ``key_padding [B, N]`` True marks padding keys."""
        for block in self.blocks:
            x = block(x, key_padding)
        return self.norm(x)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.trunc_normal_(m.weight, std=0.02)
