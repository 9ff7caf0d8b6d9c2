"""Images a person looks at: reconstruction grids written as PNG and to TensorBoard."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .data.image import tensor_to_uint8
from .io import atomic_path


def image_grid(rows: Sequence[torch.Tensor], pad: int = 2) -> np.ndarray:
    """Tile rows of images into one uint8 ``[H, W, 3]`` array.

    Each row is ``[N, 3, h, w]`` in ``[-1, 1]``; rows must share ``h`` and ``w`` (N may differ).
    """
    n_cols = max(r.shape[0] for r in rows)
    h, w = rows[0].shape[-2:]
    grid = np.full((len(rows) * (h + pad) + pad, n_cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j in range(row.shape[0]):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[y:y + h, x:x + w] = tensor_to_uint8(row[j])
    return grid


def save_png(array: np.ndarray, path: str) -> str:
    """Write ``[H, W, 3]`` uint8 to ``path`` atomically (temp file + rename); returns the path."""
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return path
