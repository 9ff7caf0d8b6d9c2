"""X-Codec 2's Vocos-style decoder (parameter names follow ``transformers``' ``Xcodec2Decoder``).

``[B, F, in_dim]`` -> waveform ``[B, 1, F * hop]``: a linear map to ``hidden``, a 7-tap convolution, two GroupNorm
ResNet blocks, pre-norm transformer layers (RMSNorm, bias-free attention and SiLU MLP), two more ResNet blocks, a
LayerNorm and an inverse-STFT head (log-magnitude and phase per bin; overlap-add with "same" padding, so ``F``
frames give ``F * hop`` samples).

The reference rotates the queries and keys of attention head ``h`` by the rotary angle of position ``h`` at every
frame; equal rotations of a query and a key leave their dot product unchanged, so attention here carries no
position encoding and gives the same scores.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .latent_transformer import MLP


class ResNetBlock(nn.Module):
    """``x + conv(drop(silu(gn(conv(silu(gn(x)))))))`` on ``[B, F, D]`` (convolutions over frames, 32 groups)."""

    def __init__(self, dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(32, dim, eps=1e-6)
        self.conv1 = nn.Conv1d(dim, dim, 3, padding=1)
        self.norm2 = nn.GroupNorm(32, dim, eps=1e-6)
        self.conv2 = nn.Conv1d(dim, dim, 3, padding=1)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.transpose(1, 2)
        y = self.conv1(F.silu(self.norm1(h)))
        y = F.dropout(F.silu(self.norm2(y)), self.dropout, self.training)
        return (self.conv2(y) + h).transpose(1, 2)


class SelfAttention(nn.Module):
    """Bidirectional multi-head attention without biases or position encoding, ``[B, F, D] -> [B, F, D]``."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.q_proj = nn.Linear(dim, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(dim, heads * head_dim, bias=False)
        self.v_proj = nn.Linear(dim, heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, f, _ = x.shape
        q, k, v = (p(x).view(b, f, self.heads, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.o_proj(y.transpose(1, 2).reshape(b, f, -1))


class RMSNorm(nn.RMSNorm):
    """RMS normalization computed in float32, cast back to the input's dtype, then scaled (bf16 inputs normalize
    as the reference does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * F.rms_norm(x.float(), self.normalized_shape, None, self.eps).to(x.dtype)


class Layer(nn.Module):
    """Pre-norm transformer layer: ``x + attn(rms(x))``, then ``+ mlp(rms(.))``."""

    def __init__(self, dim: int, heads: int, head_dim: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(dim, eps=eps)
        self.self_attn = SelfAttention(dim, heads, head_dim)
        self.post_attention_layernorm = RMSNorm(dim, eps=eps)
        self.mlp = MLP(dim, intermediate, act=F.silu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class ISTFTHead(nn.Module):
    """``[B, F, D]`` -> ``[B, 1, F * hop]``: per frame ``n_fft / 2 + 1`` log-magnitudes (exp, capped at 100) and
    phases, inverse real FFT, Hann window, overlap-add trimmed by ``(n_fft - hop) / 2`` on each side and divided
    by the summed squared window."""

    def __init__(self, dim: int, n_fft: int, hop: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, n_fft + 2)
        self.n_fft, self.hop = n_fft, hop
        self.trim = (n_fft - hop) // 2
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def _overlap_add(self, frames: torch.Tensor) -> torch.Tensor:
        """``[B, n_fft, F]`` -> ``[B, (F - 1) * hop + n_fft - 2 * trim]``."""
        size = (frames.shape[-1] - 1) * self.hop + self.n_fft
        out = F.fold(frames, (1, size), (1, self.n_fft), stride=(1, self.hop))[:, 0, 0]
        return out[:, self.trim:size - self.trim]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_mag, phase = self.linear(x).float().chunk(2, dim=-1)
        spec = torch.polar(log_mag.exp().clamp(max=1e2), phase)
        frames = torch.fft.irfft(spec, self.n_fft, dim=-1).transpose(1, 2) * self.window[None, :, None]
        audio = self._overlap_add(frames)
        envelope = self._overlap_add(self.window.square()[None, :, None].expand(1, -1, frames.shape[-1]))
        return (audio / envelope.clamp(min=1e-11)).unsqueeze(1).to(x.dtype)


class VocosDecoder(nn.Module):
    """Latent frames ``[B, F, in_dim]`` -> waveform ``[B, 1, F * hop]`` (see the module docstring)."""

    def __init__(self, in_dim: int, hidden: int, layers: int, heads: int, head_dim: int, intermediate: int,
                 n_fft: int, hop: int, rms_eps: float = 1e-6, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, hidden)
        self.embed = nn.Conv1d(hidden, hidden, 7, padding=3)
        self.prior_net = nn.ModuleList([ResNetBlock(hidden, dropout), ResNetBlock(hidden, dropout)])
        self.layers = nn.ModuleList(Layer(hidden, heads, head_dim, intermediate, rms_eps) for _ in range(layers))
        self.post_net = nn.ModuleList([ResNetBlock(hidden, dropout), ResNetBlock(hidden, dropout)])
        self.norm = nn.LayerNorm(hidden, eps=1e-6)
        self.head = ISTFTHead(hidden, n_fft, hop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(self.fc(x).transpose(1, 2)).transpose(1, 2)
        for block in (*self.prior_net, *self.layers, *self.post_net):
            h = block(h)
        return self.head(self.norm(h))
