"""``OneDImageModule``: 1D variable-length image tokenizers (TiTok, One-D-Piece, FlexTok) as config switches.

    image [B, 3, H, W] in [-1, 1]
      -> ViT over patches + K learnable registers (optionally causal among themselves)
      -> the K registers only -> quantizer (FSQ or VQ) -> ids [B, K]
      -> ordering regularizer in training (nested dropout / tail token drop / none)
      -> token decoder (ViT with learned patch queries; the slot takes any TokenDecoder) -> image

One model, three recipes: ``ordering: none`` is TiTok (fixed K), ``tail_drop`` One-D-Piece, and
``nested_dropout`` FlexTok (with causal registers). Encode once, decode from any prefix of 1..K tokens.

``first_stage`` puts a conv autoencoder in front (FlexTok's design: the registers summarise a 2D latent grid,
not pixels). Its first ``first_stage.train_steps`` steps train only that autoencoder; then it is frozen and
the tokenizer learns to reproduce its latent (latent MSE + pixel loss through the frozen decoder).
"""


from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..adversarial import AdversarialConfig, AdversarialModule, GeneratorStep, legacy_adversarial
from ..config import as_config, plain
from ..eval.image_metrics import psnr_db
from ..harness import OptimizerConfig, lr_factor
from ..nn import TransformerConfig
from ..quantize import Quantizer, QuantizerConfig
from .codec1d import (
    OneDImageCodec,
    OrderingConfig,
    RegisterEncoder,
    TokenDecoder,
    ViTTokenDecoder,
    eval_token_counts,
    pyramid_cells_of_tokens,
)
from .first_stage import FirstStageConfig, LatentAutoencoder

__all__ = ["OneDImageModule", "OneDTokenizer", "OneDImageCodec", "ImageLossConfig", "OrderingConfig",
           "RegisterEncoder", "TokenDecoder", "ViTTokenDecoder", "eval_token_counts", "pyramid_cells_of_tokens"]


@dataclass
class ImageLossConfig:
    """Weights of every loss term (all in YAML); the discriminator's are under ``adversarial``.

    Args:
        pixel: ``l1`` or ``l2`` reconstruction loss, weighted by ``pixel_weight``.
        perceptual_weight / perceptual_path: LPIPS-style loss from a local weights file (off without a path).
        adaptive_gan_weight: scale the adversarial term by ||grad rec|| / ||grad adv|| at the decoder's last layer.
        aux_weight: weight of the quantizer's own loss (VQ commitment; 0 for FSQ).
        gan_weight / gan_start_step / disc_channels / disc_layers / disc_lr: the old names of ``adversarial.weight``
            / ``start_step`` / ``discriminator.channels`` / ``discriminator.num_layers`` / ``lr``, still read
            (older configs and checkpoints); with any of them set the rest take their old defaults (0.0, 0, 64,
            3, 1e-4, the ``vqgan`` objective, a constant rate, no clipping).
    """

    pixel: str = "l2"
    pixel_weight: float = 1.0
    perceptual_weight: float = 0.0
    perceptual_path: str | None = None
    adaptive_gan_weight: bool = True
    aux_weight: float = 1.0
    gan_weight: float | None = None
    gan_start_step: int | None = None
    disc_channels: int | None = None
    disc_layers: int | None = None
    disc_lr: float | None = None


# old ImageLossConfig key -> its AdversarialConfig field, and the values those configs implied
LEGACY_RENAMES = {"gan_weight": "weight", "gan_start_step": "start_step", "disc_channels": "discriminator.channels",
                  "disc_layers": "discriminator.num_layers", "disc_lr": "lr"}
LEGACY_DEFAULTS = {"weight": 0.0, "start_step": 0, "kind": "vqgan", "lr": 1e-4, "schedule": "constant",
                   "grad_clip": None, "discriminator": {"channels": 64, "num_layers": 3}}
DISCRIMINATOR_OPTIONS = ("channels", "num_layers", "norm")



class OneDImageModule(AdversarialModule):
    """1D tokenizer with nested dropout / tail drop / fixed length (trains :class:`OneDImageCodec`).

    Args:
        image_size: side of the square input images.
        patch_size: ViT patch size.
        num_tokens: K, tokens per image.
        encoder / decoder: transformer sizes.
        patch_embed / patch_head: ``linear`` (plain ViT) or ``conv`` (small conv stem / upsampling head).
        stem_channels: channels of the conv stem and head.
        causal_registers: register i attends only to registers <= i (FlexTok).
        register_init: ``learned`` (plain registers) or ``pyramid`` (registers also receive pooled patch
            features, coarse to fine: much faster convergence on small budgets).
        query_init: ``learned`` (TiTok patch queries), ``token_mix`` (queries start from a learned linear
            mix of the visible tokens) or ``pyramid`` (that mix initialized as the adjoint of the pyramid
            pooling: each patch query starts as the mean of the tokens whose cell covers it).
        quantizer: FSQ or VQ settings.
        ordering: which ordering regularizer.
        loss: loss weights.
        adversarial: the patch discriminator and its training (``AdversarialConfig``; off by default).
        optimizer: AdamW + schedule; ``grad_clip`` clips the generator's gradient norm.
        ema_decay: keep an EMA of encoder, quantizer and decoder (used for validation) when set.
        first_stage: a 2D conv autoencoder in front of the tokenizer and its training (``FirstStageConfig``);
            None: the tokenizer reads pixels.
    """

    def __init__(self, image_size: int = 64, patch_size: int = 8, num_tokens: int = 32,
                 encoder: TransformerConfig | None = None, decoder: TransformerConfig | None = None,
                 patch_embed: str = "linear", patch_head: str = "linear", stem_channels: int = 64,
                 causal_registers: bool = False, register_init: str = "learned", query_init: str = "learned",
                 quantizer: QuantizerConfig | None = None,
                 ordering: OrderingConfig | None = None, loss: ImageLossConfig | None = None,
                 optimizer: OptimizerConfig | None = None, ema_decay: float | None = None,
                 first_stage: FirstStageConfig | None = None, adversarial: AdversarialConfig | None = None) -> None:
        fs = as_config(FirstStageConfig, first_stage) if first_stage is not None else None
        codec = OneDImageCodec(image_size, patch_size, num_tokens, encoder, decoder, patch_embed, patch_head,
                               stem_channels, causal_registers, register_init, query_init, quantizer, ordering,
                               fs.arch() if fs is not None else None)
        lcfg = as_config(ImageLossConfig, loss)
        acfg = legacy_adversarial(adversarial, {k: getattr(lcfg, k) for k in LEGACY_RENAMES}, LEGACY_RENAMES,
                                  LEGACY_DEFAULTS)
        for k in LEGACY_RENAMES:
            setattr(lcfg, k, None)
        super().__init__(optimizer=optimizer, input_key="image", codebook_size=codec.codebook_size)
        loss_hp = {k: v for k, v in plain(lcfg).items() if k not in LEGACY_RENAMES}
        self.save_hyperparameters(plain({**codec.arch, "first_stage": fs, "loss": loss_hp, "adversarial": acfg,
                                         "optimizer": self.optim_config, "ema_decay": ema_decay}))
        self.first_stage_cfg = fs
        if fs is not None and fs.init_from:
            load_first_stage(codec.first_stage, fs.init_from)
        self.image_size, self.num_tokens, self.loss_cfg = image_size, num_tokens, lcfg
        if lcfg.pixel not in ("l1", "l2"):
            raise ValueError(f"loss.pixel must be 'l1' or 'l2', got {lcfg.pixel!r}")
        self.codec = codec
        # the frozen perceptual network is kept out of the module tree: its weights come from a local file
        # and must not be copied into every checkpoint and export
        self._perceptual: list[nn.Module] = []
        if lcfg.perceptual_weight > 0 and lcfg.perceptual_path:
            from .losses import PerceptualLoss

            self._perceptual.append(PerceptualLoss(lcfg.perceptual_path))
        self.setup_adversarial(acfg)
        self.setup_ema(ema_decay)
        self.val_ks = eval_token_counts(num_tokens)

    # the codec's parts under their short names (tests, losses and benchmarks reach them this way)
    @property
    def encoder(self) -> RegisterEncoder:
        return self.codec.encoder

    @property
    def quantizer(self) -> Quantizer:
        return self.codec.quantizer

    @property
    def ordering(self) -> nn.Module:
        return self.codec.ordering

    @property
    def decoder(self) -> ViTTokenDecoder:
        return self.codec.decoder

    @property
    def generator(self) -> OneDImageCodec:
        """The parts that make tokens and images (encoder, quantizer, ordering, decoder)."""
        return self.codec

    # ---- public face: encode / decode / inference_codec come from TokenizerModule ----------------
    def forward(self, x: torch.Tensor, k: int | torch.Tensor | None = None, use_ema: bool = False
                ) -> dict[str, Any]:
        """Training / validation pass: reconstruction (unclipped), ids, keep mask, quantizer aux loss."""
        return self.inference_codec(use_ema)(x, k)

    # ---- losses -----------------------------------------------------------------------------------
    def _pixel(self, recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        d = recon - x
        return d.abs().mean() if self.loss_cfg.pixel == "l1" else d.pow(2).mean()

    def training_first_stage(self) -> bool:
        """True while the optimizer steps train the first stage alone (``first_stage.train_steps``)."""
        fs = self.first_stage_cfg
        return fs is not None and self.global_step < fs.train_steps

    def generator_losses(self, x: torch.Tensor, out: dict[str, Any], with_gan: bool) -> dict[str, torch.Tensor]:
        c = self.loss_cfg
        losses = {"pixel": self._pixel(out["recon"], x), "aux": out["aux_loss"]}
        rec = c.pixel_weight * losses["pixel"]
        if "latent" in out:
            losses["latent"] = (out["latent_recon"] - out["latent"]).pow(2).mean()
            rec = rec + self.first_stage_cfg.latent_weight * losses["latent"]
        if self._perceptual:
            net = self._perceptual[0].to(x.device)
            losses["perceptual"] = net(out["recon"], x).mean()
            rec = rec + c.perceptual_weight * losses["perceptual"]
        total = rec + c.aux_weight * losses["aux"]
        if with_gan:
            from .losses import adaptive_gan_weight

            losses["adv"] = self.adversarial_generator_loss(out["recon"])
            w = self.adversarial_cfg.weight
            if c.adaptive_gan_weight:
                w = w * adaptive_gan_weight(rec, losses["adv"], self.decoder.last_layer_weight)
                losses["adv_weight"] = torch.as_tensor(w).detach()
            total = total + w * losses["adv"]
        losses["loss"] = total
        return losses

    # ---- adversarial training: what the image modality supplies -----------------------------------------
    def build_discriminator(self, options: dict[str, Any]) -> nn.Module:
        from .losses import PatchDiscriminator

        unknown = sorted(set(options) - set(DISCRIMINATOR_OPTIONS))
        if unknown:
            raise ValueError(f"adversarial.discriminator: unknown option(s) {unknown} of the image patch "
                             f"discriminator; valid: {list(DISCRIMINATOR_OPTIONS)}")
        return PatchDiscriminator(3, **options)

    def discriminator_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.discriminator(x)]

    def adversarial_active(self) -> bool:
        return not self.training_first_stage() and super().adversarial_active()

    def lr_lambda(self):
        c, total = self.optim_config, self.schedule_total_steps()
        first = self.first_stage_cfg.train_steps if self.first_stage_cfg is not None else 0

        def factor(s: int) -> float:
            # one warmup + decay for the first stage's steps, then a fresh one for the tokenizer's
            if s < first:
                return lr_factor(s, c.warmup_steps, first, c.schedule, c.min_lr_ratio)
            return lr_factor(s - first, c.warmup_steps, max(0, total - first), c.schedule, c.min_lr_ratio)

        return factor

    def generator_step(self, batch: dict[str, Any], with_gan: bool) -> GeneratorStep:
        x = batch["image"]
        first_stage = self.codec.first_stage
        if first_stage is not None:
            first_stage.requires_grad_(self.training_first_stage())
        if self.training_first_stage():
            recon = first_stage(x, self.first_stage_cfg.noise)
            losses = {"first_stage_pixel": self._pixel(recon, x)}
            losses["loss"] = losses["first_stage_pixel"]
            return GeneratorStep(losses, losses["loss"], x, None)
        out = self(x)
        losses = self.generator_losses(x, out, with_gan)
        return GeneratorStep(losses, losses["loss"], x, out["recon"])

    # ---- validation -------------------------------------------------------------------------------
    def compute_losses(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Validation: losses at k = K with EMA weights when present, plus PSNR at every k in ``val_ks``."""
        x = batch["image"]
        keep_rows = ~batch["pad"] if "pad" in batch else torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        use_ema = self.ema is not None
        out = self(x, k=self.num_tokens, use_ema=use_ema)
        losses = self.generator_losses(x, out, with_gan=False)
        first_stage = self.inference_codec(use_ema).first_stage
        if first_stage is not None:
            losses["first_stage_psnr"] = psnr_db(first_stage(x).clamp(-1, 1)[keep_rows], x[keep_rows])
        recons = {}
        for k in self.val_ks:
            r = out["recon"] if k == self.num_tokens else self(x, k=k, use_ema=use_ema)["recon"]
            recons[k] = r.clamp(-1, 1)
            losses[f"psnr_k{k}"] = psnr_db(recons[k][keep_rows], x[keep_rows])
        out["recons"] = recons
        return losses, out

    def log_reconstructions(self, batch: dict[str, Any], outputs: dict[str, Any]) -> None:
        self.write_images_by_k(batch, outputs["recons"], "val/reconstructions_by_k")


OneDTokenizer = OneDImageModule  # the old name: older configs' class_path and checkpoints still load


def load_first_stage(first_stage: LatentAutoencoder, path: str) -> None:
    """Copy the first stage of a latent 1D tokenizer's checkpoint (``.ckpt``) into ``first_stage``.

    Raises ``ValueError`` naming the file when it holds no first stage or one of another shape.
    """
    import os

    if not os.path.isfile(path):
        raise ValueError(f"first_stage.init_from: {path!r} is not a file (expected a .ckpt of a latent 1D tokenizer)")
    state = torch.load(path, map_location="cpu", weights_only=True).get("state_dict", {})
    prefix = "codec.first_stage."
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        raise ValueError(f"first_stage.init_from: {path} holds no first stage (no '{prefix}*' weights)")
    try:
        first_stage.load_state_dict(sub)
    except RuntimeError as exc:
        raise ValueError(f"first_stage.init_from: {path} does not fit this first stage's settings: {exc}") from None
