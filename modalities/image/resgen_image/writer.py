"""Writes predicted images: one PNG per sample, a class-by-sample grid, and a tensor file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from einops import rearrange
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image
from torch import Tensor


def to_uint8(images: Tensor) -> Tensor:
    """``[B, C, H, W]`` in [-1, 1] -> uint8 in [0, 255]."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def save_png(image: Tensor, path: Path) -> None:
    """Atomically write a uint8 ``[C, H, W]`` image as PNG."""
    array = rearrange(image.cpu(), "c h w -> h w c").contiguous().numpy()
    pil = Image.fromarray(np.ascontiguousarray(array[..., 0]) if array.shape[-1] == 1 else array)
    tmp = path.with_name(f".{path.name}.tmp")
    pil.save(tmp, format="PNG")
    os.replace(tmp, path)


def make_grid(images: Tensor, labels: Tensor | None, columns: int = 10, upscale: int = 1) -> Tensor:
    """uint8 ``[N, C, H, W]`` -> one grid image; with labels, one row per class."""
    if labels is not None:
        rows = [images[labels == c][:columns] for c in labels.unique(sorted=True)]
    else:
        rows = list(images.split(columns))
    c, h, w = images.shape[1:]
    cells = torch.zeros(len(rows), columns, c, h, w, dtype=torch.uint8)
    for i, row in enumerate(rows):
        cells[i, : row.shape[0]] = row
    grid = rearrange(cells, "r k c h w -> c (r h) (k w)")
    if upscale > 1:
        grid = grid.repeat_interleave(upscale, 1).repeat_interleave(upscale, 2)
    return grid


class ImageWriter(BasePredictionWriter):
    """Prediction writer for images.

    Writes ``output_dir/samples/{index:05d}_c{label}.png``, ``output_dir/samples.png`` (a grid:
    one row per class, ``columns`` samples each) and ``output_dir/samples.pt`` (uint8 images
    and labels).

    Args:
        output_dir: destination folder (created).
        columns: samples per grid row.
    """

    def __init__(self, output_dir: str = "outputs/predict", columns: int = 10) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.columns = columns
        self._images: list[Tensor] = []
        self._labels: list[Tensor] = []
        self._count = 0

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        try:
            (self.output_dir / "samples").mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError, PermissionError) as err:
            raise OSError(
                f"cannot create the output folder {self.output_dir}: {err}. Choose a writable --output_dir."
            ) from err
        self._images, self._labels, self._count = [], [], 0

    def write_on_batch_end(
        self, trainer: Any, pl_module: Any, prediction: dict[str, Any], batch_indices: Sequence[int] | None,
        batch: Any, batch_idx: int, dataloader_idx: int = 0,
    ) -> None:
        images = to_uint8(prediction["samples"]).cpu()
        cond = prediction.get("cond")
        labels = cond.cpu() if isinstance(cond, Tensor) else torch.full((images.shape[0],), -1)
        indices = list(batch_indices) if batch_indices else list(range(self._count, self._count + len(images)))
        for idx, image, label in zip(indices, images, labels):
            suffix = f"_c{int(label)}" if int(label) >= 0 else ""
            save_png(image, self.output_dir / "samples" / f"{int(idx):05d}{suffix}.png")
        self._count += len(images)
        self._images.append(images)
        self._labels.append(labels)

    def on_predict_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._images:
            return
        images, labels = torch.cat(self._images), torch.cat(self._labels)
        rank = trainer.global_rank
        name = "samples" if trainer.world_size == 1 else f"samples_rank{rank}"
        upscale = max(1, 32 // images.shape[-1])
        has_labels = bool((labels >= 0).all())
        grid = make_grid(images, labels if has_labels else None, self.columns, upscale)
        save_png(grid, self.output_dir / f"{name}.png")
        tmp = self.output_dir / f".{name}.pt.tmp"
        torch.save({"images": images, "labels": labels}, tmp)
        os.replace(tmp, self.output_dir / f"{name}.pt")
