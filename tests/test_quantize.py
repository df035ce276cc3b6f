"""Residual vector quantization: greedy encoding, partial re-quantization, embeddings, EMA codebooks."""

from __future__ import annotations

import pytest
import torch

from resgen.quantize import ResidualQuantizer, nearest_code, rvq_encode, rvq_lookup

from conftest import random_images


def _latent_and_codes(codec, seed: int = 7):
    images = random_images(6, codec.image_size, codec.channels, seed=seed)
    with torch.no_grad():
        latent = codec._latent(images)  # [B, L, c] continuous encoder output
    codes = codec.encode(images)
    return latent, codes


def _greedy_reference(latent: torch.Tensor, codebooks: torch.Tensor):
    """Explicit greedy RVQ with cdist: returns codes [..., D] and the final residual."""
    residual = latent.clone()
    codes = []
    for d in range(codebooks.shape[0]):
        dist = torch.cdist(residual.reshape(-1, residual.shape[-1]), codebooks[d])
        idx = dist.argmin(-1).reshape(residual.shape[:-1])
        codes.append(idx)
        residual = residual - codebooks[d][idx]
    return torch.stack(codes, -1), residual


# ----------------------------------------------------------------------------- encode / quantize_from


@pytest.mark.parametrize("shared", [False, True], ids=["per_depth", "shared"])
@pytest.mark.parametrize("depth", [1, 3, 4])
def test_encoder_codes_are_greedy_rvq(make_codec, depth, shared):
    codec = make_codec(depth=depth, shared_codebook=shared)
    latent, codes = _latent_and_codes(codec)
    assert codes.dtype == torch.long and codes.shape == (*latent.shape[:-1], depth)
    assert int(codes.min()) >= 0 and int(codes.max()) < codec.codebook_size
    ref_codes, final_residual = _greedy_reference(latent, codec.codebooks)
    assert torch.equal(codes, ref_codes)
    # The decoder's latent plus what the last depth left over is the encoder's latent.
    torch.testing.assert_close(codec.embed(codes) + final_residual, latent, atol=1e-5, rtol=1e-5)
    if shared:
        assert torch.equal(codec.codebooks[0], codec.codebooks[-1])


@pytest.mark.parametrize("shared", [False, True], ids=["per_depth", "shared"])
@pytest.mark.parametrize("depth", [2, 4])
def test_quantize_from_every_start_returns_encoder_codes(make_codec, depth, shared):
    codec = make_codec(depth=depth, shared_codebook=shared)
    latent, codes = _latent_and_codes(codec)
    for d in range(depth + 1):
        residual = latent - codec.embed(codes, upto=d)
        got = codec.quantize_from(residual, d)
        assert got.shape == codes.shape
        assert torch.equal(got[..., d:], codes[..., d:]), f"start={d}"
        assert bool((got[..., :d] == 0).all()), f"depths < start={d} must be 0"
        # The functional form agrees with the codec method.
        assert torch.equal(rvq_encode(residual, codec.codebooks, d), got)


@pytest.mark.parametrize("shared", [False, True], ids=["per_depth", "shared"])
def test_quantize_from_per_position_start(make_codec, shared):
    depth = 4
    codec = make_codec(depth=depth, shared_codebook=shared)
    latent, codes = _latent_and_codes(codec)
    g = torch.Generator().manual_seed(0)
    start = torch.randint(0, depth + 1, latent.shape[:-1], generator=g)  # [B, L], includes D
    residual = latent - codec.embed(codes, upto=start)
    got = codec.quantize_from(residual, start)
    quantized = torch.arange(depth) >= start.unsqueeze(-1)  # [B, L, D]
    assert torch.equal(torch.where(quantized, got, torch.zeros_like(got)), got)
    assert torch.equal(got[quantized], codes[quantized])
    # A start tensor broadcast over the batch behaves like the explicit one.
    row = start[:1]
    got_b = codec.quantize_from(latent - codec.embed(codes, upto=row.expand_as(start)), row)
    quantized_b = torch.arange(depth) >= row.unsqueeze(-1)
    assert torch.equal(got_b[quantized_b.expand_as(got_b)], codes[quantized_b.expand_as(codes)])


def test_quantize_from_on_fresh_vector_matches_greedy(codec):
    """On a vector that is not the encoder's residual it is a fresh greedy quantization."""
    g = torch.Generator().manual_seed(3)
    z = torch.randn(5, 7, codec.embed_dim, generator=g) * codec.latent_scale
    for start in range(codec.depth):
        got = codec.quantize_from(z, start)
        ref, _ = _greedy_reference(z, codec.codebooks[start:])
        assert torch.equal(got[..., start:], ref)


# ------------------------------------------------------------------------------------- embeddings


def test_embed_upto_int_is_explicit_prefix_sum(codec):
    latent, codes = _latent_and_codes(codec)
    books = codec.codebooks
    vectors = torch.stack([books[d][codes[..., d]] for d in range(codec.depth)], -2)  # [B, L, D, c]
    torch.testing.assert_close(rvq_lookup(codes, books), vectors)
    for k in range(codec.depth + 1):
        expected = vectors[..., :k, :].sum(-2)
        torch.testing.assert_close(codec.embed(codes, upto=k), expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(codec.embed(codes), vectors.sum(-2), atol=1e-6, rtol=1e-6)
    assert torch.equal(codec.embed(codes, upto=0), torch.zeros_like(latent))


def test_embed_upto_per_position_tensor(codec):
    _, codes = _latent_and_codes(codec)
    g = torch.Generator().manual_seed(1)
    upto = torch.randint(0, codec.depth + 1, codes.shape[:-1], generator=g)
    got = codec.embed(codes, upto=upto)
    for b in range(codes.shape[0]):
        for pos in range(codes.shape[1]):
            k = int(upto[b, pos])
            expected = sum(
                (codec.codebooks[d][codes[b, pos, d]] for d in range(k)),
                torch.zeros(codec.embed_dim),
            )
            torch.testing.assert_close(got[b, pos], expected, atol=1e-6, rtol=1e-6)


def test_full_embed_plus_final_residual_is_latent(codec):
    latent, codes = _latent_and_codes(codec)
    residual = latent.clone()
    for d in range(codec.depth):
        residual = residual - codec.codebooks[d][codes[..., d]]
    torch.testing.assert_close(codec.embed(codes) + residual, latent, atol=1e-5, rtol=1e-5)
    # Each depth reduces (never increases) the residual norm: the greedy choice beats 0 only if
    # some codeword is closer than the origin, so compare to the previous residual instead.
    r = latent.clone()
    for d in range(codec.depth):
        nxt = r - codec.codebooks[d][codes[..., d]]
        best = torch.cdist(r.reshape(-1, codec.embed_dim), codec.codebooks[d]).min(-1).values
        torch.testing.assert_close(nxt.reshape(-1, codec.embed_dim).norm(dim=-1), best, atol=1e-5, rtol=1e-5)
        r = nxt


def test_wrong_token_depth_raises(codec):
    bad = torch.zeros(2, codec.num_positions, codec.depth + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="depth"):
        codec.embed(bad)
    with pytest.raises(ValueError, match="depth"):
        codec.decode(bad[..., :-2])
    with pytest.raises(TypeError):
        codec.embed(torch.zeros(2, codec.num_positions, codec.depth))


# ------------------------------------------------------------------------------- trainable quantizer


def _clustered(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(6, dim, generator=g) * 3
    return centres[torch.randint(0, 6, (n,), generator=g)] + 0.3 * torch.randn(n, dim, generator=g)


@pytest.mark.parametrize("shared", [False, True], ids=["per_depth", "shared"])
def test_kmeans_init_and_ema_update_keep_shapes(shared):
    torch.manual_seed(0)
    q = ResidualQuantizer(depth=3, codebook_size=8, dim=4, shared_codebook=shared, decay=0.9)
    books = 1 if shared else 3
    shapes = {name: tuple(buf.shape) for name, buf in q.named_buffers()}
    assert shapes["embed"] == (books, 8, 4) and shapes["cluster_size"] == (books, 8)
    assert not bool(q.initialized)
    x = _clustered(256, 4)
    q.train()
    out = q(x)
    assert bool(q.initialized)
    assert out.codes.shape == (256, 3) and out.quantized.shape == x.shape
    assert out.perplexity.shape == (3,) and torch.isfinite(out.commit_loss)
    for _ in range(3):
        before = q.embed.clone()
        out = q(x)
        assert {name: tuple(buf.shape) for name, buf in q.named_buffers()} == shapes
        assert not torch.equal(before, q.embed)  # training mode updates the codebooks
        assert torch.isfinite(q.embed).all()
    assert q.codebooks.shape == (3, 8, 4)
    # k-means + EMA on clustered data: RVQ error is well below the data's spread.
    err = (out.quantized - x).pow(2).sum(-1).mean()
    assert float(err) < 0.25 * float(x.var(0).sum())
    # Eval mode never changes the codebooks.
    q.eval()
    before = q.embed.clone()
    q(x)
    assert torch.equal(before, q.embed)


def test_eval_forward_before_init_does_not_initialise():
    q = ResidualQuantizer(depth=2, codebook_size=4, dim=3).eval()
    q(torch.randn(10, 3))
    assert not bool(q.initialized)


def test_quantizer_gradient_is_straight_through():
    torch.manual_seed(0)
    q = ResidualQuantizer(depth=2, codebook_size=8, dim=4)
    x = _clustered(64, 4).requires_grad_(True)
    out = q(x)
    out.quantized.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))


def test_dead_code_restart_replaces_unused_code():
    torch.manual_seed(0)
    q = ResidualQuantizer(depth=2, codebook_size=8, dim=4, decay=0.5, dead_threshold=0.5)
    x = _clustered(256, 4)
    q.train()
    q(x)  # k-means init + first update
    dead = 3
    far = torch.full((4,), 1e3)
    with torch.no_grad():  # make code 3 of depth 0 unreachable and nearly dead
        q.embed[0, dead] = far
        q.embed_sum[0, dead] = far * 0.6
        q.cluster_size[0, dead] = 0.6
    assert int((q.encode(x)[:, 0] == dead).sum()) == 0
    q(x)  # its usage decays to 0.3 < 0.5 -> restarted from a residual of this batch
    new = q.embed[0, dead]
    assert float(new.abs().max()) < 100.0
    # At depth 0 the residual is the input itself: the new code is one of the batch's rows.
    assert float((x - new).norm(dim=-1).min()) < 1e-5
    assert float(q.cluster_size[0, dead]) == 1.0
    torch.testing.assert_close(q.embed_sum[0, dead], new)
    # A code in use is not restarted: every live code's usage stays above the threshold.
    assert bool((q.cluster_size >= q.dead_threshold).all())


def test_nearest_code_matches_cdist():
    g = torch.Generator().manual_seed(0)
    r, book = torch.randn(50, 5, generator=g), torch.randn(9, 5, generator=g)
    assert torch.equal(nearest_code(r, book), torch.cdist(r, book).argmin(-1))
