"""The ResGen LightningModule: orchestrates codec, masking, network, loss and sampling."""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import torch
from torch import Tensor

from resgen.checkpoint import CheckpointError, load_codec
from resgen.codec import RVQCodec
from resgen.conditioning import Conditioner
from resgen.config import Configurable
from resgen.masking import hierarchical_mask
from resgen.metrics import FeatureExtractor, GenerativeEvaluator
from resgen.network import ResGenNet
from resgen.nn.head import Mixture, MixtureHead
from resgen.optim import build_optimizer
from resgen.sampling import SamplingConfig, StepCallback, sample_tokens


class ResGen(Configurable, L.LightningModule):
    """ResGen generator over the tokens of a frozen RVQ codec.

    The codec fixes depth D, vocabulary V, latent width c, the latent scale ``s`` and (for
    fixed-size data) the number of positions L; nothing of it is repeated here.

    Args:
        codec: a codec instance, or the path of a codec checkpoint written by ``resgen fit``.
        conditioner: turns the modality's condition into prefix tokens.
        width, num_layers, num_heads, mlp_ratio, dropout: backbone shape.
        num_components: K of the mixture head (few components sample noise).
        head_rank: optional low-rank bottleneck of the head's means/scales.
        min_log_scale: floor of the components' log standard deviations (in units of the
            latent scale). RVQ targets are discrete, so without a floor the exact NLL is won by
            shrinking components onto individual training latents; that starves the coarse,
            condition-dependent structure (digits: -7 sampled at chance, -1.5 learns classes).
        loss: ``"nll"`` (exact) or ``"jensen"`` (hard split: component CE + Gaussian NLL).
        mask_schedule: ``gamma`` of training masks and sampling (``cosine``/``linear``).
        max_positions: position table size for variable-length codecs (default: codec's L).
        lr, weight_decay, betas, warmup_steps, min_lr_ratio: AdamW with linear warm-up and
            cosine decay to ``min_lr_ratio * lr`` over the run.
        ema_decay: EMA of the network weights used for sampling (0 disables).
        sampling: default sampling hyperparameters (``generate`` arguments override them).
        evaluator: feature extractor for ``resgen test`` (FID/KID, class accuracy).
        seed: base seed of validation masks and of samples drawn in test/predict.
    """

    def __init__(
        self,
        codec: RVQCodec | str,
        conditioner: Conditioner,
        *,
        width: int = 256,
        num_layers: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        num_components: int = 64,
        head_rank: int | None = None,
        min_log_scale: float = -1.5,
        loss: str = "nll",
        mask_schedule: str = "cosine",
        max_positions: int | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 200,
        min_lr_ratio: float = 0.05,
        ema_decay: float = 0.999,
        sampling: SamplingConfig | dict[str, Any] | None = None,
        evaluator: FeatureExtractor | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if loss not in ("nll", "jensen"):
            raise ValueError(f"loss must be 'nll' or 'jensen', got {loss!r}.")
        if isinstance(codec, str):
            codec, self._codec_config = load_codec(codec)
        elif isinstance(codec, RVQCodec):
            self._codec_config = codec.config()
        else:
            raise TypeError(f"codec must be an RVQCodec or a checkpoint path, got {type(codec).__name__}.")
        self.codec = codec.eval().requires_grad_(False)
        positions = max_positions or codec.num_positions
        if positions is None:
            raise ValueError(f"{type(codec).__name__} has no fixed length; set max_positions.")
        self.loss_kind, self.mask_schedule = loss, mask_schedule
        self.lr, self.weight_decay, self.betas = lr, weight_decay, tuple(betas)
        self.warmup_steps, self.min_lr_ratio, self.ema_decay = warmup_steps, min_lr_ratio, ema_decay
        if isinstance(sampling, dict):  # rebuilt from a stored config
            sampling = SamplingConfig(**sampling)
        self.sampling = sampling or SamplingConfig()
        self.sampling.validate()
        self.seed = seed
        self.net = ResGenNet(
            depth=codec.depth,
            embed_dim=codec.embed_dim,
            max_positions=positions,
            conditioner=conditioner,
            width=width,
            num_layers=num_layers,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            dropout=dropout,
            num_components=num_components,
            head_rank=head_rank,
            min_log_scale=min_log_scale,
        )
        self.net_ema = copy.deepcopy(self.net).requires_grad_(False) if ema_decay > 0 else None
        # Not a submodule: the evaluator's weights are its own, not the generator's.
        # (nn.Module would register it; bypass that so it stays out of state_dict/checkpoints).
        object.__setattr__(self, "_evaluator", GenerativeEvaluator(evaluator) if evaluator is not None else None)

    # ----------------------------------------------------------------- helpers
    @property
    def conditioner(self) -> Conditioner:
        return self.net.conditioner

    def train(self, mode: bool = True) -> ResGen:
        super().train(mode)
        self.codec.eval()  # the codec is frozen, always in eval mode
        return self

    def tokens_and_cond(self, batch: dict[str, Any]) -> tuple[Tensor, Any]:
        """A data batch -> tokens ``[B, L, D]`` (encoded on the fly unless given) and condition."""
        if "tokens" in batch:
            tokens = batch["tokens"]
        else:
            with torch.no_grad():
                tokens = self.codec.encode(batch["input"])
        return tokens, batch.get("cond")

    def _inputs(self, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Visible cumulative embedding / s ``[B, L, c]`` and masked counts ``m_l [B, L]``."""
        visible, _ = self._split_embedding(tokens, mask)
        return visible, mask.sum(-1)

    def _split_embedding(self, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Sums of the unmasked and of the masked codewords per position, divided by ``s``
        (one codebook lookup for both: the model's input and its target)."""
        vectors = self.codec.depth_embeddings(tokens) / self.codec.latent_scale  # [B, L, D, c]
        masked = mask.unsqueeze(-1).to(vectors.dtype)
        return (vectors * (1 - masked)).sum(-2), (vectors * masked).sum(-2)

    # ----------------------------------------------------------------- training
    def on_fit_start(self) -> None:
        data_classes = getattr(getattr(self.trainer, "datamodule", None), "num_classes", None)
        model_classes = getattr(self.conditioner, "num_classes", None)
        if isinstance(data_classes, int) and model_classes is not None and data_classes != model_classes:
            raise ValueError(
                f"the data has {data_classes} classes but the conditioner was configured with "
                f"{model_classes}; set model.init_args.conditioner.init_args.num_classes: {data_classes}."
            )

    def compute_loss(
        self, tokens: Tensor, cond: Any, *, generator: torch.Generator | None = None,
        net: ResGenNet | None = None, drop: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Masked cumulative-embedding loss in nats per latent dimension."""
        net = net or self.net
        b, length, depth = tokens.shape
        mask = hierarchical_mask(
            b, length, depth, schedule=self.mask_schedule, generator=generator, device=tokens.device
        )
        visible, target = self._split_embedding(tokens, mask)
        counts = mask.sum(-1)
        if drop is None:
            drop = self.conditioner.draw_drop(cond, generator, tokens.device)
        mixture = net(visible, counts, net.conditioner(cond, drop))
        per_position = MixtureHead.loss(mixture, target, self.loss_kind) / self.codec.embed_dim
        masked = counts > 0
        loss = per_position[masked].mean()
        logs = {"loss": loss}
        if self.loss_kind != "nll":
            with torch.no_grad():
                nll = MixtureHead.loss(mixture, target, "nll")[masked].mean() / self.codec.embed_dim
            logs["nll"] = nll
        return loss, logs

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        tokens, cond = self.tokens_and_cond(batch)
        loss, logs = self.compute_loss(tokens, cond)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss ({float(loss)}) at step {self.global_step}; lower the "
                "learning rate or enable gradient clipping. The last good checkpoint is kept."
            )
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, prog_bar=True, batch_size=tokens.shape[0])
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.net_ema is None:
            return
        step = self.global_step
        decay = min(self.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema, p in zip(self.net_ema.parameters(), self.net.parameters()):
                ema.lerp_(p.detach(), 1 - decay)
            for ema_b, b in zip(self.net_ema.buffers(), self.net.buffers()):
                ema_b.copy_(b)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        tokens, cond = self.tokens_and_cond(batch)
        gen = torch.Generator(tokens.device).manual_seed(self.seed * 1_000_003 + batch_idx)
        no_drop = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
        loss, _ = self.compute_loss(tokens, cond, generator=gen, net=self.sampling_net, drop=no_drop)
        self.log("val/loss", loss, prog_bar=True, batch_size=tokens.shape[0], sync_dist=True)

    def configure_optimizers(self) -> Any:
        return build_optimizer(
            self.net, lr=self.lr, weight_decay=self.weight_decay, betas=self.betas,
            warmup_steps=self.warmup_steps, total_steps=int(self.trainer.estimated_stepping_batches),
            min_lr_ratio=self.min_lr_ratio,
        )

    # ----------------------------------------------------------------- sampling
    @property
    def sampling_net(self) -> ResGenNet:
        return self.net_ema if self.net_ema is not None else self.net

    @torch.inference_mode()
    def generate(
        self,
        cond: Any,
        *,
        steps: int | None = None,
        cfg_scale: float | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        confidence_temperature: float | None = None,
        generator: torch.Generator | None = None,
        callback: StepCallback | None = None,
        length: int | None = None,
        use_ema: bool = True,
    ) -> Tensor:
        """Sample tokens for a batch of conditions.

        Args:
            cond: the modality's conditioning batch (class labels ``LongTensor [B]``, a list of
                ints or one int for images).
            steps: T (default from :attr:`sampling`), independent of L and D.
            cfg_scale: guidance ``w >= 0``; 0 is the conditional model alone.
            temperature: Gaussian scale when drawing from a component.
            top_p: nucleus mass on the mixture weights, in (0, 1].
            confidence_temperature: Gumbel scale on confidences, annealed to 0.
            generator: every random draw goes through it.
            callback: called after each step with ``(step, tokens [B, L, D], mask [B, L, D])``.
            length: positions L (default: the codec's).
            use_ema: sample with the EMA weights when present.

        Returns:
            ``LongTensor [B, L, D]``.
        """
        overrides = {
            k: v for k, v in dict(
                steps=steps, cfg_scale=cfg_scale, temperature=temperature, top_p=top_p,
                confidence_temperature=confidence_temperature,
            ).items() if v is not None
        }
        config = SamplingConfig(**{**self.sampling.__dict__, **overrides})
        config.validate()
        cond = self.conditioner.prepare(cond, self.device)
        self.conditioner.validate(cond)
        net = self.sampling_net if use_ema else self.net
        b = self.conditioner.batch_size(cond)
        length = length or self.codec.num_positions or net.max_positions
        depth = self.codec.depth
        tokens = torch.zeros(b, length, depth, dtype=torch.long, device=self.device)
        mask = torch.ones(b, length, depth, dtype=torch.bool, device=self.device)
        keep = torch.zeros(b, dtype=torch.bool, device=self.device)
        prefix_c = net.conditioner(cond, keep)
        prefix = torch.cat([prefix_c, net.conditioner(cond, ~keep)]) if config.cfg_scale > 0 else prefix_c

        def predict(tokens: Tensor, mask: Tensor) -> Mixture:
            visible, counts = self._inputs(tokens, mask)
            if config.cfg_scale == 0:
                return net(visible, counts, prefix)
            mixture = net(torch.cat([visible, visible]), torch.cat([counts, counts]), prefix)
            cond_mix, uncond_mix = mixture.split([b, b])
            return cond_mix.guide(uncond_mix, config.cfg_scale, guide_means=config.guide_means)

        return sample_tokens(predict, self.codec, tokens, mask, config, generator=generator, callback=callback)

    def _generator(self, batch_idx: int) -> torch.Generator:
        seed = (self.seed * 1_000_003 + batch_idx) * 1_009 + self.global_rank
        return torch.Generator(self.device).manual_seed(seed)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        cond = batch["cond"]
        tokens = self.generate(cond, generator=self._generator(batch_idx))
        return {"samples": self.codec.decode(tokens), "cond": cond, "tokens": tokens}

    # ---------------------------------------------------------------- evaluation
    def on_test_start(self) -> None:
        if self._evaluator is not None:
            self._evaluator.to(self.device).reset()

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        tokens, cond = self.tokens_and_cond(batch)
        with torch.no_grad():
            loss, _ = self.compute_loss(
                tokens, cond, generator=self._generator(batch_idx), net=self.sampling_net,
                drop=torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device),
            )
        self.log("test/loss", loss, batch_size=tokens.shape[0], sync_dist=True)
        if self._evaluator is None:
            return
        fake = self.codec.decode(self.generate(cond, generator=self._generator(batch_idx)))
        real_labels = cond if isinstance(cond, Tensor) else None
        self._evaluator.update(
            real=batch["input"], fake=fake, recon=self.codec.decode(tokens),
            labels=real_labels, real_labels=real_labels,
        )

    def on_test_epoch_end(self) -> None:
        if self._evaluator is not None:
            for name, value in self._evaluator.compute().items():
                self.log(f"test/{name}", value)

    # --------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        config = self.config()
        config["init_args"]["codec"] = self._codec_config
        checkpoint["resgen"] = {
            "model": config,
            "modality": self.codec.modality,
            "codec": {
                "depth": self.codec.depth, "codebook_size": self.codec.codebook_size,
                "embed_dim": self.codec.embed_dim, "fingerprint": self.codec.fingerprint(),
            },
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stored = checkpoint.get("resgen", {}).get("codec")
        if not stored:
            return
        mine = {"depth": self.codec.depth, "codebook_size": self.codec.codebook_size,
                "embed_dim": self.codec.embed_dim}
        diff = {k: (stored[k], v) for k, v in mine.items() if stored[k] != v}
        if diff:
            details = ", ".join(f"{k}: checkpoint {a} vs model {b}" for k, (a, b) in diff.items())
            raise CheckpointError(
                f"the generator checkpoint was trained on a different codec ({details}); "
                "use the codec it was trained with, or retrain the generator."
            )

