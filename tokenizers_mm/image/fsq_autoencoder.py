"""``FSQAutoencoder``: the smallest real image tokenizer (conv encoder, FSQ, conv decoder).

It proves the training harness end to end and is a fair 2D-grid baseline for the 1D tokenizers.
An image ``[B, 3, H, W]`` in ``[-1, 1]`` becomes ``(H / f) * (W / f)`` tokens, ``f = 2 ** len(channel_mults)``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import as_config, plain
from ..harness import OptimizerConfig, TokenBatch, TokenizerModule
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
    """``[B, 3, H, W]`` -> ``[B, latent_dim, H/f, W/f]`` with ``f = 2 ** len(channel_mults)``."""

    def __init__(self, base_channels: int, channel_mults: list[int], latent_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, base_channels, 3, padding=1)]
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
    """``[B, latent_dim, h, w]`` -> ``[B, 3, h*f, w*f]`` (no output squashing; the loss sees raw values)."""

    def __init__(self, base_channels: int, channel_mults: list[int], latent_dim: int) -> None:
        super().__init__()
        ch = base_channels * channel_mults[-1]
        layers: list[nn.Module] = [nn.Conv2d(latent_dim, ch, 3, padding=1), ResBlock(ch, ch)]
        for mult in reversed(channel_mults):
            out = base_channels * mult
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, out, 3, padding=1),
                       ResBlock(out, out)]
            ch = out
        layers += [nn.GroupNorm(min(32, ch // 4) or 1, ch), nn.SiLU(), nn.Conv2d(ch, 3, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class FSQAutoencoder(TokenizerModule):
    """Conv autoencoder with an FSQ bottleneck, trained with a pixel loss.

    Args:
        base_channels: channels of the first stage.
        channel_mults: channel multiplier per downsampling stage (its length sets the downsampling).
        latent_dim: channels fed to the quantizer (FSQ projects them to ``len(levels)`` dims and back).
        quantizer: quantizer settings (FSQ levels ...).
        pixel_loss: ``l1`` or ``l2``.
        optimizer: optimizer and schedule.
    """

    def __init__(self, base_channels: int = 32, channel_mults: list[int] | None = None, latent_dim: int = 64,
                 quantizer: QuantizerConfig | None = None, pixel_loss: str = "l2",
                 optimizer: OptimizerConfig | None = None) -> None:
        channel_mults = list(channel_mults or [1, 2, 2])
        quantizer = as_config(QuantizerConfig, quantizer or {"kind": "fsq", "levels": [8, 5, 5, 5]})
        q = Quantizer(latent_dim, quantizer)
        super().__init__(optimizer=optimizer, input_key="image", codebook_size=q.codebook_size)
        self.save_hyperparameters(plain({
            "base_channels": base_channels, "channel_mults": channel_mults, "latent_dim": latent_dim,
            "quantizer": quantizer, "pixel_loss": pixel_loss, "optimizer": self.optim_config}))
        if pixel_loss not in ("l1", "l2"):
            raise ValueError(f"pixel_loss must be 'l1' or 'l2', got {pixel_loss!r}")
        self.pixel_loss = pixel_loss
        self.downsample = 2 ** len(channel_mults)
        self.encoder = ConvEncoder(base_channels, channel_mults, latent_dim)
        self.quantizer = q
        self.decoder = ConvDecoder(base_channels, channel_mults, latent_dim)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W] in [-1, 1], got shape {tuple(x.shape)}")
        if x.shape[-1] % self.downsample or x.shape[-2] % self.downsample:
            raise ValueError(f"image sides must be multiples of {self.downsample}, got {tuple(x.shape[-2:])}")

    def _quantize(self, x: torch.Tensor):
        self._check_input(x)
        z = self.encoder(x)  # [B, D, h, w]
        b, d, h, w = z.shape
        q = self.quantizer(z.flatten(2).transpose(1, 2))  # [B, h*w, D]
        return q, (h, w)

    def encode(self, x: torch.Tensor) -> TokenBatch:
        """``[B, 3, H, W]`` in ``[-1, 1]`` -> ids ``[B, (H/f) * (W/f)]`` int64 (row-major grid)."""
        q, _ = self._quantize(x)
        return TokenBatch(q.ids)

    def decode(self, tokens: TokenBatch | torch.Tensor, grid: tuple[int, int] | None = None,
               **options: Any) -> torch.Tensor:
        """ids ``[B, h*w]`` -> images ``[B, 3, h*f, w*f]`` clipped to ``[-1, 1]``; ``grid`` = (h, w), square by default."""
        ids = tokens.ids if isinstance(tokens, TokenBatch) else tokens
        n = ids.shape[1]
        h, w = grid or (int(round(n ** 0.5)),) * 2
        if h * w != n:
            raise ValueError(f"{n} tokens do not form a {h}x{w} grid; pass grid=(h, w)")
        codes = self.quantizer.ids_to_codes(ids)  # [B, N, D]
        z = codes.transpose(1, 2).reshape(ids.shape[0], -1, h, w)
        return self.decoder(z).clamp(-1, 1)

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        q, (h, w) = self._quantize(x)
        z = q.quantized.transpose(1, 2).reshape(x.shape[0], -1, h, w)
        return {"recon": self.decoder(z), "ids": q.ids, "aux_loss": q.aux_loss}

    def compute_losses(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        x = batch["image"]
        out = self(x)
        diff = out["recon"] - x
        pixel = diff.abs().mean() if self.pixel_loss == "l1" else diff.pow(2).mean()
        with torch.no_grad():
            mse = F.mse_loss(out["recon"].clamp(-1, 1), x)
            psnr = 10 * torch.log10(4.0 / mse.clamp_min(1e-10))  # peak-to-peak range of [-1, 1] is 2
        losses = {"loss": pixel + out["aux_loss"], "pixel": pixel, "psnr": psnr}
        return losses, out

    def log_reconstructions(self, batch: dict[str, Any], outputs: dict[str, Any]) -> None:
        n = min(8, batch["image"].shape[0])
        rows = [batch["image"][:n].cpu(), outputs["recon"][:n].clamp(-1, 1).cpu()]
        self.write_image_grid(rows, "val/reconstructions")
