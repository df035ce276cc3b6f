"""Hierarchical forward masking: suffix masks, exact counts, multivariate hypergeometric law."""

from __future__ import annotations

import math

import pytest
import torch

from resgen.masking import counts_to_mask, hierarchical_mask


def _assert_suffix(mask: torch.Tensor) -> None:
    """Masked depths of every position form a suffix: once masked, all finer depths are masked."""
    counts = mask.sum(-1)
    depth = mask.shape[-1]
    expected = torch.arange(depth) >= (depth - counts).unsqueeze(-1)
    assert torch.equal(mask, expected)
    # Equivalent formulation: along depth the mask never goes from True back to False.
    assert not bool((mask[..., :-1] & ~mask[..., 1:]).any())


def test_shape_and_dtype():
    m = hierarchical_mask(4, 5, 3, generator=torch.Generator().manual_seed(0))
    assert m.shape == (4, 5, 3) and m.dtype == torch.bool


@pytest.mark.parametrize("length,depth", [(1, 1), (1, 4), (7, 1), (16, 3), (9, 8)])
def test_suffix_invariant_everywhere(length, depth):
    g = torch.Generator().manual_seed(length * 10 + depth)
    for ratio in (None, 0.0, 0.1, 0.5, 0.93, 1.0):
        m = hierarchical_mask(64, length, depth, ratio=ratio, generator=g)
        _assert_suffix(m)


@pytest.mark.parametrize("length,depth", [(16, 3), (5, 7), (1, 4), (10, 1)])
@pytest.mark.parametrize("ratio", [0.0, 1e-9, 0.1, 0.3, 0.5, 0.77, 0.999, 1.0])
def test_exact_count_for_float_ratio(length, depth, ratio):
    total = length * depth
    m = hierarchical_mask(32, length, depth, ratio=ratio, generator=torch.Generator().manual_seed(1))
    expected = min(max(math.ceil(ratio * total), 1), total)
    assert m.flatten(1).sum(-1).tolist() == [expected] * 32
    _assert_suffix(m)


def test_ratio_zero_masks_one_token_and_one_masks_all():
    zero = hierarchical_mask(10, 6, 4, ratio=0.0, generator=torch.Generator().manual_seed(2))
    assert zero.flatten(1).sum(-1).tolist() == [1] * 10
    # The single masked token is the finest depth of its position.
    assert bool(zero[..., -1].any(-1).all()) and not bool(zero[..., :-1].any())
    ones = hierarchical_mask(10, 6, 4, ratio=1.0, generator=torch.Generator().manual_seed(2))
    assert bool(ones.all())


def test_exact_count_for_tensor_ratio():
    length, depth = 8, 4
    total = length * depth
    ratio = torch.tensor([0.0, 1.0, 0.5, 0.01, 0.26, 0.99, 1 / 3, 0.6])
    m = hierarchical_mask(len(ratio), length, depth, ratio=ratio, generator=torch.Generator().manual_seed(3))
    expected = [min(max(math.ceil(float(r) * total), 1), total) for r in ratio.double()]
    assert m.flatten(1).sum(-1).tolist() == expected
    _assert_suffix(m)


@pytest.mark.parametrize("ratio", [-0.1, 1.5])
def test_ratio_out_of_range_raises(ratio):
    with pytest.raises(ValueError, match="ratio"):
        hierarchical_mask(2, 3, 4, ratio=ratio)


def test_bad_sizes_raise():
    with pytest.raises(ValueError):
        hierarchical_mask(0, 3, 4)
    with pytest.raises(ValueError):
        hierarchical_mask(2, 3, 0)


@pytest.mark.parametrize("ratio", [None, 0.4])
def test_deterministic_with_seeded_generator(ratio):
    a = hierarchical_mask(16, 9, 4, ratio=ratio, generator=torch.Generator().manual_seed(42))
    b = hierarchical_mask(16, 9, 4, ratio=ratio, generator=torch.Generator().manual_seed(42))
    c = hierarchical_mask(16, 9, 4, ratio=ratio, generator=torch.Generator().manual_seed(43))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("length,depth,ratio", [(8, 4, 0.4), (5, 6, 0.8), (16, 3, 0.1)])
def test_counts_follow_multivariate_hypergeometric(length, depth, ratio):
    samples = 20000
    total = length * depth
    n = min(max(math.ceil(ratio * total), 1), total)
    m = hierarchical_mask(samples, length, depth, ratio=ratio, generator=torch.Generator().manual_seed(7))
    counts = m.sum(-1).double()  # [S, L]: m_l
    assert bool((counts.sum(-1) == n).all())
    p = 1.0 / length
    mean = n * p
    var = n * p * (1 - p) * (total - n) / (total - 1)
    # Per position and pooled over positions (all positions are exchangeable).
    emp_mean, emp_var = counts.mean(0), counts.var(0)
    assert torch.allclose(emp_mean, torch.full_like(emp_mean, mean), rtol=0.05)
    assert torch.allclose(emp_var, torch.full_like(emp_var, var), rtol=0.08)
    assert abs(float(counts.mean()) - mean) < 0.01 * mean
    assert abs(float(counts.var(0).mean()) - var) < 0.03 * var
    # Covariance between two positions is negative: -n p^2 (N - n) / (N - 1).
    cov = float(((counts[:, 0] - counts[:, 0].mean()) * (counts[:, 1] - counts[:, 1].mean())).mean())
    expected_cov = -n * p * p * (total - n) / (total - 1)
    assert abs(cov - expected_cov) < 0.15 * abs(expected_cov) + 0.01
    # A multinomial (with replacement) could exceed D; a hypergeometric never does.
    assert int(counts.max()) <= depth


def test_ratio_none_counts_vary_and_stay_in_range():
    length, depth = 8, 4
    total = length * depth
    m = hierarchical_mask(2000, length, depth, generator=torch.Generator().manual_seed(11))
    n = m.flatten(1).sum(-1)
    assert int(n.min()) >= 1 and int(n.max()) <= total
    assert len(set(n.tolist())) > total // 2  # many different masked counts
    _assert_suffix(m)
    # Cosine schedule: P(n / N <= x) = P(cos(pi r / 2) <= x) = 1 - 2 acos(x) / pi; median ~0.707.
    frac = n.double() / total
    assert abs(float(frac.median()) - math.cos(math.pi / 4)) < 0.06
    lin = hierarchical_mask(2000, length, depth, schedule="linear", generator=torch.Generator().manual_seed(11))
    assert abs(float(lin.flatten(1).sum(-1).double().mean() / total) - 0.5) < 0.04


def test_counts_to_mask_roundtrip():
    counts = torch.tensor([[0, 1, 2, 3]])
    m = counts_to_mask(counts, 3)
    assert torch.equal(m.sum(-1), counts)
    _assert_suffix(m)
