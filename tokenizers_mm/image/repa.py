"""REPA-style feature alignment: the denoiser's hidden states are projected onto a frozen vision teacher's
patch features and pulled towards them (cosine similarity), which speeds up diffusion-decoder training.

The teacher is a torchvision architecture whose weights come **only from a local file** (``.safetensors`` /
``.pt`` / ``.pth`` state dict, read without unpickling); nothing is downloaded. For example, save
``torchvision.models.resnet50(weights="IMAGENET1K_V2").state_dict()`` once on a machine that has the weights and
point ``repa.teacher_path`` at that file; a DINOv2-style ViT works the same way through ``teacher_arch``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class RepaConfig:
    """Feature alignment settings (off while ``weight`` is 0 or ``teacher_path`` is unset).

    Args:
        weight: loss weight of ``1 - cos`` between projected denoiser states and teacher features.
        teacher_path: local weights file of the teacher.
        teacher_arch: a ``torchvision.models`` architecture name (``resnet50``, ``vit_b_16`` ...).
        teacher_layer: the node whose output is the feature map (``torchvision.models.feature_extraction``
            names: ``layer3`` for ResNets, ``encoder`` for ViTs).
        teacher_size: the teacher sees images resized to this side.
        block: the denoiser block (1-based) whose output is aligned.
    """

    weight: float = 0.0
    teacher_path: str | None = None
    teacher_arch: str = "resnet50"
    teacher_layer: str = "layer3"
    teacher_size: int = 224
    block: int = 2


class TorchvisionTeacher(nn.Module):
    """Frozen torchvision network -> patch features ``[B, h * w, C]`` of one layer, from images in [-1, 1]."""

    def __init__(self, arch: str, weights_path: str, layer: str, size: int) -> None:
        super().__init__()
        import torchvision
        from torchvision.models.feature_extraction import create_feature_extractor

        from ..checkpointing import load_weights_file

        try:
            net = torchvision.models.get_model(arch, weights=None)
        except ValueError as exc:
            raise ValueError(f"repa.teacher_arch {arch!r} is not a torchvision architecture: {exc}") from exc
        state = load_weights_file(weights_path, "REPA teacher")
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing:
            raise ValueError(f"REPA teacher weights {weights_path!r} do not fit {arch}: missing {missing[:5]}")
        try:
            self.net = create_feature_extractor(net, {layer: "feat"})
        except ValueError as exc:
            raise ValueError(f"repa.teacher_layer {layer!r} is not a node of {arch}: {exc}") from exc
        self.size = size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> TorchvisionTeacher:  # always frozen
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, grid: int) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in [-1, 1] -> features pooled to ``grid x grid``: ``[B, grid^2, C]``."""
        x = F.interpolate((x + 1) / 2, size=(self.size, self.size), mode="bilinear", align_corners=False)
        feat = self.net((x - self.mean) / self.std)["feat"]
        if feat.ndim == 3:  # ViT tokens [B, 1 + n, C]: drop the class token, fold into a square grid
            tokens = feat[:, 1:] if int((feat.shape[1] - 1) ** 0.5) ** 2 == feat.shape[1] - 1 else feat
            side = int(tokens.shape[1] ** 0.5)
            feat = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)
        return F.adaptive_avg_pool2d(feat, grid).flatten(2).transpose(1, 2)


def alignment_loss(hidden: torch.Tensor, projector: nn.Module, target: torch.Tensor) -> torch.Tensor:
    """``mean(1 - cos(projector(hidden), target))`` over samples and positions."""
    return (1 - F.cosine_similarity(projector(hidden), target.to(hidden.dtype), dim=-1)).mean()
