"""Shared fixtures: a tiny, deterministically initialised RQ-VAE codec and a tiny ResGen model.

Everything here is small enough to run on a laptop CPU in milliseconds. The codec's
quantizer is initialised (k-means + one EMA update) by a single training-mode forward on
random images under a fixed seed, then put in eval mode, and its latent scale is set from
the full latents of that same batch.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch

import resgen
from resgen_image.codec import RQVAE

CODEC_DEFAULTS = dict(
    image_size=8,
    channels=1,
    hidden=8,
    channel_mult=[1, 2],
    embed_dim=4,
    depth=3,
    codebook_size=8,
)

MODEL_DEFAULTS = dict(
    width=16,
    num_layers=1,
    num_heads=2,
    num_components=4,
    ema_decay=0.0,
)


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    """One intra-op thread: these models are tiny, and OpenMP threads spinning on a busy
    2-core machine made a 30-step overfit take ~30 s instead of ~1 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def _resgen_cache(tmp_path_factory: pytest.TempPathFactory):
    """Point ``RESGEN_CACHE`` at a session temp dir so nothing is written to ``~/.cache``."""
    mp = pytest.MonkeyPatch()
    mp.setenv("RESGEN_CACHE", str(tmp_path_factory.mktemp("resgen_cache")))
    yield
    mp.undo()


def random_images(n: int, image_size: int, channels: int = 1, seed: int = 0) -> torch.Tensor:
    """``[n, C, H, W]`` smooth-ish random images in [-1, 1] (deterministic for ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, image_size, image_size, generator=g) * 2 - 1


def build_codec(seed: int = 0, num_images: int = 32, **overrides) -> RQVAE:
    """A tiny RQVAE whose quantizer is initialised on random data under ``seed``."""
    kwargs = {**CODEC_DEFAULTS, **overrides}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        codec = RQVAE(**kwargs)
        data = random_images(num_images, kwargs["image_size"], kwargs["channels"], seed=seed + 1)
        codec.train()
        with torch.no_grad():
            codec(data)  # k-means init + one EMA update of the codebooks
        codec.eval()
        with torch.no_grad():
            latents = codec.embed(codec.encode(data))
        codec.track_latent_scale(latents)
    assert bool(codec.quantizer.initialized)
    return codec


def build_model(codec: RQVAE | None = None, seed: int = 0, **overrides) -> resgen.ResGen:
    """A tiny class-conditional ResGen over ``codec`` (3 classes)."""
    codec = codec if codec is not None else build_codec(seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = resgen.ResGen(
            codec, resgen.ClassConditioner(num_classes=3), **{**MODEL_DEFAULTS, **overrides}
        )
    return model


@pytest.fixture
def make_codec() -> Callable[..., RQVAE]:
    """Factory: ``make_codec(depth=4, image_size=16, shared_codebook=True, seed=1, ...)``."""
    return build_codec


@pytest.fixture
def make_model() -> Callable[..., resgen.ResGen]:
    """Factory: ``make_model(codec=None, seed=0, **ResGen kwargs)``."""
    return build_model


@pytest.fixture
def codec() -> RQVAE:
    """The default tiny codec: 8x8 images -> L = 16 positions, D = 3, V = 8, c = 4."""
    return build_codec()


@pytest.fixture
def model(codec: RQVAE) -> resgen.ResGen:
    """The default tiny ResGen over :func:`codec`."""
    return build_model(codec)


@pytest.fixture
def images() -> torch.Tensor:
    """A batch of 8 random 8x8 single-channel images (same distribution the codec saw)."""
    return random_images(8, CODEC_DEFAULTS["image_size"], seed=123)
