"""Sample-quality metrics with a pluggable feature extractor (torchmetrics FID / KID).

A modality supplies a :class:`FeatureExtractor` (a small held-out classifier for the
embedded digits, Inception from a local weights file for real images). The evaluator
compares generated samples (and codec reconstructions) with held-out real data, and
reports the class accuracy of conditional samples when the extractor can classify.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from resgen.config import Configurable


class FeatureExtractor(Configurable, nn.Module, ABC):
    """Maps a batch of data to features ``[B, F]``; optionally classifies it."""

    num_features: int

    @abstractmethod
    def forward(self, data: Tensor) -> Tensor:
        """``data`` -> ``[B, F]`` float features."""

    def logits(self, data: Tensor) -> Tensor | None:
        """``data`` -> ``[B, C]`` class logits, or None when the extractor cannot classify."""
        return None


class _Features(nn.Module):
    """Adapter: torchmetrics calls ``module(x)`` and reads ``num_features``."""

    def __init__(self, extractor: FeatureExtractor) -> None:
        super().__init__()
        self.extractor = extractor
        self.num_features = extractor.num_features

    def forward(self, x: Tensor) -> Tensor:
        return self.extractor(x).double()


class GenerativeEvaluator(nn.Module):
    """Accumulates FID/KID of samples and reconstructions against real data, and accuracy.

    Args:
        extractor: the feature extractor (frozen, eval mode).
        kid_subset_size: subset size of KID (clipped to the number of samples).
    """

    def __init__(self, extractor: FeatureExtractor, kid_subset_size: int = 100) -> None:
        super().__init__()
        self.extractor = extractor.eval().requires_grad_(False)
        features = _Features(self.extractor)
        self.fid = FrechetInceptionDistance(feature=features, reset_real_features=True)
        self.fid_recon = FrechetInceptionDistance(feature=features, reset_real_features=True)
        self.kid_subset_size = kid_subset_size
        self.kid = KernelInceptionDistance(feature=features, subset_size=kid_subset_size)
        self.reset()

    def reset(self) -> None:
        for metric in (self.fid, self.fid_recon, self.kid):
            metric.reset()
        self.correct = self.total = self.correct_real = self.total_real = 0
        self.n_fake = 0

    @torch.no_grad()
    def update(
        self,
        real: Tensor | None = None,
        fake: Tensor | None = None,
        recon: Tensor | None = None,
        labels: Tensor | None = None,
        real_labels: Tensor | None = None,
    ) -> None:
        """Add a batch. ``labels`` are the conditions of ``fake``; ``real_labels`` those of ``real``."""
        if real is not None:
            for metric in (self.fid, self.fid_recon):
                metric.update(real, real=True)
            self.kid.update(real, real=True)
            if real_labels is not None:
                c, n = self._accuracy(real, real_labels)
                self.correct_real, self.total_real = self.correct_real + c, self.total_real + n
        if fake is not None:
            self.fid.update(fake, real=False)
            self.kid.update(fake, real=False)
            self.n_fake += fake.shape[0]
            if labels is not None:
                c, n = self._accuracy(fake, labels)
                self.correct, self.total = self.correct + c, self.total + n
        if recon is not None:
            self.fid_recon.update(recon, real=False)

    def _accuracy(self, data: Tensor, labels: Tensor) -> tuple[int, int]:
        logits = self.extractor.logits(data)
        if logits is None:
            return 0, 0
        return int((logits.argmax(-1) == labels).sum()), int(labels.numel())

    def compute(self) -> dict[str, float]:
        """Metrics over everything added since :meth:`reset`."""
        out: dict[str, float] = {}
        if self.fid.real_features_num_samples > 1 and self.fid.fake_features_num_samples > 1:
            out["fid"] = float(self.fid.compute())
            n = min(int(self.fid.real_features_num_samples), self.n_fake)
            self.kid.subset_size = min(self.kid_subset_size, n)
            out["kid"] = float(self.kid.compute()[0])
        if self.fid_recon.fake_features_num_samples > 1 and self.fid_recon.real_features_num_samples > 1:
            out["fid_recon"] = float(self.fid_recon.compute())
        if self.total:
            out["class_accuracy"] = self.correct / self.total
        if self.total_real:
            out["classifier_accuracy_real"] = self.correct_real / self.total_real
        return out


@torch.no_grad()
def frechet_distance(extractor: FeatureExtractor, a: Tensor, b: Tensor, batch_size: int = 500) -> float:
    """FID between two data batches under ``extractor`` (``a`` is the reference)."""
    fid = FrechetInceptionDistance(feature=_Features(extractor.eval()))
    for x, real in ((a, True), (b, False)):
        for chunk in x.split(batch_size):
            fid.update(chunk, real=real)
    return float(fid.compute())
