"""Speech / audio quality metrics: multi-scale mel and STFT distances, SI-SDR, STOI, PESQ, codebook usage.

Waveforms are mono float signals in ``[-1, 1]`` given either as one clip ``[T]`` or as a batch ``[B, 1, T]``
(torch tensors or numpy arrays; other shapes raise ``ValueError``). ``ref`` is the original, ``est`` the
reconstruction; both must have the same shape and sample rate.

Functions taking a ``reduction`` argument return, for ``"mean"`` (default), a Python float averaged over the
batch (a single clip is a batch of one), and for ``"none"`` a ``[B]`` float64 tensor of per-clip values.

Conventions (all metrics computed in float64/float32 on CPU unless the input already lives elsewhere):

* :func:`mel_distance` follows the DAC evaluation convention, i.e. the log term of audiotools'
  ``MelSpectrogramLoss`` with its default scales (:data:`MEL_SCALES`: ``window 2048 / hop 512 / 150 mels``
  and ``window 512 / hop 128 / 80 mels``): a Hann-window magnitude mel spectrogram (Slaney mel scale and
  normalisation, as librosa), clamped at ``1e-5``, squared and ``log10``-ed; the distance is the mean
  absolute difference of these log-mel values, **summed** over the scales (audiotools' linear-magnitude
  term is left out). Lower is better, 0 for identical signals. Frames are centred with zero padding, so
  clips shorter than a window still work.
* :func:`stft_distance` is the same on linear-frequency magnitudes for the resolutions in
  :data:`STFT_SCALES` (``(2048, 512)``, ``(1024, 256)``, ``(512, 128)``), summed over resolutions.
* :func:`si_sdr` is the scale-invariant signal-to-distortion ratio in dB on zero-mean signals. It is this
  project's own rather than torchmetrics': its floor scales with the estimate, so it is exactly scale-invariant
  and bounded (identical signals give 100 dB, where torchmetrics' absolute epsilon gives an unbounded value).
* :func:`stoi_score` is STOI (torchmetrics' wrapper of ``pystoi``, 0..1, higher is better).
* :func:`pesq_score` is PESQ MOS-LQO (torchmetrics' wrapper of ``pesq``; wide-band P.862.2 at 16 kHz, narrow-band
  P.862.1 at 8 kHz, other rates resampled to 16 kHz first). Undefined results (silence, clips shorter than
  0.25 s, no utterance detected) give ``nan`` with a logged warning instead of an exception.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

log = logging.getLogger(__name__)

Wave = torch.Tensor | np.ndarray
Reduction = Literal["mean", "none"]

#: ``(window = n_fft, hop, n_mels)`` of the multi-scale mel distance (DAC evaluation convention).
MEL_SCALES: tuple[tuple[int, int, int], ...] = ((2048, 512, 150), (512, 128, 80))
#: ``(window = n_fft, hop)`` of the multi-resolution STFT distance.
STFT_SCALES: tuple[tuple[int, int], ...] = ((2048, 512), (1024, 256), (512, 128))
#: Magnitudes are clamped at this value before ``log10`` (DAC's ``clamp_eps``).
CLAMP_EPS = 1e-5
#: Relative floor of :func:`si_sdr` (times the estimate's energy), bounding it to +-100 dB.
SI_SDR_EPS = 1e-10
#: Sample rates PESQ accepts natively; others are resampled to 16 kHz.
PESQ_RATES = (8000, 16000)


# ---------------------------------------------------------------------------------------------- shape helpers


def as_batch(x: Wave, name: str = "wave") -> torch.Tensor:
    """``[T]`` or ``[B, 1, T]`` (tensor or numpy) -> float32 ``[B, T]`` tensor (a ``[T]`` clip gives ``B = 1``)."""
    t = (x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))).detach()
    if t.ndim == 1:
        t = t[None]
    elif t.ndim == 3 and t.shape[1] == 1:
        t = t[:, 0]
    else:
        raise ValueError(f"{name}: want a mono clip [T] or a batch [B, 1, T], got shape {tuple(t.shape)}")
    if t.shape[-1] == 0:
        raise ValueError(f"{name}: empty waveform")
    return t.float()


def pair(ref: Wave, est: Wave) -> tuple[torch.Tensor, torch.Tensor]:
    """Both waveforms as ``[B, T]`` float32 on ``ref``'s device; raises on a shape mismatch."""
    r, e = as_batch(ref, "ref"), as_batch(est, "est")
    if r.shape != e.shape:
        raise ValueError(f"shape mismatch: ref {tuple(r.shape)} vs est {tuple(e.shape)}")
    return r, e.to(r.device)


def reduce_batch(values: torch.Tensor, reduction: Reduction) -> float | torch.Tensor:
    """``[B]`` per-clip values -> float mean (``"mean"``, nan-aware: nan only if all are nan) or the tensor."""
    if reduction == "none":
        return values
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if finite.numel() else float("nan")


# ------------------------------------------------------------------------------------- spectral distances


@functools.lru_cache(maxsize=32)
def mel_transform(sample_rate: int, n_fft: int, hop: int, n_mels: int, device: str = "cpu") -> torch.nn.Module:
    """Cached magnitude mel spectrogram (Hann window ``n_fft``, centred with zero padding, Slaney mels)."""
    import torchaudio

    with warnings.catch_warnings():
        # Low sample rates leave a few of the lowest mel filters empty; they are identical for ref and est.
        warnings.filterwarnings("ignore", message=".*mel filterbank has all zero values.*")
        m = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=n_fft, win_length=n_fft, hop_length=hop, n_mels=n_mels,
            power=1.0, center=True, pad_mode="constant", norm="slaney", mel_scale="slaney",
        )
    return m.to(device)


def log_spec(mag: torch.Tensor) -> torch.Tensor:
    """``log10(clamp(mag, CLAMP_EPS) ** 2)`` (log power in bels)."""
    return 2.0 * torch.log10(mag.clamp_min(CLAMP_EPS))


def mel_distance(ref: Wave, est: Wave, sample_rate: int, scales: Sequence[tuple[int, int, int]] = MEL_SCALES,
                 reduction: Reduction = "mean") -> float | torch.Tensor:
    """Multi-scale log-mel L1 distance (DAC convention, see module docstring).

    Args:
        ref, est: ``[T]`` or ``[B, 1, T]`` float waveforms in ``[-1, 1]``.
        sample_rate: Hz.
        scales: ``(window, hop, n_mels)`` per scale.
        reduction: ``"mean"`` -> float, ``"none"`` -> ``[B]`` float64 tensor.
    Returns:
        Sum over scales of the mean ``|log10(mel_ref^2) - log10(mel_est^2)|`` (bels, >= 0; 0 when identical).
    """
    r, e = pair(ref, est)
    total = torch.zeros(r.shape[0], dtype=torch.float64)
    for n_fft, hop, n_mels in scales:
        m = mel_transform(int(sample_rate), int(n_fft), int(hop), int(n_mels), str(r.device))
        diff = (log_spec(m(r)) - log_spec(m(e))).abs()
        total += diff.flatten(1).mean(1).double().cpu()
    return reduce_batch(total, reduction)


def stft_distance(ref: Wave, est: Wave, sample_rate: int, scales: Sequence[tuple[int, int]] = STFT_SCALES,
                  reduction: Reduction = "mean") -> float | torch.Tensor:
    """Multi-resolution log-magnitude STFT L1 distance.

    Args:
        ref, est: ``[T]`` or ``[B, 1, T]`` float waveforms in ``[-1, 1]``.
        sample_rate: Hz (unused by the computation, which works in samples; kept for a uniform signature).
        scales: ``(window = n_fft, hop)`` per resolution (Hann window, centred, zero padded).
        reduction: ``"mean"`` -> float, ``"none"`` -> ``[B]`` float64 tensor.
    Returns:
        Sum over resolutions of the mean ``|log10(|X_ref|^2) - log10(|X_est|^2)|`` (bels, magnitudes clamped
        at ``1e-5``; 0 when identical).
    """
    del sample_rate
    r, e = pair(ref, est)
    total = torch.zeros(r.shape[0], dtype=torch.float64)
    for n_fft, hop in scales:
        window = torch.hann_window(n_fft, device=r.device)

        def mag(x: torch.Tensor, n_fft: int = n_fft, hop: int = hop, window: torch.Tensor = window) -> torch.Tensor:
            return torch.stft(x, n_fft, hop_length=hop, win_length=n_fft, window=window, center=True,
                              pad_mode="constant", return_complex=True).abs()

        diff = (log_spec(mag(r)) - log_spec(mag(e))).abs()
        total += diff.flatten(1).mean(1).double().cpu()
    return reduce_batch(total, reduction)


# ------------------------------------------------------------------------------------------------- SI-SDR


def si_sdr(ref: Wave, est: Wave, reduction: Reduction = "mean") -> float | torch.Tensor:
    """Scale-invariant signal-to-distortion ratio in dB.

    Both signals are made zero-mean; with ``a = <est, ref> / <ref, ref>`` the target is ``s = a * ref``, the
    residual ``n = est - s`` and ``SI-SDR = 10 log10((|s|^2 + d) / (|n|^2 + d))`` where
    ``d = SI_SDR_EPS * |est|^2 + 1e-30`` (float64). Because ``d`` scales with ``est`` the value is exactly
    invariant to rescaling either signal, and it is bounded by ``+-10 log10(1 / SI_SDR_EPS) = +-100`` dB:
    identical (or rescaled) signals give 100 dB, a silent reference -100 dB (0 dB if both are silent),
    never nan or inf.

    Args:
        ref, est: ``[T]`` or ``[B, 1, T]`` float waveforms.
        reduction: ``"mean"`` -> float mean over clips, ``"none"`` -> ``[B]`` float64 tensor.
    """
    r, e = pair(ref, est)
    r = r.double().cpu()
    e = e.double().cpu()
    r = r - r.mean(-1, keepdim=True)
    e = e - e.mean(-1, keepdim=True)
    energy = (r * r).sum(-1, keepdim=True)
    alpha = torch.where(energy > 0, (e * r).sum(-1, keepdim=True) / energy.clamp_min(1e-300), 0.0)
    target = alpha * r
    noise = e - target
    d = SI_SDR_EPS * (e * e).sum(-1) + 1e-30
    value = 10.0 * torch.log10(((target * target).sum(-1) + d) / ((noise * noise).sum(-1) + d))
    return reduce_batch(value, reduction)


# ---------------------------------------------------------------------------------------------- STOI / PESQ


def to_numpy_clips(ref: Wave, est: Wave) -> tuple[np.ndarray, np.ndarray]:
    """``[B, T]`` float64 numpy arrays of both waveforms (shape-checked)."""
    r, e = pair(ref, est)
    return r.double().cpu().numpy(), e.double().cpu().numpy()


def stoi_score(ref: Wave, est: Wave, sample_rate: int, extended: bool = False,
               reduction: Reduction = "mean") -> float | torch.Tensor:
    """Short-time objective intelligibility (``pystoi.stoi``; resamples internally to 10 kHz).

    Args:
        ref, est: ``[T]`` or ``[B, 1, T]`` float waveforms in ``[-1, 1]``, any sample rate.
        sample_rate: Hz.
        extended: ESTOI instead of STOI.
        reduction: ``"mean"`` -> float (nan-aware mean), ``"none"`` -> ``[B]`` float64 tensor.
    Returns:
        STOI in ``[0, 1]`` (1 for identical speech). ``nan`` (with a logged warning) for a silent reference or
        when fewer than 30 non-silent 25.6 ms frames remain (pystoi's ``1e-5`` sentinel).
    """
    from torchmetrics.functional.audio import short_time_objective_intelligibility

    r, e = to_numpy_clips(ref, est)
    out = torch.empty(r.shape[0], dtype=torch.float64)
    for i in range(r.shape[0]):
        if not np.any(r[i]):
            log.warning("STOI undefined for a silent reference (%d samples at %d Hz): nan", r.shape[1], sample_rate)
            out[i] = math.nan
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = float(short_time_objective_intelligibility(torch.from_numpy(e[i]), torch.from_numpy(r[i]),
                                                                int(sample_rate), extended=extended))
        if any("Not enough STFT frames" in str(w.message) for w in caught):
            log.warning("STOI undefined: too little non-silent speech in a clip of %d samples (%.3f s) at %d Hz: "
                        "nan", r.shape[1], r.shape[1] / sample_rate, sample_rate)
            value = math.nan
        out[i] = value
    return reduce_batch(out, reduction)


def pesq_one(ref: np.ndarray, est: np.ndarray, sample_rate: int) -> float:
    """PESQ of one ``[T]`` float64 clip pair at 8 kHz (``nb``) or 16 kHz (``wb``); nan on pesq's errors."""
    from pesq import PesqError
    from torchmetrics.functional.audio import perceptual_evaluation_speech_quality

    n = ref.shape[-1]
    if not np.any(ref) or not np.any(est):
        which = "reference" if not np.any(ref) else "estimate"
        log.warning("PESQ undefined for a silent %s (%d samples, %.3f s at %d Hz): nan", which, n,
                    n / sample_rate, sample_rate)
        return math.nan
    mode = "nb" if sample_rate == 8000 else "wb"
    try:
        return float(perceptual_evaluation_speech_quality(torch.from_numpy(est), torch.from_numpy(ref), sample_rate,
                                                          mode))
    except (PesqError, ValueError) as err:  # ValueError: pesq's wrapper on NaN internals (near-silent input)
        msg = err.args[0].decode() if err.args and isinstance(err.args[0], bytes) else str(err)
        log.warning("PESQ failed on a clip of %d samples (%.3f s at %d Hz): %s: %s; nan", n, n / sample_rate,
                    sample_rate, type(err).__name__, msg)
        return math.nan


def pesq_score(ref: Wave, est: Wave, sample_rate: int, reduction: Reduction = "mean") -> float | torch.Tensor:
    """PESQ MOS-LQO (``pesq.pesq``); never raises on degenerate clips.

    Args:
        ref, est: ``[T]`` or ``[B, 1, T]`` float waveforms in ``[-1, 1]``.
        sample_rate: Hz; 16000 -> wide-band (P.862.2, about 1.04..4.64), 8000 -> narrow-band (P.862.1,
            about 1.02..4.55); any other rate is resampled to 16 kHz (``torchaudio.functional.resample``) and
            scored wide-band.
        reduction: ``"mean"`` -> float (nan-aware mean), ``"none"`` -> ``[B]`` float64 tensor.
    Returns:
        Higher is better. ``nan`` with a logged warning (naming the clip length) for silence, clips shorter
        than 0.25 s or when PESQ detects no utterance.
    """
    r, e = pair(ref, est)
    rate = int(sample_rate)
    if rate not in PESQ_RATES:
        import torchaudio.functional as AF

        r = AF.resample(r.cpu(), rate, 16000)
        e = AF.resample(e.cpu(), rate, 16000)
        rate = 16000
    rn, en = r.double().cpu().numpy(), e.double().cpu().numpy()
    out = torch.tensor([pesq_one(rn[i], en[i], rate) for i in range(rn.shape[0])], dtype=torch.float64)
    return reduce_batch(out, reduction)


# -------------------------------------------------------------------------------------------- codebooks


def codebook_usage(ids: torch.Tensor, codebook_size: int) -> list[dict[str, float]]:
    """Per-codebook statistics of token ids from a residual / multi-codebook quantiser.

    Args:
        ids: ``[B, n_q, F]`` integer ids in ``[0, codebook_size)`` (``F`` frames, ``n_q`` codebooks).
        codebook_size: entries per codebook.
    Returns:
        ``n_q`` dicts (codebook order) from :func:`tokenizers_mm.quantize.codebook_stats`: ``usage``
        (fraction of entries used, ``[0, 1]``), ``perplexity`` (``2 ** entropy``) and ``entropy_bits``.
    """
    from tokenizers_mm.quantize import codebook_stats

    ids = torch.as_tensor(ids)
    if ids.ndim != 3:
        raise ValueError(f"want ids [B, n_q, F], got shape {tuple(ids.shape)}")
    return [codebook_stats(ids[:, q], codebook_size) for q in range(ids.shape[1])]


# ---------------------------------------------------------------------------------------------- accumulator


class AudioMetrics:
    """Accumulates per-clip metrics over batches of (possibly padded) clips.

    Each clip is scored on its real samples only (``mask`` True), so padding never enters a metric. Clips
    with no real samples are skipped (and counted in ``n_empty``).

    Args:
        sample_rate: Hz of every clip passed to :meth:`update`.
        stoi: compute STOI (about 25 ms per second of audio).
        pesq: compute PESQ (about 15 ms per second of audio at 16 kHz).
    """

    KEYS = ("mel_distance", "stft_distance", "si_sdr", "stoi", "pesq")

    def __init__(self, sample_rate: int, stoi: bool = True, pesq: bool = True) -> None:
        self.sample_rate = int(sample_rate)
        self.use_stoi = stoi
        self.use_pesq = pesq
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self.values: dict[str, list[float]] = {k: [] for k in self.KEYS}
        self.n_empty = 0

    def update(self, ref: Wave, est: Wave, mask: Wave | None = None) -> None:
        """Score a batch.

        Args:
            ref, est: ``[B, 1, T]`` (or one clip ``[T]``) float waveforms in ``[-1, 1]``.
            mask: bool, same shape, True on real samples; None means all samples are real.
        """
        r, e = pair(ref, est)
        if mask is None:
            m = torch.ones_like(r, dtype=torch.bool)
        else:
            m = as_batch(mask, "mask").bool().to(r.device)
            if m.shape != r.shape:
                raise ValueError(f"mask shape {tuple(m.shape)} does not match the waveforms {tuple(r.shape)}")
        sr = self.sample_rate
        for i in range(r.shape[0]):
            ri, ei = r[i][m[i]], e[i][m[i]]
            if ri.numel() == 0:
                self.n_empty += 1
                continue
            self.values["mel_distance"].append(float(mel_distance(ri, ei, sr)))
            self.values["stft_distance"].append(float(stft_distance(ri, ei, sr)))
            self.values["si_sdr"].append(float(si_sdr(ri, ei)))
            if self.use_stoi:
                self.values["stoi"].append(float(stoi_score(ri, ei, sr)))
            if self.use_pesq:
                self.values["pesq"].append(float(pesq_score(ri, ei, sr)))

    def compute(self) -> dict[str, float]:
        """Means over all scored clips.

        Returns:
            ``mel_distance``, ``stft_distance``, ``si_sdr`` (dB), and when enabled ``stoi`` and ``pesq``
            (nan-aware means; nan if every clip was nan), ``stoi_nan`` / ``pesq_nan`` (number of clips where the
            metric was undefined), ``n_clips`` (clips scored) and ``n_empty`` (clips skipped, no real samples).
        """
        out: dict[str, float] = {}
        for k in self.KEYS:
            if k == "stoi" and not self.use_stoi or k == "pesq" and not self.use_pesq:
                continue
            v = np.asarray(self.values[k], dtype=np.float64)
            finite = v[~np.isnan(v)]
            out[k] = float(finite.mean()) if finite.size else float("nan")
            if k in ("stoi", "pesq"):
                out[f"{k}_nan"] = float(np.isnan(v).sum())
        out["n_clips"] = float(len(self.values["si_sdr"]))
        out["n_empty"] = float(self.n_empty)
        return out
