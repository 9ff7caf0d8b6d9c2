"""``SpeechCodec``: SEANet or log-mel (spectral) encoder -> residual VQ (quantizer dropout) -> SEANet or
inverse-STFT decoder, without training code.

Tokens are ``int64 [B, n_q, F]``: codebook-major, ``F = ceil(T / hop)`` frames at ``sample_rate / hop`` Hz.
Codebook ``q`` quantizes the residual that codebooks ``< q`` left, so any first ``n`` codebooks decode
(bitrate chosen at decode time: ``frame_rate * n * log2(codebook_size)`` bits per second).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from vector_quantize_pytorch import ResidualVQ

from ..config import as_config, plain
from .istft_decoder import ISTFTDecoder
from .latent_transformer import LatentConfig, LatentStage
from .projected_rvq import ProjectedRVQ, SplitRVQ
from .seanet import SEANetConfig, SEANetDecoder, SEANetEncoder, receptive_field
from .spectral_encoder import SpectralEncoder


@dataclass
class RVQConfig:
    """Residual vector quantizer (vector-quantize-pytorch ``ResidualVQ``).

    Args:
        num_quantizers: codebooks ``n_q`` (the most a decode can use).
        codebook_size: codes per codebook.
        codebook_dim: lookup dimension; smaller than the latent dim adds an in/out projection (DAC's
            factorized codes use 8). ``None``: the latent dim.
        cosine: L2-normalized codes and inputs (cosine-similarity lookup, DAC).
        decay: EMA decay of the codebook updates.
        kmeans_init: initialize each codebook by k-means on its first batch.
        threshold_ema_dead_code: codes whose EMA usage falls below this are replaced by batch vectors.
        commitment_weight: commitment loss weight inside the quantizer loss.
        quantizer_dropout: probability that a training batch is quantized with a random number
            ``1..n_q`` of codebooks instead of all of them (so each prefix learns to decode).
        residual_gradient: fraction of the gradient that flows back through each codebook's output into the
            next codebook's residual (vector-quantize-pytorch ``quant_grad_frac``). 1.0: the decoder's gradient
            reaches the encoder once, as in EnCodec and DAC; 0.0: once per codebook used (the library's default),
            so the encoder's gradient is n_q times larger with all codebooks than with one.
        rotation_trick: pass gradients through each codebook with the rotation trick (Fifty et al. 2024; the
            library's default) instead of the straight-through estimator of EnCodec and DAC.
        projection: ``shared`` (one ``ResidualVQ``; a ``codebook_dim`` below the latent dim adds one projection for
            all codebooks), ``per_codebook`` (DAC: each codebook projects in and out itself,
            :class:`~tokenizers_mm.speech.projected_rvq.ProjectedRVQ`; needs ``codebook_dim``) or ``split`` (Mimi:
            ``semantic_quantizers`` codebooks and the rest quantize the same input behind their own bias-free
            projections, :class:`~tokenizers_mm.speech.projected_rvq.SplitRVQ`; needs ``codebook_dim``).
        semantic_quantizers: codebooks of the semantic part of a ``split`` quantizer.
    """

    num_quantizers: int = 8
    codebook_size: int = 1024
    codebook_dim: int | None = None
    cosine: bool = False
    decay: float = 0.99
    kmeans_init: bool = True
    threshold_ema_dead_code: float = 2.0
    commitment_weight: float = 1.0
    quantizer_dropout: float = 0.5
    residual_gradient: float = 1.0
    rotation_trick: bool = False
    projection: str = "shared"
    semantic_quantizers: int = 1


def check_mono_wave(wave: torch.Tensor, sample_rate: int) -> None:
    """Raise ValueError unless ``wave`` is mono audio ``[B, 1, T]`` with ``T >= 1`` (every codec's input check)."""
    if wave.ndim != 3 or wave.shape[1] != 1:
        raise ValueError(f"expected mono audio [B, 1, T] at {sample_rate} Hz, got shape {tuple(wave.shape)}")
    if wave.shape[-1] == 0:
        raise ValueError("expected audio with at least one sample, got T = 0")


class SpeechCodec(nn.Module):
    """Waveform codec with residual VQ.

    Args:
        sample_rate: model rate in Hz (inputs must be at this rate: ``pipelines`` resamples files).
        seanet: encoder / decoder architecture.
        rvq: residual quantizer.
    """

    architecture = "speech/rvq"
    modality = "speech"

    def __init__(self, sample_rate: int = 16000, seanet: SEANetConfig | dict | None = None,
                 rvq: RVQConfig | dict | None = None, latent: LatentConfig | dict | None = None) -> None:
        super().__init__()
        self.seanet_cfg = as_config(SEANetConfig, seanet)
        self.rvq_cfg = as_config(RVQConfig, rvq)
        self.latent_cfg = as_config(LatentConfig, latent) if latent is not None else None
        self.sample_rate = int(sample_rate)
        self.arch = plain({"sample_rate": self.sample_rate, "seanet": self.seanet_cfg, "rvq": self.rvq_cfg,
                           **({"latent": self.latent_cfg} if self.latent_cfg is not None else {})})
        s, q = self.seanet_cfg, self.rvq_cfg
        self.encoder = SpectralEncoder(s, self.sample_rate) if s.encoder == "spectral" else SEANetEncoder(s)
        self.decoder = ISTFTDecoder(s, self.sample_rate) if s.decoder == "istft" else SEANetDecoder(s)
        # Mimi: transformers around the quantizer and a change of frame rate (None: the SEANet latent is quantized)
        self.latent = LatentStage(s.dim, self.latent_cfg, s.causal) if self.latent_cfg is not None else None
        self.rvq = self._build_rvq(s.dim, q)

    @staticmethod
    def _build_rvq(dim: int, q: RVQConfig) -> nn.Module:
        if q.projection == "per_codebook":
            if q.codebook_dim is None:
                raise ValueError("rvq.projection 'per_codebook' needs rvq.codebook_dim")
            return ProjectedRVQ(dim, q.num_quantizers, q.codebook_size, q.codebook_dim, cosine=q.cosine,
                                decay=q.decay, threshold_ema_dead_code=q.threshold_ema_dead_code,
                                commitment_weight=q.commitment_weight, kmeans_init=q.kmeans_init)
        if q.projection == "split":
            if q.codebook_dim is None:
                raise ValueError("rvq.projection 'split' needs rvq.codebook_dim")
            return SplitRVQ(dim, q.num_quantizers, q.semantic_quantizers, q.codebook_dim,
                            codebook_size=q.codebook_size, use_cosine_sim=q.cosine, decay=q.decay,
                            kmeans_init=q.kmeans_init, kmeans_iters=10,
                            threshold_ema_dead_code=q.threshold_ema_dead_code, commitment_weight=q.commitment_weight,
                            quantize_dropout=True, quant_grad_frac=q.residual_gradient,
                            rotation_trick=q.rotation_trick)
        if q.projection != "shared":
            raise ValueError(f"rvq.projection must be 'shared', 'per_codebook' or 'split', got {q.projection!r}")
        return ResidualVQ(
            dim=dim, num_quantizers=q.num_quantizers, codebook_size=q.codebook_size,
            codebook_dim=q.codebook_dim, use_cosine_sim=q.cosine, decay=q.decay, kmeans_init=q.kmeans_init,
            kmeans_iters=10, threshold_ema_dead_code=q.threshold_ema_dead_code,
            commitment_weight=q.commitment_weight, quantize_dropout=q.num_quantizers > 1,
            quant_grad_frac=q.residual_gradient, rotation_trick=q.rotation_trick,
        )

    # ---- sizes --------------------------------------------------------------------------------------
    @property
    def hop_length(self) -> int:
        stride = self.latent_cfg.stride if self.latent_cfg is not None else 1
        return self.seanet_cfg.hop_length * stride

    def encode_latent(self, wave: torch.Tensor) -> torch.Tensor:
        """``[B, 1, T]`` -> latent frames ``[B, D, ceil(T / hop)]`` (what the quantizer sees)."""
        z = self.encoder(self.pad_to_hop(wave))
        return self.latent.encode(z) if self.latent is not None else z

    def decode_latent(self, q: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        """Quantized frames ``[B, D, F]`` -> waveform ``[B, 1, F * hop]``."""
        if self.latent is not None:
            q = self.latent.decode(q)
        return self.decoder(q, reference=reference) if reference is not None else self.decoder(q)

    @property
    def frame_rate(self) -> float:
        """Frames per second."""
        return self.sample_rate / self.hop_length

    @property
    def reference_phase(self) -> bool:
        """Whether training reconstructions take the input's phase (a decoder that predicts magnitudes only)."""
        return self.seanet_cfg.decoder == "istft" and self.seanet_cfg.istft_phase == "griffin_lim"

    @property
    def num_quantizers(self) -> int:
        return self.rvq_cfg.num_quantizers

    @property
    def codebook_size(self) -> int:
        return self.rvq_cfg.codebook_size

    @property
    def causal(self) -> bool:
        """Whether the encoder is causal (the spectral encoder always is)."""
        return self.seanet_cfg.causal or self.seanet_cfg.encoder == "spectral"

    def bitrate_kbps(self, num_quantizers: int | None = None) -> float:
        """Bitrate of ``num_quantizers`` codebooks (all by default) in kbit/s."""
        n = self.num_quantizers if num_quantizers is None else num_quantizers
        return self.frame_rate * n * math.log2(self.codebook_size) / 1000.0

    def num_frames(self, num_samples: int) -> int:
        return math.ceil(num_samples / self.hop_length)

    def token_spec(self) -> dict[str, Any]:
        return {"tokens_per_sample": self.frame_rate * self.num_quantizers, "per": "second",
                "token_shape": [self.num_quantizers, "frames"], "frame_rate": self.frame_rate,
                "num_quantizers": self.num_quantizers, "codebook_sizes": [self.codebook_size],
                "prefix_decodable": True, "prefix_axis": "codebooks", "min_tokens": 1,
                "bitrates_kbps": [round(self.bitrate_kbps(n), 4) for n in range(1, self.num_quantizers + 1)]}

    # ---- checks -------------------------------------------------------------------------------------
    def check_wave(self, wave: torch.Tensor) -> None:
        check_mono_wave(wave, self.sample_rate)

    def check_ids(self, ids: torch.Tensor) -> None:
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise ValueError(f"token ids must be integers, got {ids.dtype}")
        if ids.ndim != 3 or not 1 <= ids.shape[1] <= self.num_quantizers or ids.shape[2] == 0:
            raise ValueError(f"expected token ids [B, n, F] with 1 <= n <= {self.num_quantizers} codebooks and F >= 1 "
                             f"frames, got shape {tuple(ids.shape)}")
        if int(ids.min()) < 0 or int(ids.max()) >= self.codebook_size:
            raise ValueError(f"token ids must lie in [0, {self.codebook_size}), got min {int(ids.min())} "
                             f"max {int(ids.max())}")

    # ---- model --------------------------------------------------------------------------------------
    def pad_to_hop(self, wave: torch.Tensor) -> torch.Tensor:
        """Right-pad ``[B, 1, T]`` with zeros to a whole number of frames; unchanged with ``seanet.pad_mode:
        reflect`` or ``constant``, where each convolution completes its own last window (EnCodec, Mimi)."""
        if self.seanet_cfg.pad_mode in ("reflect", "constant"):
            return wave
        extra = self.num_frames(wave.shape[-1]) * self.hop_length - wave.shape[-1]
        return nn.functional.pad(wave, (0, extra)) if extra else wave

    def quantize(self, z: torch.Tensor, num_quantizers: int | None = None, dropout: bool = False,
                 distill_layer: int | None = None) -> dict[str, Any]:
        """Latent frames ``[B, D, F]`` -> dict with ``quantized [B, D, F]`` (straight-through), ``ids [B, n_q, F]``
        (-1 where a codebook was dropped), ``commit`` (scalar) and, with ``distill_layer = L``, ``distill [B, D, F]``:
        the sum of the first ``L`` codebooks' codes with a straight-through gradient to the encoder.

        ``num_quantizers`` keeps only the first ``n`` codebooks (evaluation at a lower bitrate); ``dropout`` lets
        the quantizer draw ``n`` at random (training).
        """
        x = z.transpose(1, 2)
        self.rvq.quantize_dropout = dropout and self.num_quantizers > 1
        quantized, ids, losses, codes = self.rvq(x, return_all_codes=True)
        ids = ids.transpose(1, 2)
        out: dict[str, Any] = {"commit": losses.sum(), "ids": ids}
        if num_quantizers is not None and num_quantizers < self.num_quantizers:
            keep = ids[:, :num_quantizers]
            quantized = self._ids_to_latent(keep)
            quantized = x + (quantized - x).detach()
            out["ids"] = keep
        out["quantized"] = quantized.transpose(1, 2)
        if distill_layer is not None:
            projected = self.rvq.project_in(x)
            partial = codes[:distill_layer].sum(0)
            out["distill"] = self.rvq.project_out(projected + (partial - projected).detach()).transpose(1, 2)
        return out

    def _ids_to_latent(self, ids: torch.Tensor) -> torch.Tensor:
        """``[B, n, F]`` ids -> ``[B, F, D]`` sum of their codes (missing codebooks count as zero)."""
        n = ids.shape[1]
        full = nn.functional.pad(ids, (0, 0, 0, self.num_quantizers - n), value=-1) if n < self.num_quantizers else ids
        return self.rvq.get_output_from_indices(full.transpose(1, 2))

    def forward(self, wave: torch.Tensor, num_quantizers: int | None = None, dropout: float = 0.0,
                distill_layer: int | None = None) -> dict[str, Any]:
        """Training / validation pass on ``[B, 1, T]`` in [-1, 1]: ``recon [B, 1, T]`` plus :meth:`quantize`'s outputs.

        ``dropout`` is the probability of quantizing this batch with a random number of codebooks. In training, a
        decoder without a learned phase (``istft_phase: griffin_lim``) takes the phase of ``wave`` itself; in
        evaluation every decoder decodes as :meth:`decode` does.
        """
        self.check_wave(wave)
        t = wave.shape[-1]
        z = self.encode_latent(wave)
        drop = self.training and dropout > 0 and random.random() < dropout
        out = self.quantize(z, num_quantizers, dropout=drop, distill_layer=distill_layer)
        if self.training and self.reference_phase:
            out["recon"] = self.decode_latent(out["quantized"], reference=wave)[..., :t]
        else:
            out["recon"] = self.decode_latent(out["quantized"])[..., :t]
        out["latent"] = z
        return out

    @torch.no_grad()
    def encode(self, wave: torch.Tensor, num_tokens: int | None = None) -> torch.Tensor:
        """``[B, 1, T]`` in [-1, 1] at ``sample_rate`` -> ids ``int64 [B, n, ceil(T / hop)]``; ``num_tokens`` = n codebooks
        (all by default)."""
        self.check_wave(wave)
        n = self.num_quantizers if num_tokens is None else int(num_tokens)
        if not 1 <= n <= self.num_quantizers:
            raise ValueError(f"num_tokens (codebooks) must lie in [1, {self.num_quantizers}], got {n}")
        z = self.encode_latent(wave)
        self.rvq.quantize_dropout = False
        _, ids, _ = self.rvq(z.transpose(1, 2))
        return ids.transpose(1, 2)[:, :n].long()

    @torch.no_grad()
    def decode(self, ids: torch.Tensor, **options: Any) -> torch.Tensor:
        """ids ``[B, n, F]`` (the first n codebooks) -> ``[B, 1, F * hop]`` waveform clamped to [-1, 1]."""
        if options:
            raise ValueError(f"the speech codec takes no decode options, got {sorted(options)}")
        return self.synthesize(ids).clamp(-1, 1)

    @torch.no_grad()
    def synthesize(self, ids: torch.Tensor) -> torch.Tensor:
        """:meth:`decode` without the final clamp: the decoder's own output ``[B, 1, F * hop]``."""
        self.check_ids(ids)
        return self.decode_latent(self._ids_to_latent(ids.long()).transpose(1, 2))

    # ---- long inputs --------------------------------------------------------------------------------
    def context_samples(self) -> int:
        """Left context (samples, whole frames) that makes a chunk's tokens equal to one pass (causal models)."""
        return math.ceil(receptive_field(self.seanet_cfg) / self.hop_length) * self.hop_length

    @torch.no_grad()
    def encode_chunked(self, wave: torch.Tensor, chunk_seconds: float = 10.0, num_tokens: int | None = None
                       ) -> torch.Tensor:
        """:meth:`encode` of a long ``[B, 1, T]`` in chunks of ``chunk_seconds`` (bounded memory).

        A causal model gives exactly the tokens of one pass: each chunk is encoded with the left context its
        receptive field needs, the LSTM state is carried over, and the last convolution sees the previous
        chunk's frames. A non-causal model looks ahead, so its chunks differ from one pass near the edges;
        a transformer bottleneck attends to the whole past, so it is encoded in one pass. A causal latent stage
        (Mimi) streams: its transformers keep each layer's keys and values of the last ``sliding_window - 1``
        frames and the downsampling convolution the last frames of the previous chunk.
        """
        self.check_wave(wave)
        hop = self.hop_length
        chunk = max(1, int(chunk_seconds * self.sample_rate) // hop) * hop
        enc = self.encoder
        if self.latent is not None and self.causal and wave.shape[-1] > chunk:
            return self._encode_chunked_latent(wave, chunk, num_tokens)
        if (wave.shape[-1] <= chunk or self.latent is not None
                or (enc.bottleneck is not None and enc.bottleneck.kind == "transformer")):
            return self.encode(wave, num_tokens)
        wave = self.pad_to_hop(wave)
        ctx = self.context_samples() if self.causal else 0
        back_ctx = self.seanet_cfg.last_kernel_size - 1
        state, prev, out = None, None, []
        for start in range(0, wave.shape[-1], chunk):
            lo = max(0, start - ctx)
            h = enc.front(wave[..., lo:start + chunk])[..., (start - lo) // hop:]
            if enc.bottleneck is not None:
                h, state = enc.bottleneck(h, state)
            joined = h if prev is None else torch.cat([prev, h], dim=-1)
            z = enc.back(joined)[..., joined.shape[-1] - h.shape[-1]:]
            prev = joined[..., -back_ctx:] if back_ctx else None
            self.rvq.quantize_dropout = False
            _, ids, _ = self.rvq(z.transpose(1, 2))
            out.append(ids.transpose(1, 2))
        n = self.num_quantizers if num_tokens is None else int(num_tokens)
        return torch.cat(out, dim=-1)[:, :n].long()

    def _encode_chunked_latent(self, wave: torch.Tensor, chunk: int, num_tokens: int | None) -> torch.Tensor:
        """:meth:`encode_chunked` of a causal codec with a latent stage (``chunk``: samples, whole token frames)."""
        enc, s = self.encoder, self.seanet_cfg
        wave = self.pad_to_hop(wave)
        ctx = math.ceil(receptive_field(s) / s.hop_length) * s.hop_length
        back_ctx = s.last_kernel_size - 1
        prev, state, out = None, {}, []
        for start in range(0, wave.shape[-1], chunk):
            lo = max(0, start - ctx)
            h = enc.front(wave[..., lo:start + chunk])[..., (start - lo) // s.hop_length:]
            joined = h if prev is None else torch.cat([prev, h], dim=-1)
            z = enc.back(joined)[..., joined.shape[-1] - h.shape[-1]:]
            prev = joined[..., -back_ctx:] if back_ctx else None
            z = self.latent.encode(z, state)
            self.rvq.quantize_dropout = False
            _, ids, _ = self.rvq(z.transpose(1, 2))
            out.append(ids.transpose(1, 2))
        n = self.num_quantizers if num_tokens is None else int(num_tokens)
        return torch.cat(out, dim=-1)[:, :n].long()
