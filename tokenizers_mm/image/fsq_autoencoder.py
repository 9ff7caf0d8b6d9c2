"""``GridImageModule``: the smallest real image tokenizer (conv encoder, FSQ, conv decoder).

It proves the training harness end to end and is a fair 2D-grid baseline for the 1D tokenizers.
An image ``[B, 3, H, W]`` in ``[-1, 1]`` becomes ``(H / f) * (W / f)`` tokens, ``f = 2 ** len(channel_mults)``.
The network itself is :class:`~tokenizers_mm.image.grid_codec.GridImageCodec`.
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import plain
from ..eval.image_metrics import psnr_db
from ..harness import OptimizerConfig, TokenBatch, TokenizerModule
from ..quantize import QuantizerConfig
from .grid_codec import ConvDecoder, ConvEncoder, GridImageCodec, ResBlock

__all__ = ["GridImageModule", "FSQAutoencoder", "GridImageCodec", "ConvEncoder", "ConvDecoder",
           "ResBlock"]


class GridImageModule(TokenizerModule):
    """Conv autoencoder with an FSQ bottleneck, trained with a pixel loss.

    Args:
        base_channels: channels of the first stage.
        channel_mults: channel multiplier per downsampling stage (its length sets the downsampling).
        latent_dim: channels fed to the quantizer (FSQ projects them to ``len(levels)`` dims and back).
        quantizer: quantizer settings (FSQ levels ...).
        pixel_loss: ``l1`` or ``l2``.
        optimizer: optimizer and schedule.
        image_size: side of the training images (recorded in exports; any multiple of the downsampling encodes).
    """

    def __init__(self, base_channels: int = 32, channel_mults: list[int] | None = None, latent_dim: int = 64,
                 quantizer: QuantizerConfig | None = None, pixel_loss: str = "l2",
                 optimizer: OptimizerConfig | None = None, image_size: int = 64) -> None:
        codec = GridImageCodec(image_size, base_channels, channel_mults, latent_dim, quantizer)
        super().__init__(optimizer=optimizer, input_key="image", codebook_size=codec.codebook_size)
        self.save_hyperparameters(plain({**codec.arch, "pixel_loss": pixel_loss, "optimizer": self.optim_config}))
        if pixel_loss not in ("l1", "l2"):
            raise ValueError(f"pixel_loss must be 'l1' or 'l2', got {pixel_loss!r}")
        self.pixel_loss = pixel_loss
        self.codec = codec
        self.downsample = codec.downsample

    def decode(self, tokens: TokenBatch | torch.Tensor, use_ema: bool = True, grid: tuple[int, int] | None = None,
               **options: Any) -> torch.Tensor:
        """ids ``[B, h*w]`` -> images ``[B, 3, h*f, w*f]`` clipped to ``[-1, 1]``; ``grid`` = (h, w), square by default."""
        return super().decode(tokens, use_ema, grid=grid, **options)

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        return self.codec(x)

    def compute_losses(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        x = batch["image"]
        out = self(x)
        diff = out["recon"] - x
        pixel = diff.abs().mean() if self.pixel_loss == "l1" else diff.pow(2).mean()
        with torch.no_grad():
            psnr = psnr_db(out["recon"].clamp(-1, 1), x)
        losses = {"loss": pixel + out["aux_loss"], "pixel": pixel, "psnr": psnr}
        return losses, out

    def log_reconstructions(self, batch: dict[str, Any], outputs: dict[str, Any]) -> None:
        n = min(8, batch["image"].shape[0])
        rows = [batch["image"][:n].cpu(), outputs["recon"][:n].clamp(-1, 1).cpu()]
        self.write_image_grid(rows, "val/reconstructions")


FSQAutoencoder = GridImageModule  # the old name: older configs' class_path and checkpoints still load
