"""``OneDTokenizer``: 1D variable-length image tokenizers (TiTok, One-D-Piece, FlexTok) as config switches.

    image [B, 3, H, W] in [-1, 1]
      -> ViT over patches + K learnable registers (optionally causal among themselves)
      -> the K registers only -> quantizer (FSQ or VQ) -> ids [B, K]
      -> ordering regularizer in training (nested dropout / tail token drop / none)
      -> token decoder (ViT with learned patch queries; the slot takes any TokenDecoder) -> image

One model, three recipes: ``ordering: none`` is TiTok (fixed K), ``tail_drop`` One-D-Piece, and
``nested_dropout`` FlexTok (with causal registers). Encode once, decode from any prefix of 1..K tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..config import as_config, plain
from ..harness import OptimizerConfig, TokenBatch, TokenizerModule, lr_factor, param_groups
from ..quantize import Quantizer, QuantizerConfig
from .ordering import build_ordering
from .vit import PatchEmbed, PatchUnembed, Transformer, ViTConfig, sincos_2d


@dataclass
class OrderingConfig:
    """``kind``: ``none`` (TiTok), ``tail_drop`` (One-D-Piece) or ``nested_dropout`` (FlexTok).

    ``nested_mode``: ``uniform``, ``pow2`` or ``uniform_pow2`` (nested dropout only);
    ``per_sample``: tail drop draws k per sample (True) or per batch (False).
    """

    kind: str = "nested_dropout"
    nested_mode: str = "uniform_pow2"
    per_sample: bool = True


@dataclass
class ImageLossConfig:
    """Weights of every loss term (all in YAML).

    Args:
        pixel: ``l1`` or ``l2`` reconstruction loss, weighted by ``pixel_weight``.
        perceptual_weight / perceptual_path: LPIPS-style loss from a local weights file (off without a path).
        gan_weight: hinge adversarial loss weight (0 disables the discriminator entirely).
        gan_start_step: generator step at which the discriminator and adversarial loss start.
        adaptive_gan_weight: scale the adversarial term by ||grad rec|| / ||grad gan|| at the last layer.
        disc_channels / disc_layers / disc_lr: the patch discriminator and its AdamW learning rate.
        aux_weight: weight of the quantizer's own loss (VQ commitment; 0 for FSQ).
    """

    pixel: str = "l2"
    pixel_weight: float = 1.0
    perceptual_weight: float = 0.0
    perceptual_path: str | None = None
    gan_weight: float = 0.0
    gan_start_step: int = 0
    adaptive_gan_weight: bool = True
    disc_channels: int = 64
    disc_layers: int = 3
    disc_lr: float = 1e-4
    aux_weight: float = 1.0


class TokenDecoder(Protocol):
    """What the decoder slot takes: codes ``[B, K, D]`` + keep mask ``[B, K]`` -> image ``[B, 3, H, W]``."""

    def __call__(self, codes: torch.Tensor, keep: torch.Tensor, hide_tail: bool) -> torch.Tensor: ...


class RegisterEncoder(nn.Module):
    """ViT over patches with K learnable registers; only the registers leave the encoder.

    Patches attend to patches; registers attend to all patches and to registers (all of them, or only
    earlier ones with ``causal_registers``, so token i never sees tokens after it).

    ``register_init='pyramid'`` adds to register i a projection of one cell of an average-pooled pyramid
    of the patch grid (1x1, 2x2, 4x4, ... in coarse-to-fine order), so registers carry image content
    from the first step; ``'learned'`` uses learned registers only (TiTok / FlexTok).
    """

    def __init__(self, image_size: int, patch_size: int, num_tokens: int, cfg: ViTConfig,
                 patch_embed: str = "linear", stem_channels: int = 64, causal_registers: bool = False,
                 register_init: str = "learned") -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        if register_init not in ("learned", "pyramid"):
            raise ValueError(f"register_init must be 'learned' or 'pyramid', got {register_init!r}")
        g = image_size // patch_size
        self.grid = g
        self.num_tokens = num_tokens
        self.pyramid = nn.Linear(cfg.width, cfg.width) if register_init == "pyramid" else None
        self.num_patches = g * g
        self.embed = PatchEmbed(patch_size, cfg.width, patch_embed, stem_channels)
        self.register_buffer("pos", sincos_2d(g, g, cfg.width), persistent=False)
        self.registers = nn.Parameter(torch.randn(num_tokens, cfg.width) * 0.02)
        self.transformer = Transformer(cfg)
        n, k = self.num_patches, num_tokens
        mask = torch.zeros(n + k, n + k, dtype=torch.bool)
        mask[:n, :n] = True
        mask[n:, :n] = True
        mask[n:, n:] = torch.tril(torch.ones(k, k, dtype=torch.bool)) if causal_registers else True
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> registers ``[B, K, width]``."""
        feats = self.embed(x)
        patches = feats + self.pos.to(x.dtype)
        regs = self.registers.to(patches.dtype).expand(x.shape[0], -1, -1)
        if self.pyramid is not None:
            regs = regs + self.pyramid(self._pyramid_cells(feats))
        out = self.transformer(torch.cat([patches, regs], dim=1), self.mask)
        return out[:, self.num_patches:]


    def _pyramid_cells(self, feats: torch.Tensor) -> torch.Tensor:
        """``[B, N, W]`` patch features -> ``[B, K, W]``: pooled cells, coarse to fine, cycled to K."""
        b, n, w = feats.shape
        grid = feats.transpose(1, 2).reshape(b, w, self.grid, self.grid)
        cells, size = [], 1
        while size <= self.grid:
            cells.append(F.adaptive_avg_pool2d(grid, size).flatten(2).transpose(1, 2))
            size *= 2
        cells = torch.cat(cells, dim=1)
        reps = -(-self.num_tokens // cells.shape[1])
        return cells.repeat(1, reps, 1)[:, : self.num_tokens]


class ViTTokenDecoder(nn.Module):
    """TiTok-style decoder: token prefix + learned image-patch queries -> transformer -> pixels."""

    def __init__(self, image_size: int, patch_size: int, num_tokens: int, code_dim: int, cfg: ViTConfig,
                 patch_head: str = "linear", head_channels: int = 64, query_init: str = "learned") -> None:
        super().__init__()
        if query_init not in ("learned", "token_mix", "pyramid"):
            raise ValueError(f"query_init must be 'learned', 'token_mix' or 'pyramid', got {query_init!r}")
        g = image_size // patch_size
        self.num_tokens, self.num_patches = num_tokens, g * g
        self.token_in = nn.Linear(code_dim, cfg.width)
        self.token_pos = nn.Parameter(torch.randn(num_tokens, cfg.width) * 0.02)
        self.queries = nn.Parameter(torch.randn(self.num_patches, cfg.width) * 0.02)
        self.register_buffer("pos", sincos_2d(g, g, cfg.width), persistent=False)
        self.transformer = Transformer(cfg)
        self.head = PatchUnembed(patch_size, cfg.width, (g, g), patch_head, head_channels)
        # token_mix: every patch query starts as a learned linear mix of the (kept) tokens, initialized at
        # random, or ('pyramid') as the average of the tokens whose pyramid cell covers the patch: the
        # adjoint of the encoder's pyramid pooling, so training starts from a multi-scale autoencoder
        self.mix = None
        if query_init == "token_mix":
            self.mix = nn.Parameter(torch.randn(self.num_patches, num_tokens) / math.sqrt(num_tokens))
        elif query_init == "pyramid":
            cover = pyramid_cells_of_tokens(g, num_tokens).float()
            self.mix = nn.Parameter(cover / cover.sum(1, keepdim=True).clamp_min(1))

    @property
    def last_layer_weight(self) -> torch.Tensor:
        return self.head.last_layer_weight

    def forward(self, codes: torch.Tensor, keep: torch.Tensor, hide_tail: bool) -> torch.Tensor:
        b = codes.shape[0]
        tokens = self.token_in(codes) + self.token_pos.to(codes.dtype)
        queries = (self.queries + self.pos).to(tokens.dtype).expand(b, -1, -1)
        if self.mix is not None:
            visible = tokens * keep[..., None].to(tokens.dtype) if hide_tail else tokens
            queries = queries + torch.einsum("nk,bkd->bnd", self.mix.to(tokens.dtype), visible)
        mask = None
        if hide_tail:
            key_ok = torch.cat([keep, keep.new_ones(b, self.num_patches)], dim=1)  # [B, K + N]
            mask = key_ok[:, None, None, :]
        out = self.transformer(torch.cat([tokens, queries], dim=1), mask)
        return self.head(out[:, self.num_tokens:])


def pyramid_cells_of_tokens(grid: int, num_tokens: int) -> torch.Tensor:
    """bool ``[grid * grid, K]``: patch n lies in the pyramid cell of token t.

    Cells run coarse to fine (1x1, 2x2, 4x4, ... up to grid x grid, each row-major) and repeat when K is
    larger than their count, matching ``RegisterEncoder(register_init='pyramid')``.
    """
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    columns, size = [], 1
    while size <= grid:
        cell = (ys * size // grid) * size + (xs * size // grid)  # the cell index of each patch at this level
        columns += [cell == c for c in range(size * size)]
        size *= 2
    cols = torch.stack(columns, dim=1)
    reps = -(-num_tokens // cols.shape[1])
    return cols.repeat(1, reps)[:, :num_tokens]


def eval_token_counts(num_tokens: int) -> list[int]:
    """1, 2, 4, ... up to K, always ending with K."""
    ks = [2 ** j for j in range(int(math.log2(num_tokens)) + 1)]
    return ks if ks[-1] == num_tokens else [*ks, num_tokens]


class OneDTokenizer(TokenizerModule):
    """1D tokenizer with nested dropout / tail drop / fixed length, trained with manual optimization.

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
        optimizer: AdamW + schedule; ``grad_clip`` clips the generator's gradient norm.
        ema_decay: keep an EMA of encoder, quantizer and decoder (used for validation) when set.
    """

    def __init__(self, image_size: int = 64, patch_size: int = 8, num_tokens: int = 32,
                 encoder: ViTConfig | None = None, decoder: ViTConfig | None = None,
                 patch_embed: str = "linear", patch_head: str = "linear", stem_channels: int = 64,
                 causal_registers: bool = False, register_init: str = "learned", query_init: str = "learned",
                 quantizer: QuantizerConfig | None = None,
                 ordering: OrderingConfig | None = None, loss: ImageLossConfig | None = None,
                 optimizer: OptimizerConfig | None = None, ema_decay: float | None = None) -> None:
        enc = as_config(ViTConfig, encoder)
        dec = as_config(ViTConfig, decoder)
        qcfg = as_config(QuantizerConfig, quantizer)
        ocfg = as_config(OrderingConfig, ordering)
        lcfg = as_config(ImageLossConfig, loss)
        q = Quantizer(enc.width, qcfg)
        super().__init__(optimizer=optimizer, input_key="image", codebook_size=q.codebook_size)
        self.save_hyperparameters(plain({
            "image_size": image_size, "patch_size": patch_size, "num_tokens": num_tokens, "encoder": enc,
            "decoder": dec, "patch_embed": patch_embed, "patch_head": patch_head, "stem_channels": stem_channels,
            "causal_registers": causal_registers, "register_init": register_init, "query_init": query_init,
            "quantizer": qcfg, "ordering": ocfg, "loss": lcfg,
            "optimizer": self.optim_config, "ema_decay": ema_decay}))
        self.automatic_optimization = False
        self.image_size, self.num_tokens, self.loss_cfg = image_size, num_tokens, lcfg
        if lcfg.pixel not in ("l1", "l2"):
            raise ValueError(f"loss.pixel must be 'l1' or 'l2', got {lcfg.pixel!r}")
        self.encoder = RegisterEncoder(image_size, patch_size, num_tokens, enc, patch_embed, stem_channels,
                                       causal_registers, register_init)
        self.quantizer = q
        self.ordering = build_ordering(ocfg.kind, enc.width, ocfg.nested_mode, ocfg.per_sample)
        self.decoder = ViTTokenDecoder(image_size, patch_size, num_tokens, enc.width, dec, patch_head,
                                       stem_channels, query_init)
        # the frozen perceptual network is kept out of the module tree: its weights come from a local file
        # and must not be copied into every checkpoint and export
        self._perceptual: list[nn.Module] = []
        if lcfg.perceptual_weight > 0 and lcfg.perceptual_path:
            from .losses import PerceptualLoss

            self._perceptual.append(PerceptualLoss(lcfg.perceptual_path))
        self.discriminator = None
        if lcfg.gan_weight > 0:
            from .losses import PatchDiscriminator

            self.discriminator = PatchDiscriminator(3, lcfg.disc_channels, lcfg.disc_layers)
        self.ema = None
        if ema_decay:
            self.ema = AveragedModel(self.generator, multi_avg_fn=get_ema_multi_avg_fn(ema_decay))
            self.ema.requires_grad_(False)
        self.val_ks = eval_token_counts(num_tokens)

    @property
    def generator(self) -> nn.ModuleList:
        """The parts that make tokens and images: encoder, quantizer, ordering, decoder."""
        return nn.ModuleList([self.encoder, self.quantizer, self.ordering, self.decoder])

    def _parts(self, use_ema: bool) -> tuple[nn.Module, Quantizer, nn.Module, nn.Module]:
        if use_ema and self.ema is not None:
            return tuple(self.ema.module)  # type: ignore[return-value]
        return self.encoder, self.quantizer, self.ordering, self.decoder

    def _check_input(self, x: torch.Tensor) -> None:
        s = self.image_size
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-2:] != (s, s):
            raise ValueError(f"expected images [B, 3, {s}, {s}] in [-1, 1], got shape {tuple(x.shape)}")

    # ---- public face ------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor, num_tokens: int | None = None, use_ema: bool = True) -> TokenBatch:
        """``[B, 3, S, S]`` in ``[-1, 1]`` -> ids int64 ``[B, num_tokens or K]`` (the first tokens)."""
        self._check_input(x)
        enc, quant, _, _ = self._parts(use_ema)
        ids = quant(enc(x)).ids
        if num_tokens is not None:
            if not 1 <= num_tokens <= self.num_tokens:
                raise ValueError(f"num_tokens must be in 1..{self.num_tokens}, got {num_tokens}")
            ids = ids[:, :num_tokens]
        return TokenBatch(ids)

    def decode(self, tokens: TokenBatch | torch.Tensor, use_ema: bool = True, **options: Any) -> torch.Tensor:
        """ids ``[B, k]`` (any prefix, 1 <= k <= K) -> images ``[B, 3, S, S]`` clipped to ``[-1, 1]``."""
        ids = tokens.ids if isinstance(tokens, TokenBatch) else tokens
        if ids.ndim != 2 or not 1 <= ids.shape[1] <= self.num_tokens:
            raise ValueError(f"expected token ids [B, k] with 1 <= k <= {self.num_tokens}, got {tuple(ids.shape)}")
        _, quant, order, dec = self._parts(use_ema)
        b, k = ids.shape
        codes = quant.ids_to_codes(ids)
        if k < self.num_tokens:
            codes = torch.cat([codes, codes.new_zeros(b, self.num_tokens - k, codes.shape[-1])], dim=1)
        codes, keep = order(codes, k)
        return dec(codes, keep, order.hides_tail).clamp(-1, 1)

    def forward(self, x: torch.Tensor, k: int | torch.Tensor | None = None, use_ema: bool = False
                ) -> dict[str, Any]:
        """Training / validation pass: reconstruction (unclipped), ids, keep mask, quantizer aux loss."""
        self._check_input(x)
        enc, quant, order, dec = self._parts(use_ema)
        q = quant(enc(x))
        codes, keep = order(q.quantized, k)
        recon = dec(codes, keep, order.hides_tail)
        return {"recon": recon, "ids": q.ids, "keep": keep, "aux_loss": q.aux_loss}

    # ---- losses -----------------------------------------------------------------------------------
    def _pixel(self, recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        d = recon - x
        return d.abs().mean() if self.loss_cfg.pixel == "l1" else d.pow(2).mean()

    def gan_active(self) -> bool:
        return self.discriminator is not None and self.global_step >= self.loss_cfg.gan_start_step

    def generator_losses(self, x: torch.Tensor, out: dict[str, Any], with_gan: bool) -> dict[str, torch.Tensor]:
        c = self.loss_cfg
        losses = {"pixel": self._pixel(out["recon"], x), "aux": out["aux_loss"]}
        rec = c.pixel_weight * losses["pixel"]
        if self._perceptual:
            net = self._perceptual[0].to(x.device)
            losses["perceptual"] = net(out["recon"], x).mean()
            rec = rec + c.perceptual_weight * losses["perceptual"]
        total = rec + c.aux_weight * losses["aux"]
        if with_gan:
            from .losses import adaptive_gan_weight, hinge_g_loss

            losses["gan_g"] = hinge_g_loss(self.discriminator(out["recon"]))
            w = c.gan_weight
            if c.adaptive_gan_weight:
                w = w * adaptive_gan_weight(rec, losses["gan_g"], self.decoder.last_layer_weight)
                losses["gan_weight"] = torch.as_tensor(w).detach()
            total = total + w * losses["gan_g"]
        losses["loss"] = total
        return losses

    # ---- optimization -----------------------------------------------------------------------------
    def configure_optimizers(self):
        c = self.optim_config
        opt_g = torch.optim.AdamW(param_groups(self.generator, c.weight_decay), lr=c.lr, betas=tuple(c.betas))
        total = self.trainer.max_steps if self.trainer and self.trainer.max_steps > 0 else 0
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt_g, lambda s: lr_factor(s, c.warmup_steps, total, c.schedule, c.min_lr_ratio))
        optimizers, schedulers = [opt_g], [{"scheduler": sched, "interval": "step"}]
        if self.discriminator is not None:
            optimizers.append(torch.optim.AdamW(self.discriminator.parameters(), lr=self.loss_cfg.disc_lr,
                                                betas=tuple(c.betas), weight_decay=c.weight_decay))
        return optimizers, schedulers

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        opts = self.optimizers()
        opt_g = opts[0] if isinstance(opts, list) else opts
        sched = self.lr_schedulers()
        x = batch["image"]
        out = self(x)
        with_gan = self.gan_active()
        losses = self.generator_losses(x, out, with_gan)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(losses["loss"])
        if self.optim_config.grad_clip:
            self.clip_gradients(opt_g, gradient_clip_val=self.optim_config.grad_clip, gradient_clip_algorithm="norm")
        opt_g.step()  # the only step Lightning counts: global_step == generator steps
        sched.step()
        if with_gan:
            from .losses import hinge_d_loss

            opt_d = opts[1]
            d_loss = hinge_d_loss(self.discriminator(x), self.discriminator(out["recon"].detach()))
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            opt_d.optimizer.step()  # raw optimizer: not counted in global_step
            losses["gan_d"] = d_loss.detach()
        if self.ema is not None:
            self.ema.update_parameters(self.generator)
        bs = x.shape[0]
        self._count_skipped(batch, "train")
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach(), prog_bar=name == "loss", batch_size=bs)
        self.log("train/lr", sched.get_last_lr()[0], batch_size=bs)
        self._log_throughput(bs)
        return losses["loss"].detach()

    # ---- validation -------------------------------------------------------------------------------
    def compute_losses(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Validation: losses at k = K with EMA weights when present, plus PSNR at every k in ``val_ks``."""
        x = batch["image"]
        keep_rows = ~batch["pad"] if "pad" in batch else torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        use_ema = self.ema is not None
        out = self(x, k=self.num_tokens, use_ema=use_ema)
        losses = self.generator_losses(x, out, with_gan=False)
        recons = {}
        for k in self.val_ks:
            r = out["recon"] if k == self.num_tokens else self(x, k=k, use_ema=use_ema)["recon"]
            recons[k] = r.clamp(-1, 1)
            mse = F.mse_loss(recons[k][keep_rows], x[keep_rows])
            losses[f"psnr_k{k}"] = 10 * torch.log10(4.0 / mse.clamp_min(1e-10))
        out["recons"] = recons
        return losses, out

    def log_reconstructions(self, batch: dict[str, Any], outputs: dict[str, Any]) -> None:
        n = min(8, batch["image"].shape[0])
        rows = [batch["image"][:n].cpu()] + [outputs["recons"][k][:n].cpu() for k in self.val_ks]
        self.write_image_grid(rows, "val/reconstructions_by_k")
