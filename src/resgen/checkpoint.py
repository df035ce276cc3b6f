"""Reading checkpoints and rebuilding models from them alone.

Every ResGen LightningModule stores ``checkpoint["resgen"]`` with its own configuration
(``class_path`` / ``init_args``), so a codec or a generator can be rebuilt in a fresh
process with no training config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from resgen.config import instantiate


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used (missing, corrupt, or not what was expected)."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file on the CPU with a clear error when it is missing or corrupt."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}. Pass the path of a .ckpt file written by `resgen fit`.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for truncated/corrupt files
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is truncated or corrupt ({type(err).__name__}: {err}). "
            "Use another checkpoint (e.g. the previous one in the same folder) or retrain."
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no state_dict); pass a .ckpt written by `resgen fit`.")
    return ckpt


def stored_config(ckpt: dict[str, Any], path: str | Path = "checkpoint") -> dict[str, Any]:
    """The model configuration stored by ResGen in a checkpoint."""
    try:
        return ckpt["resgen"]["model"]
    except (KeyError, TypeError):
        raise CheckpointError(
            f"{path} holds no ResGen model configuration; it was not written by a ResGen module."
        ) from None


def load_codec(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a trained codec from a codec checkpoint (``resgen fit`` of a CodecModule).

    Returns:
        The codec (eval mode) and its configuration.
    """
    from resgen.codec import RVQCodec

    ckpt = read_checkpoint(path)
    config = stored_config(ckpt, path)
    codec_config = config.get("init_args", {}).get("codec")
    if not isinstance(codec_config, dict) or "class_path" not in codec_config:
        raise CheckpointError(
            f"{path} is not a codec checkpoint (its model is {config.get('class_path')}); "
            "pass the checkpoint written by `resgen fit` with a codec config."
        )
    codec = instantiate(codec_config)
    if not isinstance(codec, RVQCodec):
        raise CheckpointError(f"{path}: {codec_config['class_path']} is not an RVQCodec.")
    prefix = "codec."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    codec.load_state_dict(state)
    expected = ckpt["resgen"].get("codec_fingerprint")
    if expected is not None and codec.fingerprint() != expected:
        raise CheckpointError(f"{path}: codec weights do not match the fingerprint stored with them.")
    return codec.eval(), codec_config


def without_evaluator(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of a model config with its evaluator (the FID judge) removed."""
    init_args = dict(config.get("init_args", {}))
    if "evaluator" in init_args:
        init_args["evaluator"] = None
    return {**config, "init_args": init_args}


def load_model(
    path: str | Path, map_location: str | torch.device = "cpu", *, evaluator: bool = False
) -> torch.nn.Module:
    """Rebuild any ResGen LightningModule (codec trainer or generator) from its checkpoint alone.

    Args:
        path: the checkpoint.
        map_location: device of the returned model.
        evaluator: also rebuild the model's evaluator (the FID judge), needed for ``test``.
    """
    ckpt = read_checkpoint(path)
    config = stored_config(ckpt, path)
    model = instantiate(config if evaluator else without_evaluator(config))
    model.on_load_checkpoint(ckpt)
    model.load_state_dict(ckpt["state_dict"])
    return model.to(map_location).eval()
