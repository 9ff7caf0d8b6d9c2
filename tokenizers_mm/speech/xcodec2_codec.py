"""``XCodec2Codec``: X-Codec 2 (one FSQ codebook over fused semantic and acoustic features), without training code.

Encode: the waveform ``[B, 1, T]`` is right-padded with one zero and then to a whole number of frames (``hop`` =
``prod(ratios)`` = 320 samples at 16 kHz, the frame of the semantic features). Two branches see it:
- semantic: 80-bin Kaldi log-mel filterbanks (25 ms Povey window, 10 ms shift, centred by ``hop / 2`` of zeros,
  normalized per clip), pairs of frames stacked to 160-dim features at 50 Hz, the frozen w2v-BERT Conformer
  (:class:`~tokenizers_mm.speech.w2v_bert.W2VBertEncoder`, sized by ``arch.semantic``) and :class:`SemanticAdapter`;
- acoustic: :class:`AcousticEncoder`.
Both ``[B, D, F]`` are concatenated (semantic first), mixed by a linear layer and quantized by vector-quantize-pytorch's
``FSQ`` (its in/out projections are X-Codec 2's). Decode: FSQ codes -> projection -> :class:`VocosDecoder`.

Tokens are ``int64 [B, 1, F]``, ``F = floor(T / hop) + 1``, ids in ``[0, prod(levels))``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from vector_quantize_pytorch import FSQ

from ..config import as_config, plain
from .codec import check_mono_wave
from .vocos_decoder import VocosDecoder
from .w2v_bert import W2VBertConfig, W2VBertEncoder
from .xcodec2_encoder import AcousticEncoder, SemanticAdapter

MEL_SHIFT = 160  # samples per filterbank frame at 16 kHz
MEL_STACK = 2  # filterbank frames per semantic frame


class XCodec2Codec(nn.Module):
    """X-Codec 2 (see the module docstring).

    Args:
        sample_rate: 16000 (the semantic features' rate).
        channels: first encoder convolution's channels (doubled by every down-sampling block).
        ratios: down-sampling strides; their product is the hop (320).
        hidden: acoustic latent and decoder width.
        semantic: :class:`W2VBertConfig` of the frozen semantic encoder.
        layers, heads, head_dim, intermediate, rms_eps: decoder transformer.
        levels: FSQ levels per dimension (codebook size = their product).
        dropout: dropout inside the decoder's ResNet blocks (training only).
    """

    architecture = "speech/xcodec2"
    modality = "speech"
    causal = False
    num_quantizers = 1

    def __init__(self, sample_rate: int = 16000, channels: int = 48, ratios: list[int] | tuple[int, ...] = (2, 2, 4, 4, 5),
                 hidden: int = 1024, semantic: W2VBertConfig | dict | None = None, layers: int = 12, heads: int = 16,
                 head_dim: int = 64, intermediate: int = 4096, rms_eps: float = 1e-6,
                 levels: list[int] | tuple[int, ...] = (4, 4, 4, 4, 4, 4, 4, 4), dropout: float = 0.1) -> None:
        super().__init__()
        ratios, levels = [int(r) for r in ratios], [int(v) for v in levels]
        sem_cfg = as_config(W2VBertConfig, semantic)
        hop = math.prod(ratios)
        if int(sample_rate) != 16000 or hop != MEL_SHIFT * MEL_STACK:
            raise ValueError(f"X-Codec 2 frames follow its 16 kHz semantic features (50 Hz): expected sample_rate 16000 "
                             f"and prod(ratios) {MEL_SHIFT * MEL_STACK}, got {sample_rate} and {hop}")
        self.sample_rate, self.hop_length = int(sample_rate), hop
        self.arch = plain({"sample_rate": self.sample_rate, "channels": channels, "ratios": ratios, "hidden": hidden,
                           "semantic": sem_cfg, "layers": layers, "heads": heads, "head_dim": head_dim,
                           "intermediate": intermediate, "rms_eps": rms_eps, "levels": levels, "dropout": dropout})
        self.semantic_encoder = W2VBertEncoder(sem_cfg).requires_grad_(False).eval()
        sem = sem_cfg.hidden_size
        self.semantic_adapter = SemanticAdapter(sem)
        self.acoustic_encoder = AcousticEncoder(channels, ratios, hidden)
        self.fc_encoder = nn.Linear(hidden + sem, hidden + sem)
        with torch.device("cpu"):  # FSQ reads its levels back with .item(): built on the CPU under any device context
            self.fsq = FSQ(levels, dim=hidden + sem)
        self.decoder = VocosDecoder(hidden + sem, hidden, layers, heads, head_dim, intermediate, n_fft=4 * hop, hop=hop,
                                    rms_eps=rms_eps, dropout=dropout)

    def train(self, mode: bool = True) -> XCodec2Codec:
        super().train(mode)
        self.semantic_encoder.eval()  # frozen teacher: no dropout
        return self

    # ---- sizes --------------------------------------------------------------------------------------
    @property
    def codebook_size(self) -> int:
        return math.prod(self.arch["levels"])

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.hop_length + 1

    def bitrate_kbps(self, num_quantizers: int | None = None) -> float:
        return self.frame_rate * math.log2(self.codebook_size) / 1000.0

    def token_spec(self) -> dict[str, Any]:
        return {"tokens_per_sample": self.frame_rate, "per": "second", "token_shape": [1, "frames"],
                "frame_rate": self.frame_rate, "num_quantizers": 1, "codebook_sizes": [self.codebook_size],
                "prefix_decodable": True, "prefix_axis": "codebooks", "min_tokens": 1,
                "bitrates_kbps": [round(self.bitrate_kbps(), 4)]}

    # ---- checks -------------------------------------------------------------------------------------
    def check_wave(self, wave: torch.Tensor) -> None:
        check_mono_wave(wave, self.sample_rate)

    def check_ids(self, ids: torch.Tensor) -> None:
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise ValueError(f"token ids must be integers, got {ids.dtype}")
        if ids.ndim != 3 or ids.shape[1] != 1 or ids.shape[2] == 0:
            raise ValueError(f"expected token ids [B, 1, F] (one codebook) with F >= 1 frames, got shape {tuple(ids.shape)}")
        if int(ids.min()) < 0 or int(ids.max()) >= self.codebook_size:
            raise ValueError(f"token ids must lie in [0, {self.codebook_size}), got min {int(ids.min())} max {int(ids.max())}")

    # ---- encoder ------------------------------------------------------------------------------------
    def pad(self, wave: torch.Tensor) -> torch.Tensor:
        """``[B, 1, T]`` -> ``[B, 1, F * hop]``: one zero, then zeros to a whole number of frames."""
        return nn.functional.pad(wave, (0, self.num_frames(wave.shape[-1]) * self.hop_length - wave.shape[-1]))

    def semantic_features(self, padded: torch.Tensor) -> torch.Tensor:
        """Padded ``[B, 1, F * hop]`` -> stacked log-mel features ``[B, F, 80 * 2]`` (float32)."""
        from torchaudio.compliance.kaldi import fbank

        half = self.hop_length // 2
        feats = []
        for w in nn.functional.pad(padded.float(), (half, half)):
            f = fbank(w * 2 ** 15, num_mel_bins=80, frame_length=25.0, frame_shift=10.0,
                      sample_frequency=self.sample_rate, window_type="povey", preemphasis_coefficient=0.97,
                      remove_dc_offset=True, use_log_fbank=True, use_energy=False, dither=0.0, snip_edges=True,
                      low_freq=20, high_freq=self.sample_rate // 2)
            feats.append((f - f.mean(0)) / torch.sqrt(f.var(0, unbiased=True) + 1e-7))
        f = torch.stack(feats)
        n = f.shape[1] // MEL_STACK
        return f[:, :n * MEL_STACK].reshape(f.shape[0], n, -1)

    def encode_latent(self, wave: torch.Tensor) -> torch.Tensor:
        """``[B, 1, T]`` -> fused features before the quantizer, ``[B, F, hidden + semantic]``."""
        padded = self.pad(wave)
        with torch.no_grad():
            sem = self.semantic_encoder(self.semantic_features(padded))
        sem = self.semantic_adapter(sem.transpose(1, 2).to(padded.dtype))
        acoustic = self.acoustic_encoder(padded)
        return self.fc_encoder(torch.cat([sem, acoustic], dim=1).transpose(1, 2))

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, F, D]`` -> ``(quantized [B, F, D], ids int64 [B, 1, F])``.

        The projection is soft-clipped to FSQ's range once before FSQ's own bound (the published checkpoint
        quantizes that way, so its codes depend on it)."""
        fsq = self.fsq
        h = fsq.project_in(z).float()
        levels = fsq._levels
        half_l = (levels - 1) * (1 + 1e-3) / 2
        offset = torch.where(levels % 2 == 0, 0.5, 0.0)
        h = torch.tanh(h + torch.atanh(offset / half_l)) * half_l - offset
        codes = fsq.quantize(h)
        ids = fsq.codes_to_indices(codes)
        return fsq.project_out(codes.to(z.dtype)), ids.long().unsqueeze(1)

    def forward(self, wave: torch.Tensor, num_quantizers: int | None = None, dropout: float = 0.0,
                distill_layer: int | None = None) -> dict[str, Any]:
        """Training / validation pass on ``[B, 1, T]`` in [-1, 1]: ``recon [B, 1, T]``, ``ids [B, 1, F]``,
        ``quantized`` / ``latent [B, F, D]`` and ``commit`` (0: FSQ has no codebook to commit to). The gradient
        reaches the encoders through FSQ's straight-through rounding; the semantic encoder stays frozen.
        ``num_quantizers`` and ``dropout`` have nothing to choose with one codebook."""
        self.check_wave(wave)
        if distill_layer is not None:
            raise ValueError("X-Codec 2 carries its own semantic branch: distill must be off for a speech/xcodec2 codec")
        if num_quantizers not in (None, 1):
            raise ValueError(f"X-Codec 2 has one FSQ codebook, got num_quantizers {num_quantizers}")
        z = self.encode_latent(wave)
        quantized, ids = self.quantize(z)
        recon = self.decode_latent(quantized)[..., :wave.shape[-1]]
        return {"recon": recon, "ids": ids, "quantized": quantized, "latent": z, "commit": z.new_zeros(())}

    @torch.no_grad()
    def encode(self, wave: torch.Tensor, num_tokens: int | None = None) -> torch.Tensor:
        """``[B, 1, T]`` in [-1, 1] at 16 kHz -> ids ``int64 [B, 1, floor(T / hop) + 1]``."""
        self.check_wave(wave)
        if num_tokens not in (None, 1):
            raise ValueError(f"num_tokens (codebooks) must be 1 for X-Codec 2 (one FSQ codebook), got {num_tokens}")
        return self.quantize(self.encode_latent(wave))[1]

    @torch.no_grad()
    def encode_chunked(self, wave: torch.Tensor, chunk_seconds: float = 10.0, num_tokens: int | None = None
                       ) -> torch.Tensor:
        """:meth:`encode` in independent chunks of whole frames (bounded memory; the model is non-causal, so
        tokens near chunk edges differ from one pass)."""
        self.check_wave(wave)
        chunk = max(1, int(chunk_seconds * self.sample_rate) // self.hop_length) * self.hop_length
        if wave.shape[-1] <= chunk:
            return self.encode(wave, num_tokens)
        starts = range(0, wave.shape[-1], chunk)
        out = [self.encode(wave[..., s:s + chunk], num_tokens)[..., :None if s == starts[-1] else chunk // self.hop_length]
               for s in starts]
        return torch.cat(out, dim=-1)

    # ---- decoder ------------------------------------------------------------------------------------
    def decode_latent(self, q: torch.Tensor) -> torch.Tensor:
        """Quantized frames ``[B, F, D]`` -> waveform ``[B, 1, F * hop]``."""
        return self.decoder(q)

    @torch.no_grad()
    def synthesize(self, ids: torch.Tensor) -> torch.Tensor:
        """ids ``[B, 1, F]`` -> the decoder's own output ``[B, 1, F * hop]``."""
        self.check_ids(ids)
        return self.decode_latent(self.fsq.indices_to_codes(ids[:, 0].long()))

    @torch.no_grad()
    def decode(self, ids: torch.Tensor, **options: Any) -> torch.Tensor:
        """ids ``[B, 1, F]`` -> ``[B, 1, F * hop]`` waveform clamped to [-1, 1]."""
        if options:
            raise ValueError(f"the speech codec takes no decode options, got {sorted(options)}")
        return self.synthesize(ids).clamp(-1, 1)
