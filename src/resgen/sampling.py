"""ResGen's iterative sampler: a fixed number of steps, independent of L and D.

Pure tensor code (no Lightning): the model is reached through a ``predict`` callable
that maps the current tokens and mask to a (guided) mixture per position.

Each step: predict a mixture per position, draw a vector, re-quantize it from the first
masked depth of its position (:meth:`RVQCodec.quantize_from`), score every new token by
the mixture's log-density of its position's quantized sample plus annealed Gumbel noise,
take the running minimum along depth (coarse before fine), and reveal the most
confident tokens until the schedule's count stays masked. Revealed tokens are final.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import Tensor

from resgen.masking import get_schedule
from resgen.nn.head import Mixture

StepCallback = Callable[[int, Tensor, Tensor], None]


class SupportsQuantize(Protocol):
    """The part of the codec contract the sampler uses."""

    depth: int
    latent_scale: float

    def depth_embeddings(self, tokens: Tensor) -> Tensor: ...

    def quantize_from(self, residual: Tensor, start: int | Tensor) -> Tensor: ...


@dataclass
class SamplingConfig:
    """Sampling hyperparameters.

    Attributes:
        steps: T, the number of sampling steps (network evaluations; CFG batches both rows).
        cfg_scale: classifier-free guidance scale ``w >= 0`` (0 = conditional model alone).
        temperature: scale of the Gaussian noise when drawing from a component.
        top_p: nucleus mass kept on the mixture weights, in (0, 1].
        confidence_temperature: scale of the Gumbel noise on confidences at step 1; it
            anneals linearly to 0 at the last step.
        guide_means: extrapolate the component means with CFG (else the logits only).
        schedule: the masking schedule ``gamma`` (``cosine`` or ``linear``).
    """

    steps: int = 12
    cfg_scale: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    confidence_temperature: float = 1.0
    guide_means: bool = True
    schedule: str = "cosine"

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad field and its valid range."""
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}.")
        if self.cfg_scale < 0:
            raise ValueError(f"cfg_scale must be >= 0, got {self.cfg_scale}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}.")
        if self.temperature < 0 or self.confidence_temperature < 0:
            raise ValueError("temperature and confidence_temperature must be >= 0.")
        get_schedule(self.schedule)


def counts_schedule(total: Tensor, steps: int, schedule: str = "cosine") -> Tensor:
    """Tokens still masked after each step, per sample.

    ``n_t = floor(gamma(t / T) * N)`` in float64, ``n_T = 0`` exactly, and at least one token
    revealed per step where possible (``n_t <= n_{t-1} - 1``, ``n_0 = N``).

    Args:
        total: ``LongTensor [B]``: N, the masked tokens at the start, per sample.
        steps: T >= 1.

    Returns:
        ``LongTensor [T, B]``, non-increasing in t, last row 0.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    gamma = get_schedule(schedule)
    t = torch.arange(1, steps + 1, dtype=torch.float64, device=total.device) / steps
    n = torch.floor(gamma(t).unsqueeze(-1) * total.double().unsqueeze(0)).long()
    n[-1] = 0
    prev = total.clone()
    # Leave at least one token for each remaining step where possible (n_t >= min(N, T) - t).
    floor = torch.minimum(total, torch.full_like(total, steps))
    for i in range(steps):
        n[i] = torch.minimum(n[i], (prev - 1).clamp_min(0))
        n[i] = torch.maximum(n[i], (floor - (i + 1)).clamp_min(0))
        prev = n[i]
    return n


def masked_counts_schedule(length: int, depth: int, steps: int, schedule: str = "cosine") -> list[int]:
    """``T`` entries: tokens still masked after each step for an ``L x D`` grid; last is 0."""
    return counts_schedule(torch.tensor([length * depth]), steps, schedule)[:, 0].tolist()


def gumbel(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> Tensor:
    u = torch.rand(shape, generator=generator, device=device).clamp(1e-10, 1 - 1e-10)
    return -torch.log(-torch.log(u))


@torch.no_grad()
def sample_tokens(
    predict: Callable[[Tensor, Tensor], Mixture],
    codec: SupportsQuantize,
    tokens: Tensor,
    mask: Tensor,
    config: SamplingConfig,
    *,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """Fill the masked tokens in ``config.steps`` steps.

    Args:
        predict: ``(tokens [B, L, D], mask [B, L, D]) -> Mixture`` over ``[B, L]`` positions in
            units of the latent scale (CFG already applied).
        codec: gives ``embed``, ``quantize_from``, ``depth`` and ``latent_scale``.
        tokens: ``LongTensor [B, L, D]``; values under ``mask`` are ignored; the others
            (e.g. a prompt) are kept as they are.
        mask: ``BoolTensor [B, L, D]``, True = to generate; a suffix of depths per position.
        config: sampling hyperparameters.
        generator: every random draw goes through it.
        callback: called after each step with ``(step, tokens, mask)``.

    Returns:
        ``LongTensor [B, L, D]`` with nothing masked.
    """
    config.validate()
    b, length, depth = tokens.shape
    device = tokens.device
    scale = codec.latent_scale
    tokens, mask = tokens.clone(), mask.clone()
    schedule = counts_schedule(mask.flatten(1).sum(-1), config.steps, config.schedule)
    for step in range(config.steps):
        masked_count = mask.sum(-1)  # [B, L]: m_l
        active = masked_count > 0
        first = depth - masked_count  # first masked depth per position
        mixture = predict(tokens, mask)
        z = mixture.sample(temperature=config.temperature, top_p=config.top_p, generator=generator)
        start = torch.where(active, first, torch.full_like(first, depth))
        proposal = codec.quantize_from(scale * z.float(), start)
        proposal = torch.where(mask, proposal, tokens)
        # Confidence of a position: log-density of its quantized sample under the mixture.
        vectors = codec.depth_embeddings(proposal)  # [B, L, D, c]
        quantized = (vectors * mask.unsqueeze(-1).to(vectors.dtype)).sum(-2) / scale
        mix32 = Mixture(mixture.logits.float(), mixture.means.float(), mixture.log_scales.float())
        log_density = mix32.log_prob(quantized.float())  # [B, L]
        # Never let a masked token tie with the -inf sentinel of revealed tokens below.
        log_density = torch.nan_to_num(log_density, nan=-1e30, neginf=-1e30, posinf=1e30)
        conf = log_density.unsqueeze(-1).expand(b, length, depth)
        anneal = config.confidence_temperature * (1.0 - (step + 1) / config.steps)
        if anneal > 0:
            conf = conf + anneal * gumbel(conf.shape, generator, device)
        conf = torch.where(mask, conf, torch.full_like(conf, math.inf))
        conf = conf.cummin(-1).values  # coarse depths are at least as confident as fine ones
        conf = torch.where(mask, conf, torch.full_like(conf, -math.inf)).flatten(1)
        # Reveal the most confident masked tokens; a stable sort breaks ties toward the
        # coarser depth (lower flat index within a position).
        order = conf.sort(dim=-1, descending=True, stable=True).indices
        positions = torch.arange(order.shape[-1], device=device).expand_as(order)
        rank = torch.empty_like(order).scatter_(-1, order, positions)
        to_reveal = mask.flatten(1).sum(-1) - schedule[step]  # [B]
        reveal = (rank < to_reveal.unsqueeze(-1)).view(b, length, depth) & mask
        tokens = torch.where(reveal, proposal, tokens)
        mask = mask & ~reveal
        if callback is not None:
            callback(step, tokens, mask)
    return tokens
