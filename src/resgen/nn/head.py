"""Mixture-of-Gaussians head: per position, a K-component diagonal Gaussian mixture.

The head owns its loss (exact NLL, or the hard Jensen split) and its sampling
(temperature on the Gaussian scale, top-p on the mixture weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

LOG_2PI = math.log(2 * math.pi)


@dataclass
class Mixture:
    """Mixture parameters for a batch of positions.

    Attributes:
        logits: ``[..., K]`` unnormalised mixture weights.
        means: ``[..., K, c]``.
        log_scales: ``[..., K, c]`` log standard deviations.
    """

    logits: Tensor
    means: Tensor
    log_scales: Tensor

    def component_log_prob(self, x: Tensor) -> Tensor:
        """``x [..., c]`` -> ``[..., K]``: log N(x; mu_k, sigma_k) per component."""
        z = (x.unsqueeze(-2) - self.means) * torch.exp(-self.log_scales)
        return -0.5 * (z.pow(2) + LOG_2PI).sum(-1) - self.log_scales.sum(-1)

    def log_prob(self, x: Tensor) -> Tensor:
        """``x [..., c]`` -> ``[...]``: exact log-density of the mixture."""
        log_w = torch.log_softmax(self.logits, -1)
        return torch.logsumexp(log_w + self.component_log_prob(x), -1)

    def sample(
        self,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw ``[..., c]``: a component (top-p on the weights), then ``mu + t sigma eps``."""
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1], got {top_p}.")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}.")
        lead, k = self.logits.shape[:-1], self.logits.shape[-1]
        probs = torch.softmax(self.logits.float(), -1).reshape(-1, k)
        probs = top_p_filter(probs, top_p)
        comp = torch.multinomial(probs, 1, generator=generator).squeeze(-1).reshape(lead)
        idx = comp[..., None, None].expand(*lead, 1, self.means.shape[-1])
        mu = self.means.gather(-2, idx).squeeze(-2)
        log_sigma = self.log_scales.gather(-2, idx).squeeze(-2)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + temperature * torch.exp(log_sigma) * eps

    def guide(self, uncond: Mixture, scale: float, *, guide_means: bool = True) -> Mixture:
        """Classifier-free guidance: ``lc + w (lc - lu)``, ``mc + w (mc - mu)``; scales of ``self``."""
        logits = self.logits + scale * (self.logits - uncond.logits)
        means = self.means + scale * (self.means - uncond.means) if guide_means else self.means
        return Mixture(logits, means, self.log_scales)

    def split(self, sizes: list[int]) -> list[Mixture]:
        """Split along the batch dimension."""
        parts = zip(*(t.split(sizes) for t in (self.logits, self.means, self.log_scales)))
        return [Mixture(*p) for p in parts]


def top_p_filter(probs: Tensor, top_p: float) -> Tensor:
    """Keep the smallest set of largest ``probs [N, K]`` whose mass reaches ``top_p``."""
    if top_p >= 1.0:
        return probs
    sorted_p, order = probs.sort(-1, descending=True)
    before = sorted_p.cumsum(-1) - sorted_p  # mass strictly before each entry
    keep_sorted = before < top_p  # always keeps the first
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    filtered = probs * keep
    return filtered / filtered.sum(-1, keepdim=True)


class MixtureHead(nn.Module):
    """Projects backbone features ``[..., W]`` to a :class:`Mixture` over ``R^c``.

    Args:
        width: input feature width W.
        dim: output dimension c (the codec's embedding width).
        num_components: K. It matters a lot: few components sample noise.
        rank: if set, means and log-scales go through a rank-``rank`` bottleneck shared by
            all components (``W -> K x rank -> K x c``), for wide latents.
        min_log_scale / max_log_scale: clamp of the log standard deviations.
    """

    def __init__(
        self,
        *,
        width: int,
        dim: int,
        num_components: int = 64,
        rank: int | None = None,
        min_log_scale: float = -7.0,
        max_log_scale: float = 2.0,
    ) -> None:
        super().__init__()
        self.dim, self.num_components, self.rank = dim, num_components, rank
        self.min_log_scale, self.max_log_scale = min_log_scale, max_log_scale
        self.trunk = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width))
        self.logits = nn.Linear(width, num_components)
        inner = rank if rank else dim
        self.means = nn.Linear(width, num_components * inner)
        self.log_scales = nn.Linear(width, num_components * inner)
        self.up_means = nn.Linear(rank, dim) if rank else nn.Identity()
        self.up_scales = nn.Linear(rank, dim) if rank else nn.Identity()
        nn.init.zeros_(self.log_scales.weight)
        nn.init.constant_(self.log_scales.bias, -1.0)

    def forward(self, h: Tensor) -> Mixture:
        h = self.trunk(h)
        k = self.num_components
        means = self.up_means(rearrange(self.means(h), "... (k r) -> ... k r", k=k))
        log_scales = self.up_scales(rearrange(self.log_scales(h), "... (k r) -> ... k r", k=k))
        log_scales = log_scales.clamp(self.min_log_scale, self.max_log_scale)
        return Mixture(self.logits(h), means, log_scales)

    @staticmethod
    def loss(mixture: Mixture, target: Tensor, kind: str = "nll") -> Tensor:
        """Per-position loss in nats, ``[...]``.

        Args:
            mixture: predicted mixture for the positions.
            target: ``[..., c]``.
            kind: ``"nll"``: exact negative log-likelihood (logsumexp over components);
                ``"jensen"``: the hard split of the paper's Jensen bound: the most responsible
                component ``k*`` (chosen without gradient) gets a cross-entropy term on the
                weights plus its Gaussian NLL.
        """
        comp = mixture.component_log_prob(target)  # [..., K]
        if kind == "nll":
            log_w = torch.log_softmax(mixture.logits, -1)
            return -torch.logsumexp(log_w + comp, -1)
        if kind == "jensen":
            with torch.no_grad():
                best = (torch.log_softmax(mixture.logits, -1) + comp).argmax(-1)
            ce = F.cross_entropy(
                rearrange(mixture.logits, "... k -> (...) k"), best.reshape(-1), reduction="none"
            ).reshape(best.shape)
            return ce - comp.gather(-1, best.unsqueeze(-1)).squeeze(-1)
        raise ValueError(f"unknown loss kind {kind!r}; choose 'nll' or 'jensen'.")
