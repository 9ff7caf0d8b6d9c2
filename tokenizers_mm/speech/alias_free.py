"""Anti-aliased periodic activations of X-Codec 2's acoustic encoder (BigVGAN-style).

``SnakeBeta``: ``x + sin^2(x * e^alpha) / (e^beta + 1e-9)`` per channel (alpha, beta stored as logs).
``AntiAliasedActivation``: the activation at twice the rate (Kaiser-windowed sinc upsampling, activation,
Kaiser-windowed sinc lowpass + decimation), so its harmonics above the input's Nyquist frequency do not alias.
Shapes: ``[B, C, T] -> [B, C, T]``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class SnakeBeta(nn.Module):
    """Snake with separate log-frequency ``alpha`` and log-magnitude ``beta`` per channel (both 0 at init)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha.exp()[None, :, None]
        beta = self.beta.exp()[None, :, None]
        return x + torch.sin(x * alpha).pow(2) / (beta + 1e-9)


def kaiser_sinc(cutoff: float, half_width: float, kernel_size: int) -> torch.Tensor:
    """Lowpass FIR ``[1, 1, kernel_size]`` with unit DC gain: sinc at ``cutoff`` (cycles per sample, <= 0.5) under a
    Kaiser window whose beta meets the attenuation of a transition band ``half_width`` wide (Kaiser's formula)."""
    half = kernel_size // 2
    attenuation = 2.285 * (half - 1) * math.pi * 4 * half_width + 7.95
    if attenuation > 50.0:
        beta = 0.1102 * (attenuation - 8.7)
    elif attenuation >= 21.0:
        beta = 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(kernel_size, periodic=False, beta=beta, dtype=torch.float32)
    t = torch.arange(-half, half) + 0.5 if kernel_size % 2 == 0 else torch.arange(kernel_size) - half
    taps = 2 * cutoff * window * torch.sinc(2 * cutoff * t)
    return (taps / taps.sum()).view(1, 1, kernel_size)


class AntiAliasedActivation(nn.Module):
    """``act`` applied at ``ratio`` times the rate: zero-stuffing + lowpass up, ``act``, lowpass + decimation down
    (edges replicate-padded; the output has the input's length)."""

    def __init__(self, act: nn.Module, ratio: int = 2, kernel_size: int = 12) -> None:
        super().__init__()
        self.act = act
        self.ratio = ratio
        taps = kaiser_sinc(0.5 / ratio, 0.6 / ratio, kernel_size)
        self.register_buffer("up_filter", taps.clone(), persistent=False)
        self.register_buffer("down_filter", taps.clone(), persistent=False)
        self.up_pad = kernel_size // ratio - 1
        self.up_crop = (self.up_pad * ratio + (kernel_size - ratio) // 2,
                        self.up_pad * ratio + (kernel_size - ratio + 1) // 2)
        even = kernel_size % 2 == 0
        self.down_pad = (kernel_size // 2 - int(even), kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        h = F.pad(x, (self.up_pad, self.up_pad), mode="replicate")
        h = self.ratio * F.conv_transpose1d(h, self.up_filter.to(x.dtype).expand(c, -1, -1), stride=self.ratio,
                                            groups=c)
        h = self.act(h[..., self.up_crop[0]:h.shape[-1] - self.up_crop[1]])
        h = F.pad(h, self.down_pad, mode="replicate")
        return F.conv1d(h, self.down_filter.to(x.dtype).expand(c, -1, -1), stride=self.ratio, groups=c)
