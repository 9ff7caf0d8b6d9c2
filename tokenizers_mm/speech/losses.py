"""Losses of the speech codec: multi-scale mel, feature matching on the discriminators' features,
EnCodec's gradient loss balancer, and DM-Codec's distillation of one RVQ layer toward teacher features."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn


class MultiScaleMelLoss(nn.Module):
    """L1 between log10 mel spectrograms at several STFT sizes (DAC: windows 32..2048, mels 5..320).

    Args:
        sample_rate: Hz.
        windows: STFT window sizes (hop = window / 4).
        n_mels: mel bands per window (same length as ``windows``).
        log_weight / mag_weight: weights of the log-mel and linear-mel L1 terms.
        clamp: floor of the mel magnitude before the log.
    """

    def __init__(self, sample_rate: int, windows: Sequence[int] = (32, 64, 128, 256, 512, 1024, 2048),
                 n_mels: Sequence[int] = (5, 10, 20, 40, 80, 160, 320), log_weight: float = 1.0,
                 mag_weight: float = 0.0, clamp: float = 1e-5) -> None:
        super().__init__()
        if len(windows) != len(n_mels):
            raise ValueError(f"windows {list(windows)} and n_mels {list(n_mels)} must have the same length")
        self.mels = nn.ModuleList(
            torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=w, win_length=w, hop_length=w // 4, n_mels=m,
                                                 power=1.0, center=True, norm="slaney", mel_scale="slaney")
            for w, m in zip(windows, n_mels))
        self.log_weight, self.mag_weight, self.clamp = log_weight, mag_weight, clamp

    def forward(self, est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """``est``, ``ref``: ``[B, 1, T]`` -> scalar, summed over scales."""
        total = est.new_zeros(())
        for mel in self.mels:
            a, b = mel(est.float()), mel(ref.float())
            if self.log_weight:
                total = total + self.log_weight * F.l1_loss(a.clamp_min(self.clamp).log10(), b.clamp_min(self.clamp).log10())
            if self.mag_weight:
                total = total + self.mag_weight * F.l1_loss(a, b)
        return total


# ---- adversarial (the objectives are tokenizers_mm.adversarial's) ---------------------------------
def feature_matching_loss(real_feats: list[list[torch.Tensor]], fake_feats: list[list[torch.Tensor]]) -> torch.Tensor:
    """L1 between discriminator feature maps of real (detached) and generated audio, each layer normalized by
    the mean magnitude of the real features (EnCodec), averaged over layers and discriminators."""
    terms = []
    for rs, fs in zip(real_feats, fake_feats):
        for r, f in zip(rs, fs):
            r = r.detach()
            terms.append(F.l1_loss(f, r) / r.abs().mean().clamp_min(1e-5))
    return torch.stack(terms).mean()


# ---- loss balancer --------------------------------------------------------------------------------
class LossBalancer:
    """EnCodec's balancer: each loss's gradient with respect to the generated waveform is rescaled so that its
    share of the total gradient norm equals its share of the weights, independently of the loss's own scale.

    ``backward(losses, output)`` replaces ``sum(w_i * loss_i).backward()`` for the balanced losses; it keeps
    an EMA of each gradient norm (``decay``) and scales the combined gradient to ``total_norm``.
    """

    def __init__(self, weights: dict[str, float], total_norm: float = 1.0, decay: float = 0.999,
                 eps: float = 1e-12) -> None:
        self.weights, self.total_norm, self.decay, self.eps = dict(weights), total_norm, decay, eps
        self.norms: dict[str, float] = {}
        self.steps = 0

    def gradient(self, losses: dict[str, torch.Tensor], output: torch.Tensor) -> torch.Tensor:
        """The balanced gradient with respect to ``output`` (the losses' graphs are kept)."""
        names = [n for n in self.weights if n in losses and self.weights[n] > 0]
        if not names:
            raise ValueError(f"the loss balancer got none of its losses {sorted(self.weights)}; got {sorted(losses)}")
        grads = {n: torch.autograd.grad(losses[n], output, retain_graph=True)[0] for n in names}
        self.steps += 1
        # bias-corrected EMA of each gradient's norm per sample
        for n in names:
            norm = float(grads[n].norm(p=2)) / max(1, output.shape[0]) ** 0.5
            self.norms[n] = self.decay * self.norms.get(n, 0.0) + (1 - self.decay) * norm
        corr = 1 - self.decay ** self.steps
        wsum = sum(self.weights[n] for n in names)
        total = torch.zeros_like(output)
        for n in names:
            scale = self.total_norm * self.weights[n] / wsum / (self.norms[n] / corr + self.eps)
            total = total + scale * grads[n]
        return total


# ---- distillation ---------------------------------------------------------------------------------
def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """DM-Codec's continuous distillation: ``-log sigmoid(cos(student_t, teacher_t))`` averaged over valid frames.

    ``student``, ``teacher``: ``[B, F, D]`` (the student already projected to the teacher's width);
    ``mask``: ``[B, F]`` bool, True on frames that carry a teacher target.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} features differ in shape")
    per_frame = -F.logsigmoid(F.cosine_similarity(student.float(), teacher.float(), dim=-1, eps=1e-6))
    if mask is None:
        return per_frame.mean()
    m = mask.to(per_frame.dtype)
    return (per_frame * m).sum() / m.sum().clamp_min(1.0)
