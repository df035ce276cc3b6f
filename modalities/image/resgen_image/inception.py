"""Inception-v3 pool features for real-data FID, loaded from a local state-dict file (never downloaded).

The network is torchvision's ``inception_v3`` (ImageNet ``IMAGENET1K_V1`` weights). Note that FID values
computed with it are self-consistent but not numerically identical to the TF-Inception based numbers of
``pytorch-fid``/``clean-fid`` papers, which use a differently trained network.
"""

import os

import torch
import torch.nn.functional as F
from einops import repeat
from torch import nn
from torchvision.models import inception_v3

from resgen.metrics import FeatureExtractor

__all__ = ["InceptionFeatures", "WEIGHTS_OPTION", "WEIGHTS_HELP"]

#: Name of the configuration option that carries the weights path (used in error messages).
WEIGHTS_OPTION = "model.init_args.evaluator.init_args.weights_path"

#: How to obtain the weights file on a machine with internet access.
WEIGHTS_HELP = (
    "On a machine with internet access run:\n"
    "    python -c \"import torch, torchvision; torch.save(torchvision.models.inception_v3("
    "weights='IMAGENET1K_V1').state_dict(), 'inception_v3_imagenet1k_v1.pt')\"\n"
    "copy inception_v3_imagenet1k_v1.pt to this machine and pass its path with the "
    f"`{WEIGHTS_OPTION}` option (e.g. --{WEIGHTS_OPTION}=/path/to/inception_v3_imagenet1k_v1.pt)."
)


class InceptionFeatures(FeatureExtractor):
    """Frozen Inception-v3 mapping images to 2048-d pool features.

    Args:
        weights_path: Local file holding a torchvision ``inception_v3`` state dict (as saved by
            ``torch.save(model.state_dict(), path)``; a ``{"state_dict": ...}`` wrapper is accepted).

    Raises:
        FileNotFoundError: If ``weights_path`` is None or does not name an existing file.

    Attributes:
        num_features: Feature dimension, 2048.
    """

    num_features: int = 2048
    input_size: int = 299

    def __init__(self, weights_path: str | None = None) -> None:
        super().__init__()
        if weights_path is None or not os.path.isfile(weights_path):
            where = "no weights file was given"
            if weights_path is not None:
                where = f"{os.fspath(weights_path)!r} does not exist"
            raise FileNotFoundError(
                f"Real-data FID needs Inception-v3 weights from a local file, but {where}. "
                f"Nothing is downloaded automatically. {WEIGHTS_HELP}"
            )
        net = inception_v3(weights=None, aux_logits=True, init_weights=False)
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        try:
            net.load_state_dict(state)
        except RuntimeError as err:
            raise RuntimeError(
                f"{os.fspath(weights_path)!r} is not a torchvision inception_v3 state dict ({err}). {WEIGHTS_HELP}"
            ) from err
        # Inputs are already in [-1, 1], the range these weights expect when transform_input=False.
        net.transform_input = False
        net.fc = nn.Identity()
        net.AuxLogits = None  # only used in training mode; drop it to save memory
        net.aux_logits = False
        self.net = net.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "InceptionFeatures":
        """Keeps the network in eval mode (batch-norm statistics and dropout stay frozen)."""
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Computes pool features.

        Args:
            images: Float tensor ``[B, C, H, W]`` in [-1, 1] with C = 1 (repeated to RGB) or 3.

        Returns:
            Float tensor ``[B, 2048]``.
        """
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images [B, 1 or 3, H, W], got shape {tuple(images.shape)}")
        if images.shape[1] == 1:
            images = repeat(images, "b 1 h w -> b c h w", c=3)
        param = next(self.net.parameters())
        x = images.to(device=param.device, dtype=param.dtype).clamp(-1.0, 1.0)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self.net(x)

    def logits(self, images: torch.Tensor) -> None:
        """No classifier head is kept (``fc`` is replaced by identity), so there are no logits.

        Args:
            images: Ignored.

        Returns:
            None, signalling callers (e.g. Inception-Score code) that logits are unavailable.
        """
        return None
