"""The codec contract: what ResGen needs from any RVQ tokenizer.

A codec maps a datum to tokens ``LongTensor [B, L, D]`` (L positions, D depths, values
in ``[0, V)``) and back. Depth 0 is the coarsest. ResGen itself only ever touches the
codebooks through :meth:`RVQCodec.embed` and :meth:`RVQCodec.quantize_from`, so any
tokenizer that exposes its codebooks ``[D, V, c]`` can be plugged in.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from resgen.config import Configurable
from resgen.quantize import rvq_encode, rvq_lookup


@dataclass
class CodecOutput:
    """Result of a codec's training pass.

    Attributes:
        recon: reconstruction, same shape as the input.
        latent: ``[B, L, c]`` quantized latent (sum of codewords; straight-through).
        codes: ``LongTensor [B, L, D]``.
        commit_loss: scalar commitment loss.
        perplexity: ``[D]`` code usage per depth.
    """

    recon: Tensor
    latent: Tensor
    codes: Tensor
    commit_loss: Tensor
    perplexity: Tensor


class RVQCodec(Configurable, nn.Module, ABC):
    """Abstract RVQ codec.

    Subclasses implement :meth:`encode`, :meth:`decode` and :attr:`codebooks`, and set
    the class attribute :attr:`modality` to the name of the plugin that owns them.
    The latent scale ``s`` (std of full latents over the training data) is a buffer
    tracked while the codec trains (running average, like batch-norm statistics).
    """

    modality: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("latent_scale_", torch.tensor(1.0))
        self.register_buffer("scale_tracked", torch.tensor(False))

    # ----------------------------------------------------------------- contract
    @property
    @abstractmethod
    def codebooks(self) -> Tensor:
        """Codebooks ``[D, V, c]`` (may repeat one shared book over depth)."""

    @abstractmethod
    def forward(self, data: Tensor) -> CodecOutput:
        """Training pass: encode, quantize (straight-through), decode."""

    @abstractmethod
    def encode(self, data: Tensor) -> Tensor:
        """Datum batch -> tokens ``LongTensor [B, L, D]``."""

    @abstractmethod
    def decode_latent(self, latent: Tensor) -> Tensor:
        """Latent ``[B, L, c]`` (sum of codewords) -> datum batch."""

    @property
    def num_positions(self) -> int | None:
        """L for fixed-size data (images); None when it varies per datum (speech)."""
        return None

    # ------------------------------------------------------------- derived API
    @property
    def depth(self) -> int:
        return int(self.codebooks.shape[0])

    @property
    def codebook_size(self) -> int:
        return int(self.codebooks.shape[1])

    @property
    def embed_dim(self) -> int:
        return int(self.codebooks.shape[2])

    @property
    def latent_scale(self) -> float:
        """``s``: the std of full latents ``embed(x, upto=D)`` over the training data."""
        return float(self.latent_scale_)

    def decode(self, tokens: Tensor) -> Tensor:
        """Tokens ``[B, L, D]`` -> datum batch."""
        return self.decode_latent(self.embed(tokens))

    def depth_embeddings(self, tokens: Tensor) -> Tensor:
        """``[..., D] -> [..., D, c]``: the codeword of every token."""
        self._check_tokens(tokens)
        return rvq_lookup(tokens, self.codebooks)

    def embed(self, tokens: Tensor, upto: int | Tensor | None = None) -> Tensor:
        """Partial sums of codewords: ``embed(x, upto=k)[l] = sum_{d < k} C_d[x[l, d]]``.

        Args:
            tokens: ``LongTensor [..., D]``.
            upto: number of leading depths to sum; an int, a ``LongTensor`` broadcastable
                to ``tokens.shape[:-1]`` (one per position), or None for all ``D``.

        Returns:
            ``[..., c]``.
        """
        vectors = self.depth_embeddings(tokens)
        if upto is None:
            return vectors.sum(-2)
        keep = torch.arange(self.depth, device=tokens.device) < torch.as_tensor(
            upto, device=tokens.device
        ).unsqueeze(-1)
        return (vectors * keep.unsqueeze(-1).to(vectors.dtype)).sum(-2)

    def quantize_from(self, residual: Tensor, start: int | Tensor) -> Tensor:
        """Greedy RVQ of ``residual [..., c]`` for depths ``start .. D-1``.

        ``residual`` is what is left after depths ``< start`` (on the encoder's own residual
        this returns the encoder's codes; on a sampled vector it is a fresh quantization).
        ``start`` may be an int or a ``LongTensor`` (one per vector). Entries at depths
        ``< start`` are 0 and are meant to be ignored.

        Returns:
            ``LongTensor [..., D]``.
        """
        return rvq_encode(residual, self.codebooks.to(residual.dtype), start)

    def fingerprint(self) -> str:
        """A short hash of the codebooks and settings: identifies a trained codec."""
        h = hashlib.sha256()
        h.update(f"{type(self).__qualname__}:{tuple(self.codebooks.shape)}".encode())
        h.update(self.codebooks.detach().float().cpu().contiguous().numpy().tobytes())
        h.update(f"{self.latent_scale:.6g}".encode())
        return h.hexdigest()[:16]

    # ------------------------------------------------------------ scale tracking
    @torch.no_grad()
    def track_latent_scale(self, latent: Tensor, momentum: float = 0.01) -> None:
        """Update the running std of full latents (call on training batches)."""
        std = latent.detach().float().std()
        if not bool(self.scale_tracked):
            self.latent_scale_.copy_(std)
            self.scale_tracked.fill_(True)
        else:
            self.latent_scale_.lerp_(std, momentum)

    def _check_tokens(self, tokens: Tensor) -> None:
        if tokens.dtype not in (torch.long, torch.int32, torch.int64):
            raise TypeError(f"tokens must be an integer tensor, got {tokens.dtype}.")
        if tokens.shape[-1] != self.depth:
            raise ValueError(
                f"tokens have depth {tokens.shape[-1]} but the codec has depth {self.depth}; "
                "use tokens made by this codec."
            )

    def reconstruction_loss(self, data: Tensor, recon: Tensor) -> Tensor:
        """Training loss of the reconstruction (override per modality); default MSE."""
        return torch.nn.functional.mse_loss(recon, data)

    def extra_metrics(self, data: Tensor, recon: Tensor) -> dict[str, Any]:
        """Modality-specific reconstruction metrics (override); default none."""
        return {}
