"""w2v-BERT 2.0 semantic encoder: a Conformer over stacked log-mel features (parameter names follow
``transformers``' ``Wav2Vec2BertModel``, whose weights X-Codec 2 ships; inference only).

``[B, F, feature_dim]`` -> ``[B, F, hidden]``: LayerNorm + linear projection, then per layer (Conformer, Gulati et
al. 2020): half-step feed-forward, self-attention with Shaw relative-key position bias (distances clipped to
``[-left, right]``), a convolution module (pointwise conv + GLU, causal depthwise conv, LayerNorm, activation,
pointwise conv), a second half-step feed-forward and a final LayerNorm. SpecAugment's ``masked_spec_embed`` is kept
as a frozen tensor so the weights round-trip; features are never masked here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

ACTIVATIONS = {"swish": F.silu, "silu": F.silu, "gelu": F.gelu, "relu": F.relu}


@dataclass
class W2VBertConfig:
    """Sizes of :class:`W2VBertEncoder` (names as in ``Wav2Vec2BertConfig``)."""

    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    feature_projection_input_dim: int = 160
    hidden_act: str = "swish"
    layer_norm_eps: float = 1e-5
    left_max_position_embeddings: int = 64
    right_max_position_embeddings: int = 8
    conv_depthwise_kernel_size: int = 31
    masked_spec_embed: bool = True


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.intermediate_dense = nn.Linear(dim, hidden)
        self.output_dense = nn.Linear(hidden, dim)
        self.act = ACTIVATIONS[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_dense(self.act(self.intermediate_dense(x)))


class RelativeKeyAttention(nn.Module):
    """Multi-head attention whose scores add ``q . e[clip(j - i)] / sqrt(d)`` (one learned ``e`` per distance)."""

    def __init__(self, dim: int, heads: int, left: int, right: int) -> None:
        super().__init__()
        self.heads, self.head_dim, self.left, self.right = heads, dim // heads, left, right
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_out = nn.Linear(dim, dim)
        self.distance_embedding = nn.Embedding(left + right + 1, self.head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, f, _ = x.shape
        q, k, v = (p(x).view(b, f, self.heads, self.head_dim).transpose(1, 2)
                   for p in (self.linear_q, self.linear_k, self.linear_v))
        pos = torch.arange(f, device=x.device)
        distance = (pos[None, :] - pos[:, None]).clamp(-self.left, self.right) + self.left
        bias = torch.einsum("bhld,lrd->bhlr", q, self.distance_embedding(distance).to(q.dtype)) * self.head_dim ** -0.5
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.linear_out(y.transpose(1, 2).reshape(b, f, -1))


class ConvolutionModule(nn.Module):
    """Conformer convolution on ``[B, F, D]`` (causal depthwise kernel, no biases)."""

    def __init__(self, dim: int, kernel_size: int, act: str, eps: float) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(dim, eps=eps)
        self.pointwise_conv1 = nn.Conv1d(dim, 2 * dim, 1, bias=False)
        self.depthwise_conv = nn.Conv1d(dim, dim, kernel_size, groups=dim, bias=False)
        self.depthwise_layer_norm = nn.LayerNorm(dim, eps=eps)
        self.pointwise_conv2 = nn.Conv1d(dim, dim, 1, bias=False)
        self.act = ACTIVATIONS[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.glu(self.pointwise_conv1(self.layer_norm(x).transpose(1, 2)), dim=1)
        h = self.depthwise_conv(F.pad(h, (self.depthwise_conv.kernel_size[0] - 1, 0)))
        h = self.act(self.depthwise_layer_norm(h.transpose(1, 2)).transpose(1, 2))
        return self.pointwise_conv2(h).transpose(1, 2)


class ConformerLayer(nn.Module):
    def __init__(self, c: W2VBertConfig) -> None:
        super().__init__()
        d, eps = c.hidden_size, c.layer_norm_eps
        self.ffn1_layer_norm = nn.LayerNorm(d, eps=eps)
        self.ffn1 = FeedForward(d, c.intermediate_size, c.hidden_act)
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=eps)
        self.self_attn = RelativeKeyAttention(d, c.num_attention_heads, c.left_max_position_embeddings,
                                              c.right_max_position_embeddings)
        self.conv_module = ConvolutionModule(d, c.conv_depthwise_kernel_size, c.hidden_act, eps)
        self.ffn2_layer_norm = nn.LayerNorm(d, eps=eps)
        self.ffn2 = FeedForward(d, c.intermediate_size, c.hidden_act)
        self.final_layer_norm = nn.LayerNorm(d, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.ffn1(self.ffn1_layer_norm(x))
        x = x + self.self_attn(self.self_attn_layer_norm(x))
        x = x + self.conv_module(x)
        x = x + 0.5 * self.ffn2(self.ffn2_layer_norm(x))
        return self.final_layer_norm(x)


class FeatureProjection(nn.Module):
    def __init__(self, in_dim: int, dim: int, eps: float) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(in_dim, eps=eps)
        self.projection = nn.Linear(in_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.layer_norm(x))


class Encoder(nn.Module):
    def __init__(self, c: W2VBertConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(ConformerLayer(c) for _ in range(c.num_hidden_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class W2VBertEncoder(nn.Module):
    """Stacked log-mel features ``[B, F, feature_projection_input_dim]`` -> last hidden states ``[B, F, hidden]``."""

    def __init__(self, cfg: W2VBertConfig) -> None:
        super().__init__()
        if cfg.hidden_act not in ACTIVATIONS:
            raise ValueError(f"w2v-BERT hidden_act must be one of {sorted(ACTIVATIONS)}, got {cfg.hidden_act!r}")
        if cfg.conv_depthwise_kernel_size % 2 != 1:
            raise ValueError(f"w2v-BERT conv_depthwise_kernel_size must be odd, got {cfg.conv_depthwise_kernel_size}")
        self.feature_projection = FeatureProjection(cfg.feature_projection_input_dim, cfg.hidden_size,
                                                    cfg.layer_norm_eps)
        if cfg.masked_spec_embed:
            self.masked_spec_embed = nn.Parameter(torch.zeros(cfg.hidden_size), requires_grad=False)
        self.encoder = Encoder(cfg)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.feature_projection(features))
