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


class PrefixOrdering(nn.Module):
    """Shared mechanics: which prefix each sample keeps.

    ``k`` given (int or ``[B]``): keep that many tokens. ``k`` None: keep all in eval mode, and in training
    a length drawn by the subclass's :meth:`sample_lengths`.
    """

    hides_tail = True  # the decoder must not see the dropped tail at all

    def sample_lengths(self, batch: int, num_tokens: int, device: torch.device) -> torch.Tensor:
        return torch.full((batch,), num_tokens, device=device, dtype=torch.long)

    def keep_mask(self, tokens: torch.Tensor, k: int | torch.Tensor | None) -> torch.Tensor:
        """bool ``[B, K]``, True on the kept prefix of each sample."""
        b, n, _ = tokens.shape
        if k is not None:
            lengths = _lengths(b, n, k, tokens.device)
        elif self.training:
            lengths = self.sample_lengths(b, n, tokens.device)
        else:
            lengths = torch.full((b,), n, device=tokens.device, dtype=torch.long)
        return prefix_mask(lengths, n)

    def forward(self, tokens: torch.Tensor, k: int | torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``tokens`` ``[B, K, D]`` -> (tokens, keep ``[B, K]``); the decoder masks the tail."""
        return tokens, self.keep_mask(tokens, k)


class NestedDropout(PrefixOrdering):
    """FlexTok nested dropout with a learned mask token.

    Args:
        dim: token feature size.
        mode: how ``k`` is sampled in training (see :func:`sample_keep_lengths`).
    """

    hides_tail = False  # the decoder sees mask tokens in the tail, not nothing

    def __init__(self, dim: int, mode: str = "uniform_pow2") -> None:
        super().__init__()
        if mode not in NESTED_MODES:
            raise ValueError(f"nested dropout mode must be one of {NESTED_MODES}, got {mode!r}")
        self.mode = mode
        self.mask_token = nn.Parameter(torch.randn(dim) * 0.02)

    def sample_lengths(self, batch: int, num_tokens: int, device: torch.device) -> torch.Tensor:
        return sample_keep_lengths(batch, num_tokens, self.mode, device=device)

    def forward(self, tokens: torch.Tensor, k: int | torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``tokens`` ``[B, K, D]`` -> (tokens with the tail replaced by the mask token, keep ``[B, K]``)."""
        keep = self.keep_mask(tokens, k)
        out = torch.where(keep[..., None], tokens, self.mask_token.to(tokens.dtype).expand_as(tokens))
        return out, keep


class TailTokenDrop(PrefixOrdering):
    """One-D-Piece tail token drop: the decoder attends only to the first ``k`` tokens.

    Args:
        per_sample: draw ``k`` per sample (True) or once per batch (False).
    """

    def __init__(self, per_sample: bool = True) -> None:
        super().__init__()
        self.per_sample = per_sample

    def sample_lengths(self, batch: int, num_tokens: int, device: torch.device) -> torch.Tensor:
        if self.per_sample:
            return torch.randint(1, num_tokens + 1, (batch,), device=device)
        return torch.randint(1, num_tokens + 1, (1,), device=device).expand(batch)


class FixedLength(PrefixOrdering):
    """TiTok: no ordering regularizer (all tokens in training); decoding a prefix hides the tail."""


def build_ordering(kind: str, dim: int, nested_mode: str = "uniform_pow2", per_sample: bool = True) -> nn.Module:
    """``kind``: ``none`` (TiTok), ``nested_dropout`` (FlexTok) or ``tail_drop`` (One-D-Piece)."""
    if kind == "none":
        return FixedLength()
    if kind == "nested_dropout":
        return NestedDropout(dim, nested_mode)
    if kind == "tail_drop":
        return TailTokenDrop(per_sample)
    raise ValueError(f"ordering must be 'none', 'nested_dropout' or 'tail_drop', got {kind!r}")
