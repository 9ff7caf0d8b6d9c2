"""Mimi's latent stage: causal transformers around the quantizer and a learned change of frame rate.

Encoder side: SEANet latent ``[B, C, F]`` -> causal transformer -> strided convolution (``stride`` frames into one,
Mimi: 25 Hz -> 12.5 Hz, replicate padding, no bias) -> ``[B, C, ceil(F / stride)]``. Decoder side: depthwise
transposed convolution back to ``stride x`` frames -> causal transformer -> SEANet decoder.

Each transformer layer: LayerNorm -> multi-head self-attention with rotary position embeddings (no biases), causal
within a sliding window of ``sliding_window`` frames -> learned per-channel scale -> residual; LayerNorm -> GELU MLP
(no biases) -> scale -> residual.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .seanet import PaddedConv1d, PaddedConvTranspose1d


@dataclass
class LatentConfig:
    """Mimi-style latent stage.

    Args:
        layers / heads / intermediate: transformer depth, attention heads and MLP width (each side).
        head_dim: width of a head (``None``: channels / heads).
        rope_theta: base of the rotary embedding's frequencies.
        sliding_window: frames a position attends to (itself and the ``sliding_window - 1`` before it).
        layer_scale: initial value of the per-channel output scales.
        norm_eps: LayerNorm epsilon.
        stride: SEANet frames per latent frame (1: no change of frame rate).
    """

    layers: int = 8
    heads: int = 8
    intermediate: int = 2048
    head_dim: int | None = None
    rope_theta: float = 10000.0
    sliding_window: int = 250
    layer_scale: float = 0.01
    norm_eps: float = 1e-5
    stride: int = 2


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Attention(nn.Module):
    """Causal sliding-window self-attention with rotary embeddings over ``[B, T, C]``."""

    def __init__(self, dim: int, cfg: LatentConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.head_dim = cfg.head_dim or dim // cfg.heads
        inner = self.heads * self.head_dim
        self.q_proj = nn.Linear(dim, inner, bias=False)
        self.k_proj = nn.Linear(dim, inner, bias=False)
        self.v_proj = nn.Linear(dim, inner, bias=False)
        self.o_proj = nn.Linear(inner, dim, bias=False)
        self.window = cfg.sliding_window
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float) / self.head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None = None, offset: int = 0
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``x [B, T, C]`` at stream positions ``offset .. offset + T - 1`` -> (``[B, T, C]``, cache).

        ``cache``: rotated keys and values of the up to ``sliding_window - 1`` positions before ``offset`` (the
        returned cache continues the stream), so a stream encoded in pieces attends exactly as in one pass.
        """
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        pos = torch.arange(offset, offset + t, device=x.device, dtype=torch.float)
        freqs = pos[:, None] * self.inv_freq.to(x.device)[None]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        past = k.shape[2] - t
        i = torch.arange(t, device=x.device)[:, None] + past
        j = torch.arange(k.shape[2], device=x.device)[None, :]
        allowed = (i - j >= 0) & (i - j < self.window)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        keep = max(self.window - 1, 0)
        new_cache = (k[:, :, k.shape[2] - keep:], v[:, :, v.shape[2] - keep:]) if keep else (k[:, :, :0], v[:, :, :0])
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1)), new_cache


class MLP(nn.Module):
    """Bias-free two-layer MLP ``fc2(act(fc1(x)))`` (GELU in Mimi's transformer, SiLU in X-Codec 2's decoder)."""

    def __init__(self, dim: int, hidden: int, act: Callable[[torch.Tensor], torch.Tensor] = F.gelu) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, dim, bias=False)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


class TransformerLayer(nn.Module):
    def __init__(self, dim: int, cfg: LatentConfig) -> None:
        super().__init__()
        self.input_layernorm = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.self_attn = Attention(dim, cfg)
        self.self_attn_layer_scale = LayerScale(dim, cfg.layer_scale)
        self.post_attention_layernorm = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.mlp = MLP(dim, cfg.intermediate)
        self.mlp_layer_scale = LayerScale(dim, cfg.layer_scale)

    def forward(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None = None, offset: int = 0
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        a, cache = self.self_attn(self.input_layernorm(x), cache, offset)
        x = x + self.self_attn_layer_scale(a)
        return x + self.mlp_layer_scale(self.mlp(self.post_attention_layernorm(x))), cache


class CausalTransformer(nn.Module):
    """Stack of :class:`TransformerLayer` over ``[B, C, T]`` frames (returns the same layout)."""

    def __init__(self, dim: int, cfg: LatentConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList([TransformerLayer(dim, cfg) for _ in range(cfg.layers)])

    def forward(self, x: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        """``[B, C, T]`` -> ``[B, C, T]``. ``state`` (a dict, updated in place) continues a stream: it holds each
        layer's key / value cache and the stream position, so consecutive pieces give the frames of one pass."""
        h = x.transpose(1, 2)
        offset = state.get("offset", 0) if state is not None else 0
        caches = state.get("caches") if state is not None else None
        new = []
        for i, layer in enumerate(self.layers):
            h, c = layer(h, caches[i] if caches else None, offset)
            new.append(c)
        if state is not None:
            state["caches"], state["offset"] = new, offset + x.shape[-1]
        return h.transpose(1, 2)


class LatentStage(nn.Module):
    """The encoder-side (:meth:`encode`) and decoder-side (:meth:`decode`) latent stage of width ``dim``."""

    def __init__(self, dim: int, cfg: LatentConfig, causal: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder_transformer = CausalTransformer(dim, cfg)
        self.decoder_transformer = CausalTransformer(dim, cfg)
        s = cfg.stride
        self.downsample = (PaddedConv1d(dim, dim, 2 * s, stride=s, causal=causal, norm=False, pad_mode="replicate",
                                        bias=False) if s > 1 else None)
        self.upsample = (PaddedConvTranspose1d(dim, dim, 2 * s, s, causal=causal, norm=False, groups=dim, bias=False)
                         if s > 1 else None)

    def encode(self, h: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        """SEANet frames ``[B, C, F]`` -> latent frames ``[B, C, ceil(F / stride)]``.

        ``state`` (a dict, updated in place) continues a causal stream: pieces of whole latent frames (``F`` a
        multiple of ``stride``, except the last) give exactly the frames of one pass.
        """
        h = self.encoder_transformer(h, state)
        if self.downsample is None:
            return h
        if state is None:
            return self.downsample(h)
        prev = state.get("down_prev")
        s = self.cfg.stride
        state["down_prev"] = h[..., -s:] if h.shape[-1] >= s else None
        if prev is None:
            return self.downsample(h)
        # the previous piece's last ``stride`` frames stand in for the left padding; drop the output they make alone
        return self.downsample(torch.cat([prev, h], dim=-1))[..., 1:]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent frames ``[B, C, F']`` -> SEANet frames ``[B, C, stride x F']``."""
        h = self.upsample(z) if self.upsample is not None else z
        return self.decoder_transformer(h)
