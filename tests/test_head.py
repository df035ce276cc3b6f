"""Mixture-of-Gaussians head: exact density, losses, top-p, sampling and guidance."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from resgen.nn.head import Mixture, MixtureHead, top_p_filter


def _random_mixture(lead: tuple[int, ...], k: int, c: int, seed: int = 0, dtype=torch.float64) -> Mixture:
    g = torch.Generator().manual_seed(seed)
    return Mixture(
        logits=torch.randn(*lead, k, generator=g, dtype=dtype) * 2,
        means=torch.randn(*lead, k, c, generator=g, dtype=dtype) * 2,
        log_scales=torch.randn(*lead, k, c, generator=g, dtype=dtype) * 0.5 - 0.5,
    )


def _torch_mixture(m: Mixture) -> MixtureSameFamily:
    return MixtureSameFamily(
        Categorical(logits=m.logits), Independent(Normal(m.means, m.log_scales.exp()), 1)
    )


SHAPES = [((), 1, 1), ((5,), 3, 2), ((2, 7), 4, 3), ((3, 2, 4), 8, 5)]


@pytest.mark.parametrize("lead,k,c", SHAPES)
def test_log_prob_matches_torch_distributions(lead, k, c):
    m = _random_mixture(lead, k, c, seed=len(lead) + k)
    ref = _torch_mixture(m)
    g = torch.Generator().manual_seed(99)
    for x in (torch.randn(*lead, c, generator=g, dtype=torch.float64) * 3, ref.sample()):
        got = m.log_prob(x)
        assert got.shape == lead
        torch.testing.assert_close(got, ref.log_prob(x), atol=1e-10, rtol=1e-10)
    # Per-component densities too.
    x = torch.randn(*lead, c, generator=g, dtype=torch.float64)
    comp = Normal(m.means, m.log_scales.exp()).log_prob(x.unsqueeze(-2)).sum(-1)
    torch.testing.assert_close(m.component_log_prob(x), comp, atol=1e-10, rtol=1e-10)


def test_log_prob_is_stable_far_from_all_components():
    m = _random_mixture((4,), 3, 2, seed=5)
    x = torch.full((4, 2), 1e3, dtype=torch.float64)
    got = m.log_prob(x)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, _torch_mixture(m).log_prob(x))


@pytest.mark.parametrize("lead,k,c", SHAPES[1:])
def test_nll_loss_is_minus_log_prob(lead, k, c):
    m = _random_mixture(lead, k, c, seed=k)
    x = torch.randn(*lead, c, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(MixtureHead.loss(m, x, "nll"), -m.log_prob(x))
    torch.testing.assert_close(MixtureHead.loss(m, x, "nll"), -_torch_mixture(m).log_prob(x))


@pytest.mark.parametrize("lead,k,c", SHAPES[1:])
def test_jensen_loss_upper_bounds_nll_and_has_gradient(lead, k, c):
    m = _random_mixture(lead, k, c, seed=2 * k)
    params = [m.logits.requires_grad_(True), m.means.requires_grad_(True), m.log_scales.requires_grad_(True)]
    x = torch.randn(*lead, c, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2
    jensen = MixtureHead.loss(m, x, "jensen")
    nll = MixtureHead.loss(m, x, "nll")
    assert jensen.shape == nll.shape == lead
    assert bool((jensen >= nll - 1e-10).all())
    # The bound is -log(w_k* N_k*(x)) with k* the most responsible component.
    log_joint = torch.log_softmax(m.logits, -1) + m.component_log_prob(x)
    torch.testing.assert_close(jensen, -log_joint.max(-1).values)
    if k == 1:
        torch.testing.assert_close(jensen, nll)
    jensen.sum().backward()
    for p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all()
        assert float(p.grad.abs().sum()) > 0


def test_unknown_loss_kind_raises():
    m = _random_mixture((2,), 2, 2)
    with pytest.raises(ValueError, match="bogus"):
        MixtureHead.loss(m, torch.zeros(2, 2, dtype=torch.float64), "bogus")


def test_head_forward_shapes_and_low_rank():
    torch.manual_seed(0)
    h = torch.randn(2, 5, 16)
    for rank in (None, 2):
        head = MixtureHead(width=16, dim=6, num_components=3, rank=rank, min_log_scale=-3, max_log_scale=1)
        with torch.no_grad():
            m = head(h)
            assert m.logits.shape == (2, 5, 3)
            assert m.means.shape == m.log_scales.shape == (2, 5, 3, 6)
            assert float(m.log_scales.min()) >= -3 and float(m.log_scales.max()) <= 1
            # The clamp is active on both sides.
            inner = head.log_scales if rank is None else head.up_scales
            inner.bias.fill_(10.0)
            assert bool((head(h).log_scales == 1).all())
            inner.bias.fill_(-10.0)
            if rank is not None:
                head.log_scales.bias.zero_()
            assert bool((head(h).log_scales == -3).all())


# ------------------------------------------------------------------------------------------- top-p


def test_top_p_filter_keeps_smallest_reaching_set():
    probs = torch.tensor([[0.1, 0.5, 0.15, 0.25], [0.25, 0.25, 0.25, 0.25], [0.97, 0.01, 0.01, 0.01]])
    out = top_p_filter(probs, 0.7)
    # Row 0: 0.5 + 0.25 = 0.75 >= 0.7 -> keep {1, 3}; row 1: three quarters; row 2: only the first.
    keep = out > 0
    assert keep.tolist() == [[False, True, False, True], [True, True, True, False], [True, False, False, False]]
    torch.testing.assert_close(out.sum(-1), torch.ones(3))
    torch.testing.assert_close(out[0], torch.tensor([0.0, 0.5 / 0.75, 0.0, 0.25 / 0.75]))
    # Exactly reaching top_p is enough: 0.5 alone reaches 0.5.
    assert (top_p_filter(probs[:1], 0.5) > 0).tolist() == [[False, True, False, False]]
    # top_p = 1 keeps everything unchanged.
    assert torch.equal(top_p_filter(probs, 1.0), probs)


def test_top_p_filter_random_is_minimal_and_keeps_at_least_one():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(200, 6, generator=g) * 2, -1)
    for top_p in (1e-6, 0.3, 0.6, 0.9):
        out = top_p_filter(probs, top_p)
        keep = out > 0
        assert bool((keep.sum(-1) >= 1).all())
        torch.testing.assert_close(out.sum(-1), torch.ones(200))
        kept_mass = (probs * keep).sum(-1)
        assert bool((kept_mass >= top_p - 1e-6).all())
        # Minimal: dropping the smallest kept entry falls short of top_p.
        smallest = torch.where(keep, probs, torch.full_like(probs, 2.0)).min(-1).values
        assert bool((kept_mass - smallest < top_p).all())
        # Kept entries are the largest ones.
        max_dropped = torch.where(keep, torch.zeros_like(probs), probs).max(-1).values
        assert bool((max_dropped <= smallest).all())
        # Renormalised proportionally.
        torch.testing.assert_close(out, probs * keep / kept_mass.unsqueeze(-1))


# ---------------------------------------------------------------------------------------- sampling


def test_sample_temperature_zero_returns_a_component_mean():
    m = _random_mixture((50,), 4, 3, seed=3, dtype=torch.float32)
    z = m.sample(temperature=0.0, generator=torch.Generator().manual_seed(0))
    assert z.shape == (50, 3)
    dist = (m.means - z.unsqueeze(-2)).abs().amax(-1)  # [50, K]
    assert bool((dist.min(-1).values == 0).all())


def test_sample_same_seed_same_output_different_seed_different():
    m = _random_mixture((20, 3), 5, 4, seed=4, dtype=torch.float32)
    a = m.sample(generator=torch.Generator().manual_seed(7))
    b = m.sample(generator=torch.Generator().manual_seed(7))
    c = m.sample(generator=torch.Generator().manual_seed(8))
    assert a.shape == (20, 3, 4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sample_tiny_top_p_always_picks_argmax_component():
    m = _random_mixture((300,), 5, 2, seed=6, dtype=torch.float32)
    m.logits = m.logits * 0.2  # flat weights: without top-p many components would be drawn
    best = m.logits.argmax(-1)
    best_means = m.means[torch.arange(300), best]
    for seed in range(3):
        z = m.sample(temperature=0.0, top_p=1e-6, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(z, best_means)
    z_all = m.sample(temperature=0.0, top_p=1.0, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(z_all, best_means)


def test_sample_draws_from_the_mixture():
    """Empirical mean and variance of many draws match the mixture's moments."""
    k, c = 3, 2
    logits = torch.tensor([0.0, 1.0, -0.5])
    means = torch.tensor([[-2.0, 0.0], [1.0, 2.0], [3.0, -1.0]])
    log_scales = torch.tensor([[-1.0, 0.0], [0.0, -0.5], [-2.0, -1.0]])
    n = 40000
    m = Mixture(logits.expand(n, k), means.expand(n, k, c), log_scales.expand(n, k, c))
    z = m.sample(generator=torch.Generator().manual_seed(0))
    w = torch.softmax(logits, -1)
    mean = (w[:, None] * means).sum(0)
    second = (w[:, None] * (means.pow(2) + log_scales.exp().pow(2))).sum(0)
    torch.testing.assert_close(z.mean(0), mean, atol=0.04, rtol=0)
    torch.testing.assert_close(z.var(0), second - mean.pow(2), atol=0.0, rtol=0.04)
    # Temperature scales the within-component noise only.
    z0 = Mixture(logits.expand(n, k), means.expand(n, k, c), log_scales.expand(n, k, c)).sample(
        temperature=0.5, generator=torch.Generator().manual_seed(1)
    )
    second_t = (w[:, None] * (means.pow(2) + 0.25 * log_scales.exp().pow(2))).sum(0)
    torch.testing.assert_close(z0.var(0), second_t - mean.pow(2), atol=0.0, rtol=0.04)


@pytest.mark.parametrize("top_p", [0.0, -0.1, 1.01])
def test_sample_invalid_top_p_raises(top_p):
    m = _random_mixture((2,), 2, 2, dtype=torch.float32)
    with pytest.raises(ValueError, match="top_p"):
        m.sample(top_p=top_p)


def test_sample_negative_temperature_raises():
    m = _random_mixture((2,), 2, 2, dtype=torch.float32)
    with pytest.raises(ValueError, match="temperature"):
        m.sample(temperature=-1.0)


# ---------------------------------------------------------------------------------------- guidance


def test_guide_scale_zero_returns_conditional_parameters():
    cond = _random_mixture((3, 4), 5, 2, seed=1)
    uncond = _random_mixture((3, 4), 5, 2, seed=2)
    for guide_means in (True, False):
        g = cond.guide(uncond, 0.0, guide_means=guide_means)
        assert torch.equal(g.logits, cond.logits)
        assert torch.equal(g.means, cond.means)
        assert torch.equal(g.log_scales, cond.log_scales)


def test_guide_extrapolates_logits_and_means_keeps_scales():
    cond = _random_mixture((3,), 4, 2, seed=1)
    uncond = _random_mixture((3,), 4, 2, seed=2)
    w = 1.5
    g = cond.guide(uncond, w)
    torch.testing.assert_close(g.logits, cond.logits + w * (cond.logits - uncond.logits))
    torch.testing.assert_close(g.means, cond.means + w * (cond.means - uncond.means))
    assert torch.equal(g.log_scales, cond.log_scales)
    logits_only = cond.guide(uncond, w, guide_means=False)
    torch.testing.assert_close(logits_only.logits, g.logits)
    assert torch.equal(logits_only.means, cond.means)


def test_split_along_batch():
    m = _random_mixture((6, 2), 3, 2)
    a, b = m.split([4, 2])
    assert torch.equal(a.logits, m.logits[:4]) and torch.equal(b.means, m.means[4:])
    assert torch.equal(b.log_scales, m.log_scales[4:])
