"""Token-language statistics of token shards: per-position entropy and codebook usage, the rank-frequency
(Zipf) curve with its fitted exponent, the unigram entropy, and a prior's cross-entropy on the same tokens.

Speech clips differ in length: their ids ``[n_q, F_i]`` are pooled over frames, so a "position" is a codebook."""

from __future__ import annotations

import os
from typing import Any

import numpy as np


def read_ids(data: list[str], limit: int | None = None, split: str | None = None) -> np.ndarray | list[np.ndarray]:
    """Token ids ``[N, k]`` (or ``[N, n_q, F]``) of the samples in token shards ``data``; a list of ``[n_q, F_i]``
    for speech clips of different lengths (every other mix of shapes is a ``ValueError``)."""
    from pipelines.tokenize import read_token_ids
    from tokenizers_mm.data.urls import expand_urls

    try:
        urls = expand_urls(data, split=split)
    except (FileNotFoundError, ValueError) as exc:
        raise type(exc)(f"--data: {exc}") from exc
    rows = []
    for _, ids in read_token_ids(urls):
        rows.append(np.asarray(ids))
        if limit and len(rows) >= limit:
            break
    if not rows:
        raise ValueError(f"--data {data}: no token samples found (write token shards with `tokenizers-mm tokenize`)")
    shapes = {r.shape for r in rows}
    if len(shapes) > 1 and len({r.shape[:-1] for r in rows}) == 1 and rows[0].ndim == 2:
        return [r.astype(np.int64) for r in rows]
    if len(shapes) > 1:
        raise ValueError(f"--data {data}: samples hold ids of different shapes {sorted(shapes)[:3]}; the report "
                         "needs one shape")
    return np.stack(rows).astype(np.int64)


def entropy_bits(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def zipf_fit(counts: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Exponent ``s`` and log-intercept ``c`` of ``log frequency = c - s log rank`` (least squares in log-log over
    the codes seen), and the sorted relative frequencies."""
    freq = np.sort(counts[counts > 0])[::-1].astype(np.float64)
    freq /= max(freq.sum(), 1.0)
    if len(freq) < 2:
        return 0.0, float(np.log(freq[0])) if len(freq) else 0.0, freq
    ranks = np.arange(1, len(freq) + 1)
    slope, intercept = np.polyfit(np.log(ranks), np.log(freq), 1)
    return float(-slope), float(intercept), freq


def token_report(data: list[str], out: str, prior: Any = None, limit: int | None = None,
                 split: str | None = None) -> dict[str, Any]:
    """Write ``out/report.json`` and ``out/tokens.png``; returns the report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import write_json_atomic

    ids = read_ids(data, limit, split)
    clips = isinstance(ids, list)
    v = int(prior.prior.codebook_size) if prior is not None else int(max(int(r.max()) for r in ids)) + 1
    if clips:  # positions are codebooks, pooled over every frame of every clip
        per_pos = [np.bincount(np.concatenate([r[q] for r in ids]), minlength=v) for q in range(ids[0].shape[0])]
        num_tokens = sum(r.size for r in ids)
    else:
        flat = ids.reshape(len(ids), -1)  # positions in storage order
        per_pos = [np.bincount(flat[:, j], minlength=v) for j in range(flat.shape[1])]
        num_tokens = flat.size
    counts = np.sum(per_pos, axis=0)
    exponent, intercept, freq = zipf_fit(counts)
    report: dict[str, Any] = {
        "samples": int(len(ids)), "split": split or "all",
        "id_shape": [ids[0].shape[0], "frames"] if clips else list(ids.shape[1:]), "codebook_size": v,
        "uniform_bits": round(float(np.log2(v)), 4),
        "unigram_entropy_bits": round(entropy_bits(counts), 4),
        "per_position_entropy_bits": [round(entropy_bits(c), 4) for c in per_pos],
        "per_position_usage": [round(float((c > 0).sum()) / v, 4) for c in per_pos],
        "codebook_usage": round(float((counts > 0).sum()) / v, 4), "zipf_exponent": round(exponent, 4),
        "prior_bits_per_token": None,
    }
    if prior is not None:
        bits = sum(float(prior.bits(r[None]).sum()) for r in ids) if clips else float(prior.bits(ids).sum())
        report["prior_bits_per_token"] = round(bits / num_tokens, 4)
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    ax[0].plot(report["per_position_entropy_bits"], label="per-position entropy")
    ax[0].axhline(report["unigram_entropy_bits"], color="gray", ls="--", label="unigram entropy")
    if report["prior_bits_per_token"] is not None:
        ax[0].axhline(report["prior_bits_per_token"], color="red", ls=":", label="prior cross-entropy")
    where = "codebook" if clips else "position"
    ax[0].set(xlabel=where, ylabel="bits", title=f"{len(ids)} samples, V = {v}")
    ax[0].legend(fontsize=8)
    ax[1].plot(report["per_position_usage"])
    ax[1].set(xlabel=where, ylabel="share of codes used", ylim=(0, 1.05), title=f"codebook usage per {where}")
    ranks = np.arange(1, len(freq) + 1)
    ax[2].loglog(ranks, freq, ".", ms=3, label="codes")
    ax[2].loglog(ranks, np.exp(intercept) * ranks ** -exponent, "r-", lw=1, label=f"fit s = {exponent:.2f}")
    ax[2].set(xlabel="rank", ylabel="frequency", title="rank-frequency (Zipf)")
    ax[2].legend(fontsize=8)
    fig.tight_layout()
    png = os.path.join(out, "tokens.png")
    fig.savefig(png, dpi=90)
    plt.close(fig)
    report["files"] = {"plot": png}
    write_json_atomic(os.path.join(out, "report.json"), report)
    return report
