"""The ResGen network: visible cumulative embeddings -> a mixture per position."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from resgen.conditioning import Conditioner
from resgen.nn.backbone import Transformer
from resgen.nn.head import Mixture, MixtureHead


class ResGenNet(nn.Module):
    """Input embedding, conditioning prefix, bidirectional backbone and mixture head.

    Position ``l`` reads ``W_in(visible_l) + E_count[m_l] + E_pos[l]``, where ``visible_l`` is
    the sum of its unmasked codewords divided by the latent scale and ``m_l`` its number of
    masked depths. The conditioner's prefix tokens are prepended.

    Args:
        depth: D (from the codec).
        embed_dim: c (from the codec).
        max_positions: size of the position table.
        conditioner: gives the prefix tokens; bound to ``width`` here.
        width, num_layers, num_heads, mlp_ratio, dropout: backbone shape.
        num_components, head_rank, min_log_scale: mixture head shape.
    """

    def __init__(
        self,
        *,
        depth: int,
        embed_dim: int,
        max_positions: int,
        conditioner: Conditioner,
        width: int,
        num_layers: int,
        num_heads: int,
        mlp_ratio: float,
        dropout: float,
        num_components: int,
        head_rank: int | None,
        min_log_scale: float = -1.5,
    ) -> None:
        super().__init__()
        self.max_positions = max_positions
        conditioner.bind(width)
        self.conditioner = conditioner
        self.input_proj = nn.Linear(embed_dim, width)
        # The pooled condition is also added to every position: a direct path that makes
        # the condition felt from the first layer (a prefix token alone is learned slowly).
        self.cond_proj = nn.Linear(width, width)
        self.count_embed = nn.Embedding(depth + 1, width)
        self.pos_embed = nn.Parameter(nn.init.trunc_normal_(torch.empty(max_positions, width), std=0.02))
        self.backbone = Transformer(
            width=width, num_layers=num_layers, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout
        )
        self.head = MixtureHead(
            width=width, dim=embed_dim, num_components=num_components, rank=head_rank,
            min_log_scale=min_log_scale,
        )
        nn.init.trunc_normal_(self.count_embed.weight, std=0.02)

    def forward(self, visible: Tensor, counts: Tensor, prefix: Tensor) -> Mixture:
        """Predict the masked cumulative embedding of every position.

        Args:
            visible: ``[B, L, c]`` sum of unmasked codewords / latent scale.
            counts: ``LongTensor [B, L]`` masked depths per position ``m_l``.
            prefix: ``[B, P, W]`` condition tokens.

        Returns:
            :class:`Mixture` over ``[B, L]`` positions.
        """
        length = visible.shape[1]
        if length > self.max_positions:
            raise ValueError(
                f"sequence of {length} positions exceeds the model's context of "
                f"{self.max_positions}; shorten the input or train with a larger max_positions."
            )
        x = self.input_proj(visible) + self.count_embed(counts) + self.pos_embed[:length]
        x = x + self.cond_proj(prefix.mean(1, keepdim=True).to(x.dtype))
        h = self.backbone(torch.cat([prefix.to(x.dtype), x], 1))
        return self.head(h[:, prefix.shape[1]:])

