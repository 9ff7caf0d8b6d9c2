"""Image-only parts of the ViT tokenizers: patch (un)embedding and fixed 2D grid positions.

The transformer blocks they feed are shared with other modalities and live in :mod:`tokenizers_mm.nn`.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sincos_2d(h: int, w: int, dim: int) -> torch.Tensor:
    """Fixed 2D sine-cosine position embedding ``[h * w, dim]`` (row-major), ``dim`` divisible by 4."""
    if dim % 4:
        raise ValueError(f"position embedding dim {dim} must be divisible by 4")
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    freqs = 1.0 / (10000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4)))
    parts = []
    for coord in (ys.flatten(), xs.flatten()):
        angles = coord[:, None] * freqs[None]
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1)


class PatchEmbed(nn.Module):
    """``[B, C, H, W]`` -> ``[B, (H/p)(W/p), D]`` (``C = channels``: 3 for pixels, more for a latent grid).

    ``kind='linear'``: one p x p stride-p convolution (plain ViT). ``kind='conv'``: a small convolutional
    stem (3x3 convs with stride-2 downsampling to the patch grid), which converges much faster on small
    data and CPUs; the token layout is identical.
    """

    def __init__(self, patch_size: int, width: int, kind: str = "linear", stem_channels: int = 64,
                 channels: int = 3) -> None:
        super().__init__()
        self.patch_size = patch_size
        if kind == "linear":
            self.net = nn.Conv2d(channels, width, patch_size, stride=patch_size)
        elif kind == "conv":
            n_down = int(math.log2(patch_size))
            if 2 ** n_down != patch_size:
                raise ValueError(f"conv patch embedding needs a power-of-two patch size, got {patch_size}")
            layers: list[nn.Module] = [nn.Conv2d(channels, stem_channels, 3, padding=1)]
            ch = stem_channels
            for i in range(n_down):
                out = min(stem_channels * 2 ** (i + 1), 4 * stem_channels)
                layers += [nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, out, 4, stride=2, padding=1)]
                ch = out
            layers += [nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, width, 1)]
            self.net = nn.Sequential(*layers)
        else:
            raise ValueError(f"patch embedding kind must be 'linear' or 'conv', got {kind!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(2).transpose(1, 2)


class PatchUnembed(nn.Module):
    """``[B, (H/p)(W/p), D]`` -> ``[B, C, H, W]`` (unbounded values; ``C = channels``, 3 for pixels).

    ``kind='linear'``: a linear map to p*p*3 pixels per patch. ``kind='conv'``: nearest upsampling with
    3x3 convolutions, which removes patch seams early in training.
    """

    def __init__(self, patch_size: int, width: int, grid: tuple[int, int], kind: str = "linear",
                 head_channels: int = 64, channels: int = 3) -> None:
        super().__init__()
        self.p, self.grid, self.kind, self.channels = patch_size, grid, kind, channels
        if kind == "linear":
            self.net = nn.Linear(width, patch_size * patch_size * channels)
        elif kind == "conv":
            n_up = int(math.log2(patch_size))
            if 2 ** n_up != patch_size:
                raise ValueError(f"conv patch head needs a power-of-two patch size, got {patch_size}")
            ch = min(head_channels * 2 ** n_up, 4 * head_channels)
            layers: list[nn.Module] = [nn.Conv2d(width, ch, 1)]
            for i in range(n_up):
                out = min(head_channels * 2 ** (n_up - i - 1), 4 * head_channels)
                layers += [nn.GroupNorm(8, ch), nn.SiLU(), nn.Upsample(scale_factor=2, mode="nearest"),
                           nn.Conv2d(ch, out, 3, padding=1)]
                ch = out
            layers += [nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, channels, 3, padding=1)]
            self.net = nn.Sequential(*layers)
        else:
            raise ValueError(f"patch head kind must be 'linear' or 'conv', got {kind!r}")

    @property
    def last_layer_weight(self) -> torch.Tensor:
        """Weight of the layer that writes pixels (for the adaptive GAN weight)."""
        return self.net.weight if self.kind == "linear" else self.net[-1].weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h, w = self.grid
        if self.kind == "linear":
            p = self.p
            x = self.net(x).view(b, h, w, p, p, self.channels)
            return x.permute(0, 5, 1, 3, 2, 4).reshape(b, self.channels, h * p, w * p)
        return self.net(x.transpose(1, 2).reshape(b, d, h, w))
