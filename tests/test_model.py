"""The ResGen LightningModule: derived shapes, the masked loss, and that training reduces it."""

from __future__ import annotations

import pytest
import torch

import resgen
from resgen.masking import hierarchical_mask
from resgen.nn.head import MixtureHead

from conftest import build_codec, build_model, random_images

# training_step logs through self.log without a Trainer attached: Lightning warns and skips.
pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")


def _batch(codec, n: int = 8, seed: int = 5) -> dict:
    images = random_images(n, codec.image_size, codec.channels, seed=seed)
    labels = torch.arange(n) % 3
    return {"input": images, "cond": labels}


@pytest.mark.parametrize("depth,embed_dim,codebook_size,image_size", [(3, 4, 8, 8), (5, 6, 16, 16)])
def test_model_derives_shapes_from_codec(depth, embed_dim, codebook_size, image_size):
    codec = build_codec(depth=depth, embed_dim=embed_dim, codebook_size=codebook_size, image_size=image_size)
    model = build_model(codec)
    net = model.net
    assert model.codec is codec
    assert codec.depth == depth and codec.embed_dim == embed_dim and codec.codebook_size == codebook_size
    assert net.head.dim == codec.embed_dim
    assert net.head.means.out_features == 4 * codec.embed_dim  # K = 4 components of width c
    assert net.input_proj.in_features == codec.embed_dim
    assert net.count_embed.num_embeddings == codec.depth + 1  # m_l in 0..D
    assert net.max_positions == codec.num_positions == (image_size // 2) ** 2
    assert net.pos_embed.shape == (codec.num_positions, 16)
    assert net.conditioner.embedding.num_embeddings == 3 + 1  # classes + null class
    # The codec is frozen and stays in eval mode even when the model trains.
    assert not any(p.requires_grad for p in model.codec.parameters())
    model.train()
    assert not model.codec.training and model.net.training
    # Sampling yields tokens of the codec's depth and vocabulary.
    out = model.generate(torch.tensor([0, 2]), steps=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, codec.num_positions, depth)
    assert int(out.min()) >= 0 and int(out.max()) < codebook_size


def test_training_step_returns_finite_scalar_loss(model, codec):
    model.train()
    loss = model.training_step(_batch(codec), 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in model.codec.parameters())


def _fixed_eval_loss(model, tokens, cond, seeds=range(8)) -> float:
    """Mean loss over a fixed set of masks (no condition dropout)."""
    no_drop = torch.zeros(tokens.shape[0], dtype=torch.bool)
    with torch.no_grad():
        losses = [
            model.compute_loss(tokens, cond, generator=torch.Generator().manual_seed(s), drop=no_drop)[0]
            for s in seeds
        ]
    return float(torch.stack(losses).mean())


@pytest.mark.parametrize("loss_kind", ["nll", "jensen"])
def test_overfits_a_fixed_batch(loss_kind):
    codec = build_codec()
    model = build_model(codec, loss=loss_kind)
    batch = _batch(codec, n=8)
    tokens, cond = model.tokens_and_cond(batch)
    assert tokens.shape == (8, codec.num_positions, codec.depth)
    before = _fixed_eval_loss(model, tokens, cond)
    assert torch.isfinite(torch.tensor(before))
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.net.parameters(), lr=1e-2, weight_decay=0.0)
    model.train()
    for i in range(30):
        loss = model.training_step(batch, i)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = _fixed_eval_loss(model, tokens, cond)
    assert after < before - 0.3, f"{loss_kind}: loss {before:.3f} -> {after:.3f}"
    if loss_kind == "jensen":
        # The reported "nll" log is the exact NLL; the Jensen loss bounds it from above.
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            loss, logs = model.compute_loss(tokens, cond, generator=gen, drop=torch.zeros(8, dtype=torch.bool))
        assert "nll" in logs and float(loss) >= float(logs["nll"]) - 1e-6


def test_loss_is_averaged_over_positions_with_masked_depths(model, codec):
    tokens = codec.encode(_batch(codec)["input"])
    cond = torch.arange(tokens.shape[0]) % 3
    b, length, depth = tokens.shape
    no_drop = torch.zeros(b, dtype=torch.bool)
    # A seed whose mask leaves some positions fully visible (m_l = 0) and masks others.
    for seed in range(100):
        mask = hierarchical_mask(b, length, depth, generator=torch.Generator().manual_seed(seed))
        counts = mask.sum(-1)
        if bool((counts == 0).any()) and bool((counts > 0).any()):
            break
    else:
        pytest.fail("no mask with both visible and masked positions")
    with torch.no_grad():
        loss, _ = model.compute_loss(tokens, cond, generator=torch.Generator().manual_seed(seed), drop=no_drop)
        # Re-implementation from the method: input = visible codewords / s, target = masked ones / s.
        s = codec.latent_scale
        visible = codec.embed(tokens, upto=depth - counts) / s
        target = (codec.embed(tokens) - codec.embed(tokens, upto=depth - counts)) / s
        assert bool((target[counts == 0] == 0).all())
        mixture = model.net(visible, counts, model.net.conditioner(cond, no_drop))
        per_position = MixtureHead.loss(mixture, target, "nll") / codec.embed_dim  # [B, L]
        expected = per_position[counts > 0].mean()
        everywhere = per_position.mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert abs(float(loss) - float(everywhere)) > 1e-3, "fully visible positions must not count"


def test_condition_dropout_uses_the_null_class():
    codec = build_codec()
    model = build_model(codec)
    labels = torch.tensor([0, 1, 2])
    drop = torch.tensor([False, True, True])
    prefix = model.conditioner(labels, drop)
    null = model.conditioner.embedding.weight[3]
    assert torch.equal(prefix[1, 0], null) and torch.equal(prefix[2, 0], null)
    assert torch.equal(prefix[0, 0], model.conditioner.embedding.weight[0])


def test_bad_model_settings_raise():
    codec = build_codec()
    with pytest.raises(ValueError, match="loss"):
        resgen.ResGen(codec, resgen.ClassConditioner(num_classes=3), loss="mse", width=16, num_heads=2)
