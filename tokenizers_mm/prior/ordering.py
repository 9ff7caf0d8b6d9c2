"""Token orderings: a tokenizer's ids <-> the prior's frames ``[B, F, D]``.

- ``sequence``: 1D image tokens ``[B, k]`` (left to right, the coarse-to-fine order nested dropout trains) and
  multi-scale shape tokens ``[B, n]`` (scale by scale, coarse first: the order the codec already stores) become
  ``k`` frames of one code.
- ``rvq``: speech ids ``[B, n_q, F]`` become ``F`` frames of ``n_q`` codes: frame by frame, the codebooks of a
  frame in residual order.
"""

from __future__ import annotations

import torch

LAYOUT_OF_MODALITY = {"image": "sequence", "shape": "sequence", "speech": "rvq"}


def layout_for(modality: str) -> str:
    """The ordering of a tokenizer modality's ids (older names accepted; ``ValueError`` for an unknown modality)."""
    from ..registry import canonical

    modality = canonical(modality)
    if modality not in LAYOUT_OF_MODALITY:
        raise ValueError(f"no token ordering for modality {modality!r}; known: {sorted(LAYOUT_OF_MODALITY)}")
    return LAYOUT_OF_MODALITY[modality]


def to_frames(ids: torch.Tensor, layout: str) -> torch.Tensor:
    """Ids of one layout -> frames ``[B, F, D]`` (int64)."""
    ids = ids.long()
    if layout == "sequence":
        if ids.ndim != 2:
            raise ValueError(f"sequence ids must be [B, k], got shape {tuple(ids.shape)}")
        return ids[..., None]
    if layout == "rvq":
        if ids.ndim != 3:
            raise ValueError(f"RVQ ids must be [B, n_q, F], got shape {tuple(ids.shape)}")
        return ids.transpose(1, 2).contiguous()
    raise ValueError(f"unknown token layout {layout!r}")


def from_frames(frames: torch.Tensor, layout: str) -> torch.Tensor:
    """Frames ``[B, F, D]`` -> ids of ``layout`` (inverse of :func:`to_frames`)."""
    if layout == "sequence":
        return frames[..., 0]
    if layout == "rvq":
        return frames.transpose(1, 2).contiguous()
    raise ValueError(f"unknown token layout {layout!r}")
