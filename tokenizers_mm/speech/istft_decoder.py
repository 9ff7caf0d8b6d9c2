"""Frame-rate decoder with an inverse-STFT head (the Vocos / WavTokenizer decoder), an alternative to the
SEANet decoder's chain of transposed convolutions.

``[B, dim, F]`` latent frames -> ConvNeXt blocks at the frame rate -> per frame, the log magnitude and phase of
one STFT frame (``n_fft // 2 + 1`` bins, hop = the codec's hop) -> ``torch.istft`` -> ``[B, 1, F * hop]``.

Every layer works at the frame rate (or ``istft_upsample`` times it), so a step costs far less than upsampling
through the SEANet stages, and the decoder writes spectra directly, which is what the mel loss measures
(README, "Speech", has the measurements).

Not causal: a frame's convolutions see ``(kernel_size - 1) / 2`` frames ahead per block and the overlap-add
window reaches ``n_fft / 2`` samples ahead. The encoder stays causal (chunked encoding is unaffected).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torchaudio
from torch import nn

from .seanet import PaddedConvTranspose1d

if TYPE_CHECKING:
    from .seanet import SEANetConfig


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of ``[B, C, F]`` frames."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class ConvNeXtBlock(nn.Module):
    """Depthwise conv -> LayerNorm over channels -> 1x1 expand (GELU) -> 1x1 project, added to the input.
    ``[B, C, F]`` -> ``[B, C, F]``; ``causal`` pads the depthwise conv on the left only (frame ``f`` sees frames
    ``<= f``), else on both sides."""

    default_kernel_size = 7

    def __init__(self, channels: int, kernel_size: int = default_kernel_size, expansion: int = 3,
                 causal: bool = False) -> None:
        super().__init__()
        self.pad = (kernel_size - 1, 0) if causal else (kernel_size // 2, (kernel_size - 1) // 2)
        self.depthwise = nn.Conv1d(channels, channels, kernel_size, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, expansion * channels), nn.GELU(),
                                 nn.Linear(expansion * channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.depthwise(nn.functional.pad(x, self.pad)).transpose(1, 2)
        return x + self.mlp(self.norm(h)).transpose(1, 2)


def harmonic_combs(f0: torch.Tensor, n_fft: int, sample_rate: int) -> torch.Tensor:
    """``[K]`` fundamental frequencies (Hz) -> ``[K, n_fft // 2 + 1]`` harmonic combs on an STFT grid, each with mean 1.

    Each harmonic ``h * f0`` (up to the Nyquist frequency) is a raised-cosine lobe two bins wide on either side (the
    main lobe of a Hann window), so a comb is what the STFT of a pulse train at ``f0`` looks like bin by bin.
    """
    bins = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
    combs = []
    for f in f0.double().tolist():
        spacing = f * n_fft / sample_rate  # bins between harmonics
        harmonics = torch.arange(1, int(bins[-1] / spacing) + 2, dtype=torch.float64) * spacing
        u = (bins[:, None] - harmonics[None]).abs()
        comb = torch.where(u < 2, 0.5 * (1 + torch.cos(torch.pi * u / 2)), torch.zeros_like(u)).sum(1)
        combs.append(comb / comb.mean())
    return torch.stack(combs).float()


def cepstral_pitch(magnitude: torch.Tensor, sample_rate: int, f0_range: tuple[float, float], floor: float = 1e-5
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """STFT magnitudes ``[B, n_fft // 2 + 1, F]`` -> pitch ``[B, F]`` (Hz) and its cepstral peak ``[B, F]``.

    A voice's harmonics are a ripple of period ``f0`` along the log spectrum, so its real cepstrum peaks at the
    quefrency ``1 / f0``: the pitch is the highest cepstral peak between ``sample_rate / f0_high`` and
    ``sample_rate / f0_low`` samples, and the peak's height (about 0.1 and above for voiced frames) says how
    periodic the frame is.
    """
    n_fft = 2 * (magnitude.shape[1] - 1)
    cepstrum = torch.fft.irfft(magnitude.float().clamp_min(floor).log(), n=n_fft, dim=1)
    lo = max(1, math.floor(sample_rate / f0_range[1]))
    hi = min(n_fft // 2, math.ceil(sample_rate / f0_range[0]))
    strength, q = cepstrum[:, lo:hi + 1].max(dim=1)
    return sample_rate / (q + lo).float(), strength


class ISTFTDecoder(nn.Module):
    """``[B, dim, F]`` latent frames -> ``[B, 1, F * hop]`` waveform through ``istft_upsample`` STFT frames per latent
    frame.

    Config (:class:`~tokenizers_mm.speech.seanet.SEANetConfig`): ``istft_channels`` (backbone width),
    ``istft_layers`` (ConvNeXt blocks), ``istft_upsample`` (STFT frames per latent frame: a transposed conv
    before the blocks; the STFT hop is the codec's hop divided by it), ``istft_n_fft`` (window; ``None``:
    ``4 *`` the STFT hop).
    The magnitude is ``exp`` of the predicted log magnitude, capped at ``max_magnitude``.

    ``istft_harmonics`` (``K > 0``) makes the magnitude source-filter shaped: per STFT frame the head gives a log
    envelope ``e``, a per-bin voicing ``v`` in (0, 1) and logits over ``K`` fundamental frequencies log-spaced over
    ``istft_f0_range``; the magnitude is ``exp(e) * ((1 - v) + v * sum_k softmax_k * comb_k)`` with the fixed combs
    of :func:`harmonic_combs` (``sample_rate`` maps their Hz to bins). The harmonics then sit where a periodic voice puts them from the first step (the
    head picks a pitch instead of drawing every harmonic bin by bin), and the choice is a softmax, so the
    spectral losses move it smoothly. ``K = 0``: the head predicts each bin's log magnitude directly.

    In training with a reference, a harmonic head keeps a ``pitch`` term in ``training_terms``: the cross-entropy
    of its pitch logits against :func:`cepstral_pitch` of the reference on the frames whose cepstral peak exceeds
    ``voicing_threshold`` (the spectral losses alone leave the pitch softmax spread over many candidates).

    ``istft_phase`` says where the phase comes from: ``learned`` (the head predicts it, Vocos) or ``griffin_lim``
    (the head predicts magnitudes only; decoding recovers a phase with ``griffin_lim_iters`` Griffin-Lim
    iterations from a zero-phase start, so it is deterministic). With ``griffin_lim``, training passes the
    reference waveform, whose own phase turns the predicted magnitudes into the training reconstruction: the
    losses then judge the magnitudes alone, which is all that the decoder learns.
    """

    max_magnitude = 100.0
    magnitude_floor = 1e-5
    griffin_lim_momentum = 0.99
    voicing_threshold = 0.1

    def __init__(self, cfg: SEANetConfig, sample_rate: int = 16000) -> None:
        super().__init__()
        up = cfg.istft_upsample
        if up < 1 or cfg.hop_length % up:
            raise ValueError(f"istft_upsample must be a positive divisor of the hop ({cfg.hop_length}), got {up}")
        self.hop = cfg.hop_length // up
        self.hop_ratio = up
        self.n_fft = cfg.istft_n_fft or 4 * self.hop
        if self.n_fft < self.hop or self.n_fft % 2:
            raise ValueError(f"istft_n_fft must be even and at least the hop ({self.hop}), got {self.n_fft}")
        if cfg.istft_phase not in ("learned", "griffin_lim"):
            raise ValueError(f"istft_phase must be 'learned' or 'griffin_lim', got {cfg.istft_phase!r}")
        self.learned_phase = cfg.istft_phase == "learned"
        self.griffin_lim_iters = cfg.griffin_lim_iters
        c = cfg.istft_channels
        self.first = nn.Conv1d(cfg.dim, c, cfg.kernel_size, padding=cfg.kernel_size // 2)
        self.upsample = PaddedConvTranspose1d(c, c, 2 * up, up, norm=False) if up > 1 else nn.Identity()
        self.blocks = nn.Sequential(*[ConvNeXtBlock(c) for _ in range(cfg.istft_layers)])
        self.norm = nn.LayerNorm(c)
        bins = self.n_fft // 2 + 1
        self.harmonics = int(cfg.istft_harmonics)
        if self.harmonics < 0:
            raise ValueError(f"istft_harmonics must be >= 0 (0: no harmonic head), got {cfg.istft_harmonics}")
        outputs = 2 * bins if self.learned_phase else bins
        if self.harmonics:
            lo, hi = (float(f) for f in cfg.istft_f0_range)
            if not 0 < lo < hi < sample_rate / 2:
                raise ValueError(f"istft_f0_range must be [low, high] Hz with 0 < low < high < {sample_rate / 2:g}, "
                                 f"got {list(cfg.istft_f0_range)}")
            f0 = torch.logspace(math.log10(lo), math.log10(hi), self.harmonics)
            self.register_buffer("pitches", f0, persistent=False)
            self.register_buffer("combs", harmonic_combs(f0, self.n_fft, sample_rate), persistent=False)
            self.sample_rate, self.f0_range = int(sample_rate), (lo, hi)
            outputs += bins + self.harmonics  # per-bin voicing, f0 logits
        self.head = nn.Linear(c, outputs)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self.training_terms: dict[str, torch.Tensor] = {}
        if not self.learned_phase:
            self.register_buffer("head_initialized", torch.zeros((), dtype=torch.bool))

    def head_output(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``[B, dim, F]`` -> magnitude ``[B, n_fft // 2 + 1, F']`` and the learned phase (``None`` without one);
        ``F' = istft_upsample * F``."""
        mag, phase, _ = self.head_outputs(z)
        return mag, phase

    def head_outputs(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """:meth:`head_output` plus the pitch logits ``[B, F', K]`` of a harmonic head (``None`` without one)."""
        h = self.blocks(self.upsample(self.first(z))).transpose(1, 2)
        out = self.head(self.norm(h)).float()  # [B, F, outputs]
        bins = self.n_fft // 2 + 1
        log_mag, out = out[..., :bins], out[..., bins:]
        phase = logits = None
        if self.learned_phase:
            phase, out = out[..., :bins].transpose(1, 2), out[..., bins:]
        if self.harmonics:
            voicing, logits = torch.sigmoid(out[..., :bins]), out[..., bins:]
            comb = torch.softmax(logits, dim=-1) @ self.combs  # [B, F, bins]
            fine = (1 - voicing) + voicing * comb
            log_mag = log_mag + fine.clamp_min(self.magnitude_floor).log()
        return log_mag.transpose(1, 2).exp().clamp(max=self.max_magnitude), phase, logits

    def training_losses(self, pitch_logits: torch.Tensor | None, reference: torch.Tensor) -> dict[str, torch.Tensor]:
        """The ``pitch`` term (see the class docstring) for pitch logits ``[B, F, K]`` and the reference's STFT
        magnitudes ``[B, bins, F]``; empty without a harmonic head."""
        if pitch_logits is None:
            return {}
        f0, strength = cepstral_pitch(reference, self.sample_rate, self.f0_range, self.magnitude_floor)
        target = (f0.log()[..., None] - self.pitches.log()).abs().argmin(dim=-1)  # nearest candidate [B, F]
        voiced = (strength > self.voicing_threshold).float()
        ce = nn.functional.cross_entropy(pitch_logits.transpose(1, 2), target, reduction="none")
        return {"pitch": (ce * voiced).sum() / voiced.sum().clamp_min(1.0)}

    @torch.no_grad()
    def init_head_bias(self, reference: torch.Tensor, frames: int) -> None:
        """Set the magnitude bias of the head to the mean log magnitude per bin of ``reference`` ``[B, 1, T]``
        (the first training batch), once: the decoder then starts from the average spectrum of the data instead
        of a flat one, which Adam's bounded steps would take thousands of steps to reach (log magnitudes span
        about -11 to 4)."""
        spec = self.reference_spectrum(reference, frames).abs().clamp_min(self.magnitude_floor).log()
        self.head.bias[: spec.shape[1]] = spec.mean(dim=(0, 2))
        self.head_initialized.fill_(True)

    def reference_spectrum(self, reference: torch.Tensor, frames: int) -> torch.Tensor:
        """Complex STFT ``[B, n_fft // 2 + 1, frames]`` of ``[B, 1, T]`` audio on this decoder's grid."""
        x = nn.functional.pad(reference.reshape(reference.shape[0], -1).float(),
                              (0, max(0, frames * self.hop - reference.shape[-1])))
        spec = torch.stft(x, self.n_fft, self.hop, self.n_fft, self.window, center=True, return_complex=True)
        return spec[..., :frames]

    def forward(self, z: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        """``z [B, dim, F]`` -> ``[B, 1, F * hop]``; ``reference`` (``[B, 1, T]``, ``griffin_lim`` only): the audio
        whose phase the reconstruction takes instead of a Griffin-Lim one. In training with a reference, the
        :meth:`training_losses` of this pass are left in ``training_terms`` (else it is empty)."""
        if reference is not None and self.training and not self.learned_phase and not bool(self.head_initialized):
            self.init_head_bias(reference, z.shape[-1] * self.hop_ratio)
        mag, phase, logits = self.head_outputs(z)
        length = mag.shape[-1] * self.hop
        self.training_terms: dict[str, torch.Tensor] = {}
        if reference is not None and (phase is None or self.training):
            spec = self.reference_spectrum(reference, mag.shape[-1])
            if self.training:
                self.training_terms = self.training_losses(logits, spec.abs())
            if phase is None:
                phase = spec.angle()
        if phase is None:
            # a centred STFT of F * hop samples has F + 1 frames: the last one repeats frame F - 1
            wave = torchaudio.functional.griffinlim(
                nn.functional.pad(mag, (0, 1), mode="replicate"), self.window, self.n_fft, self.hop, self.n_fft,
                power=1.0, n_iter=self.griffin_lim_iters, momentum=self.griffin_lim_momentum, length=length,
                rand_init=False)
        else:
            wave = torch.istft(torch.polar(mag, phase), self.n_fft, self.hop, self.n_fft, self.window,
                               center=True, length=length)
        return wave.unsqueeze(1).to(z.dtype)

    @property
    def last_layer_weight(self) -> torch.Tensor:
        """Weight of the spectral head (for gradient-based loss weighting)."""
        return self.head.weight
