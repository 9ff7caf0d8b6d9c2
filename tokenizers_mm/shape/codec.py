"""``ShapeCodec``: point cloud -> a few latent tokens -> multi-scale residual quantization -> occupancy field.

    surface points [B, N, 6] (xyz in [-1, 1]^3 + unit normal)
      -> Fourier features -> M latent queries (learned, or farthest-point-sampled surface points) gather them by
         cross-attention -> self-attention (3DShape2VecSet's vecset, VAT's in-context transformer)
      -> Gaussian bottleneck (mean, log-variance; KL) -> latents [B, M, D]
      -> MultiScaleResidualQuantizer: scale s holds n_s tokens (e.g. 1, 4, 16, 64), each quantizing the residual
         the coarser scales left, resampled between scales (VAT) -> ids [B, sum n_s], coarse first
      -> decoder: self-attention over the latents, then Fourier-embedded query points [B, Q, 3] cross-attend to
         them -> occupancy logits [B, Q]

Decoding from the ids of the first s scales gives the shape at a coarser fidelity and a smaller byte budget.
A plain ``ResidualVQ`` (vector-quantize-pytorch, with quantizer dropout) is the simpler baseline in the same slot.
No training code here: the Lightning module is :class:`~tokenizers_mm.shape.tokenizer.ShapeModule`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import as_config, plain
from ..nn import Transformer, TransformerConfig, mlp
from ..quantize import Quantizer, QuantizerConfig


class FourierEmbedding(nn.Module):
    """xyz ``[..., 3]`` -> ``[..., 3 + 6 * num_freqs]``: the input and sin / cos at frequencies
    ``freq_scale * 2^i * pi``, i = 0 .. num_freqs - 1 (the highest frequency sets the finest detail the
    embedding resolves, and the noise an untrained decoder paints on the surface)."""

    def __init__(self, num_freqs: int = 8, freq_scale: float = 1.0) -> None:
        super().__init__()
        if num_freqs < 0 or freq_scale <= 0:
            raise ValueError(f"num_freqs must be >= 0 and freq_scale > 0, got {num_freqs}, {freq_scale}")
        self.register_buffer("freqs", freq_scale * (2.0 ** torch.arange(num_freqs)) * math.pi, persistent=False)
        self.out_dim = 3 + 6 * num_freqs

    def forward(self, xyz: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """``extra`` ``[..., E]`` (e.g. normals) is appended in the same concatenation (one copy, not two)."""
        angles = (xyz[..., None] * self.freqs.to(xyz.dtype)).flatten(-2)  # [..., 3F]
        parts = [xyz, angles.sin(), angles.cos()]
        return torch.cat(parts if extra is None else [*parts, extra], dim=-1)


class CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention (queries attend to a context), residual, then an optional residual MLP.

    ``mlp_ratio=0`` leaves the MLP out: the occupancy probe, evaluated at every grid point, is attention only
    (as in 3DShape2VecSet), which keeps mesh extraction fast and its memory small.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.heads = heads
        self.norm_q, self.norm_kv = nn.LayerNorm(width), nn.LayerNorm(width)
        self.q, self.kv, self.proj = nn.Linear(width, width), nn.Linear(width, 2 * width), nn.Linear(width, width)
        self.mlp = None
        if mlp_ratio > 0:
            self.norm2 = nn.LayerNorm(width)
            self.mlp = mlp(width, mlp_ratio)

    def forward(self, x: torch.Tensor, context: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``[B, n, width]`` attends to ``context`` ``[B, m, width]``; ``bias`` ``[B, heads, n, m]`` is added
        to the attention logits."""
        b, n, d = x.shape
        h = self.heads
        q = self.q(self.norm_q(x)).view(b, n, h, d // h).transpose(1, 2)
        k, v = self.kv(self.norm_kv(context)).view(b, context.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).reshape(b, n, d)
        x = x + self.proj(out)
        return x if self.mlp is None else x + self.mlp(self.norm2(x))


def farthest_point_sample(points: torch.Tensor, m: int) -> torch.Tensor:
    """Indices ``[B, m]`` of ``m`` points chosen by farthest-point sampling from ``points`` ``[B, N, 3]`` (the
    first is point 0, so the result is deterministic; earlier picks cover the shape coarsely)."""
    b, n, _ = points.shape
    dev = points.device
    with torch.no_grad():
        # coordinates first ([B, 3, N], contiguous) and one flat index per pick: ~2.5x faster on CPU than
        # [B, N, 3] differences and a batched gather, with the same picks
        pts = points.detach().transpose(1, 2).contiguous()
        flat = points.detach().reshape(b * n, 3)
        base = torch.arange(b, device=dev) * n
        idx = torch.zeros(b, m, dtype=torch.long, device=dev)
        dist = torch.full((b, n), float("inf"), dtype=points.dtype, device=dev)
        last = flat[base]  # [B, 3]: point 0 of every cloud
        for i in range(1, m):
            torch.minimum(dist, (pts - last[:, :, None]).square_().sum(1), out=dist)
            nxt = dist.argmax(1)
            idx[:, i] = nxt
            last = flat[base + nxt]
    return idx


def kd_order(points: torch.Tensor) -> torch.Tensor:
    """Permutation ``[B, M]`` that puts points ``[B, M, 3]`` in k-d tree order: the set is split at the median of
    its longest axis, each half again, while the group size is even, so every contiguous block of ``M / 2^k``
    points is one spatially compact cell (what pooling tokens between scales averages)."""
    b, m, _ = points.shape
    perm = torch.arange(m, device=points.device).expand(b, m).clone()
    groups = 1
    with torch.no_grad():
        while m % (2 * groups) == 0 and m // groups > 1:
            g = m // groups
            pts = torch.gather(points.detach(), 1, perm[..., None].expand(-1, -1, 3)).view(b, groups, g, 3)
            axis = (pts.amax(2) - pts.amin(2)).argmax(-1)  # [B, groups]: longest side of each cell
            key = torch.gather(pts, 3, axis[:, :, None, None].expand(-1, -1, g, 1)).squeeze(-1)
            order = key.argsort(dim=-1, stable=True)  # [B, groups, g]: sorted along that side
            perm = torch.gather(perm.view(b, groups, g), 2, order).view(b, m)
            groups *= 2
    return perm


def resample_tokens(x: torch.Tensor, n: int) -> torch.Tensor:
    """``[B, M, D]`` -> ``[B, n, D]`` along the token axis: area averaging down, linear interpolation up."""
    if x.shape[1] == n:
        return x
    t = x.transpose(1, 2)
    t = F.adaptive_avg_pool1d(t, n) if n < x.shape[1] else F.interpolate(t, size=n, mode="linear", align_corners=False)
    return t.transpose(1, 2)


class MultiScaleResidualQuantizer(nn.Module):
    """VAT's multi-scale residual quantization over a sequence of M latent tokens.

    Scale ``s`` resamples the current residual to ``scales[s]`` tokens, quantizes them (one quantizer per scale,
    FSQ or VQ), resamples the codes back to M tokens and subtracts them from the residual; the quantized latent
    is the sum over scales. Ids are concatenated coarse to fine, so the first ``sum(scales[:s])`` ids decode
    the first s scales.

    Args:
        dim: latent width D.
        scales: tokens per scale, increasing; the last equals M.
        quantizer: settings of every scale's quantizer.
    """

    def __init__(self, dim: int, scales: list[int], quantizer: QuantizerConfig) -> None:
        super().__init__()
        if sorted(scales) != list(scales) or len(set(scales)) != len(scales):
            raise ValueError(f"scales must be strictly increasing token counts, got {scales}")
        self.scales = list(scales)
        self.quantizers = nn.ModuleList(Quantizer(dim, quantizer) for _ in scales)

    @property
    def codebook_size(self) -> int:
        return self.quantizers[0].codebook_size

    @property
    def prefix_lengths(self) -> list[int]:
        """Id counts that decode: the cumulative token counts (1, 5, 21, 85 for scales 1, 4, 16, 64)."""
        return [sum(self.scales[: i + 1]) for i in range(len(self.scales))]

    def forward(self, z: torch.Tensor, num_scales: int | torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``z`` ``[B, M, D]`` -> (quantized ``[B, M, D]`` of the first ``num_scales`` scales, ids, aux loss).

        ``num_scales`` is one count for the batch, or one per sample (int tensor ``[B]``): then every scale is
        quantized (all ids come back) and sample b's latent sums its first ``num_scales[b]`` scales.
        """
        m = z.shape[1]
        residual, out = z, torch.zeros_like(z)
        ids, aux = [], z.new_zeros(())
        per_sample = isinstance(num_scales, torch.Tensor)
        count = len(self.scales) if per_sample else num_scales or len(self.scales)
        for i, (n, quant) in enumerate(zip(self.scales[:count], self.quantizers)):
            q = quant(resample_tokens(residual, n))
            up = resample_tokens(q.quantized, m)
            out = out + (up * (num_scales > i).to(up.dtype)[:, None, None] if per_sample else up)
            residual = residual - up
            ids.append(q.ids)
            aux = aux + q.aux_loss
        return out, torch.cat(ids, dim=1), aux

    def ids_to_latents(self, ids: torch.Tensor, m: int) -> torch.Tensor:
        """ids of the first s scales ``[B, sum(scales[:s])]`` -> quantized latents ``[B, M, D]``."""
        out, start = None, 0
        for n, quant in zip(self.scales, self.quantizers):
            if start >= ids.shape[1]:
                break
            up = resample_tokens(quant.ids_to_codes(ids[:, start:start + n]), m)
            out = up if out is None else out + up
            start += n
        return out


class ResidualVQBottleneck(nn.Module):
    """The plain baseline: ``ResidualVQ`` over all M tokens (quantizer dropout: any first q quantizers decode).

    Ids are ordered quantizer-major (all M tokens of quantizer 1, then of quantizer 2 ...), so a prefix of
    ``q * M`` ids decodes the first q quantizers.
    """

    def __init__(self, dim: int, num_latents: int, num_quantizers: int, quantizer: QuantizerConfig) -> None:
        super().__init__()
        from vector_quantize_pytorch import ResidualVQ

        self.m, self.nq = num_latents, num_quantizers
        self.rvq = ResidualVQ(dim=dim, num_quantizers=num_quantizers, codebook_size=quantizer.codebook_size,
                              codebook_dim=quantizer.codebook_dim, quantize_dropout=True,
                              kmeans_init=quantizer.kmeans_init, threshold_ema_dead_code=quantizer.threshold_ema_dead_code,
                              commitment_weight=quantizer.commitment_weight, decay=quantizer.decay)

    @property
    def codebook_size(self) -> int:
        return int(self.rvq.codebook_size)

    @property
    def prefix_lengths(self) -> list[int]:
        """Id counts that decode: M tokens per quantizer kept."""
        return [self.m * (i + 1) for i in range(self.nq)]

    def forward(self, z: torch.Tensor, num_scales: int | torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As :meth:`MultiScaleResidualQuantizer.forward`, with quantizers for scales."""
        q, idx, losses = self.rvq(z)
        if isinstance(num_scales, torch.Tensor):
            for kept in num_scales.unique().tolist():
                if kept < self.nq:
                    rows = num_scales == kept
                    q = torch.where(rows[:, None, None], self.rvq.get_output_from_indices(idx[..., :kept]), q)
            return q, idx.transpose(1, 2).reshape(z.shape[0], -1), losses.sum()
        idx = idx[..., : num_scales or self.nq]
        if num_scales and num_scales < self.nq:
            q = self.rvq.get_output_from_indices(idx)
        return q, idx.transpose(1, 2).reshape(z.shape[0], -1), losses.sum()

    def ids_to_latents(self, ids: torch.Tensor, m: int) -> torch.Tensor:
        nq = ids.shape[1] // m
        idx = ids.reshape(ids.shape[0], nq, m).transpose(1, 2)
        return self.rvq.get_output_from_indices(idx)


@dataclass
class ShapeEncoderConfig:
    """Point encoder: ``queries`` = ``learned`` or ``fps`` (farthest-point-sampled surface points).

    ``order`` (with ``fps``): ``fps`` keeps the sampling order; ``kd`` puts the sampled points in k-d tree order, so
    the tokens that the coarse scales pool together are neighbours on the surface (a coarse scale then holds
    the mean of one region, not of scattered points).

    ``zero_init`` starts every residual branch of the encoder (the gathering cross-attention and its MLP, the
    self-attention blocks) at zero, so that at the first step each latent is its own query: with ``fps`` the
    embedding of a surface point, which the decoder learns to read in a few hundred steps, where the randomly
    mixed features of a default initialization keep it at the mean shape for much longer.
    """

    width: int = 256
    depth: int = 4
    heads: int = 4
    num_freqs: int = 8
    freq_scale: float = 1.0
    queries: str = "learned"
    zero_init: bool = False
    order: str = "fps"


@dataclass
class ShapeProbeConfig:
    """The occupancy probe: query points ``[B, Q, 3]`` -> Fourier features -> ``depth`` cross-attention blocks
    over the decoder states -> logit.

    Args:
        num_freqs / freq_scale: Fourier features of the query points (``None``: the encoder's).
        heads: attention heads (``None``: the decoder's).
        depth: cross-attention blocks.
        mlp_ratio: width of the per-query MLP after each block (0: attention only, as in 3DShape2VecSet).
        anchors: every decoder state also predicts a point (its anchor, ``tanh`` of a linear map, in
            ``[-1, 1]^3``), and each probe head adds ``-|query - anchor|^2 / (2 sigma_h^2)`` to its attention
            logits, with one learned ``sigma_h`` per head starting log-spaced between ``sigma_min`` and
            ``sigma_max``: a query then reads the latents around it from the first step instead of learning
            where they are through the dot products of Fourier features. With ``fps`` queries the training loss
            can pull each anchor to its latent's surface point (``ShapeLossConfig.anchor_weight``).
        sigma_min / sigma_max: range of the initial per-head widths of that distance bias.
        planes: (with ``anchors``) every decoder state also predicts a unit normal, and the occupancy logit
            adds ``plane_gain`` x the signed distance of the query to the anchors' tangent planes, averaged with
            weights ``softmax(-|query - anchor|^2 / (2 plane_sigma^2))`` (positive on the inner side of the
            planes) and soft-clipped to ``+-plane_sigma`` (``plane_sigma * tanh(d / plane_sigma)``): oriented surface points that the tokens describe give the inside / outside of the shape
            directly, and the probe learns the correction. ``ShapeLossConfig.anchor_weight`` also pulls each
            normal to its latent's surface normal.
        plane_sigma / plane_gain: initial width of that weighting and gain of the plane distance (both learned,
            as logarithms).
    """

    num_freqs: int | None = None
    freq_scale: float | None = None
    heads: int | None = None
    depth: int = 1
    mlp_ratio: float = 0.0
    anchors: bool = False
    sigma_min: float = 0.05
    sigma_max: float = 0.5
    planes: bool = False
    plane_sigma: float = 0.1
    plane_gain: float = 20.0


class ShapeCodec(nn.Module):
    """Shape tokenizer without training code (see the module docstring).

    Args:
        num_latents: M latent tokens.
        latent_dim: D, width of the quantized latents.
        encoder: point encoder settings.
        decoder: the latent transformer of the decoder (width, depth, heads).
        bottleneck: ``multiscale`` (VAT) or ``rvq`` (ResidualVQ baseline).
        scales: tokens per scale (multiscale; the last must be M).
        num_quantizers: ResidualVQ depth (rvq).
        quantizer: the quantizer of every scale (FSQ levels or VQ codebook).
        probe: the occupancy probe of the query points.
    """

    architecture = "shape/occupancy"
    modality = "shape"

    def __init__(self, num_latents: int = 64, latent_dim: int = 32, encoder: ShapeEncoderConfig | dict | None = None,
                 decoder: TransformerConfig | dict | None = None, bottleneck: str = "multiscale",
                 scales: list[int] | None = None, num_quantizers: int = 4,
                 quantizer: QuantizerConfig | dict | None = None, probe: ShapeProbeConfig | dict | None = None
                 ) -> None:
        super().__init__()
        enc = as_config(ShapeEncoderConfig, encoder)
        pcfg = as_config(ShapeProbeConfig, probe)
        dec = as_config(TransformerConfig, decoder or {"width": 256, "depth": 4, "heads": 4})
        qcfg = as_config(QuantizerConfig, quantizer or {"kind": "fsq", "levels": [8, 5, 5, 5]})
        scales = list(scales or [1, 4, 16, num_latents])
        if bottleneck == "multiscale" and scales[-1] != num_latents:
            raise ValueError(f"the last scale must hold all {num_latents} latents, got scales {scales}")
        if enc.queries not in ("learned", "fps"):
            raise ValueError(f"encoder.queries must be 'learned' or 'fps', got {enc.queries!r}")
        if enc.order not in ("fps", "kd"):
            raise ValueError(f"encoder.order must be 'fps' or 'kd', got {enc.order!r}")
        if pcfg.anchors and not 0 < pcfg.sigma_min <= pcfg.sigma_max:
            raise ValueError(f"probe sigma_min / sigma_max must satisfy 0 < min <= max, got {pcfg.sigma_min}, "
                             f"{pcfg.sigma_max}")
        if pcfg.planes and not (pcfg.anchors and pcfg.plane_sigma > 0 and pcfg.plane_gain > 0):
            raise ValueError(f"probe.planes needs probe.anchors: true and plane_sigma, plane_gain > 0, got anchors "
                             f"{pcfg.anchors}, {pcfg.plane_sigma}, {pcfg.plane_gain}")
        self.arch = plain({"num_latents": num_latents, "latent_dim": latent_dim, "encoder": enc, "decoder": dec,
                           "bottleneck": bottleneck, "scales": scales, "num_quantizers": num_quantizers,
                           "quantizer": qcfg, "probe": pcfg})
        self.num_latents, self.latent_dim, self.enc_cfg, self.probe_cfg = num_latents, latent_dim, enc, pcfg
        self.fourier = FourierEmbedding(enc.num_freqs, enc.freq_scale)
        self.query_fourier = FourierEmbedding(enc.num_freqs if pcfg.num_freqs is None else pcfg.num_freqs,
                                              enc.freq_scale if pcfg.freq_scale is None else pcfg.freq_scale)
        w = enc.width
        self.point_in = nn.Linear(self.fourier.out_dim + 3, w)
        self.queries = nn.Parameter(torch.randn(num_latents, w) * 0.02)
        self.gather = CrossAttentionBlock(w, enc.heads)
        self.encoder = Transformer(TransformerConfig(w, enc.depth, enc.heads))
        if enc.zero_init:
            branch_outs = [self.gather.proj, self.gather.mlp[-1]]
            branch_outs += [m for blk in self.encoder.blocks for m in (blk.attn.proj, blk.mlp[-1])]
            for lin in branch_outs:
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)
        self.to_gaussian = nn.Linear(w, 2 * latent_dim)
        # start with a small posterior std (e^-3 = 0.05): with the default std 1 the sampled noise drowns the
        # latent early on and the decoder learns one average shape before the tokens carry anything
        nn.init.constant_(self.to_gaussian.bias[latent_dim:], -6.0)
        if bottleneck == "multiscale":
            self.bottleneck = MultiScaleResidualQuantizer(latent_dim, scales, qcfg)
        elif bottleneck == "rvq":
            self.bottleneck = ResidualVQBottleneck(latent_dim, num_latents, num_quantizers, qcfg)
        else:
            raise ValueError(f"bottleneck must be 'multiscale' or 'rvq', got {bottleneck!r}")
        self.latent_in = nn.Linear(latent_dim, dec.width)
        self.latent_pos = nn.Parameter(torch.randn(num_latents, dec.width) * 0.02)
        self.decoder = Transformer(dec)
        self.query_in = nn.Linear(self.query_fourier.out_dim, dec.width)
        heads = pcfg.heads or dec.heads
        self.probe = nn.ModuleList(CrossAttentionBlock(dec.width, heads, pcfg.mlp_ratio) for _ in range(pcfg.depth))
        self.anchor = None
        if pcfg.anchors:
            self.anchor = nn.Linear(dec.width, 3)
            sigmas = torch.logspace(math.log10(pcfg.sigma_min), math.log10(pcfg.sigma_max), heads)
            self.anchor_log_inv_var = nn.Parameter(-2 * sigmas.log())  # log(1 / sigma^2) per head
        self.normal = None
        if pcfg.planes:
            self.normal = nn.Linear(dec.width, 3)
            self.plane_log_inv_var = nn.Parameter(torch.tensor(-2 * math.log(pcfg.plane_sigma)))
            self.plane_log_gain = nn.Parameter(torch.tensor(math.log(pcfg.plane_gain)))
        self.head = nn.Sequential(nn.LayerNorm(dec.width), nn.Linear(dec.width, 1))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # checkpoints from before the probe became a list of blocks hold ``probe.q.weight`` for ``probe.0.q.weight``
        old = f"{prefix}probe."
        for key in [k for k in state_dict if k.startswith(old) and not k[len(old):].split(".")[0].isdigit()]:
            state_dict[f"{old}0.{key[len(old):]}"] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---- facts --------------------------------------------------------------------------------------
    @property
    def codebook_size(self) -> int:
        return self.bottleneck.codebook_size

    @property
    def prefix_lengths(self) -> list[int]:
        """Valid id counts, coarse first (whole scales, or whole quantizers of the ResidualVQ baseline)."""
        return self.bottleneck.prefix_lengths

    @property
    def num_tokens(self) -> int:
        return self.prefix_lengths[-1]

    def token_spec(self) -> dict[str, Any]:
        return {"tokens_per_sample": self.num_tokens, "token_shape": [self.num_tokens],
                "codebook_sizes": [self.codebook_size], "prefix_decodable": True, "min_tokens": self.prefix_lengths[0],
                "prefix_lengths": self.prefix_lengths}

    # ---- checks -------------------------------------------------------------------------------------
    @staticmethod
    def check_surface(surface: torch.Tensor) -> None:
        if surface.ndim != 3 or surface.shape[-1] != 6:
            raise ValueError(f"expected surface points [B, N, 6] (xyz + unit normal), got shape {tuple(surface.shape)}")

    def check_ids(self, ids: torch.Tensor) -> None:
        if ids.ndim != 2 or ids.shape[1] not in self.prefix_lengths:
            raise ValueError(f"expected token ids [B, n] with n one of {self.prefix_lengths} (whole scales, coarse "
                             f"first), got shape {tuple(ids.shape)}")

    # ---- encoder ------------------------------------------------------------------------------------
    def latent_point_index(self, surface: torch.Tensor) -> torch.Tensor | None:
        """With ``fps`` queries: indices ``[B, M]`` of the surface points the latents start from, in token order
        (``None`` for learned queries)."""
        if self.enc_cfg.queries != "fps":
            return None
        xyz = surface[..., :3]
        idx = farthest_point_sample(xyz, self.num_latents)
        if self.enc_cfg.order == "kd":
            idx = torch.gather(idx, 1, kd_order(torch.gather(xyz, 1, idx[..., None].expand(-1, -1, 3))))
        return idx

    def encode_latents(self, surface: torch.Tensor, sample: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Surface ``[B, N, 6]`` -> (latents ``[B, M, D]``, KL per sample ``[B]``); ``sample`` draws from the
        Gaussian (training), else its mean."""
        z, kl, _ = self._encode(surface, sample)
        return z, kl

    def _encode(self, surface: torch.Tensor, sample: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(latents, KL per sample, the latents' surface points with normals ``[B, M, 6]`` or ``None``)."""
        self.check_surface(surface)
        xyz, normals = surface[..., :3], surface[..., 3:]
        feats = self.point_in(self.fourier(xyz, normals))
        idx = self.latent_point_index(surface)
        latent_points = None
        if idx is not None:
            q = torch.gather(feats, 1, idx[..., None].expand(-1, -1, feats.shape[-1])) + self.queries
            latent_points = torch.gather(surface, 1, idx[..., None].expand(-1, -1, 6))
        else:
            q = self.queries.expand(surface.shape[0], -1, -1)
        h = self.encoder(self.gather(q, feats))
        mean, logvar = self.to_gaussian(h).chunk(2, dim=-1)
        logvar = logvar.clamp(-30, 20)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean(dim=(1, 2))
        z = mean + (0.5 * logvar).exp() * torch.randn_like(mean) if sample else mean
        return z, kl, latent_points

    def encode(self, surface: torch.Tensor, num_tokens: int | None = None) -> torch.Tensor:
        """Surface ``[B, N, 6]`` -> ids ``[B, num_tokens or all]`` (``num_tokens`` a whole number of scales)."""
        z, _ = self.encode_latents(surface)
        _, ids, _ = self.bottleneck(z)
        if num_tokens is not None:
            if num_tokens not in self.prefix_lengths:
                raise ValueError(f"num_tokens must be one of {self.prefix_lengths} (whole scales), got {num_tokens}")
            ids = ids[:, :num_tokens]
        return ids

    # ---- decoder ------------------------------------------------------------------------------------
    def decode_latents(self, zq: torch.Tensor) -> torch.Tensor:
        """Quantized latents ``[B, M, D]`` -> decoder states ``[B, M, width]`` (computed once per shape)."""
        return self.decoder(self.latent_in(zq) + self.latent_pos.to(zq.dtype))

    def anchors(self, states: torch.Tensor) -> torch.Tensor | None:
        """Decoder states ``[B, M, width]`` -> anchor points ``[B, M, 3]`` in ``[-1, 1]^3`` (``None`` without
        ``probe.anchors``)."""
        return None if self.anchor is None else torch.tanh(self.anchor(states))

    def normals(self, states: torch.Tensor) -> torch.Tensor | None:
        """Decoder states ``[B, M, width]`` -> unit normals ``[B, M, 3]`` of the anchors' tangent planes (``None``
        without ``probe.planes``)."""
        return None if self.normal is None else F.normalize(self.normal(states), dim=-1)

    def occupancy(self, states: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Decoder states + query points ``[B, Q, 3]`` -> occupancy logits ``[B, Q]`` (> 0: inside)."""
        q = self.query_in(self.query_fourier(points))
        bias = plane = None
        if self.anchor is not None:
            anchors = self.anchors(states).to(points.dtype)
            d2 = (points.square().sum(-1, keepdim=True) + anchors.square().sum(-1)[:, None]
                  - 2 * points @ anchors.transpose(1, 2)).clamp_min(0)  # [B, Q, M] squared distances
            bias = (-0.5 * self.anchor_log_inv_var.exp().to(points.dtype))[None, :, None, None] * d2[:, None]
            bias = bias.to(q.dtype)
            if self.normal is not None:
                normals = self.normals(states).to(points.dtype)
                w = torch.softmax(-0.5 * self.plane_log_inv_var.exp() * d2, dim=-1)  # [B, Q, M]
                # sum_i w_i (a_i - x) . n_i = w @ (a . n) - x . (w @ n)
                offset = (anchors * normals).sum(-1, keepdim=True)  # [B, M, 1]
                plane = (w @ offset).squeeze(-1) - (points * (w @ normals)).sum(-1)
        for block in self.probe:
            q = block(q, states, bias)
        logits = self.head(q).squeeze(-1)
        if plane is None:
            return logits
        # soft-clipped at +-plane_sigma: far from the surface only the side counts, so anchors and normals that
        # are still wrong early in training cannot give large wrong logits
        c = self.probe_cfg.plane_sigma
        return logits + self.plane_log_gain.exp() * c * torch.tanh(plane / c).to(logits.dtype)

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """ids of the first s scales -> decoder states ``[B, M, width]`` (query them with :meth:`occupancy`, or
        extract a mesh with :func:`tokenizers_mm.shape.mesh_out.extract_meshes`)."""
        self.check_ids(ids)
        return self.decode_latents(self.bottleneck.ids_to_latents(ids, self.num_latents))

    def forward(self, surface: torch.Tensor, points: torch.Tensor, num_scales: int | torch.Tensor | None = None,
                sample: bool = False) -> dict[str, Any]:
        """Training pass: occupancy logits at ``points`` from the first ``num_scales`` scales (one count, or one
        per sample ``[B]``), ids, KL, aux loss;
        with ``probe.anchors`` also the predicted anchors and the latents' surface points ``[B, M, 3]`` (``None``
        for learned queries)."""
        z, kl, points_of_latents = self._encode(surface, sample)
        zq, ids, aux = self.bottleneck(z, num_scales)
        states = self.decode_latents(zq)
        return {"logits": self.occupancy(states, points), "ids": ids, "kl": kl.mean(), "aux_loss": aux,
                "anchors": self.anchors(states), "normals": self.normals(states),
                "anchor_targets": None if points_of_latents is None else points_of_latents[..., :3],
                "normal_targets": None if points_of_latents is None else points_of_latents[..., 3:]}
