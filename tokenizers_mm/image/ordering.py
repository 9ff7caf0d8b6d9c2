"""Ordering regularizers that make a 1D token sequence decodable from any prefix.

- :class:`NestedDropout` (FlexTok): keep a prefix of ``k`` tokens and replace the rest by a learned mask
  token, ``k`` drawn per sample.
- :class:`TailTokenDrop` (One-D-Piece): keep a prefix of ``k`` tokens, ``k`` uniform in ``1..K`` per batch
  or per sample; the decoder does not see the dropped tail at all (attention key mask).

Both return ``(tokens, keep)`` where ``keep`` is bool ``[B, K]`` (True on kept positions) and act only in
training unless ``k`` is given, which is how a prefix of ``k`` tokens is decoded at inference.
"""

from __future__ import annotations

import math

import torch
from torch import nn

NESTED_MODES = ("uniform", "pow2", "uniform_pow2")


def sample_keep_lengths(batch: int, num_tokens: int, mode: str, generator: torch.Generator | None = None,
                        device: torch.device | str = "cpu") -> torch.Tensor:
    """Draw how many tokens each sample keeps: int64 ``[batch]`` in ``1..num_tokens``.

    Modes:
        ``uniform``: every k in 1..K equally likely.
        ``pow2``: k uniform over the powers of two 1, 2, 4, ..., K (K itself always included).
        ``uniform_pow2``: a power-of-two bucket ``(2^(j-1), 2^j]`` uniform over buckets, then k uniform
        inside the bucket: every k reachable, small k as likely per bucket as large k (log-uniform-like).
    """
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
    if mode == "uniform":
        return torch.randint(1, num_tokens + 1, (batch,), generator=generator).to(device)
    pows = [2 ** j for j in range(int(math.log2(num_tokens)) + 1)]
    if pows[-1] != num_tokens:
        pows.append(num_tokens)
    if mode == "pow2":
        idx = torch.randint(0, len(pows), (batch,), generator=generator)
        return torch.tensor(pows)[idx].to(device)
    if mode == "uniform_pow2":
        idx = torch.randint(0, len(pows), (batch,), generator=generator)
        hi = torch.tensor(pows)[idx]
        lo = torch.tensor([0] + pows[:-1])[idx]  # bucket (lo, hi]
        u = torch.rand(batch, generator=generator)
        return (lo + 1 + (u * (hi - lo)).long().clamp(max=(hi - lo - 1))).to(device)
    raise ValueError(f"nested dropout mode must be one of {NESTED_MODES}, got {mode!r}")


def prefix_mask(keep_lengths: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """bool ``[B, K]``: True at positions ``< keep_lengths[b]``."""
    return torch.arange(num_tokens, device=keep_lengths.device)[None] < keep_lengths[:, None]


def _lengths(batch: int, num_tokens: int, k: int | torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(k, torch.Tensor):
        lengths = k.to(device=device, dtype=torch.long).reshape(-1)
        if lengths.numel() == 1:
            lengths = lengths.expand(batch)
    else:
        lengths = torch.full((batch,), int(k), device=device, dtype=torch.long)
    if int(lengths.min()) < 1 or int(lengths.max()) > num_tokens:
        raise ValueError(f"number of tokens to keep must be in 1..{num_tokens}, got {lengths.tolist()}")
    return lengths


class NestedDropout(nn.Module):
    """FlexTok nested dropout with a learned mask token.

    Args:
        dim: token feature size.
        mode: how ``k`` is sampled in training (see :func:`sample_keep_lengths`).
    """

    def __init__(self, dim: int, mode: str = "uniform_pow2") -> None:
        super().__init__()
        if mode not in NESTED_MODES:
            raise ValueError(f"nested dropout mode must be one of {NESTED_MODES}, got {mode!r}")
        self.mode = mode
        self.mask_token = nn.Parameter(torch.randn(dim) * 0.02)
        self.hides_tail = False  # the decoder sees mask tokens in the tail, not nothing

    def forward(self, tokens: torch.Tensor, k: int | torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``tokens`` ``[B, K, D]`` -> (tokens with the tail replaced by the mask token, keep ``[B, K]``)."""
        b, n, _ = tokens.shape
        if k is None:
            if not self.training:
                return tokens, torch.ones(b, n, dtype=torch.bool, device=tokens.device)
            lengths = sample_keep_lengths(b, n, self.mode, device=tokens.device)
        else:
            lengths = _lengths(b, n, k, tokens.device)
        keep = prefix_mask(lengths, n)
        out = torch.where(keep[..., None], tokens, self.mask_token.to(tokens.dtype).expand_as(tokens))
        return out, keep


class TailTokenDrop(nn.Module):
    """One-D-Piece tail token drop: the decoder attends only to the first ``k`` tokens.

    Args:
        per_sample: draw ``k`` per sample (True) or once per batch (False).
    """

    def __init__(self, per_sample: bool = True) -> None:
        super().__init__()
        self.per_sample = per_sample
        self.hides_tail = True

    def forward(self, tokens: torch.Tensor, k: int | torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, _ = tokens.shape
        if k is None:
            if not self.training:
                return tokens, torch.ones(b, n, dtype=torch.bool, device=tokens.device)
            if self.per_sample:
                lengths = torch.randint(1, n + 1, (b,), device=tokens.device)
            else:
                lengths = torch.randint(1, n + 1, (1,), device=tokens.device).expand(b)
        else:
            lengths = _lengths(b, n, k, tokens.device)
        return tokens, prefix_mask(lengths, n)


class FixedLength(nn.Module):
    """TiTok: no ordering regularizer; decoding a prefix hides the tail as tail drop does."""

    hides_tail = True

    def forward(self, tokens: torch.Tensor, k: int | torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, _ = tokens.shape
        lengths = torch.full((b,), n, device=tokens.device) if k is None else _lengths(b, n, k, tokens.device)
        return tokens, prefix_mask(lengths, n)


def build_ordering(kind: str, dim: int, nested_mode: str = "uniform_pow2", per_sample: bool = True) -> nn.Module:
    """``kind``: ``none`` (TiTok), ``nested_dropout`` (FlexTok) or ``tail_drop`` (One-D-Piece)."""
    if kind == "none":
        return FixedLength()
    if kind == "nested_dropout":
        return NestedDropout(dim, nested_mode)
    if kind == "tail_drop":
        return TailTokenDrop(per_sample)
    raise ValueError(f"ordering must be 'none', 'nested_dropout' or 'tail_drop', got {kind!r}")
