"""Residual vector quantization (RVQ): greedy encoding, partial re-quantization, EMA codebooks.

Everything here is a pure tensor operation on codebooks ``[D, V, c]`` except
:class:`ResidualQuantizer`, the trainable module that owns the codebooks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def nearest_code(residual: Tensor, codebook: Tensor) -> Tensor:
    """Index of the nearest codeword for every vector.

    Args:
        residual: ``[N, c]`` vectors.
        codebook: ``[V, c]`` codewords.

    Returns:
        ``LongTensor [N]`` of indices in ``[0, V)``.
    """
    # |r - e|^2 = |r|^2 - 2 r.e + |e|^2 ; |r|^2 is constant per row.
    dist = codebook.pow(2).sum(-1) - 2 * residual @ codebook.t()
    return dist.argmin(-1)


def rvq_encode(latent: Tensor, codebooks: Tensor, start: int | Tensor = 0) -> Tensor:
    """Greedy residual quantization of ``latent`` over depths ``start .. D-1``.

    ``r_start = latent``; ``x_d = argmin_v |r_d - C_d[v]|``; ``r_{d+1} = r_d - C_d[x_d]``.
    The loop is sequential in depth and vectorised over every leading dimension.

    Args:
        latent: ``[..., c]`` vectors (a full latent when ``start == 0``, otherwise the
            residual left after depths ``< start``).
        codebooks: ``[D, V, c]``.
        start: first depth to quantize; an int or a ``LongTensor`` broadcastable to
            ``latent.shape[:-1]`` (one start per vector).

    Returns:
        ``LongTensor [..., D]``; entries at depths ``< start`` are 0 (not quantized).
    """
    depth = codebooks.shape[0]
    lead = latent.shape[:-1]
    residual = latent.reshape(-1, latent.shape[-1])
    if isinstance(start, Tensor):
        start_flat = start.expand(lead).reshape(-1)
    else:
        start_flat = torch.full((residual.shape[0],), int(start), device=latent.device)
    codes = torch.zeros(residual.shape[0], depth, dtype=torch.long, device=latent.device)
    for d in range(depth):
        active = start_flat <= d
        if not bool(active.any()):
            continue
        idx = nearest_code(residual, codebooks[d])
        idx = torch.where(active, idx, torch.zeros_like(idx))
        codes[:, d] = idx
        residual = residual - codebooks[d][idx] * active.unsqueeze(-1).to(residual.dtype)
    return codes.reshape(*lead, depth)


def rvq_lookup(codes: Tensor, codebooks: Tensor) -> Tensor:
    """Per-depth codeword vectors.

    Args:
        codes: ``LongTensor [..., D]``.
        codebooks: ``[D, V, c]``.

    Returns:
        ``[..., D, c]`` with ``out[..., d, :] = codebooks[d, codes[..., d]]``.
    """
    depth, vocab, _ = codebooks.shape
    offsets = torch.arange(depth, device=codes.device) * vocab
    flat = rearrange(codebooks, "d v c -> (d v) c")
    return F.embedding(codes + offsets, flat)


@dataclass
class QuantizerOutput:
    """Result of :meth:`ResidualQuantizer.forward`.

    Attributes:
        quantized: ``[..., c]`` straight-through quantized latent (gradient flows to the input).
        codes: ``LongTensor [..., D]``.
        commit_loss: scalar, ``mean |z - sg(z_q)|^2``.
        perplexity: ``[D]`` code-usage perplexity per depth on this batch.
    """

    quantized: Tensor
    codes: Tensor
    commit_loss: Tensor
    perplexity: Tensor


class ResidualQuantizer(nn.Module):
    """Trainable RVQ with EMA codebook updates, k-means initialisation and dead-code restart.

    Args:
        depth: number of quantization depths ``D``.
        codebook_size: codewords per depth ``V``.
        dim: codeword width ``c``.
        shared_codebook: one codebook for every depth (as RQ-VAE) instead of one per depth.
        decay: EMA decay of the codebook statistics.
        kmeans_iters: Lloyd iterations of the k-means initialisation on the first batch.
        dead_threshold: a code whose EMA usage count falls below this is restarted from a
            random residual of the current batch.
    """

    def __init__(
        self,
        *,
        depth: int,
        codebook_size: int,
        dim: int,
        shared_codebook: bool = False,
        decay: float = 0.99,
        kmeans_iters: int = 10,
        dead_threshold: float = 0.5,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if depth < 1 or codebook_size < 2 or dim < 1:
            raise ValueError(
                f"ResidualQuantizer needs depth >= 1, codebook_size >= 2, dim >= 1; got "
                f"depth={depth}, codebook_size={codebook_size}, dim={dim}."
            )
        self.depth, self.codebook_size, self.dim = depth, codebook_size, dim
        self.shared_codebook = shared_codebook
        self.decay, self.kmeans_iters, self.dead_threshold, self.eps = (
            decay, kmeans_iters, dead_threshold, eps,
        )
        books = 1 if shared_codebook else depth
        self.register_buffer("embed", torch.randn(books, codebook_size, dim) * 0.1)
        self.register_buffer("cluster_size", torch.ones(books, codebook_size))
        self.register_buffer("embed_sum", self.embed.clone())
        self.register_buffer("initialized", torch.tensor(False))

    @property
    def codebooks(self) -> Tensor:
        """``[D, V, c]`` (a view repeated over depth when shared)."""
        return self.embed.expand(self.depth, -1, -1)

    def encode(self, latent: Tensor) -> Tensor:
        """``[..., c] -> LongTensor [..., D]`` greedy codes."""
        return rvq_encode(latent, self.codebooks)

    def forward(self, latent: Tensor) -> QuantizerOutput:
        """Quantize ``latent [..., c]``; in training mode also update the codebooks."""
        flat = latent.detach().reshape(-1, self.dim).float()
        if self.training and not bool(self.initialized):
            self._kmeans_init(flat)
        codes = rvq_encode(flat, self.codebooks)
        vectors = rvq_lookup(codes, self.codebooks)  # [N, D, c]
        if self.training:
            self._ema_update(flat, codes, vectors)
            vectors = rvq_lookup(codes, self.codebooks)
        quant = vectors.sum(1).reshape(latent.shape).to(latent.dtype)
        commit = F.mse_loss(latent, quant.detach())
        counts = F.one_hot(codes, self.codebook_size).float().mean(0)  # [D, V]
        perplexity = torch.exp(-(counts * torch.log(counts + 1e-10)).sum(-1))
        return QuantizerOutput(
            quantized=latent + (quant - latent).detach(),
            codes=codes.reshape(*latent.shape[:-1], self.depth),
            commit_loss=commit,
            perplexity=perplexity,
        )

    @torch.no_grad()
    def _kmeans_init(self, flat: Tensor) -> None:
        residual = flat
        new = []
        for d in range(self.embed.shape[0] if not self.shared_codebook else self.depth):
            centers = _kmeans(residual, self.codebook_size, self.kmeans_iters)
            new.append(centers)
            residual = residual - centers[nearest_code(residual, centers)]
        if self.shared_codebook:
            # One book for all depths: cluster the union of the per-depth residual centres.
            self.embed.copy_(_kmeans(torch.cat(new), self.codebook_size, self.kmeans_iters)[None])
        else:
            self.embed.copy_(torch.stack(new))
        self.embed_sum.copy_(self.embed)
        self.cluster_size.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: Tensor, codes: Tensor, vectors: Tensor) -> None:
        # Residual seen by depth d: flat - sum of the codewords of depths < d.
        prefix = torch.cumsum(vectors, dim=1) - vectors
        residuals = flat.unsqueeze(1) - prefix  # [N, D, c]
        onehot = F.one_hot(codes, self.codebook_size).type(flat.dtype)  # [N, D, V]
        size = onehot.sum(0)  # [D, V]
        sums = torch.einsum("ndv,ndc->dvc", onehot, residuals)
        if self.shared_codebook:
            size, sums = size.sum(0, keepdim=True), sums.sum(0, keepdim=True)
        self.cluster_size.mul_(self.decay).add_(size, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.cluster_size.sum(-1, keepdim=True)
        smoothed = (self.cluster_size + self.eps) / (total + self.codebook_size * self.eps) * total
        self.embed.copy_(self.embed_sum / smoothed.unsqueeze(-1))
        self._restart_dead(residuals)

    @torch.no_grad()
    def _restart_dead(self, residuals: Tensor) -> None:
        pool = rearrange(residuals, "n d c -> (n d) c") if self.shared_codebook else None
        for b in range(self.embed.shape[0]):
            dead = self.cluster_size[b] < self.dead_threshold
            n_dead = int(dead.sum())
            if n_dead == 0:
                continue
            source = pool if pool is not None else residuals[:, b]
            pick = torch.randint(0, source.shape[0], (n_dead,), device=source.device)
            self.embed[b, dead] = source[pick]
            self.embed_sum[b, dead] = source[pick]
            self.cluster_size[b, dead] = 1.0


def _kmeans(x: Tensor, k: int, iters: int) -> Tensor:
    """Lloyd's k-means on ``x [N, c]``; centres start from random rows (seeded global RNG)."""
    if x.shape[0] >= k:
        centers = x[torch.randperm(x.shape[0], device=x.device)[:k]].clone()
    else:
        centers = x[torch.randint(0, x.shape[0], (k,), device=x.device)].clone()
        centers += 1e-3 * torch.randn_like(centers)
    for _ in range(iters):
        assign = nearest_code(x, centers)
        onehot = F.one_hot(assign, k).type(x.dtype)
        count = onehot.sum(0)
        summed = onehot.t() @ x
        filled = count > 0
        centers[filled] = summed[filled] / count[filled].unsqueeze(-1)
    return centers
