"""``TokenPrior``: a causal transformer over frames of discrete tokens (no Lightning, exportable).

Every token layout is seen as a sequence of ``F`` frames of ``D`` codes each (:mod:`.ordering`): a 1D image
tokenizer's ``[k]`` ids are ``k`` frames of one code, a shape tokenizer's multi-scale ids ``[n]`` (coarse scales
first) are ``n`` frames of one code, a speech codec's RVQ ids ``[n_q, F]`` are ``F`` frames of ``n_q`` codes.

The model factorizes ``p(ids) = prod_t prod_q p(c[t, q] | frames < t, c[t, < q])``:

- a *temporal* causal transformer reads, at position ``t``, the sum of the code embeddings of frame ``t - 1``
  (a learned start vector at ``t = 0``) plus a learned position, and outputs a context ``h[t]`` ``[width]``;
- with ``D = 1`` a linear head maps ``h[t]`` to the logits of the frame's code;
- with ``D > 1`` a small *depth* transformer (RQ-Transformer / Moshi's depth transformer) reads
  ``[h[t], e(c[t, 0]), ..., e(c[t, D - 2])]`` causally and head ``q`` gives the logits of ``c[t, q]``. Exact
  conditioning on the lower codebooks of the same frame is what makes the RVQ likelihood (and so the compressed
  size) tight; a delay pattern would trade that for fewer sequential steps, which matters for generation speed
  but not for coding a known sequence.

``num_codes`` (how many of the ``D`` codebooks a stream keeps: speech decodes from any first ``n``) is embedded
and added to every temporal input, so one prior codes every bitrate.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import Block

LAYOUTS = ("sequence", "rvq")


class TokenPrior(nn.Module):
    """Autoregressive model of token frames ``[B, F, D]``.

    Args:
        codebook_size: ``V``, codes per codebook (ids in ``[0, V)``).
        depth_codes: ``D``, codes per frame (1 for 1D / multi-scale tokens, ``n_q`` for RVQ speech).
        max_frames: ``F_max``, the longest context in frames (longer streams are coded with a sliding window).
        layout: ``sequence`` (ids ``[k]``) or ``rvq`` (ids ``[n_q, F]``): how token ids map to frames.
        width / layers / heads: the temporal transformer.
        depth_layers: layers of the depth transformer (used when ``D > 1``).
        dropout: embedding dropout while training.
        tokenizer: what the prior was trained for: the tokenizer's modality, architecture and weights sha256.
    """

    modality = "prior"
    architecture = "prior/ar"

    def __init__(self, codebook_size: int, depth_codes: int = 1, max_frames: int = 256, layout: str = "sequence",
                 width: int = 128, layers: int = 4, heads: int = 4, depth_layers: int = 1, dropout: float = 0.0,
                 tokenizer: dict[str, Any] | None = None) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if codebook_size < 2 or depth_codes < 1 or max_frames < 1:
            raise ValueError(f"need codebook_size >= 2, depth_codes >= 1, max_frames >= 1; got {codebook_size}, "
                             f"{depth_codes}, {max_frames}")
        if layout == "sequence" and depth_codes != 1:
            raise ValueError(f"layout 'sequence' has one code per frame, got depth_codes={depth_codes}")
        self.codebook_size, self.depth_codes, self.max_frames, self.layout = codebook_size, depth_codes, max_frames, layout
        self.tokenizer = dict(tokenizer or {})
        self.arch = {"codebook_size": codebook_size, "depth_codes": depth_codes, "max_frames": max_frames,
                     "layout": layout, "width": width, "layers": layers, "heads": heads,
                     "depth_layers": depth_layers, "dropout": dropout, "tokenizer": self.tokenizer}
        self.code_embed = nn.Embedding(depth_codes * codebook_size, width)
        self.start = nn.Parameter(torch.zeros(width))
        self.pos_embed = nn.Parameter(torch.zeros(max_frames, width))
        self.num_codes_embed = nn.Embedding(depth_codes, width)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        if depth_codes > 1:
            self.depth_embed = nn.Embedding(depth_codes * codebook_size, width)
            self.depth_pos = nn.Parameter(torch.zeros(depth_codes, width))
            self.depth_blocks = nn.ModuleList(Block(width, heads) for _ in range(depth_layers))
            self.depth_norm = nn.LayerNorm(width)
        self.heads = nn.Linear(width, depth_codes * codebook_size)
        nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.start, std=0.02)
        if depth_codes > 1:
            nn.init.normal_(self.depth_pos, std=0.02)

    def token_spec(self) -> dict[str, Any]:
        """The token layout this prior models (what ``export`` records under ``tokens``)."""
        return {"tokens_per_sample": self.max_frames * self.depth_codes, "codebook_sizes": [self.codebook_size],
                "token_shape": [self.depth_codes, self.max_frames] if self.layout == "rvq" else [self.max_frames],
                "layout": self.layout, "depth_codes": self.depth_codes, "prefix_decodable": True}

    # ---- the two transformers ---------------------------------------------------------------------
    def _offsets(self, d: int, device: torch.device) -> torch.Tensor:
        return torch.arange(d, device=device) * self.codebook_size

    def context(self, frames: torch.Tensor, num_codes: torch.Tensor | int | None = None) -> torch.Tensor:
        """Temporal contexts ``h`` ``[B, F, width]`` for frames ``[B, F, d]`` (``d <= D`` codebooks kept).

        ``h[:, t]`` depends on frames ``< t`` only. ``num_codes`` (int or ``[B]``): codebooks the stream keeps
        (default ``d``); codes at or beyond it are ignored.
        """
        b, f, d = frames.shape
        if f > self.max_frames:
            raise ValueError(f"{f} frames exceed the prior's context of {self.max_frames} frames")
        if num_codes is None:
            num_codes = d
        n = torch.as_tensor(num_codes, device=frames.device).long().expand(b) if not torch.is_tensor(num_codes) \
            or num_codes.ndim == 0 else num_codes.long()
        emb = self.code_embed(frames + self._offsets(d, frames.device))  # [B, F, d, W]
        keep = (torch.arange(d, device=frames.device)[None] < n[:, None]).to(emb.dtype)  # [B, d]
        emb = (emb * keep[:, None, :, None]).sum(2)
        x = torch.cat([self.start.expand(b, 1, -1), emb[:, :-1]], 1) + self.pos_embed[:f]
        x = self.drop(x + self.num_codes_embed(n - 1)[:, None])
        mask = torch.ones(f, f, dtype=torch.bool, device=frames.device).tril()
        for blk in self.blocks:
            x = blk(x, mask)
        return self.norm(x)

    def depth_logits(self, h: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, d, V]`` of the ``d`` codes of ``N`` frames from contexts ``h`` ``[N, W]`` and the frames'
        codes ``[N, d]`` (code ``q``'s logits see codes ``< q`` only)."""
        d, v = frames.shape[1], self.codebook_size
        w_all = self.heads.weight.view(self.depth_codes, v, -1)[:d]
        b_all = self.heads.bias.view(self.depth_codes, v)[:d]
        if self.depth_codes == 1:
            return torch.einsum("nw,dvw->ndv", h, w_all) + b_all
        x = h[:, None]
        if d > 1:
            x = torch.cat([x, self.depth_embed(frames[:, :-1] + self._offsets(d - 1, frames.device))], 1)
        x = x + self.depth_pos[:d]
        mask = torch.ones(d, d, dtype=torch.bool, device=h.device).tril()
        for blk in self.depth_blocks:
            x = blk(x, mask)
        return torch.einsum("ndw,dvw->ndv", self.depth_norm(x), w_all) + b_all

    def forward(self, frames: torch.Tensor, num_codes: torch.Tensor | int | None = None) -> torch.Tensor:
        """Teacher-forced logits ``[B, F, d, V]`` of frames ``[B, F, d]``."""
        b, f, d = frames.shape
        h = self.context(frames, num_codes)
        return self.depth_logits(h.reshape(b * f, -1), frames.reshape(b * f, d)).view(b, f, d, -1)

    def loss(self, frames: torch.Tensor, num_codes: torch.Tensor | None = None,
             frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cross-entropy (nats per token) of frames ``[B, F, d]``; with ``num_codes`` ``[B]`` only the codes
        each stream keeps count, with ``frame_mask`` bool ``[B, F]`` only the real (not padded) frames."""
        logits = self(frames, num_codes)
        nll = F.cross_entropy(logits.flatten(0, 2).float(), frames.flatten(), reduction="none").view(frames.shape)
        if num_codes is None and frame_mask is None:
            return nll.mean()
        keep = torch.ones_like(nll)
        if num_codes is not None:
            keep = keep * (torch.arange(frames.shape[2], device=frames.device)[None] < num_codes[:, None])[:, None]
        if frame_mask is not None:
            keep = keep * frame_mask[:, :, None].to(nll.dtype)
        return (nll * keep).sum() / keep.sum().clamp_min(1)

    # ---- step-by-step use (coding, sampling) ------------------------------------------------------------
    def window(self, frames: torch.Tensor, t: int) -> torch.Tensor:
        """The frames the context of frame ``t`` sees: the last ``max_frames - 1`` before it, plus a slot for ``t``."""
        start = max(0, t + 1 - self.max_frames)
        return frames[:, start:t + 1]

    @torch.no_grad()
    def sample(self, n: int, num_frames: int, num_codes: int | None = None, temperature: float = 1.0,
               top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` streams of ``num_frames`` frames ``[n, F, d]`` (``d = num_codes or D``)."""
        d = num_codes or self.depth_codes
        if not 1 <= d <= self.depth_codes:
            raise ValueError(f"num_codes must lie in 1..{self.depth_codes}, got {d}")
        dev = self.pos_embed.device
        frames = torch.zeros(n, num_frames, d, dtype=torch.long, device=dev)
        for t in range(num_frames):
            win = self.window(frames, t)
            h = self.context(win, d)[:, -1]
            for q in range(d):
                logits = self.depth_logits(h, frames[:, t, : q + 1])[:, q].float() / max(temperature, 1e-5)
                if top_k:
                    kth = torch.topk(logits, min(top_k, logits.shape[-1]), -1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = logits.softmax(-1)
                frames[:, t, q] = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(dev)
        return frames
