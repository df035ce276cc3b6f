"""ResGen's sampler: the reveal schedule, hierarchical reveal order, CFG, determinism, T forward passes."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from resgen.nn.head import Mixture
from resgen.sampling import SamplingConfig, counts_schedule, masked_counts_schedule, sample_tokens

from conftest import build_codec, build_model

# (image_size, depth): image 8 -> L = 16 positions, image 16 -> L = 64 positions.
GRIDS = [(8, 2), (8, 4), (16, 2), (16, 4)]


@functools.lru_cache(maxsize=None)
def _model(image_size: int = 8, depth: int = 3):
    return build_model(build_codec(image_size=image_size, depth=depth)).eval()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _assert_suffix(mask: torch.Tensor) -> None:
    depth = mask.shape[-1]
    expected = torch.arange(depth) >= (depth - mask.sum(-1)).unsqueeze(-1)
    assert torch.equal(mask, expected), "masked depths of a position must be a suffix"


# ------------------------------------------------------------------------------------------ schedule


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize(
    "length,depth,steps",
    [(16, 3, 8), (16, 3, 1), (64, 4, 12), (1, 1, 1), (1, 1, 5), (2, 2, 10), (4, 2, 8), (3, 5, 15), (256, 16, 16)],
)
def test_masked_counts_schedule(length, depth, steps, schedule):
    total = length * depth
    n = masked_counts_schedule(length, depth, steps, schedule)
    assert len(n) == steps and all(isinstance(v, int) for v in n)
    assert n[-1] == 0
    assert n[0] < total
    prev = total
    for t, v in enumerate(n, start=1):
        assert 0 <= v <= prev
        if prev > 0:
            assert v <= prev - 1, "at least one token is revealed per step while any is masked"
        r = t / steps
        g = math.cos(math.pi / 2 * r) if schedule == "cosine" else 1 - r
        if t < steps:
            # n_t = min(floor(gamma(t/T) N), n_{t-1} - 1), up to float64 rounding at integers.
            assert v <= math.floor(g * total + 1e-9)
            assert v >= min(math.floor(g * total - 1e-9), max(prev - 1, 0))
        prev = v
    if total >= steps:
        assert all(a > b for a, b in zip([total] + n[:-1], n)), "strictly decreasing when L*D >= T"


def test_masked_counts_schedule_more_steps_than_tokens():
    n = masked_counts_schedule(2, 2, 10)
    assert n[:4] == [3, 2, 1, 0] and n[4:] == [0] * 6


def test_counts_schedule_is_per_sample():
    totals = torch.tensor([48, 7, 1, 0, 300])
    steps = 9
    n = counts_schedule(totals, steps)
    assert n.shape == (steps, 5) and n.dtype == torch.long
    for b, total in enumerate(totals.tolist()):
        assert n[:, b].tolist() == masked_counts_schedule(total, 1, steps)
    assert bool((n[1:] <= n[:-1]).all()) and bool((n[-1] == 0).all())
    with pytest.raises(ValueError, match="steps"):
        counts_schedule(totals, 0)


# ---------------------------------------------------------------------------------------- generate


def _run(model, labels, *, seed=0, **kwargs):
    records = []

    def callback(step, tokens, mask):
        records.append((step, tokens.clone(), mask.clone()))

    out = model.generate(labels, generator=_gen(seed), callback=callback, **kwargs)
    return out, records


@pytest.mark.parametrize("image_size,depth", GRIDS)
@pytest.mark.parametrize("steps", [1, 5])
def test_generate_reveal_invariants(image_size, depth, steps):
    model = _model(image_size, depth)
    codec = model.codec
    length, vocab = codec.num_positions, codec.codebook_size
    labels = torch.tensor([0, 2, 1])
    out, records = _run(model, labels, steps=steps, cfg_scale=0.5)

    assert out.dtype == torch.long and out.shape == (3, length, depth)
    assert int(out.min()) >= 0 and int(out.max()) < vocab
    assert codec.decode(out).shape == (3, 1, image_size, image_size)

    assert [r[0] for r in records] == list(range(steps)), "callback once per step, in order"
    schedule = masked_counts_schedule(length, depth, steps)
    prev_tokens, prev_mask = None, torch.ones(3, length, depth, dtype=torch.bool)
    for (step, tokens, mask), expected in zip(records, schedule):
        _assert_suffix(mask)  # coarse depths of a position are revealed before fine ones
        assert mask.flatten(1).sum(-1).tolist() == [expected] * 3, f"step {step}"
        assert not bool((mask & ~prev_mask).any()), "a revealed token is never masked again"
        if prev_tokens is not None:
            kept = ~prev_mask
            assert torch.equal(tokens[kept], prev_tokens[kept]), "revealed tokens are final"
        assert torch.equal(out[~mask], tokens[~mask])
        prev_tokens, prev_mask = tokens, mask
    assert not bool(records[-1][2].any()), "nothing is masked after exactly T steps"
    assert torch.equal(records[-1][1], out)


def test_generate_more_steps_than_tokens():
    model = _model(8, 2)
    total = model.codec.num_positions * 2
    steps = total + 4
    out, records = _run(model, torch.tensor([1]), steps=steps, cfg_scale=0.0)
    assert len(records) == steps
    counts = [int(r[2].sum()) for r in records]
    assert counts == masked_counts_schedule(model.codec.num_positions, 2, steps)
    assert counts[total - 1:] == [0] * (steps - total + 1)
    assert torch.equal(records[-1][1], out)


def test_cfg_zero_is_the_conditional_model_alone():
    model = _model(8, 3)
    codec, net = model.codec, model.sampling_net
    labels = torch.tensor([0, 1, 2, 1])
    b, length, depth = len(labels), codec.num_positions, codec.depth
    config = SamplingConfig(**{**model.sampling.__dict__, "steps": 6, "cfg_scale": 0.0})

    with torch.no_grad():
        prefix = net.conditioner(labels, torch.zeros(b, dtype=torch.bool))

        def predict(tokens, mask):
            counts = mask.sum(-1)
            visible = codec.embed(tokens, upto=depth - counts) / codec.latent_scale
            return net(visible, counts, prefix)

        expected = sample_tokens(
            predict, codec,
            torch.zeros(b, length, depth, dtype=torch.long), torch.ones(b, length, depth, dtype=torch.bool),
            config, generator=_gen(5),
        )
    got = model.generate(labels, steps=6, cfg_scale=0.0, generator=_gen(5))
    assert torch.equal(got, expected)
    # With guidance, one forward pass carries the conditional rows then the null-class rows,
    # with the same visible inputs.
    seen = []
    handle = net.register_forward_hook(lambda mod, args, out: seen.append(args))
    try:
        model.generate(labels, steps=2, cfg_scale=3.0, generator=_gen(5))
    finally:
        handle.remove()
    assert len(seen) == 2
    table = net.conditioner.embedding.weight
    for visible, counts, prefix in seen:
        assert prefix.shape[0] == visible.shape[0] == counts.shape[0] == 2 * b
        assert torch.equal(prefix[:b, 0], table[labels])
        assert torch.equal(prefix[b:, 0], table[3].expand(b, -1))  # the null class
        assert torch.equal(visible[:b], visible[b:]) and torch.equal(counts[:b], counts[b:])


def test_same_seed_same_samples_different_seed_different():
    model = _model(8, 3)
    labels = torch.tensor([0, 1, 2])
    for cfg in (0.0, 2.0):
        a = model.generate(labels, steps=4, cfg_scale=cfg, generator=_gen(11))
        b = model.generate(labels, steps=4, cfg_scale=cfg, generator=_gen(11))
        c = model.generate(labels, steps=4, cfg_scale=cfg, generator=_gen(12))
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


@pytest.mark.parametrize("image_size,depth", GRIDS)
@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
def test_forward_passes_equal_steps(image_size, depth, cfg_scale):
    model = _model(image_size, depth)
    calls = []
    handle = model.sampling_net.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    try:
        for steps in (1, 4, 7):
            calls.clear()
            model.generate(torch.tensor([0, 1]), steps=steps, cfg_scale=cfg_scale, generator=_gen(0))
            assert len(calls) == steps, f"L={model.codec.num_positions}, D={depth}"
            # With CFG both rows go through one forward pass.
            assert set(calls) == {4 if cfg_scale > 0 else 2}
    finally:
        handle.remove()


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(steps=0), r"steps.*\b0\b"),
        (dict(steps=-3), r"steps.*-3"),
        (dict(top_p=0.0), r"top_p.*0\.0"),
        (dict(top_p=1.5), r"top_p.*1\.5"),
        (dict(top_p=-0.2), r"top_p.*-0\.2"),
        (dict(cfg_scale=-0.5), r"cfg_scale.*-0\.5"),
    ],
)
def test_generate_rejects_bad_settings(kwargs, pattern):
    model = _model(8, 3)
    with pytest.raises(ValueError, match=pattern):
        model.generate(torch.tensor([0, 1]), generator=_gen(0), **kwargs)


@pytest.mark.parametrize("labels,bad", [([0, 3], "3"), ([-1, 1], "-1"), ([7], "7")])
def test_generate_rejects_out_of_range_labels(labels, bad):
    model = _model(8, 3)
    with pytest.raises(ValueError, match=rf"(?<![\d-]){bad}(?!\d)"):
        model.generate(torch.tensor(labels), steps=2, generator=_gen(0))


def test_generate_rejects_float_labels():
    with pytest.raises(ValueError, match="integer"):
        _model(8, 3).generate(torch.tensor([0.0, 1.0]), steps=2)


# ------------------------------------------------------------------------------ sample_tokens (stub)


class _StubPredictor:
    """A fixed random mixture per position (independent of the inputs); counts its calls."""

    def __init__(self, b, length, c, k=3, seed=0, dtype=torch.float32, log_scale=None):
        g = _gen(seed)
        self.mixture = Mixture(
            torch.randn(b, length, k, generator=g).to(dtype),
            torch.randn(b, length, k, c, generator=g).to(dtype) * 0.5,
            (torch.full((b, length, k, c), log_scale) if log_scale is not None
             else torch.randn(b, length, k, c, generator=g) * 0.3 - 1).to(dtype),
        )
        self.calls = 0

    def __call__(self, tokens, mask):
        self.calls += 1
        return self.mixture


def test_sample_tokens_keeps_prompt_and_counts_only_the_target():
    codec = build_codec(depth=4)
    b, length, depth = 2, codec.num_positions, codec.depth
    g = _gen(3)
    prompt = torch.randint(0, codec.codebook_size, (b, length, depth), generator=g)
    # Sample 0: first 5 positions are a fully revealed prompt; sample 1: random suffix masks.
    counts = torch.full((b, length), depth)
    counts[0, :5] = 0
    counts[1] = torch.randint(0, depth + 1, (length,), generator=g)
    mask = torch.arange(depth) >= (depth - counts).unsqueeze(-1)
    steps = 6
    records = []
    stub = _StubPredictor(b, length, codec.embed_dim)
    out = sample_tokens(
        stub, codec, prompt, mask, SamplingConfig(steps=steps), generator=_gen(0),
        callback=lambda s, t, m: records.append(m.clone()),
    )
    assert stub.calls == steps
    assert torch.equal(out[~mask], prompt[~mask]), "prompt tokens are never changed"
    expected = counts_schedule(mask.flatten(1).sum(-1), steps)
    for t, m in enumerate(records):
        _assert_suffix(m)
        assert m.flatten(1).sum(-1).tolist() == expected[t].tolist()
        assert not bool((m & ~mask).any())
    assert not bool(records[-1].any())


def test_sample_tokens_reveals_everything_when_log_density_underflows():
    """Half precision (e.g. sampling under 16-mixed autocast) with narrow components.

    With ``log_scale = -7`` (the head's default floor) a quantized sample 0.3 latent units from
    the mean gives ``z^2 > 65504``: the fp16 log-density is ``-inf``. Masked tokens must
    still be revealed on schedule; they must not tie with the ``-inf`` used for tokens that
    are already revealed.
    """
    codec = build_codec(depth=3)
    b, length, depth = 2, codec.num_positions, codec.depth
    stub = _StubPredictor(b, length, codec.embed_dim, dtype=torch.float16, log_scale=-7.0)
    steps = 4
    records = []
    sample_tokens(
        stub, codec, torch.zeros(b, length, depth, dtype=torch.long),
        torch.ones(b, length, depth, dtype=torch.bool), SamplingConfig(steps=steps, temperature=0.0),
        generator=_gen(0), callback=lambda s, t, m: records.append(m.clone()),
    )
    got = [r.flatten(1).sum(-1).tolist() for r in records]
    expected = [[n] * b for n in masked_counts_schedule(length, depth, steps)]
    assert got == expected


def test_generate_accepts_label_lists_and_ints(model) -> None:
    """Labels given as a list or an int sample the same as the equivalent LongTensor."""
    from_tensor = model.generate(torch.tensor([0, 2]), steps=3, generator=torch.Generator().manual_seed(5))
    from_list = model.generate([0, 2], steps=3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(from_tensor, from_list)
    assert model.generate(1, steps=2).shape[0] == 1
    with pytest.raises(ValueError, match="integer labels"):
        model.generate([0.5], steps=2)
    with pytest.raises(ValueError, match="integer labels"):
        model.generate(torch.zeros(2, 2, dtype=torch.long), steps=2)
