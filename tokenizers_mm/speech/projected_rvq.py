"""``ProjectedRVQ``: residual VQ whose every codebook has its own input / output projection (DAC's factorized codes).

vector-quantize-pytorch's ``ResidualVQ`` shares one projection between all codebooks; DAC gives each codebook a
projection ``dim -> codebook_dim`` in and ``codebook_dim -> dim`` out (1x1 convolutions with bias). This module
wraps one library ``VectorQuantize`` per codebook in those two linear maps and runs the residual loop:

    residual_0 = x;  ids_q = lookup_q(in_q(residual_q));  out_q = out_q(code_q[ids_q]);  residual_{q+1} = residual_q - out_q

With ``cosine`` the lookup is by cosine similarity (the library's cosine codebook holds unit vectors) and the code
that leaves the codebook is that unit vector times a learned per-code length ``code_norm [codebook_size]``:
DAC looks codes up by cosine similarity but decodes the unnormalized codebook row, whose length this keeps.

It answers the calls :class:`~tokenizers_mm.speech.codec.SpeechCodec` makes of a ``ResidualVQ``: ``forward(x,
return_all_codes=True)``, ``get_output_from_indices``, ``quantize_dropout``, ``project_in`` / ``project_out``
(identities here: the per-codebook projections live inside, so the returned codes are already in the latent space).
"""

from __future__ import annotations

import random

import torch
from torch import nn
from vector_quantize_pytorch import VectorQuantize


class ProjectedCodebook(nn.Module):
    """One codebook: ``Linear(dim, codebook_dim)`` -> library ``VectorQuantize`` -> (x code length) ->
    ``Linear(codebook_dim, dim)``; inputs ``[B, F, dim]``."""

    def __init__(self, dim: int, codebook_size: int, codebook_dim: int, cosine: bool, decay: float,
                 threshold_ema_dead_code: float, commitment_weight: float, kmeans_init: bool) -> None:
        super().__init__()
        self.cosine = cosine
        self.in_proj = nn.Linear(dim, codebook_dim)
        self.vq = VectorQuantize(dim=codebook_dim, codebook_size=codebook_size, use_cosine_sim=cosine, decay=decay,
                                 kmeans_init=kmeans_init, kmeans_iters=10,
                                 threshold_ema_dead_code=threshold_ema_dead_code,
                                 commitment_weight=commitment_weight, rotation_trick=False)
        self.out_proj = nn.Linear(codebook_dim, dim)
        self.code_norm = nn.Parameter(torch.ones(codebook_size)) if cosine else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[B, F, dim]`` -> (output ``[B, F, dim]``, ids ``[B, F]``, commitment loss scalar)."""
        code, ids, loss = self.vq(self.in_proj(x))
        if self.code_norm is not None:
            code = code * self.code_norm[ids].unsqueeze(-1)
        return self.out_proj(code), ids, loss.sum()

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """ids ``[B, F]`` (in range) -> ``[B, F, dim]``."""
        code = self.vq.get_codes_from_indices(ids)
        if self.code_norm is not None:
            code = code * self.code_norm[ids].unsqueeze(-1)
        return self.out_proj(code)


class ProjectedRVQ(nn.Module):
    """Residual VQ of ``num_quantizers`` :class:`ProjectedCodebook` s over ``[B, F, dim]`` (see the module docstring).

    ``quantize_dropout``: in training, quantize with a random number ``1..n_q`` of codebooks (the rest get id -1).
    """

    def __init__(self, dim: int, num_quantizers: int, codebook_size: int, codebook_dim: int, cosine: bool = True,
                 decay: float = 0.99, threshold_ema_dead_code: float = 2.0, commitment_weight: float = 1.0,
                 kmeans_init: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList([
            ProjectedCodebook(dim, codebook_size, codebook_dim, cosine, decay, threshold_ema_dead_code,
                              commitment_weight, kmeans_init) for _ in range(num_quantizers)])
        self.num_quantizers = num_quantizers
        self.quantize_dropout = False
        self.project_in = nn.Identity()
        self.project_out = nn.Identity()

    def forward(self, x: torch.Tensor, return_all_codes: bool = False):
        """``x [B, F, dim]`` -> ``(quantized [B, F, dim], ids [B, F, n_q], losses [n_q])`` plus, with
        ``return_all_codes``, each codebook's output ``[n_q, B, F, dim]`` (zeros where dropped)."""
        n = self.num_quantizers
        if self.training and self.quantize_dropout:
            n = random.randint(1, self.num_quantizers)
        residual, total = x, torch.zeros_like(x)
        ids, losses, outs = [], [], []
        for layer in self.layers[:n]:
            out, idx, loss = layer(residual)
            residual = residual - out
            total = total + out
            ids.append(idx)
            losses.append(loss)
            outs.append(out)
        for _ in range(n, self.num_quantizers):
            ids.append(torch.full(x.shape[:2], -1, dtype=torch.long, device=x.device))
            losses.append(x.new_zeros(()))
            outs.append(torch.zeros_like(x))
        result = (total, torch.stack(ids, dim=-1), torch.stack(losses))
        return (*result, torch.stack(outs)) if return_all_codes else result

    def get_output_from_indices(self, ids: torch.Tensor) -> torch.Tensor:
        """ids ``[B, F, n_q]`` (-1: codebook not used) -> ``[B, F, dim]`` sum of the used codebooks' outputs."""
        total = None
        for q, layer in enumerate(self.layers):
            idx = ids[..., q]
            keep = (idx >= 0).unsqueeze(-1)
            out = layer.decode(idx.clamp_min(0)) * keep
            total = out if total is None else total + out
        return total


class SplitRVQ(nn.Module):
    """Mimi's split quantizer: a semantic ``ResidualVQ`` of the first ``semantic`` codebooks and an acoustic one of
    the rest quantize the same input, each behind its own bias-free projection ``dim -> codebook_dim -> dim``;
    the outputs add up. Ids are ``[semantic..., acoustic...]``, so any first ``n >= 1`` codebooks decode.

    ``rvq_kwargs`` go to both library ``ResidualVQ`` s (Euclidean EMA codebooks of width ``codebook_dim``).
    """

    def __init__(self, dim: int, num_quantizers: int, semantic: int, codebook_dim: int, **rvq_kwargs) -> None:
        super().__init__()
        from vector_quantize_pytorch import ResidualVQ

        if not 1 <= semantic < num_quantizers:
            raise ValueError(f"rvq.semantic_quantizers must lie in [1, {num_quantizers - 1}], got {semantic}")
        self.semantic_count, self.num_quantizers = semantic, num_quantizers
        self.semantic_in = nn.Linear(dim, codebook_dim, bias=False)
        self.semantic = ResidualVQ(dim=codebook_dim, num_quantizers=semantic, **rvq_kwargs)
        self.semantic_out = nn.Linear(codebook_dim, dim, bias=False)
        self.acoustic_in = nn.Linear(dim, codebook_dim, bias=False)
        self.acoustic = ResidualVQ(dim=codebook_dim, num_quantizers=num_quantizers - semantic, **rvq_kwargs)
        self.acoustic_out = nn.Linear(codebook_dim, dim, bias=False)
        self.project_in = nn.Identity()
        self.project_out = nn.Identity()

    @property
    def quantize_dropout(self) -> bool:
        return self.acoustic.quantize_dropout

    @quantize_dropout.setter
    def quantize_dropout(self, value: bool) -> None:
        # dropping codebooks from the acoustic part only: the semantic codebooks are always kept
        self.acoustic.quantize_dropout = bool(value) and self.acoustic.num_quantizers > 1

    def forward(self, x: torch.Tensor, return_all_codes: bool = False):
        """``x [B, F, dim]`` -> ``(quantized, ids [B, F, n_q], losses [n_q])`` (+ per-codebook outputs in ``dim``)."""
        qs, ids_s, loss_s, codes_s = self.semantic(self.semantic_in(x), return_all_codes=True)
        qa, ids_a, loss_a, codes_a = self.acoustic(self.acoustic_in(x), return_all_codes=True)
        quantized = self.semantic_out(qs) + self.acoustic_out(qa)
        ids = torch.cat([ids_s, ids_a], dim=-1)
        losses = torch.cat([loss_s.reshape(-1), loss_a.reshape(-1)])
        if not return_all_codes:
            return quantized, ids, losses
        codes = torch.cat([self.semantic_out(codes_s), self.acoustic_out(codes_a)], dim=0)
        return quantized, ids, losses, codes

    def get_output_from_indices(self, ids: torch.Tensor) -> torch.Tensor:
        """ids ``[B, F, n_q]`` (-1: codebook not used) -> ``[B, F, dim]``."""
        k = self.semantic_count
        out = self.semantic_out(self.semantic.get_output_from_indices(ids[..., :k]))
        acoustic = ids[..., k:]
        if bool((acoustic >= 0).any()):
            out = out + self.acoustic_out(self.acoustic.get_output_from_indices(acoustic))
        return out
