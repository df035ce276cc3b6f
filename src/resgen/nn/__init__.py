"""Network building blocks: the transformer backbone and the mixture-of-Gaussians head."""

from resgen.nn.backbone import Transformer
from resgen.nn.head import Mixture, MixtureHead

__all__ = ["Mixture", "MixtureHead", "Transformer"]
