"""Real compressed sizes of a tokenizer's ids under a prior, per token budget (for ``evaluate --prior``).

A budget ``b`` keeps the first ``b`` entries of each sample's ids along their first axis: the first ``b`` tokens
of 1D image ids ``[K]``, the first ``b`` tokens (whole scales) of shape ids ``[n]``, the first ``b`` codebooks of
speech ids ``[n_q, F]``. Every sample at every budget is coded as ``compress`` codes it (header + payload).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .coding import Header, coded_payload


def header_bytes(modality: str, ndim: int) -> int:
    """Bytes of a compressed file's header for ids of ``ndim`` dimensions of ``modality``."""
    return len(Header(modality, b"\0" * 4, b"\0" * 4, (1,) * ndim).pack())


def nominal_bytes(num_tokens: int, codebook_size: int) -> int:
    """``ceil(num_tokens * log2(V) / 8)``: the ids at ``log2 V`` bits each."""
    return math.ceil(num_tokens * math.log2(codebook_size) / 8)


def load_prior_for(prior_dir: str, codebook_size: int, modality: str) -> Any:
    """The prior pipeline of ``prior_dir``, checked against the tokenizer's codebook size and modality."""
    import pipelines

    prior = pipelines.load(prior_dir, modality="prior")
    if prior.prior.codebook_size != codebook_size:
        raise ValueError(f"--prior {prior_dir!r} models {prior.prior.codebook_size} codes; the tokenizer has "
                         f"{codebook_size}")
    from ..registry import canonical

    made_for = (prior.prior.tokenizer or {}).get("modality")
    if made_for and canonical(made_for) != canonical(modality):
        raise ValueError(f"--prior {prior_dir!r} models the tokens of a {made_for} tokenizer; this one is a "
                         f"{modality} tokenizer")
    return prior


def real_bytes_per_budget(prior_dir: str, ids: torch.Tensor | Sequence[torch.Tensor], budgets: list[int],
                          codebook_size: int, modality: str = "image") -> list[dict[str, Any]]:
    """Per budget ``k`` (see the module docstring): mean file bytes per sample (header + payload), mean payload
    bytes, mean nominal bytes ``ceil(tokens log2 V / 8)``, the ideal bits per token under the prior, how many
    files fell back to the raw code, and the header's size.

    ``ids``: ``[N, K]`` or a list of per-sample ids (``[K]`` / ``[n_q, F_i]``).
    """
    prior = load_prior_for(prior_dir, codebook_size, modality)
    samples = list(ids)
    if not samples:
        raise ValueError("no samples to code")
    head = header_bytes(modality, samples[0].ndim)
    rows = []
    for k in budgets:
        payload, nominal, raw, bits, tokens = [], [], 0, 0.0, 0
        for sample in samples:
            cut = sample[:k]
            data, b, is_raw = coded_payload(prior.prior, cut)
            payload.append(len(data))
            nominal.append(nominal_bytes(int(cut.numel()), codebook_size))
            raw += int(is_raw)
            bits += b
            tokens += int(cut.numel())
        rows.append({"k": k, "nominal_bytes": round(float(np.mean(nominal)), 2),
                     "file_bytes": round(head + float(np.mean(payload)), 2),
                     "payload_bytes": round(float(np.mean(payload)), 2),
                     "prior_bits_per_token": round(bits / max(tokens, 1), 4), "raw_files": raw,
                     "header_bytes": head})
    return rows
