"""Rate control: per sample, the smallest token budget whose decoded result meets a quality target.

Every prefix a tokenizer decodes is a candidate (1D image tokens: ``1..K``; speech: the first ``1..n_q``
codebooks; shapes: whole scales, coarse first); all candidates of a sample are decoded and measured, so the choice does not rely on quality rising
monotonically with the budget. A sample that no budget brings to the target is a :class:`TargetError` naming
it and the best quality reached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..eval.image_metrics import psnr_db

# flag -> (modality, metric name, True when higher is better)
TARGETS = {"psnr": ("image", "PSNR (dB)", True), "mel": ("speech", "mel distance", False),
           "stoi": ("speech", "STOI", True), "iou": ("shape", "volume IoU", True)}


class TargetError(ValueError):
    """No budget of the tokenizer reaches the quality target for a sample."""


@dataclass
class Choice:
    """The budget chosen for one sample: ``budget`` tokens (codebooks for speech), its quality, its ids, the
    quality of every budget and the full-length ids."""

    budget: int
    quality: float
    ids: torch.Tensor
    qualities: dict[int, float]
    full: torch.Tensor | None = None


def _meets(value: float, target: float, higher: bool) -> bool:
    return value >= target if higher else value <= target


def image_psnr(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) per image of ``[B, 3, H, W]`` batches in ``[-1, 1]``, on 8-bit-rounded pixels (what a PNG keeps)."""
    r = ((recon.clamp(-1, 1) + 1) * 127.5).round()
    t = ((x.clamp(-1, 1) + 1) * 127.5).round()
    return psnr_db(r, t, data_range=255.0, per_image=True)


def choose_image(tok: Any, images: torch.Tensor, target_psnr: float, names: list[str]) -> list[Choice]:
    """Per image ``[B, 3, S, S]`` (model input range), the fewest tokens whose decode reaches ``target_psnr``."""
    if not tok.prefix_decodable:
        raise ValueError("rate control needs a prefix-decodable tokenizer (every prefix of its tokens decodes)")
    full = tok.encode(images)
    budgets = list(range(1, full.shape[1] + 1))
    out = []
    for i, name in enumerate(names):
        ids = full[i:i + 1].expand(len(budgets), -1)
        recons = torch.cat([tok.decode(ids[j:j + 1, :k]) for j, k in enumerate(budgets)])
        q = image_psnr(recons, images[i:i + 1].expand_as(recons)).tolist()
        out.append(_pick(name, budgets, q, target_psnr, True, "PSNR (dB)", full[i]))
    return out


def choose_audio(tok: Any, wave: torch.Tensor, target: float, metric: str, name: str) -> Choice:
    """For one clip ``[1, T]``, the fewest codebooks whose decode reaches the ``mel`` or ``stoi`` target."""
    from ..eval.audio_metrics import mel_distance

    full = tok.encode(wave)[0]  # [n_q, F]
    budgets = list(range(1, full.shape[0] + 1))
    q = []
    for n in budgets:
        est = tok.decode([full[:n]])[0][..., : wave.shape[-1]]
        ref = wave[..., : est.shape[-1]]
        if metric == "mel":
            q.append(float(mel_distance(ref.reshape(-1), est.reshape(-1), tok.sample_rate)))
        else:
            from pystoi import stoi

            q.append(float(stoi(ref.reshape(-1).numpy(), est.reshape(-1).numpy(), tok.sample_rate)))
    return _pick(name, budgets, q, target, metric != "mel", TARGETS[metric][1], full)


def choose_shape(tok: Any, items: list[Any], target_iou: float, names: list[str]) -> list[Choice]:
    """Per mesh (file or ``trimesh.Trimesh``), the fewest whole scales whose decoded occupancy reaches
    ``target_iou`` volume IoU against the input's own labels: points uniform in the normalized cube, labeled inside
    or outside the prepared input mesh (:meth:`pipelines.shape.ShapePipeline.labeled_points`)."""
    out = []
    for item, name in zip(items, names, strict=True):
        mesh = tok.read_mesh(item)
        full = tok.encode(tok.sample_surface(mesh)[None])[0]
        points, labels = tok.labeled_points(mesh)
        budgets = [n for n in tok.prefix_lengths if n <= full.shape[0]]
        q = [tok.iou(full[None, :n], points, labels) for n in budgets]
        out.append(_pick(name, budgets, q, target_iou, True, "volume IoU", full))
    return out


def _pick(name: str, budgets: list[int], q: list[float], target: float, higher: bool, what: str,
          full: torch.Tensor) -> Choice:
    for k, v in zip(budgets, q):
        if _meets(v, target, higher):
            return Choice(k, v, full[:k].clone(), dict(zip(budgets, q)), full)
    best = max(q) if higher else min(q)
    raise TargetError(f"{name}: no budget reaches {what} {target:g} (best {best:.3f} with "
                      f"{budgets[q.index(best)]} of {budgets[-1]}); lower the target")
