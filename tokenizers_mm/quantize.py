"""One wrapper over vector-quantize-pytorch quantizers with a single return convention.

The library's quantizers return different tuples (FSQ: ``(codes, ids)``; VectorQuantize:
``(codes, ids, loss)``). :class:`Quantizer` always returns :class:`QuantizerOutput`
``(quantized, ids, aux_loss)`` for inputs ``[B, N, D]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from vector_quantize_pytorch import FSQ, VectorQuantize


class QuantizerOutput(NamedTuple):
    quantized: torch.Tensor  # [B, N, D], same dtype as the input
    ids: torch.Tensor  # [B, N] int64 in [0, codebook_size)
    aux_loss: torch.Tensor  # scalar (0 for FSQ; commitment / codebook loss for VQ)


@dataclass
class QuantizerConfig:
    """Quantizer choice and its hyperparameters.

    Args:
        kind: ``fsq`` (finite scalar quantization) or ``vq`` (learned codebook).
        levels: FSQ levels per code dimension; the codebook size is their product.
        codebook_size / codebook_dim: VQ codebook (``codebook_dim`` < model dim adds a projection).
        cosine: VQ with cosine similarity (L2-normalized codes).
        kmeans_init: initialize the VQ codebook by k-means on the first batch.
        threshold_ema_dead_code: VQ codes used less than this (EMA count) are replaced by batch vectors.
        commitment_weight: VQ commitment loss weight (inside ``aux_loss``).
        decay: EMA decay of VQ codebook updates.
        preserve_symmetry: FSQ with levels symmetric around zero (required by ``noise_dropout``).
        noise_dropout: FSQ in training replaces rounding by uniform noise on this fraction of values
            (a continuous surrogate that keeps gradients informative early in training).
        batch_norm: FSQ inputs are standardized per code dimension over the batch (BatchNorm without
            affine, running statistics at inference), so differences between inputs span the levels from the
            first step instead of rounding to one code (the collapse seen with transformer encoders).
    """

    kind: str = "fsq"
    levels: list[int] | None = None
    codebook_size: int = 4096
    codebook_dim: int = 8
    cosine: bool = True
    kmeans_init: bool = True
    threshold_ema_dead_code: float = 2.0
    commitment_weight: float = 0.25
    decay: float = 0.99
    preserve_symmetry: bool = False
    noise_dropout: float = 0.0
    batch_norm: bool = False


class Quantizer(nn.Module):
    """Quantize ``[B, N, dim]`` vectors into ids of one codebook.

    Args:
        dim: feature dimension of the inputs.
        config: which quantizer and its settings.
    """

    def __init__(self, dim: int, config: QuantizerConfig | None = None) -> None:
        super().__init__()
        self.config = config or QuantizerConfig()
        c = self.config
        self.kind = c.kind
        if c.kind == "fsq":
            levels = list(c.levels or [8, 8, 8, 5, 5, 5])
            if c.noise_dropout > 0 and not c.preserve_symmetry:
                raise ValueError("FSQ noise_dropout needs preserve_symmetry: true")
            fsq_dim = len(levels) if c.batch_norm else dim
            self.impl = FSQ(levels=levels, dim=fsq_dim, preserve_symmetry=c.preserve_symmetry,
                            noise_dropout=c.noise_dropout)
            if c.batch_norm:
                self.project_in = nn.Linear(dim, len(levels))
                self.norm = nn.BatchNorm1d(len(levels), affine=False)
                self.project_out = nn.Linear(len(levels), dim)
            self.codebook_size = int(math.prod(levels))
        elif c.kind == "vq":
            self.impl = VectorQuantize(
                dim=dim, codebook_size=c.codebook_size, codebook_dim=c.codebook_dim,
                use_cosine_sim=c.cosine, kmeans_init=c.kmeans_init, kmeans_iters=10,
                threshold_ema_dead_code=c.threshold_ema_dead_code, commitment_weight=c.commitment_weight,
                decay=c.decay,
            )
            self.codebook_size = int(c.codebook_size)
        else:
            raise ValueError(f"quantizer kind must be 'fsq' or 'vq', got {c.kind!r}")

    @property
    def bits_per_token(self) -> float:
        return math.log2(self.codebook_size)

    def forward(self, x: torch.Tensor) -> QuantizerOutput:
        """``x``: ``[B, N, dim]`` -> quantized ``[B, N, dim]``, ids ``[B, N]`` int64, scalar aux loss."""
        if self.kind == "fsq":
            if self.config.batch_norm:
                h = self.project_in(x)
                h = self.norm(h.reshape(-1, h.shape[-1]).float()).reshape(h.shape)
                codes, ids = self.impl(h)
                quantized = self.project_out(codes.to(x.dtype))
            else:
                quantized, ids = self.impl(x)
            aux = x.new_zeros(())
        else:
            quantized, ids, aux = self.impl(x)
            aux = aux.sum()
        return QuantizerOutput(quantized.to(x.dtype), ids.long(), aux)

    def ids_to_codes(self, ids: torch.Tensor) -> torch.Tensor:
        """``[B, N]`` ids -> ``[B, N, dim]`` quantized vectors (what ``forward`` would have returned).

        Raises ``ValueError`` for ids outside ``[0, codebook_size)``.
        """
        if ids.dtype.is_floating_point:
            raise ValueError(f"token ids must be integers, got {ids.dtype}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.codebook_size):
            raise ValueError(f"token ids must lie in [0, {self.codebook_size}), got min {int(ids.min())} "
                             f"max {int(ids.max())}")
        if self.kind == "fsq":
            codes = self.impl.indices_to_codes(ids)
            return self.project_out(codes) if self.config.batch_norm else codes
        return self.impl.get_output_from_indices(ids)


def bytes_for(k: int, codebook_size: int) -> int:
    """Bytes of k tokens of a ``codebook_size`` codebook: ``ceil(k * log2(codebook_size) / 8)``."""
    return math.ceil(k * math.log2(codebook_size) / 8)


def codebook_stats(ids: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Usage (fraction of codes used), perplexity and entropy (bits) of a set of ids."""
    counts = torch.bincount(ids.reshape(-1).long(), minlength=codebook_size).double()
    return stats_from_counts(counts)


def stats_from_counts(counts: torch.Tensor) -> dict[str, float]:
    """Same as :func:`codebook_stats` from a histogram ``[codebook_size]`` of code counts."""
    total = counts.sum().clamp_min(1)
    p = counts / total
    nz = p[p > 0]
    entropy = float(-(nz * nz.log2()).sum())
    return {"usage": float((counts > 0).double().mean()), "perplexity": float(2.0 ** entropy),
            "entropy_bits": entropy}
