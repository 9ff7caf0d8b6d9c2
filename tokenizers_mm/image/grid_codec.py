"""``GridImageCodec``: conv encoder -> quantizer -> conv decoder on a 2D grid of tokens (no training code).

An image ``[B, 3, H, W]`` in ``[-1, 1]`` becomes ``(H / f) * (W / f)`` ids (row-major), ``f = 2 ** len(channel_mults)``.
:class:`~tokenizers_mm.image.fsq_autoencoder.GridImageModule` trains one; an export rebuilds it from its
constructor arguments and ``state_dict``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import as_config, plain
from ..quantize import Quantizer, QuantizerConfig


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> 3x3 conv, twice, with a residual connection."""

    def __init__(self, ch_in: int, ch_out: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(min(32, ch_in // 4) or 1, ch_in), nn.SiLU(), nn.Conv2d(ch_in, ch_out, 3, padding=1),
            nn.GroupNorm(min(32, ch_out // 4) or 1, ch_out), nn.SiLU(), nn.Conv2d(ch_out, ch_out, 3, padding=1),
        )
        self.skip = nn.Conv2d(ch_in, ch_out, 1) if ch_in != ch_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.block(x)


class ConvEncoder(nn.Module):
    """``[B, 3, H, W]`` -> ``[B, latent_dim, H/f, W/f]`` with ``f = stem * 2 ** len(channel_mults)``.

    ``stem > 1`` first folds each ``stem x stem`` pixel block into channels (pixel unshuffle), so no convolution
    runs at full resolution: the full-resolution layers cost about half of a plain encoder and decoder's compute.
    """

    def __init__(self, base_channels: int, channel_mults: list[int], latent_dim: int, stem: int = 1) -> None:
        super().__init__()
        if stem < 1:
            raise ValueError(f"stem must be >= 1, got {stem}")
        layers: list[nn.Module] = [nn.PixelUnshuffle(stem)] if stem > 1 else []
        layers.append(nn.Conv2d(3 * stem * stem, base_channels, 3, padding=1))
        ch = base_channels
        for mult in channel_mults:
            out = base_channels * mult
            layers += [ResBlock(ch, out), nn.Conv2d(out, out, 4, stride=2, padding=1)]
            ch = out
        layers += [ResBlock(ch, ch), nn.GroupNorm(min(32, ch // 4) or 1, ch), nn.SiLU(),
                   nn.Conv2d(ch, latent_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """``[B, latent_dim, h, w]`` -> ``[B, 3, h*f, w*f]`` (no output squashing; the loss sees raw values).

    ``stem > 1`` ends with a pixel shuffle that unfolds channels into ``stem x stem`` pixel blocks (the mirror of
    :class:`ConvEncoder`'s stem).
    """

    def __init__(self, base_channels: int, channel_mults: list[int], latent_dim: int, stem: int = 1) -> None:
        super().__init__()
        if stem < 1:
            raise ValueError(f"stem must be >= 1, got {stem}")
        ch = base_channels * channel_mults[-1]
        layers: list[nn.Module] = [nn.Conv2d(latent_dim, ch, 3, padding=1), ResBlock(ch, ch)]
        for mult in reversed(channel_mults):
            out = base_channels * mult
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, out, 3, padding=1),
                       ResBlock(out, out)]
            ch = out
        layers += [nn.GroupNorm(min(32, ch // 4) or 1, ch), nn.SiLU(), nn.Conv2d(ch, 3 * stem * stem, 3, padding=1)]
        if stem > 1:
            layers.append(nn.PixelShuffle(stem))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class GridImageCodec(nn.Module):
    """Conv encoder, quantizer (FSQ by default) and conv decoder.

    Args:
        image_size: side of the square training images (tokens per image = ``(image_size / f) ** 2``;
            other sizes divisible by ``f`` also encode).
        base_channels: channels of the first stage.
        channel_mults: channel multiplier per downsampling stage (its length sets ``f``).
        latent_dim: channels fed to the quantizer.
        quantizer: quantizer settings (FSQ levels ...).
    """

    architecture = "image/grid"
    modality = "image"

    def __init__(self, image_size: int = 64, base_channels: int = 32, channel_mults: list[int] | None = None,
                 latent_dim: int = 64, quantizer: QuantizerConfig | dict | None = None) -> None:
        super().__init__()
        channel_mults = list(channel_mults or [1, 2, 2])
        qcfg = as_config(QuantizerConfig, quantizer or {"kind": "fsq", "levels": [8, 5, 5, 5]})
        self.arch = plain({"image_size": image_size, "base_channels": base_channels,
                           "channel_mults": channel_mults, "latent_dim": latent_dim, "quantizer": qcfg})
        self.image_size = image_size
        self.downsample = 2 ** len(channel_mults)
        if image_size % self.downsample:
            raise ValueError(f"image_size {image_size} is not a multiple of the downsampling {self.downsample}")
        self.encoder = ConvEncoder(base_channels, channel_mults, latent_dim)
        self.quantizer = Quantizer(latent_dim, qcfg)
        self.decoder = ConvDecoder(base_channels, channel_mults, latent_dim)

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.downsample) ** 2

    def token_spec(self) -> dict[str, Any]:
        g = self.image_size // self.downsample
        return {"tokens_per_sample": g * g, "token_shape": [g * g], "grid": [g, g],
                "codebook_sizes": [self.codebook_size], "prefix_decodable": False, "min_tokens": g * g}

    def check_images(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W] in [-1, 1], got shape {tuple(x.shape)}")
        if x.shape[-1] % self.downsample or x.shape[-2] % self.downsample:
            raise ValueError(f"image sides must be multiples of {self.downsample}, got {tuple(x.shape[-2:])}")

    def check_ids(self, ids: torch.Tensor, grid: tuple[int, int] | None = None) -> tuple[int, int]:
        """Raise ``ValueError`` unless ``ids`` is ``[B, h*w]``; returns the grid ``(h, w)`` (square by default)."""
        if ids.ndim != 2:
            raise ValueError(f"expected token ids [B, h*w], got shape {tuple(ids.shape)}")
        n = ids.shape[1]
        h, w = grid or (int(round(n ** 0.5)),) * 2
        if h * w != n:
            raise ValueError(f"{n} tokens do not form a {h}x{w} grid (expected {self.num_tokens} tokens for "
                             f"{self.image_size}px images); pass grid=(h, w)")
        return h, w

    def quantize(self, x: torch.Tensor):
        """``[B, 3, H, W]`` -> (QuantizerOutput over ``[B, h*w, D]``, grid ``(h, w)``)."""
        self.check_images(x)
        z = self.encoder(x)  # [B, D, h, w]
        _, _, h, w = z.shape
        return self.quantizer(z.flatten(2).transpose(1, 2)), (h, w)

    def encode(self, x: torch.Tensor, num_tokens: int | None = None) -> torch.Tensor:
        """``[B, 3, H, W]`` in ``[-1, 1]`` -> ids int64 ``[B, (H/f) * (W/f)]`` (row-major grid).

        A grid tokenizer has no shorter prefix: ``num_tokens`` must be None or the full count.
        """
        q, (h, w) = self.quantize(x)
        if num_tokens is not None and num_tokens != h * w:
            raise ValueError(f"a grid tokenizer encodes every {h * w} tokens of a {h}x{w} grid; "
                             f"num_tokens={num_tokens} is not supported")
        return q.ids

    def decode(self, ids: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """ids ``[B, h*w]`` -> images ``[B, 3, h*f, w*f]`` clipped to ``[-1, 1]``; ``grid`` = (h, w), square by default."""
        h, w = self.check_ids(ids, grid)
        codes = self.quantizer.ids_to_codes(ids)  # [B, N, D]
        z = codes.transpose(1, 2).reshape(ids.shape[0], -1, h, w)
        return self.decoder(z).clamp(-1, 1)

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        """Training pass: reconstruction (unclipped), ids and the quantizer's aux loss."""
        q, (h, w) = self.quantize(x)
        z = q.quantized.transpose(1, 2).reshape(x.shape[0], -1, h, w)
        return {"recon": self.decoder(z), "ids": q.ids, "aux_loss": q.aux_loss}
