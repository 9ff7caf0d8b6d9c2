"""``FlowImageModule``: trains a :class:`~tokenizers_mm.image.flow_codec.FlowImageCodec` end to end (FlexTok recipe).

Encoder, quantizer, nested dropout and the rectified-flow decoder learn together from one loss: the
flow-matching MSE (target ``noise - x0`` at logit-normal sigmas), plus the quantizer's own loss and, when a
teacher is configured, a REPA feature-alignment term. Tokens are dropped with probability
``flow.token_dropout`` so the same decoder serves classifier-free guidance. Validation samples with
``val_steps`` Euler steps from fixed seeds and logs PSNR at every k in 1, 2, 4, ..., K.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import as_config, plain
from ..eval.image_metrics import psnr_db
from ..flow import DenoiserConfig, FlowConfig
from ..harness import OptimizerConfig, TokenizerModule
from ..nn import TransformerConfig
from ..quantize import QuantizerConfig
from .codec1d import OrderingConfig, eval_token_counts
from .flow_codec import FlowImageCodec
from .repa import RepaConfig, TorchvisionTeacher, alignment_loss


def load_vae_for_training(path: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A diffusers ``AutoencoderKL`` from a local folder (``from_pretrained`` layout): ``(vae spec, weights)``."""
    import os

    from diffusers import AutoencoderKL

    if not os.path.isdir(path):
        raise FileNotFoundError(f"vae_path {path!r} is not a folder holding a diffusers AutoencoderKL "
                                "(config.json + weights, as written by save_pretrained)")
    vae = AutoencoderKL.from_pretrained(path, local_files_only=True)
    spec = {"config": dict(vae.config), "scaling_factor": vae.config.scaling_factor,
            "shift_factor": getattr(vae.config, "shift_factor", None), "source": os.path.abspath(path)}
    return spec, vae.state_dict()


class FlowImageModule(TokenizerModule):
    """FlexTok-style 1D tokenizer with a rectified-flow decoder (see the module docstring).

    Args:
        image_size / patch_size / num_tokens / encoder / patch_embed / stem_channels / causal_registers /
            register_init / quantizer / ordering: the token side.
        denoiser / decoder_patch_size / flow: the rectified-flow decoder.
        token_mix: ``none`` or ``pyramid`` (targets also start from the tokens covering them; see FlowImageCodec).
        vae_path: local folder of a diffusers ``AutoencoderKL``: denoise its latents instead of pixels (its
            weights are frozen and become part of checkpoints and exports).
        repa: REPA feature alignment with a local teacher.
        val_steps / val_cfg_scale: sampling used for validation PSNR.
        optimizer: AdamW + schedule.
        ema_decay: keep an EMA of the codec (validation and export use it).
    """

    def __init__(self, image_size: int = 64, patch_size: int = 8, num_tokens: int = 32,
                 encoder: TransformerConfig | None = None, denoiser: DenoiserConfig | None = None,
                 decoder_patch_size: int = 4, patch_embed: str = "linear", stem_channels: int = 64,
                 causal_registers: bool = True, register_init: str = "learned",
                 quantizer: QuantizerConfig | None = None, ordering: OrderingConfig | None = None,
                 flow: FlowConfig | None = None, vae_path: str | None = None, vae: dict[str, Any] | None = None,
                 token_mix: str = "none", repa: RepaConfig | None = None, val_steps: int = 4,
                 val_cfg_scale: float = 1.0,
                 optimizer: OptimizerConfig | None = None, ema_decay: float | None = None) -> None:
        vae_state = None
        if vae_path and vae is None:  # first construction: read the VAE; checkpoints then carry its spec
            vae, vae_state = load_vae_for_training(vae_path)
        codec = FlowImageCodec(image_size, patch_size, num_tokens, encoder, denoiser, decoder_patch_size,
                               patch_embed, stem_channels, causal_registers, register_init, quantizer, ordering,
                               flow, vae, token_mix)
        if vae_state is not None:
            codec.vae.load_state_dict(vae_state)
        rcfg = as_config(RepaConfig, repa)
        super().__init__(optimizer=optimizer, input_key="image", codebook_size=codec.codebook_size)
        self.save_hyperparameters(plain({**codec.arch, "vae_path": vae_path, "repa": rcfg, "val_steps": val_steps,
                                         "val_cfg_scale": val_cfg_scale, "optimizer": self.optim_config,
                                         "ema_decay": ema_decay}))
        self.codec = codec
        self.num_tokens, self.image_size = num_tokens, image_size
        self.repa_cfg = rcfg
        self.val_steps, self.val_cfg_scale = val_steps, val_cfg_scale
        self.val_ks = eval_token_counts(num_tokens)
        self._teacher: list[nn.Module] = []  # kept out of the module tree: not in checkpoints or exports
        self.repa_projector = None
        if rcfg.weight > 0 and rcfg.teacher_path:
            teacher = TorchvisionTeacher(rcfg.teacher_arch, rcfg.teacher_path, rcfg.teacher_layer, rcfg.teacher_size)
            self._teacher.append(teacher)
            with torch.no_grad():
                dim = teacher(torch.zeros(1, 3, image_size, image_size), 1).shape[-1]
            w = codec.denoiser.x_in.out_features
            self.repa_projector = nn.Sequential(nn.Linear(w, 2 * w), nn.SiLU(), nn.Linear(2 * w, dim))
        self.setup_ema(ema_decay)

    # ---- public face --------------------------------------------------------------------------------
    # ---- training -----------------------------------------------------------------------------------
    def compute_losses(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        x = batch["image"]
        validating = not self.training
        codec = self.inference_codec(use_ema=validating)
        repa_on = self.repa_projector is not None and not validating
        out = codec(x, return_hidden=self.repa_cfg.block if repa_on else None,
                    token_dropout=0.0 if validating else None)
        losses = {"flow": out["flow"], "aux": out["aux_loss"]}
        total = out["flow"] + out["aux_loss"]
        if repa_on:
            grid = int(codec.denoiser.num_targets ** 0.5)
            target = self._teacher[0].to(x.device)(x, grid)
            losses["repa"] = alignment_loss(out["hidden"], self.repa_projector, target)
            total = total + self.repa_cfg.weight * losses["repa"]
        losses["loss"] = total
        if validating:
            keep_rows = ~batch["pad"] if "pad" in batch else torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
            seeds = list(range(x.shape[0]))  # the same noise at every validation: curves are comparable
            recons = {}
            for k in self.val_ks:
                recons[k] = codec.decode(out["ids"][:, :k], steps=self.val_steps, cfg_scale=self.val_cfg_scale,
                                         seed=seeds)
                losses[f"psnr_k{k}"] = psnr_db(recons[k][keep_rows], x[keep_rows])
            out["recons"] = recons
        return losses, out

    def log_reconstructions(self, batch: dict[str, Any], outputs: dict[str, Any]) -> None:
        self.write_images_by_k(batch, outputs["recons"], "val/reconstructions_by_k")


FlowTokenizer = FlowImageModule  # the old name: older configs' class_path and checkpoints still load
