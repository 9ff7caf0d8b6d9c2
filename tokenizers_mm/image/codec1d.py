"""``OneDImageCodec``: the inference network of the 1D image tokenizers, without any training code.

    image [B, 3, S, S] in [-1, 1]
      -> optional first stage (FlexTok's design): conv encoder -> latent grid [B, C, S/f, S/f]
      -> RegisterEncoder: ViT over patches (of pixels or latent cells) + K registers (optionally causal)
      -> the K registers -> Quantizer (FSQ or VQ) -> ids [B, K] (int64)
      -> keep a prefix of k tokens (ordering module; nested dropout / tail drop / fixed in training)
      -> ViTTokenDecoder (learned patch queries attend to the kept tokens) -> image [B, 3, S, S]
         (with a first stage: -> latent grid -> its conv decoder -> image)

The Lightning module :class:`~tokenizers_mm.image.tokenizer1d.OneDImageModule` trains one of these; an export
holds exactly its ``state_dict`` and the keyword arguments of its constructor, so ``pipelines`` rebuilds it
with torch and vector-quantize-pytorch only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..config import as_config, plain
from ..nn import Transformer, TransformerConfig
from ..quantize import Quantizer, QuantizerConfig
from .first_stage import LatentAutoencoder
from .ordering import build_ordering
from .vit import PatchEmbed, PatchUnembed, sincos_2d


@dataclass
class OrderingConfig:
    """``kind``: ``none`` (TiTok), ``tail_drop`` (One-D-Piece) or ``nested_dropout`` (FlexTok).

    ``nested_mode``: ``uniform``, ``pow2`` or ``uniform_pow2`` (nested dropout only);
    ``per_sample``: tail drop draws k per sample (True) or per batch (False).
    """

    kind: str = "nested_dropout"
    nested_mode: str = "uniform_pow2"
    per_sample: bool = True


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

    def __init__(self, image_size: int, patch_size: int, num_tokens: int, cfg: TransformerConfig,
                 patch_embed: str = "linear", stem_channels: int = 64, causal_registers: bool = False,
                 register_init: str = "learned", channels: int = 3) -> None:
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
        self.embed = PatchEmbed(patch_size, cfg.width, patch_embed, stem_channels, channels)
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
        """``[B, C, H, W]`` (pixels or a latent grid) -> registers ``[B, K, width]``."""
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

    def __init__(self, image_size: int, patch_size: int, num_tokens: int, code_dim: int, cfg: TransformerConfig,
                 patch_head: str = "linear", head_channels: int = 64, query_init: str = "learned",
                 channels: int = 3) -> None:
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
        self.head = PatchUnembed(patch_size, cfg.width, (g, g), patch_head, head_channels, channels)
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


class PrefixCodec(nn.Module):
    """What every 1D image codec shares: ``encoder`` (images -> K vectors), ``quantizer`` and ``ordering`` set by
    the subclass, the input checks, ``encode`` of a prefix and the decoding of a prefix into padded codes."""

    image_size: int
    num_tokens: int
    encoder: nn.Module
    quantizer: Quantizer
    ordering: nn.Module

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    def token_spec(self) -> dict[str, Any]:
        """What the tokens look like: count, shape, codebook, whether any prefix decodes."""
        return {"tokens_per_sample": self.num_tokens, "token_shape": [self.num_tokens],
                "codebook_sizes": [self.codebook_size], "prefix_decodable": True,
                "min_tokens": 1}

    def to_latent(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> what ``encoder`` reads (the images themselves unless a subclass has a first stage)."""
        return x

    def check_images(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is ``[B, 3, S, S]``."""
        s = self.image_size
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-2:] != (s, s):
            raise ValueError(f"expected images [B, 3, {s}, {s}] in [-1, 1], got shape {tuple(x.shape)}")

    def check_ids(self, ids: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``ids`` is ``[B, k]`` with ``1 <= k <= K`` (values are checked by the
        quantizer)."""
        if ids.ndim != 2 or not 1 <= ids.shape[1] <= self.num_tokens:
            raise ValueError(f"expected token ids [B, k] with 1 <= k <= {self.num_tokens}, "
                             f"got shape {tuple(ids.shape)}")

    def encode(self, x: torch.Tensor, num_tokens: int | None = None) -> torch.Tensor:
        """``[B, 3, S, S]`` in ``[-1, 1]`` -> ids int64 ``[B, num_tokens or K]`` (the first tokens)."""
        self.check_images(x)
        ids = self.quantizer(self.encoder(self.to_latent(x))).ids
        if num_tokens is not None:
            if not 1 <= num_tokens <= self.num_tokens:
                raise ValueError(f"num_tokens must be in 1..{self.num_tokens}, got {num_tokens}")
            ids = ids[:, :num_tokens]
        return ids

    def prefix_codes(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids ``[B, k]`` -> (codes ``[B, K, D]`` with the tail filled by the ordering, keep mask ``[B, K]``)."""
        self.check_ids(ids)
        b, k = ids.shape
        codes = self.quantizer.ids_to_codes(ids)
        if k < self.num_tokens:
            codes = torch.cat([codes, codes.new_zeros(b, self.num_tokens - k, codes.shape[-1])], dim=1)
        return self.ordering(codes, k)


PrefixTokenizer = PrefixCodec  # the old name


class OneDImageCodec(PrefixCodec):
    """Encoder, quantizer, ordering and decoder of a 1D image tokenizer (see the module docstring).

    Args:
        image_size: side S of the square images.
        patch_size: ViT patch size.
        num_tokens: K, tokens per image.
        encoder / decoder: transformer sizes.
        patch_embed / patch_head: ``linear`` (plain ViT) or ``conv`` (conv stem / upsampling head).
        stem_channels: channels of the conv stem and head.
        causal_registers: register i attends only to registers <= i (FlexTok).
        register_init: ``learned`` or ``pyramid`` (registers also receive pooled patch features).
        query_init: ``learned``, ``token_mix`` or ``pyramid`` (patch queries start from the tokens).
        quantizer: FSQ or VQ settings.
        ordering: which ordering regularizer.
        first_stage: ``LatentAutoencoder`` arguments (``base_channels``, ``channel_mults``,
            ``latent_channels``) or None. When set, the transformers read and write its latent grid of side
            ``image_size / f``: ``patch_size`` then counts latent cells, and the patch embedding / head are
            linear maps of the latent channels.
    """

    architecture = "image/onedim"
    modality = "image"

    def __init__(self, image_size: int = 64, patch_size: int = 8, num_tokens: int = 32,
                 encoder: TransformerConfig | dict | None = None, decoder: TransformerConfig | dict | None = None,
                 patch_embed: str = "linear", patch_head: str = "linear", stem_channels: int = 64,
                 causal_registers: bool = False, register_init: str = "learned", query_init: str = "learned",
                 quantizer: QuantizerConfig | dict | None = None,
                 ordering: OrderingConfig | dict | None = None, first_stage: dict | None = None) -> None:
        super().__init__()
        enc = as_config(TransformerConfig, encoder)
        dec = as_config(TransformerConfig, decoder)
        qcfg = as_config(QuantizerConfig, quantizer)
        ocfg = as_config(OrderingConfig, ordering)
        self.arch = plain({
            "image_size": image_size, "patch_size": patch_size, "num_tokens": num_tokens, "encoder": enc,
            "decoder": dec, "patch_embed": patch_embed, "patch_head": patch_head, "stem_channels": stem_channels,
            "causal_registers": causal_registers, "register_init": register_init, "query_init": query_init,
            "quantizer": qcfg, "ordering": ocfg, "first_stage": first_stage})
        self.image_size, self.num_tokens = image_size, num_tokens
        side, channels = image_size, 3
        self.first_stage = None
        if first_stage is not None:
            self.first_stage = LatentAutoencoder(**first_stage)
            f = self.first_stage.downsample
            if image_size % f:
                raise ValueError(f"image_size {image_size} is not a multiple of the first stage's downsampling {f}")
            side, channels = image_size // f, self.first_stage.latent_channels
            if patch_embed != "linear" or patch_head != "linear":
                raise ValueError("with a first stage the patch embedding and head map latent channels: "
                                 "patch_embed and patch_head must be 'linear'")
        self.encoder = RegisterEncoder(side, patch_size, num_tokens, enc, patch_embed, stem_channels,
                                       causal_registers, register_init, channels)
        self.quantizer = Quantizer(enc.width, qcfg)
        self.ordering = build_ordering(ocfg.kind, enc.width, ocfg.nested_mode, ocfg.per_sample)
        self.decoder = ViTTokenDecoder(side, patch_size, num_tokens, enc.width, dec, patch_head,
                                       stem_channels, query_init, channels)

    def to_latent(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> what the register encoder reads (the first stage's latent, or the images themselves)."""
        return x if self.first_stage is None else self.first_stage.encode(x)

    def from_latent(self, z: torch.Tensor) -> torch.Tensor:
        """What the token decoder writes -> images (unclipped)."""
        return z if self.first_stage is None else self.first_stage.decode(z)

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """ids ``[B, k]`` (any prefix, 1 <= k <= K) -> images ``[B, 3, S, S]`` clipped to ``[-1, 1]``."""
        codes, keep = self.prefix_codes(ids)
        return self.from_latent(self.decoder(codes, keep, self.ordering.hides_tail)).clamp(-1, 1)

    def forward(self, x: torch.Tensor, k: int | torch.Tensor | None = None) -> dict[str, Any]:
        """Training pass: reconstruction (unclipped), ids, keep mask and the quantizer's aux loss; with a
        first stage also ``latent`` (its encoding of ``x``) and ``latent_recon`` (the token decoder's output)."""
        self.check_images(x)
        z = self.to_latent(x)
        q = self.quantizer(self.encoder(z))
        codes, keep = self.ordering(q.quantized, k)
        z_hat = self.decoder(codes, keep, self.ordering.hides_tail)
        out = {"recon": self.from_latent(z_hat), "ids": q.ids, "keep": keep, "aux_loss": q.aux_loss}
        if self.first_stage is not None:
            out.update(latent=z, latent_recon=z_hat)
        return out
