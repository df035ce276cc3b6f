"""LightningModule that trains any :class:`~resgen.codec.RVQCodec` (``resgen fit`` of a codec)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from resgen.codec import RVQCodec
from resgen.config import Configurable
from resgen.optim import build_optimizer


class CodecModule(Configurable, L.LightningModule):
    """Trains a codec: reconstruction loss + commitment; logs MSE and code usage per depth.

    The codec's EMA codebooks update inside its forward pass; gradients train the
    encoder and decoder. The latent scale ``s`` is tracked on every training batch.

    Args:
        codec: the codec to train.
        lr, weight_decay, warmup_steps: AdamW with warm-up and cosine decay.
        commit_weight: weight of the commitment loss.
    """

    def __init__(
        self,
        codec: RVQCodec,
        *,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        commit_weight: float = 0.25,
    ) -> None:
        super().__init__()
        self.codec = codec
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps
        self.commit_weight = commit_weight

    def _step(self, batch: dict[str, Any], stage: str) -> Tensor:
        data = batch["input"]
        out = self.codec(data)
        recon_loss = self.codec.reconstruction_loss(data, out.recon)
        loss = recon_loss + self.commit_weight * out.commit_loss
        b = data.shape[0]
        logs = {
            f"{stage}/mse": torch.nn.functional.mse_loss(out.recon, data),
            f"{stage}/commit": out.commit_loss,
            f"{stage}/perplexity": out.perplexity.mean(),
        }
        for d, ppl in enumerate(out.perplexity):
            logs[f"{stage}/perplexity_d{d}"] = ppl
        for name, value in self.codec.extra_metrics(data, out.recon).items():
            logs[f"{stage}/{name}"] = value
        self.log_dict(logs, batch_size=b, prog_bar=False, sync_dist=stage != "train")
        self.log(f"{stage}/loss", loss, batch_size=b, prog_bar=True, sync_dist=stage != "train")
        if stage == "train":
            self.codec.track_latent_scale(out.latent)
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        tokens = self.codec.encode(batch["input"])
        return {"samples": self.codec.decode(tokens), "cond": batch.get("cond"), "tokens": tokens}

    def configure_optimizers(self) -> Any:
        return build_optimizer(
            self.codec, lr=self.lr, weight_decay=self.weight_decay, betas=(0.9, 0.99),
            warmup_steps=self.warmup_steps, total_steps=int(self.trainer.estimated_stepping_batches),
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["resgen"] = {
            "model": self.config(),
            "modality": self.codec.modality,
            "codec_fingerprint": self.codec.fingerprint(),
        }
