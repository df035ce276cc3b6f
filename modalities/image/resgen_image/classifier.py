"""A small digits classifier: the offline feature extractor for FID/KID and class accuracy.

Trained once on the digits *train* split (deterministic for its seed) and cached, so it
never sees the held-out images it judges.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resgen.metrics import FeatureExtractor


def cache_root() -> Path:
    """``$RESGEN_CACHE`` or ``~/.cache/resgen``."""
    return Path(os.environ.get("RESGEN_CACHE", Path.home() / ".cache" / "resgen")).expanduser()


class DigitsClassifier(FeatureExtractor):
    """CNN on 8x8 digits; its penultimate layer (``num_features``) gives the features.

    Args:
        num_features: width of the penultimate layer (<= 64).
        epochs: training epochs on the train split.
        seed: training seed (and the digits split seed).
        cache_dir: where the trained weights are kept (default :func:`cache_root`).
    """

    def __init__(
        self, *, num_features: int = 64, epochs: int = 60, seed: int = 0, cache_dir: str | None = None
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Dropout(0.25), nn.Linear(64 * 16, num_features), nn.ReLU(),
        )
        self.classify = nn.Linear(num_features, 10)
        key = hashlib.sha256(f"digits-cnn-v1:{num_features}:{epochs}:{seed}".encode()).hexdigest()[:12]
        path = Path(cache_dir).expanduser() if cache_dir else cache_root()
        path = path / f"digits_classifier_{key}.pt"
        if path.is_file():
            self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        else:
            self._fit(epochs, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save(self.state_dict(), tmp)
            os.replace(tmp, path)
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> DigitsClassifier:
        return super().train(False)  # a judge, always in eval mode

    def forward(self, data: Tensor) -> Tensor:
        return self.body(data.float().clamp(-1, 1))

    def logits(self, data: Tensor) -> Tensor:
        return self.classify(self.forward(data))

    def _fit(self, epochs: int, seed: int) -> None:
        from resgen_image.data import DigitsDataModule

        data = DigitsDataModule(seed=seed)
        x = torch.stack([s["input"] for s in data.train_dataset])
        y = torch.stack([torch.as_tensor(s["cond"]) for s in data.train_dataset])
        gen = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    m.reset_parameters()
            opt = torch.optim.AdamW(self.parameters(), lr=2e-3, weight_decay=1e-3)
            nn.Module.train(self, True)
            for _ in range(epochs):
                order = torch.randperm(x.shape[0], generator=gen)
                for idx in order.split(64):
                    xb = _jitter(x[idx], gen)
                    loss = F.cross_entropy(self.classify(self.body(xb)), y[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        nn.Module.train(self, False)


def _jitter(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random 1-pixel shifts and light noise: a judge robust to small misplacements."""
    dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    return x + 0.05 * torch.randn(x.shape, generator=gen)
