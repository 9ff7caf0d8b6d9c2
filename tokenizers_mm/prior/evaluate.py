"""Real compressed sizes of a tokenizer's ids under a prior, per token budget (for ``evaluate --prior``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .coding import Header, encode_frames
from .ordering import to_frames


def header_bytes(ndim: int) -> int:
    """Bytes of a compressed file's header for ids of ``ndim`` dimensions."""
    return len(Header("image", b"\0" * 4, b"\0" * 4, (1,) * ndim).pack())


def real_bytes_per_budget(prior_dir: str, ids: torch.Tensor, budgets: list[int], codebook_size: int
                          ) -> list[dict[str, Any]]:
    """Per budget ``k``: mean file bytes per sample (header + range-coded ids of the first ``k`` tokens), mean
    payload bytes, the ideal bits per token under the prior, and the nominal bytes ``ceil(k log2 V / 8)``.

    ``ids``: ``[N, K]`` (1D / multi-scale tokens) of the samples.
    """
    import pipelines

    prior = pipelines.load(prior_dir, modality="prior")
    if prior.prior.codebook_size != codebook_size:
        raise ValueError(f"--prior {prior_dir!r} models {prior.prior.codebook_size} codes; the tokenizer has "
                         f"{codebook_size}")
    rows = []
    head = header_bytes(1)
    for k in budgets:
        payload, bits = [], 0.0
        for row in ids[:, :k]:
            words, b = encode_frames(prior.prior, to_frames(row[None], prior.layout)[0])
            payload.append(4 * len(words))
            bits += b
        n = len(ids)
        rows.append({"k": k, "nominal_bytes": math.ceil(k * math.log2(codebook_size) / 8),
                     "file_bytes": round(head + float(np.mean(payload)), 2),
                     "payload_bytes": round(float(np.mean(payload)), 2),
                     "prior_bits_per_token": round(bits / (n * k), 4), "header_bytes": head})
    return rows
