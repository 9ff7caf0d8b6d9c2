"""X-Codec 2's acoustic encoder and semantic adapter (parameter names follow ``transformers``' ``Xcodec2Model``).

``AcousticEncoder``: ``[B, 1, T]`` -> ``[B, hidden, T / prod(ratios)]``: a 7-tap convolution to ``channels``, one
block per ratio (three dilated residual units (1, 3, 9) with anti-aliased SnakeBeta, then a strided convolution
that doubles the channels), a last anti-aliased SnakeBeta and a 3-tap convolution to ``hidden``.
``SemanticAdapter``: ``[B, D, F] -> [B, D, F]``, four 3-tap convolutions with a residual around the middle two.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .alias_free import AntiAliasedActivation, SnakeBeta


def _snake(channels: int) -> AntiAliasedActivation:
    return AntiAliasedActivation(SnakeBeta(channels))


class ResidualUnit(nn.Module):
    """``x + conv1x1(act(conv7_dilated(act(x))))`` at ``channels``."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.snake1 = _snake(channels)
        self.conv1 = nn.Conv1d(channels, channels, 7, dilation=dilation, padding=3 * dilation)
        self.snake2 = _snake(channels)
        self.conv2 = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.snake2(self.conv1(self.snake1(x))))


class EncoderBlock(nn.Module):
    """Residual units at ``channels // 2``, then a convolution (kernel ``2 * stride``) down by ``stride`` to
    ``channels``."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        half = channels // 2
        self.res_unit1 = ResidualUnit(half, 1)
        self.res_unit2 = ResidualUnit(half, 3)
        self.res_unit3 = ResidualUnit(half, 9)
        self.snake1 = _snake(half)
        self.conv1 = nn.Conv1d(half, channels, 2 * stride, stride=stride, padding=math.ceil(stride / 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(self.snake1(self.res_unit3(self.res_unit2(self.res_unit1(x)))))


class AcousticEncoder(nn.Module):
    """Waveform ``[B, 1, T]`` (T a multiple of ``prod(ratios)``) -> ``[B, hidden, T / prod(ratios)]``."""

    def __init__(self, channels: int, ratios: list[int], hidden: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 7, padding=3)
        self.block = nn.ModuleList(EncoderBlock(channels * 2 ** (i + 1), s) for i, s in enumerate(ratios))
        top = channels * 2 ** len(ratios)
        self.snake1 = _snake(top)
        self.conv2 = nn.Conv1d(top, hidden, 3, padding=1)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        h = self.conv1(wave)
        for block in self.block:
            h = block(h)
        return self.conv2(self.snake1(h))


class SemanticAdapter(nn.Module):
    """Semantic features ``[B, D, F]`` -> ``[B, D, F]`` (conv, ReLU, residual conv-ReLU-conv, conv)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(dim, dim, 3, padding=1, bias=False)
        self.conv2 = nn.Conv1d(dim, dim, 3, padding=1)
        self.conv3 = nn.Conv1d(dim, dim, 3, padding=1)
        self.conv4 = nn.Conv1d(dim, dim, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x))
        h = h + self.conv3(torch.relu(self.conv2(h)))
        return self.conv4(h)
