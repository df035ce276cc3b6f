"""RQ-VAE image codec: conv encoder, residual quantization, conv decoder."""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from resgen.codec import CodecOutput, RVQCodec
from resgen.quantize import ResidualQuantizer


class ResBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(_groups(channels_in), channels_in), nn.SiLU(),
            nn.Conv2d(channels_in, channels_out, 3, padding=1),
            nn.GroupNorm(_groups(channels_out), channels_out), nn.SiLU(),
            nn.Conv2d(channels_out, channels_out, 3, padding=1),
        )
        self.skip = nn.Conv2d(channels_in, channels_out, 1) if channels_in != channels_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


def _groups(channels: int) -> int:
    for g in (32, 16, 8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


class RQVAE(RVQCodec):
    """RQ-VAE: images ``[B, C, H, W]`` in [-1, 1] <-> tokens ``[B, h*w, D]``.

    The encoder has one stage per entry of ``channel_mult``, halving the resolution after
    every stage but the last, so ``h = image_size / 2**(len(channel_mult) - 1)``.

    Args:
        image_size: H = W of the input.
        channels: image channels C.
        hidden: base channel width.
        channel_mult: width multiplier per stage.
        num_res_blocks: residual blocks per stage.
        embed_dim: codeword width c.
        depth: RVQ depth D.
        codebook_size: V.
        shared_codebook: one codebook for all depths (as RQ-VAE) or one per depth.
        ema_decay, kmeans_iters, dead_threshold: codebook training (see ResidualQuantizer).
    """

    modality = "image"

    def __init__(
        self,
        *,
        image_size: int = 8,
        channels: int = 1,
        hidden: int = 64,
        channel_mult: tuple[int, ...] = (1, 2),
        num_res_blocks: int = 1,
        embed_dim: int = 16,
        depth: int = 8,
        codebook_size: int = 32,
        shared_codebook: bool = False,
        ema_decay: float = 0.99,
        kmeans_iters: int = 10,
        dead_threshold: float = 0.5,
    ) -> None:
        super().__init__()
        downs = len(channel_mult) - 1
        if image_size % (2**downs):
            raise ValueError(f"image_size {image_size} must be divisible by 2**{downs} (len(channel_mult) - 1).")
        self.image_size, self.channels = image_size, channels
        self.grid = image_size // 2**downs
        widths = [hidden * m for m in channel_mult]
        enc: list[nn.Module] = [nn.Conv2d(channels, widths[0], 3, padding=1)]
        w_in = widths[0]
        for i, w in enumerate(widths):
            for _ in range(num_res_blocks):
                enc.append(ResBlock(w_in, w))
                w_in = w
            if i < downs:
                enc.append(nn.Conv2d(w, w, 4, stride=2, padding=1))
        enc += [nn.GroupNorm(_groups(w_in), w_in), nn.SiLU(), nn.Conv2d(w_in, embed_dim, 1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(embed_dim, widths[-1], 3, padding=1)]
        w_in = widths[-1]
        for i, w in enumerate(reversed(widths)):
            for _ in range(num_res_blocks):
                dec.append(ResBlock(w_in, w))
                w_in = w
            if i < downs:
                dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(w, w, 3, padding=1)]
        dec += [nn.GroupNorm(_groups(w_in), w_in), nn.SiLU(), nn.Conv2d(w_in, channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self.quantizer = ResidualQuantizer(
            depth=depth, codebook_size=codebook_size, dim=embed_dim, shared_codebook=shared_codebook,
            decay=ema_decay, kmeans_iters=kmeans_iters, dead_threshold=dead_threshold,
        )

    @property
    def codebooks(self) -> Tensor:
        return self.quantizer.codebooks

    @property
    def num_positions(self) -> int:
        return self.grid * self.grid

    def _check_images(self, data: Tensor) -> None:
        expected = (self.channels, self.image_size, self.image_size)
        if data.ndim != 4 or tuple(data.shape[1:]) != expected:
            raise ValueError(
                f"RQVAE expects images [B, {expected[0]}, {expected[1]}, {expected[2]}], got "
                f"{tuple(data.shape)}; resize/crop the data or configure image_size/channels."
            )

    def _latent(self, data: Tensor) -> Tensor:
        self._check_images(data)
        return rearrange(self.encoder(data), "b c h w -> b (h w) c")

    def forward(self, data: Tensor) -> CodecOutput:
        q = self.quantizer(self._latent(data))
        return CodecOutput(
            recon=self.decode_latent(q.quantized), latent=q.quantized, codes=q.codes,
            commit_loss=q.commit_loss, perplexity=q.perplexity,
        )

    @torch.no_grad()
    def encode(self, data: Tensor) -> Tensor:
        return self.quantizer.encode(self._latent(data))

    def decode_latent(self, latent: Tensor) -> Tensor:
        z = rearrange(latent, "b (h w) c -> b c h w", h=self.grid, w=self.grid)
        return self.decoder(z)

    def extra_metrics(self, data: Tensor, recon: Tensor) -> dict[str, Any]:
        mse = torch.nn.functional.mse_loss(recon.clamp(-1, 1), data)
        return {"psnr": 10 * torch.log10(4.0 / mse.clamp_min(1e-12))}
