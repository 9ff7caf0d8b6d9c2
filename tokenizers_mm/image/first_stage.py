"""``LatentAutoencoder``: the 2D first stage of a latent 1D tokenizer (FlexTok reads a VAE's latent grid).

    image [B, 3, S, S] in [-1, 1] -> conv encoder -> tanh -> latent [B, C, S/f, S/f] in (-1, 1)
    latent -> conv decoder -> image [B, 3, S, S] (unclipped)

It is continuous (no quantizer): the 1D tokenizer after it owns the token bottleneck. The tanh bound keeps
the latent's scale fixed, so the tokenizer's latent regression target has the same range whatever the
first stage learned. ``FirstStageConfig`` describes it in YAML; the 1D codec holds it as a submodule, so its
weights travel in checkpoints and exports and inference needs nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .grid_codec import ConvDecoder, ConvEncoder


@dataclass
class FirstStageConfig:
    """A conv autoencoder in front of the 1D tokenizer, and how it is trained.

    Args:
        base_channels / channel_mults: conv widths; ``f = stem * 2 ** len(channel_mults)`` is the downsampling.
        stem: pixel-unshuffle factor in front of the convolutions (1: none); see ``ConvEncoder``.
        latent_channels: C, channels of the latent grid.
        train_steps: the first ``train_steps`` optimizer steps train only this autoencoder (pixel loss);
            afterwards it is frozen and the tokenizer learns to reproduce its latent. 0: it is frozen from
            the start (pretrained weights from ``init_from``).
        init_from: a checkpoint (``.ckpt``) of a latent 1D tokenizer whose first stage is copied in.
        latent_weight: weight of the latent-space MSE between the tokenizer's output and the frozen
            encoder's latent (the pixel loss through the frozen decoder is added with the pixel weight).
        noise: std of Gaussian noise added to the latent while the autoencoder trains, so its decoder
            tolerates the small latent errors the tokenizer will make.
    """

    base_channels: int = 32
    channel_mults: list[int] = field(default_factory=lambda: [1, 2])
    latent_channels: int = 4
    stem: int = 1
    train_steps: int = 300
    init_from: str | None = None
    latent_weight: float = 1.0
    noise: float = 0.0

    def arch(self) -> dict:
        """The constructor arguments of :class:`LatentAutoencoder` (what an export records)."""
        arch = {"base_channels": self.base_channels, "channel_mults": list(self.channel_mults),
                "latent_channels": self.latent_channels}
        if self.stem != 1:  # exports of stem-less first stages keep their old arguments
            arch["stem"] = self.stem
        return arch


class LatentAutoencoder(nn.Module):
    """Conv encoder -> tanh latent ``[B, C, S/f, S/f]`` -> conv decoder (see the module docstring)."""

    def __init__(self, base_channels: int = 32, channel_mults: list[int] | None = None,
                 latent_channels: int = 4, stem: int = 1) -> None:
        super().__init__()
        mults = list(channel_mults or [1, 2])
        self.downsample = stem * 2 ** len(mults)
        self.latent_channels = latent_channels
        self.encoder = ConvEncoder(base_channels, mults, latent_channels, stem)
        self.decoder = ConvDecoder(base_channels, mults, latent_channels, stem)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in ``[-1, 1]`` -> latent ``[B, C, H/f, W/f]`` in ``(-1, 1)``."""
        return torch.tanh(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """latent ``[B, C, h, w]`` -> image ``[B, 3, h*f, w*f]`` (unclipped)."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor, noise: float = 0.0) -> torch.Tensor:
        """Autoencoder pass (training of the first stage): reconstruction ``[B, 3, H, W]``, unclipped."""
        z = self.encode(x)
        if noise > 0 and self.training:
            z = z + noise * torch.randn_like(z)
        return self.decode(z)
