"""``ShapeModule``: trains a :class:`~tokenizers_mm.shape.codec.ShapeCodec` on precomputed mesh samples.

Loss: BCE on uniform volume points + ``near_weight`` x BCE on near-surface points (0.1 by default, the
3DShape2VecSet convention), + ``kl_weight`` x KL of the Gaussian bottleneck + the quantizers' own losses. With
probability ``scale_dropout`` a sample decodes from a random number of coarse scales only, so every prefix of
scales gives a valid shape while the rest of the batch trains the full code. Validation logs BCE and volume IoU at every number of scales, and writes rendered
views of reconstructed meshes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..config import as_config, plain
from ..harness import OptimizerConfig, TokenizerModule
from ..nn import TransformerConfig
from ..quantize import QuantizerConfig
from .codec import ShapeCodec, ShapeEncoderConfig, ShapeProbeConfig
from ..eval.shape_metrics import volume_iou


@dataclass
class ShapeLossConfig:
    """Loss weights: near-surface BCE relative to volume BCE, KL, quantizer losses; scale dropout probability;
    ``volume_pos_weight`` weighs the inside volume points (most uniform points are outside); ``sample_posterior``
    trains on samples of the Gaussian bottleneck (else on its mean); ``anchor_weight`` weighs the mean squared
    distance between each latent's predicted anchor and the surface point it was sampled at, plus (with
    ``probe.planes``) between its predicted unit normal and that point's normal (``probe.anchors`` with ``fps``
    queries only)."""

    near_weight: float = 0.1
    kl_weight: float = 1e-3
    aux_weight: float = 1.0
    scale_dropout: float = 0.5
    volume_pos_weight: float = 1.0
    sample_posterior: bool = True
    anchor_weight: float = 0.0


class ShapeModule(TokenizerModule):
    """Shape tokenizer training (see the module docstring); architecture arguments as in ``ShapeCodec``.

    Args:
        loss: loss weights and scale dropout.
        val_mesh_resolution: grid resolution of the meshes rendered at validation (0: none).
        optimizer / ema_decay: AdamW + schedule; EMA of the codec.
        probe: the occupancy probe (see ``ShapeProbeConfig``; defaults: one attention-only block).
    """

    def __init__(self, num_latents: int = 64, latent_dim: int = 32, encoder: ShapeEncoderConfig | None = None,
                 decoder: TransformerConfig | None = None, bottleneck: str = "multiscale", scales: list[int] | None = None,
                 num_quantizers: int = 4, quantizer: QuantizerConfig | None = None,
                 loss: ShapeLossConfig | None = None, val_mesh_resolution: int = 48,
                 optimizer: OptimizerConfig | None = None, ema_decay: float | None = None,
                 probe: ShapeProbeConfig | None = None) -> None:
        codec = ShapeCodec(num_latents, latent_dim, encoder, decoder, bottleneck, scales, num_quantizers, quantizer,
                           probe)
        lcfg = as_config(ShapeLossConfig, loss)
        if lcfg.anchor_weight and (codec.anchor is None or codec.enc_cfg.queries != "fps"):
            raise ValueError("loss.anchor_weight needs probe.anchors: true and encoder.queries: fps (the anchors' "
                             "targets are the latents' farthest-point-sampled surface points)")
        super().__init__(optimizer=optimizer, input_key="surface", codebook_size=codec.codebook_size)
        self.save_hyperparameters(plain({**codec.arch, "loss": lcfg, "val_mesh_resolution": val_mesh_resolution,
                                         "optimizer": self.optim_config, "ema_decay": ema_decay}))
        self.codec, self.loss_cfg, self.val_mesh_resolution = codec, lcfg, val_mesh_resolution
        self.num_scales = len(codec.prefix_lengths)
        self.setup_ema(ema_decay)

    def _bce(self, logits: torch.Tensor, labels: torch.Tensor, pos_weight: float = 1.0) -> torch.Tensor:
        pw = None if pos_weight == 1.0 else logits.new_tensor(pos_weight)
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), pos_weight=pw)

    def compute_losses(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        surface, vol, near = batch["surface"], batch["volume_points"], batch["near_points"]
        points = torch.cat([vol, near], dim=1)
        nv = vol.shape[1]
        validating = not self.training
        codec = self.inference_codec(use_ema=validating)
        num_scales = None
        if not validating and self.loss_cfg.scale_dropout > 0:
            b = surface.shape[0]
            dropped = torch.rand(b, device=surface.device) < self.loss_cfg.scale_dropout
            num_scales = torch.where(dropped, torch.randint(1, self.num_scales + 1, (b,), device=surface.device),
                                     torch.full((b,), self.num_scales, device=surface.device))
        c = self.loss_cfg
        out = codec(surface, points, num_scales=num_scales, sample=c.sample_posterior and not validating)
        bce_vol = self._bce(out["logits"][:, :nv], batch["volume_labels"], c.volume_pos_weight)
        bce_near = self._bce(out["logits"][:, nv:], batch["near_labels"])
        losses = {"bce_volume": bce_vol, "bce_near": bce_near, "kl": out["kl"], "aux": out["aux_loss"],
                  "iou": volume_iou(out["logits"][:, :nv], batch["volume_labels"]).mean()}
        losses["loss"] = bce_vol + c.near_weight * bce_near + c.kl_weight * out["kl"] + c.aux_weight * out["aux_loss"]
        if out["anchors"] is not None and out["anchor_targets"] is not None:
            losses["anchor"] = (out["anchors"] - out["anchor_targets"]).square().sum(-1).mean()
            if out["normals"] is not None:
                losses["normal"] = (out["normals"] - out["normal_targets"]).square().sum(-1).mean()
                losses["anchor"] = losses["anchor"] + losses["normal"]
            losses["loss"] = losses["loss"] + c.anchor_weight * losses["anchor"]
        if validating:
            with torch.no_grad():
                states = {}
                for s, n in enumerate(codec.prefix_lengths, start=1):
                    states[s] = codec.decode(out["ids"][:, :n])
                    logits = codec.occupancy(states[s], vol)
                    losses[f"iou_s{s}"] = volume_iou(logits, batch["volume_labels"]).mean()
                    losses[f"bce_s{s}"] = self._bce(logits, batch["volume_labels"])
            out["states"] = states
        return losses, out

    def log_reconstructions(self, batch: dict[str, Any], outputs: dict[str, Any]) -> None:
        if not self.val_mesh_resolution:
            return
        import os

        from .mesh_out import marching_cubes_mesh, occupancy_grid
        from .render import render_views

        codec = self.inference_codec()
        meshes = []
        for s in sorted(outputs["states"]):
            st = outputs["states"][s][:1]
            grid = occupancy_grid(lambda p, st=st: codec.occupancy(st, p), self.val_mesh_resolution,
                                  device=self.device)
            meshes.append((f"{s} scales ({codec.prefix_lengths[s - 1]} tokens)", marching_cubes_mesh(grid)))
        path = os.path.join(self.samples_dir(), f"val_step{self.global_step:07d}.png")
        render_views(meshes, path, title=str(batch["__key__"][0]))


ShapeTokenizer = ShapeModule  # the old name: older configs' class_path and checkpoints still load
