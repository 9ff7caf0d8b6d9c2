"""Waveform discriminators: multi-period (HiFi-GAN) and multi-scale STFT (EnCodec).

Each returns ``(logits, features)``: one logit map per sub-discriminator and, for feature matching, the
list of its intermediate activations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


@dataclass
class DiscriminatorConfig:
    """Which discriminators and their sizes.

    Args:
        periods: periods of the multi-period discriminator (empty: none).
        mpd_channels: channel widths of each period discriminator's 2D conv stack.
        stft_windows: window sizes of the multi-scale STFT discriminator (empty: none).
        stft_channels: width of each STFT discriminator.
    """

    periods: list[int] = field(default_factory=lambda: [2, 3, 5, 7, 11])
    mpd_channels: list[int] = field(default_factory=lambda: [32, 128, 512, 1024])
    stft_windows: list[int] = field(default_factory=lambda: [2048, 1024, 512, 256, 128])
    stft_channels: int = 32


Output = tuple[list[torch.Tensor], list[list[torch.Tensor]]]


class PeriodDiscriminator(nn.Module):
    """Folds ``[B, 1, T]`` into ``[B, 1, T / p, p]`` and applies (5, 1) convs along time."""

    def __init__(self, period: int, channels: Sequence[int]) -> None:
        super().__init__()
        self.period = period
        layers, cin = [], 1
        for c in channels:
            layers.append(weight_norm(nn.Conv2d(cin, c, (5, 1), (3, 1), padding=(2, 0))))
            cin = c
        layers.append(weight_norm(nn.Conv2d(cin, cin, (5, 1), 1, padding=(2, 0))))
        self.convs = nn.ModuleList(layers)
        self.out = weight_norm(nn.Conv2d(cin, 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b, c, t = x.shape
        if t % self.period:
            x = F.pad(x, (0, self.period - t % self.period), mode="reflect")
        h = x.view(b, c, -1, self.period)
        feats = []
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.1)
            feats.append(h)
        logits = self.out(h)
        feats.append(logits)
        return logits, feats


class STFTDiscriminator(nn.Module):
    """2D convs over the complex STFT (real and imaginary parts as channels) of one window size."""

    def __init__(self, window: int, channels: int) -> None:
        super().__init__()
        self.window = window
        self.register_buffer("hann", torch.hann_window(window), persistent=False)
        c = channels
        self.convs = nn.ModuleList([
            weight_norm(nn.Conv2d(2, c, (3, 9), padding=(1, 4))),
            weight_norm(nn.Conv2d(c, c, (3, 9), stride=(1, 2), dilation=(1, 1), padding=(1, 4))),
            weight_norm(nn.Conv2d(c, c, (3, 9), stride=(1, 2), dilation=(2, 1), padding=(2, 4))),
            weight_norm(nn.Conv2d(c, c, (3, 9), stride=(1, 2), dilation=(4, 1), padding=(4, 4))),
            weight_norm(nn.Conv2d(c, c, (3, 3), padding=(1, 1))),
        ])
        self.out = weight_norm(nn.Conv2d(c, 1, (3, 3), padding=(1, 1)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        spec = torch.stft(x.squeeze(1).float(), self.window, self.window // 4, window=self.hann, return_complex=True,
                          normalized=True)
        h = torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3)  # [B, 2, frames, freq]
        feats = []
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.2)
            feats.append(h)
        logits = self.out(h)
        feats.append(logits)
        return logits, feats


class WaveDiscriminator(nn.Module):
    """All configured discriminators side by side: ``[B, 1, T]`` -> ``(logits, features)`` lists."""

    def __init__(self, config: DiscriminatorConfig | None = None) -> None:
        super().__init__()
        cfg = config or DiscriminatorConfig()
        subs: list[nn.Module] = [PeriodDiscriminator(p, cfg.mpd_channels) for p in cfg.periods]
        subs += [STFTDiscriminator(w, cfg.stft_channels) for w in cfg.stft_windows]
        if not subs:
            raise ValueError("the discriminator config has no periods and no STFT windows")
        self.subs = nn.ModuleList(subs)

    def forward(self, x: torch.Tensor) -> Output:
        logits, feats = [], []
        for d in self.subs:
            lg, ft = d(x)
            logits.append(lg)
            feats.append(ft)
        return logits, feats
