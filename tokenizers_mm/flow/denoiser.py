"""``FlowDenoiser``: velocity prediction for noised target tokens conditioned on a token sequence.

    target x_t [B, N, C_in] (noised), sigma [B] in [0, 1], tokens [B, K, C_tok] + keep mask [B, K]
      -> [tokens ; targets] through AdaLN-zero transformer blocks (time modulates every block;
         targets attend to the kept tokens and to each other: in-context conditioning)
      -> velocity [B, N, C_in] (d x_t / d sigma = noise - x0)

Dropping every token (``keep`` all False) is the unconditional model that classifier-free guidance needs:
the tokens are then invisible as attention keys, so nothing leaks through.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.normalization import AdaLayerNormContinuous, AdaLayerNormZero
from torch import nn

from ..nn import Attention, mlp

TIME_SCALE = 1000.0  # sigma in [0, 1] -> the scheduler's timestep in [0, 1000]


@dataclass
class DenoiserConfig:
    """Width, depth and heads of the denoiser transformer."""

    width: int = 256
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0


class AdaLNZeroBlock(nn.Module):
    """Transformer block whose norms are modulated by the time embedding; gates start at zero (DiT)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = AdaLayerNormZero(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = mlp(width, mlp_ratio)
        nn.init.zeros_(self.norm1.linear.weight)  # adaLN-zero: every block starts as the identity
        nn.init.zeros_(self.norm1.linear.bias)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(x, emb=temb)
        x = x + gate_msa[:, None] * self.attn(h, mask)
        h = self.norm2(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        return x + gate_mlp[:, None] * self.mlp(h)


class FlowDenoiser(nn.Module):
    """Predict velocity of ``num_targets`` noised target vectors from ``num_tokens`` conditioning tokens.

    Args:
        target_dim: channels of one target vector (``3 * p * p`` for pixel patches).
        num_targets: N, target vectors per sample.
        token_dim: channels of one conditioning token (the quantizer's output width).
        num_tokens: K, conditioning tokens per sample.
        cfg: transformer size.
        target_pos: fixed position embedding ``[N, width]`` of the targets (e.g. 2D sine-cosine); learned
            when None.
        prediction: what the output layer predicts: ``velocity`` directly, or ``x0`` (the clean target),
            turned into the velocity ``(x_sigma - x0_hat) / max(sigma, min_sigma)``. Either way ``forward``
            returns velocity, so the loss and the sampler do not change; ``x0`` suits targets wider than the
            transformer (e.g. 8x8 pixel patches, 192 values, at width 128), whose noise a narrow network cannot
            carry through.
        min_sigma: the floor of that division.
        token_mix: ``[N, K]`` initial value of a learned matrix that adds a mix of the token embeddings to every
            target's input (e.g. each image patch starts from the tokens whose pyramid cell covers it), so the
            tokens steer the targets from the first step; None leaves conditioning to attention alone.
    """

    def __init__(self, target_dim: int, num_targets: int, token_dim: int, num_tokens: int, cfg: DenoiserConfig,
                 target_pos: torch.Tensor | None = None, prediction: str = "velocity", min_sigma: float = 0.05,
                 token_mix: torch.Tensor | None = None) -> None:
        super().__init__()
        if prediction not in ("velocity", "x0"):
            raise ValueError(f"prediction must be 'velocity' or 'x0', got {prediction!r}")
        self.prediction, self.min_sigma = prediction, min_sigma
        w = cfg.width
        self.num_tokens, self.num_targets = num_tokens, num_targets
        self.x_in = nn.Linear(target_dim, w)
        self.token_in = nn.Linear(token_dim, w)
        self.token_pos = nn.Parameter(torch.randn(num_tokens, w) * 0.02)
        if target_pos is None:
            self.target_pos = nn.Parameter(torch.randn(num_targets, w) * 0.02)
        else:
            if tuple(target_pos.shape) != (num_targets, w):
                raise ValueError(f"target_pos must be [{num_targets}, {w}], got {tuple(target_pos.shape)}")
            self.register_buffer("target_pos", target_pos.clone(), persistent=False)
        self.token_mix = None
        if token_mix is not None:
            if tuple(token_mix.shape) != (num_targets, num_tokens):
                raise ValueError(f"token_mix must be [{num_targets}, {num_tokens}], got {tuple(token_mix.shape)}")
            self.token_mix = nn.Parameter(token_mix.clone().float())
        self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(256, w)
        self.blocks = nn.ModuleList(AdaLNZeroBlock(w, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm_out = AdaLayerNormContinuous(w, w, elementwise_affine=False, eps=1e-6)
        self.out = nn.Linear(w, target_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x_t: torch.Tensor, sigma: torch.Tensor, tokens: torch.Tensor, keep: torch.Tensor,
                return_hidden: int | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``x_t`` ``[B, N, C]``, ``sigma`` ``[B]`` in [0, 1], ``tokens`` ``[B, K, D]``, ``keep`` bool ``[B, K]``
        -> velocity ``[B, N, C]`` (plus the target hidden states ``[B, N, width]`` after block
        ``return_hidden`` when asked, for feature alignment)."""
        b = x_t.shape[0]
        h_tok = self.token_in(tokens) + self.token_pos.to(tokens.dtype)
        h_x = self.x_in(x_t) + self.target_pos.to(x_t.dtype)
        if self.token_mix is not None:
            visible = h_tok * keep[..., None].to(h_tok.dtype)
            h_x = h_x + torch.einsum("nk,bkd->bnd", self.token_mix.to(h_tok.dtype), visible).to(h_x.dtype)
        seq = torch.cat([h_tok.to(h_x.dtype), h_x], dim=1)
        key_ok = torch.cat([keep, keep.new_ones(b, self.num_targets)], dim=1)
        mask = key_ok[:, None, None, :]
        temb = self.time_embed(self.time_proj(sigma.float() * TIME_SCALE).to(h_x.dtype))
        hidden = None
        for i, block in enumerate(self.blocks):
            seq = block(seq, temb, mask)
            if return_hidden is not None and i + 1 == return_hidden:
                hidden = seq[:, self.num_tokens:]
        v = self.out(self.norm_out(seq[:, self.num_tokens:], temb))
        if self.prediction == "x0":
            s = sigma.to(v.dtype).clamp_min(self.min_sigma).view(-1, *([1] * (x_t.ndim - 1)))
            v = (x_t - v) / s
        return (v, hidden) if return_hidden is not None else v
