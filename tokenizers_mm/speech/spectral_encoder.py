"""Frame-rate encoder that reads a log-mel spectrogram instead of the waveform (the mel-input encoders of
Vocos-style and WavTokenizer-style codecs), an alternative to the SEANet encoder's strided convolutions.

``[B, 1, T]`` -> one Hann-windowed STFT frame of ``spectral_n_fft`` samples per codec hop, ending at the frame's
last sample (so frame ``f`` sees samples before ``(f + 1) * hop`` only: causal) -> log of ``spectral_mels`` mel
bands (or of every linear bin with ``spectral_mels: 0``) -> each band standardized by its running mean and
variance (``BatchNorm1d`` without affine: log spectra sit far from zero, around -7 with a spread of several
units, which a LayerNorm after the embedding would flatten together with the loudness) -> causal ConvNeXt
blocks at the frame rate -> ``[B, dim, ceil(T / hop)]``.

The spectrum is what the mel losses and the inverse-STFT decoder work in, so the encoder starts from features
that already separate the harmonics and formants, where the SEANet front has to learn a filter bank from the
waveform first.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torchaudio
from torch import nn

from .istft_decoder import ChannelLayerNorm, ConvNeXtBlock
from .seanet import PaddedConv1d, SequenceBottleneck

if TYPE_CHECKING:
    from .seanet import SEANetConfig


class CausalLogMel(nn.Module):
    """``[B, 1, T]`` -> ``[B, bands, ceil(T / hop)]`` log magnitude (mel or linear) spectrum, one frame per hop.

    The signal is padded with ``n_fft - hop`` zeros on the left and completed to whole hops on the right, and
    the STFT is not centred: frame ``f`` covers samples ``[(f + 1) * hop - n_fft, (f + 1) * hop)``.
    """

    floor = 1e-5

    def __init__(self, sample_rate: int, hop: int, n_fft: int, n_mels: int) -> None:
        super().__init__()
        if n_fft < hop or n_fft % 2:
            raise ValueError(f"spectral_n_fft must be even and at least the hop ({hop}), got {n_fft}")
        self.hop, self.n_fft = hop, n_fft
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        bins = n_fft // 2 + 1
        if n_mels > 0:
            fb = torchaudio.functional.melscale_fbanks(bins, 0.0, sample_rate / 2, n_mels, sample_rate,
                                                       norm="slaney", mel_scale="slaney")
            self.register_buffer("fbank", fb, persistent=False)
        else:
            self.fbank = None
        self.bands = n_mels if n_mels > 0 else bins

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        t = wave.shape[-1]
        extra = math.ceil(t / self.hop) * self.hop - t
        x = nn.functional.pad(wave.reshape(-1, t).float(), (self.n_fft - self.hop, extra))
        mag = torch.stft(x, self.n_fft, self.hop, self.n_fft, self.window, center=False,
                         return_complex=True).abs()
        if self.fbank is not None:
            mag = torch.einsum("bkf,km->bmf", mag, self.fbank)
        return mag.clamp_min(self.floor).log()


class SpectralEncoder(nn.Module):
    """``[B, 1, T]`` waveform -> ``[B, dim, ceil(T / hop)]`` latent frames from a causal log-mel front.

    Config (:class:`~tokenizers_mm.speech.seanet.SEANetConfig`): ``spectral_n_fft`` (STFT window; ``None``:
    ``2 * hop``), ``spectral_mels`` (bands; 0: every linear bin), ``spectral_channels`` / ``spectral_layers``
    (width and causal ConvNeXt blocks), ``kernel_size`` (the embedding conv), ``last_kernel_size`` (the last conv).

    ``front`` / ``bottleneck`` / ``back`` split as in the SEANet encoder, so chunked encoding works the same way.
    """

    def __init__(self, cfg: SEANetConfig, sample_rate: int) -> None:
        super().__init__()
        self.cfg = cfg
        hop = cfg.hop_length
        c = cfg.spectral_channels
        spectrum = CausalLogMel(sample_rate, hop, cfg.spectral_n_fft or 2 * hop, cfg.spectral_mels)
        self.front = nn.Sequential(
            spectrum,
            nn.BatchNorm1d(spectrum.bands, affine=False),
            PaddedConv1d(spectrum.bands, c, cfg.kernel_size, causal=True, norm=False),
            ChannelLayerNorm(c),
            *[ConvNeXtBlock(c, causal=True) for _ in range(cfg.spectral_layers)],
        )
        self.bottleneck = (SequenceBottleneck(c, cfg.bottleneck, cfg.bottleneck_layers, True)
                           if cfg.bottleneck != "none" else None)
        self.back = nn.Sequential(ChannelLayerNorm(c),
                                  PaddedConv1d(c, cfg.dim, cfg.last_kernel_size, causal=True, norm=False))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        h = self.front(wave)
        if self.bottleneck is not None:
            h, _ = self.bottleneck(h)
        return self.back(h)


def spectral_receptive_field(cfg: SEANetConfig) -> int:
    """Samples of past context the front of a :class:`SpectralEncoder` needs (bottleneck excluded)."""
    hop = cfg.hop_length
    frames = (cfg.kernel_size - 1) + cfg.spectral_layers * (ConvNeXtBlock.default_kernel_size - 1)
    return (cfg.spectral_n_fft or 2 * hop) + frames * hop
