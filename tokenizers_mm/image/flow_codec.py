"""``FlowImageCodec``: a 1D image tokenizer whose decoder is a rectified flow (FlexTok), no training code.

    image [B, 3, S, S] in [-1, 1]
      -> RegisterEncoder (ViT + K registers, causal among themselves) -> Quantizer -> ids [B, K]
      -> keep a prefix of k tokens (nested dropout in training; the tail becomes the mask token)
      -> FlowDenoiser: from noise, Euler steps to pixel patches (or to the latents of a diffusers
         AutoencoderKL, then its decoder) conditioned on the tokens -> image [B, 3, S, S]

Decoding takes the number of Euler steps, the guidance scale and per-sample seeds, so a sample is
reproducible whatever batch it is decoded in.
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import as_config, plain
from ..flow import (
    DenoiserConfig,
    FlowConfig,
    FlowDenoiser,
    guide,
    interpolate,
    sample_flow,
    sample_sigmas,
    seeded_noise,
    velocity_target,
)
from ..nn import TransformerConfig
from ..quantize import Quantizer, QuantizerConfig
from .codec1d import OrderingConfig, PrefixCodec, RegisterEncoder, pyramid_cells_of_tokens
from .ordering import build_ordering
from .vit import sincos_2d


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, (H/p) * (W/p), C * p * p]`` (row-major patches)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(x: torch.Tensor, p: int, c: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``[B, N, C * p * p]`` -> ``[B, C, H, W]``."""
    b = x.shape[0]
    x = x.reshape(b, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


class FlowImageCodec(PrefixCodec):
    """Encoder, quantizer, nested dropout and rectified-flow decoder (see the module docstring).

    Args:
        image_size / patch_size / num_tokens / encoder / patch_embed / stem_channels / causal_registers /
            register_init / quantizer / ordering: the token side, as in ``OneDImageCodec``.
        denoiser: size of the flow transformer.
        decoder_patch_size: patch size of the denoiser's targets (pixels, or latents with a VAE).
        flow: rectified-flow settings (training density, shift, token dropout, default steps and guidance).
        vae: ``{"config": AutoencoderKL config dict, "scaling_factor", "shift_factor"}`` to denoise in the latent
            space of a diffusers ``AutoencoderKL`` (its weights are part of this module's state and frozen);
            ``None`` denoises pixels.
        token_mix: ``none`` (tokens reach the targets through attention only) or ``pyramid`` (each target also
            starts from the mean of the tokens whose coarse-to-fine pyramid cell covers it, a learned mix: the
            tokens steer the decoder from the first step, which shortens training a lot on small budgets).
    """

    architecture = "image/flow"
    modality = "image"

    def __init__(self, image_size: int = 64, patch_size: int = 8, num_tokens: int = 32,
                 encoder: TransformerConfig | dict | None = None, denoiser: DenoiserConfig | dict | None = None,
                 decoder_patch_size: int = 4, patch_embed: str = "linear", stem_channels: int = 64,
                 causal_registers: bool = True, register_init: str = "learned",
                 quantizer: QuantizerConfig | dict | None = None, ordering: OrderingConfig | dict | None = None,
                 flow: FlowConfig | dict | None = None, vae: dict[str, Any] | None = None,
                 token_mix: str = "none") -> None:
        super().__init__()
        enc = as_config(TransformerConfig, encoder)
        dcfg = as_config(DenoiserConfig, denoiser)
        qcfg = as_config(QuantizerConfig, quantizer)
        ocfg = as_config(OrderingConfig, ordering or {"kind": "nested_dropout"})
        self.flow = as_config(FlowConfig, flow)
        self.arch = plain({
            "image_size": image_size, "patch_size": patch_size, "num_tokens": num_tokens, "encoder": enc,
            "denoiser": dcfg, "decoder_patch_size": decoder_patch_size, "patch_embed": patch_embed,
            "stem_channels": stem_channels, "causal_registers": causal_registers, "register_init": register_init,
            "quantizer": qcfg, "ordering": ocfg, "flow": self.flow, "vae": vae, "token_mix": token_mix})
        self.image_size, self.num_tokens = image_size, num_tokens
        self.encoder = RegisterEncoder(image_size, patch_size, num_tokens, enc, patch_embed, stem_channels,
                                       causal_registers, register_init)
        self.quantizer = Quantizer(enc.width, qcfg)
        self.ordering = build_ordering(ocfg.kind, enc.width, ocfg.nested_mode, ocfg.per_sample)
        self.vae = None
        self.latent_scale, self.latent_shift = 1.0, 0.0
        channels, side = 3, image_size
        if vae is not None:
            from diffusers import AutoencoderKL

            self.vae = AutoencoderKL.from_config(vae["config"]).eval().requires_grad_(False)
            down = 2 ** (len(self.vae.config.block_out_channels) - 1)
            channels, side = int(self.vae.config.latent_channels), image_size // down
            self.latent_scale = float(vae.get("scaling_factor") or self.vae.config.scaling_factor or 1.0)
            self.latent_shift = float(vae.get("shift_factor") or getattr(self.vae.config, "shift_factor", 0) or 0.0)
        if side % decoder_patch_size:
            raise ValueError(f"target side {side} is not a multiple of decoder_patch_size {decoder_patch_size}")
        self.target_channels, self.target_side, self.decoder_patch_size = channels, side, decoder_patch_size
        g = side // decoder_patch_size
        if token_mix not in ("none", "pyramid"):
            raise ValueError(f"token_mix must be 'none' or 'pyramid', got {token_mix!r}")
        mix = None
        if token_mix == "pyramid":
            cover = pyramid_cells_of_tokens(g, num_tokens).float()
            mix = cover / cover.sum(1, keepdim=True).clamp_min(1)
        self.denoiser = FlowDenoiser(channels * decoder_patch_size ** 2, g * g, enc.width, num_tokens, dcfg,
                                     target_pos=sincos_2d(g, g, dcfg.width), prediction=self.flow.prediction,
                                     token_mix=mix)

    def token_spec(self) -> dict[str, Any]:
        return {**super().token_spec(), "decoder": "rectified_flow", "default_steps": self.flow.default_steps,
                "default_cfg_scale": self.flow.default_cfg_scale}

    def set_sampling_defaults(self, steps: int | None = None, cfg_scale: float | None = None) -> None:
        """Change the default number of Euler steps / guidance scale (recorded in exports)."""
        if steps is not None:
            self.flow.default_steps = int(steps)
        if cfg_scale is not None:
            self.flow.default_cfg_scale = float(cfg_scale)
        self.arch["flow"] = plain(self.flow)

    # ---- target space -------------------------------------------------------------------------------
    @torch.no_grad()
    def to_target(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, S, S]`` -> denoiser targets ``[B, N, C p^2]`` (pixel patches or scaled VAE latents)."""
        if self.vae is not None:
            z = self.vae.encode(x.to(self.vae.dtype)).latent_dist.mode()
            x = ((z - self.latent_shift) * self.latent_scale).to(x.dtype)
        return patchify(x, self.decoder_patch_size)

    def from_target(self, t: torch.Tensor) -> torch.Tensor:
        """Denoiser targets -> images ``[B, 3, S, S]`` (unclipped)."""
        s, c = self.target_side, self.target_channels
        x = unpatchify(t, self.decoder_patch_size, c, s, s)
        if self.vae is not None:
            z = x / self.latent_scale + self.latent_shift
            x = self.vae.decode(z.to(self.vae.dtype)).sample.to(t.dtype)
        return x

    # ---- tokens -------------------------------------------------------------------------------------
    def condition(self, codes: torch.Tensor, k: int | torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Token codes ``[B, K, D]`` -> (conditioning tokens, keep mask seen by the denoiser ``[B, K]``)."""
        return self.visible(*self.ordering(codes, k))

    def visible(self, tokens: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the denoiser may attend to: the kept prefix (tail drop) or every position (nested dropout, whose
        tail holds the mask token)."""
        return tokens, keep if self.ordering.hides_tail else torch.ones_like(keep)

    def velocity(self, x_t: torch.Tensor, sigma: torch.Tensor, tokens: torch.Tensor, seen: torch.Tensor,
                 cfg_scale: float) -> torch.Tensor:
        """Guided velocity: one pass when ``cfg_scale == 1``, else conditional and unconditional in one batch."""
        if cfg_scale == 1.0:
            return self.denoiser(x_t, sigma, tokens, seen)
        v = self.denoiser(torch.cat([x_t, x_t]), torch.cat([sigma, sigma]), torch.cat([tokens, tokens]),
                          torch.cat([seen, torch.zeros_like(seen)]))
        v_c, v_u = v.chunk(2)
        return guide(v_c, v_u, cfg_scale)

    @torch.no_grad()
    def decode(self, ids: torch.Tensor, steps: int | None = None, cfg_scale: float | None = None,
               seed: int | list[int] = 0, noise: torch.Tensor | None = None) -> torch.Tensor:
        """ids ``[B, k]`` (any prefix) -> images ``[B, 3, S, S]`` clipped to ``[-1, 1]``.

        Args:
            steps: Euler steps (default ``flow.default_steps``).
            cfg_scale: classifier-free guidance scale (default ``flow.default_cfg_scale``; 1 = none).
            seed: an int (sample ``i`` uses ``seed + i``) or one seed per sample.
            noise: the starting noise ``[B, N, C p^2]`` instead of seeds.
        """
        steps = self.flow.default_steps if steps is None else int(steps)
        scale = self.flow.default_cfg_scale if cfg_scale is None else float(cfg_scale)
        tokens, seen = self.visible(*self.prefix_codes(ids))
        b = ids.shape[0]
        shape = (b, self.denoiser.num_targets, self.denoiser.x_in.in_features)
        if noise is None:
            seeds = list(seed) if isinstance(seed, (list, tuple)) else [int(seed) + i for i in range(b)]
            noise = seeded_noise(shape, seeds, ids.device, tokens.dtype)
        x0 = sample_flow(lambda x, s: self.velocity(x, s, tokens, seen, scale), shape, steps, self.flow.shift,
                         ids.device, tokens.dtype, noise=noise)
        return self.from_target(x0).clamp(-1, 1)

    def forward(self, x: torch.Tensor, k: int | torch.Tensor | None = None, return_hidden: int | None = None,
                token_dropout: float | None = None) -> dict[str, Any]:
        """Training pass: flow-matching loss at random sigmas, ids, keep mask, quantizer aux loss (and the
        denoiser's hidden states after block ``return_hidden``)."""
        self.check_images(x)
        q = self.quantizer(self.encoder(x))
        tokens, seen = self.condition(q.quantized, k)
        p = self.flow.token_dropout if token_dropout is None else token_dropout
        if self.training and p > 0:  # the unconditional model of classifier-free guidance
            drop = torch.rand(x.shape[0], device=x.device) < p
            seen = seen & ~drop[:, None]
        x0 = self.to_target(x)
        noise = torch.randn_like(x0)
        sigma = sample_sigmas(x.shape[0], self.flow, x.device)
        out = self.denoiser(interpolate(x0, noise, sigma), sigma, tokens, seen, return_hidden=return_hidden)
        v, hidden = out if return_hidden is not None else (out, None)
        flow = (v - velocity_target(x0, noise)).pow(2).mean()
        return {"flow": flow, "ids": q.ids, "aux_loss": q.aux_loss, "hidden": hidden}

