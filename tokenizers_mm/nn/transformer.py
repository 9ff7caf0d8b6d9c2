"""Pre-norm transformer pieces: multi-head self-attention, the GELU MLP, blocks and a stack of them.

Tokens are ``[B, L, D]`` throughout. Used by the image tokenizers' encoder / decoder, the shape codec's latent
transformer, the flow denoiser's attention and the token prior.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TransformerConfig:
    """Width, depth and heads of one transformer stack (encoder or decoder)."""

    width: int = 192
    depth: int = 4
    heads: int = 3
    mlp_ratio: float = 4.0


def mlp(width: int, mlp_ratio: float = 4.0) -> nn.Sequential:
    """``[..., width]`` -> Linear(width, width * mlp_ratio) -> tanh-GELU -> Linear -> ``[..., width]``."""
    hidden = int(width * mlp_ratio)
    return nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention`` (one fused qkv projection)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``[B, L, D]``; ``mask`` bool ``[L, L]`` or ``[B, 1, L, L]``, True where attention is allowed."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)); x + MLP(LN(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = mlp(width, mlp_ratio)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """``cfg.depth`` blocks and a final LayerNorm; ``mask`` is passed to every block."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)
