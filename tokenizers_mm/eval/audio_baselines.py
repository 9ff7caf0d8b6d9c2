"""Classical speech codec baselines (Opus, MP3) through soundfile / libsndfile, at matched bitrates.

Everything is encoded to and decoded from memory (``io.BytesIO``) with :func:`soundfile.write` /
:func:`soundfile.read`: Opus in an Ogg container (``format="OGG", subtype="OPUS"``), MP3 as a raw MPEG-1/2
Layer III stream (``format="MP3", subtype="MPEG_LAYER_III"``, LAME encoder, mpg123 decoder). The only rate
control libsndfile exposes is ``compression_level`` in ``[0, 1]`` (0 = highest bitrate) and, for MP3,
``bitrate_mode`` (``"CONSTANT"``, ``"AVERAGE"``, ``"VARIABLE"``; soundfile only applies it together with a
compression level, and libsndfile rejects it for Opus).

Measured with soundfile 0.14 / libsndfile 1.2.2 (libopus 1.4, LAME 3.100) on the vendored speech clips
resampled to 16 kHz mono (1-4 s):

* **Opus**: the nominal bitrate is linear in the level, from 6 kb/s (level 1) to ~256 kb/s (level 0);
  measured totals 8.2..261 kb/s on a 3.9 s clip, 8.8..13 kb/s at level 1 on 1-3 s clips. Every file carries
  a fixed ~869-byte Ogg header (OpusHead + an OpusTags page padded with zeros), i.e. +1.8 kb/s on a 3.9 s
  clip and +7 kb/s on a 1 s clip: see ``exclude_header``. The Ogg pre-skip is honoured on decoding, so the
  output is sample-aligned with the input (cross-correlation lag 0) and of the same length.
* **MP3** (default ``bitrate_mode="CONSTANT"``): CBR at the MPEG-2 bitrates 8, 16, 24, 32, 40, ..., 160 kb/s
  at 16 kHz (measured 8.2..165 kb/s). ``"AVERAGE"`` reaches ~11..109 kb/s continuously, ``"VARIABLE"`` only
  ~23..79 kb/s. Level 1.0 is rejected by libsndfile, so levels stop at :data:`MP3_MAX_LEVEL`. When LAME
  writes its Xing/Info frame, mpg123 trims the encoder delay and padding (gapless, lag 0); CBR frames too
  small to hold that frame (<= 32 kb/s at 16 kHz, <= 16 kb/s at 8 kHz) are decoded with a leading delay of
  exactly 1105 samples (576 LAME encoder delay + 529 decoder delay, :data:`MP3_PRIMING`, measured by
  cross-correlation at 8, 16 and 24 kHz) plus end padding; :func:`encode_decode` removes both.

Bytes (and so ``kbps = 8 * bytes / seconds / 1000``) include the container / stream overhead unless
``exclude_header=True``, which subtracts :func:`header_bytes` (the size of an empty file: 869 bytes for Opus,
0 for MP3, whose one Xing/Info frame then still counts).
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import numpy as np
import torch

from .audio_metrics import AudioMetrics

Codec = Literal["opus", "mp3"]
Mp3Mode = Literal["CONSTANT", "AVERAGE", "VARIABLE"]

#: ``codec -> (soundfile format, subtype)``.
FORMATS: dict[str, tuple[str, str]] = {"opus": ("OGG", "OPUS"), "mp3": ("MP3", "MPEG_LAYER_III")}
#: Sample rates libopus accepts; other inputs are resampled to the next higher one (48 kHz at most).
OPUS_RATES: tuple[int, ...] = (8000, 12000, 16000, 24000, 48000)
#: MPEG-1/2/2.5 Layer III sample rates; other inputs are resampled to the next higher one (48 kHz at most).
MP3_RATES: tuple[int, ...] = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
#: Leading samples of a decoded MP3 without a Xing/Info frame: LAME's 576-sample encoder delay + 529 (mpg123).
MP3_PRIMING = 1105
#: Largest compression level libsndfile accepts for MP3 (1.0 raises "Error set compression level").
MP3_MAX_LEVEL = 0.999


class CodecUnavailableError(RuntimeError):
    """soundfile / libsndfile cannot write the requested format."""


class CodedAudio(NamedTuple):
    """Result of :func:`at_bitrate`."""

    decoded: torch.Tensor  #: ``[T]`` float32 in ``[-1, 1]`` at the input sample rate, aligned with the input.
    kbps: float  #: measured bitrate, ``8 * bytes / seconds / 1000`` (header excluded if asked).
    level: float  #: libsndfile compression level used.
    num_bytes: int  #: encoded size, container included.


def max_level(codec: Codec) -> float:
    """Largest usable compression level (lowest bitrate) of a codec."""
    return MP3_MAX_LEVEL if codec == "mp3" else 1.0


def codec_rate(codec: Codec, sample_rate: int) -> int:
    """Sample rate the codec runs at for an input at ``sample_rate`` (itself if allowed, else the next higher)."""
    if codec not in FORMATS:
        raise ValueError(f"unknown codec {codec!r} (want 'opus' or 'mp3')")
    rates = OPUS_RATES if codec == "opus" else MP3_RATES
    if sample_rate in rates:
        return int(sample_rate)
    higher = [r for r in rates if r > sample_rate]
    return higher[0] if higher else rates[-1]


def write_bytes(wave: np.ndarray, rate: int, codec: Codec, level: float, mp3_mode: Mp3Mode | None) -> bytes:
    """Encode ``[T]`` float32 at an allowed ``rate`` to the codec's file bytes (no availability check)."""
    import soundfile as sf

    fmt, subtype = FORMATS[codec]
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format=fmt, subtype=subtype, compression_level=float(level),
             bitrate_mode=mp3_mode if codec == "mp3" else None)
    return buf.getvalue()


@functools.cache
def check_codec(codec: Codec) -> None:
    """Raise :class:`CodecUnavailableError` unless soundfile can write (and read back) ``codec`` in memory."""
    import soundfile as sf

    if codec not in FORMATS:
        raise ValueError(f"unknown codec {codec!r} (want 'opus' or 'mp3')")
    fmt, subtype = FORMATS[codec]
    where = f"soundfile {sf.__version__} / {sf.__libsndfile_version__}"
    if fmt not in sf.available_formats() or subtype not in sf.available_subtypes(fmt):
        raise CodecUnavailableError(f"{where} has no {fmt}/{subtype} ({codec}) support")
    try:
        data = write_bytes(np.zeros(1600, np.float32), 16000, codec, 0.5, "CONSTANT")
        sf.read(io.BytesIO(data), dtype="float32")
    except Exception as err:  # any failure means the format is unusable here
        raise CodecUnavailableError(f"{where} cannot write/read {fmt}/{subtype} ({codec}) in memory: {err}") from err


@functools.cache
def header_bytes(codec: Codec, sample_rate: int) -> int:
    """Size in bytes of an empty encoded file (fixed container overhead): 869 for Opus, 0 for MP3."""
    check_codec(codec)
    rate = codec_rate(codec, sample_rate)
    return len(write_bytes(np.zeros(0, np.float32), rate, codec, 0.5, "CONSTANT"))


def as_clip(wave: torch.Tensor | np.ndarray) -> np.ndarray:
    """``[T]`` float waveform (tensor or numpy) -> contiguous float32 numpy array."""
    w = wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave)
    if w.ndim != 1 or w.shape[0] == 0:
        raise ValueError(f"want a non-empty mono clip [T], got shape {w.shape}")
    return np.ascontiguousarray(w, dtype=np.float32)


def resample(w: np.ndarray, orig: int, new: int) -> np.ndarray:
    """Band-limited resampling (``torchaudio.functional.resample``) of a float32 ``[T]`` array."""
    if orig == new:
        return w
    import torchaudio.functional as AF

    return AF.resample(torch.from_numpy(w), orig, new).numpy()


def fit_length(w: np.ndarray, length: int) -> np.ndarray:
    """Trim or zero-pad ``[T']`` at the end to ``[length]``."""
    if w.shape[0] >= length:
        return w[:length]
    return np.pad(w, (0, length - w.shape[0]))


def encode_decode(wave: torch.Tensor | np.ndarray, sample_rate: int, codec: Codec, compression_level: float,
                  mp3_mode: Mp3Mode = "CONSTANT") -> tuple[torch.Tensor, int]:
    """Encode a clip with a classical codec in memory and decode it again, aligned with the input.

    Args:
        wave: ``[T]`` float mono waveform in ``[-1, 1]``.
        sample_rate: Hz. Rates the codec lacks (:data:`OPUS_RATES`, :data:`MP3_RATES`) are resampled to the
            next higher allowed rate for coding and back afterwards.
        codec: ``"opus"`` or ``"mp3"``.
        compression_level: libsndfile level in ``[0, 1]``, 0 = highest bitrate (MP3: at most
            :data:`MP3_MAX_LEVEL`).
        mp3_mode: MP3 ``bitrate_mode`` (ignored for Opus).
    Returns:
        ``(decoded, num_bytes)``: ``[T]`` float32 tensor at ``sample_rate`` clamped to ``[-1, 1]``, with the MP3
        priming delay removed when the stream has no gapless info, trimmed / zero-padded to ``T``; and the
        encoded size in bytes (container included).
    Raises:
        CodecUnavailableError: soundfile cannot write this format at all.
    """
    import soundfile as sf

    check_codec(codec)
    level = float(compression_level)
    if not 0.0 <= level <= max_level(codec):
        raise ValueError(f"{codec} compression_level must be in [0, {max_level(codec)}], got {level}")
    w = as_clip(wave)
    rate = codec_rate(codec, int(sample_rate))
    coded_in = resample(w, int(sample_rate), rate)
    data = write_bytes(coded_in, rate, codec, level, mp3_mode)
    dec, dec_rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    dec = dec[:, 0]
    if dec_rate != rate:  # not seen with libsndfile 1.2.2; keep the output at the coded rate regardless
        dec = resample(np.ascontiguousarray(dec), dec_rate, rate)
    if codec == "mp3" and dec.shape[0] >= coded_in.shape[0] + MP3_PRIMING:
        # No Xing/Info frame, so no gapless trimming by the decoder: drop the known encoder + decoder delay.
        dec = dec[MP3_PRIMING:]
    dec = fit_length(dec, coded_in.shape[0])
    dec = fit_length(resample(np.ascontiguousarray(dec), rate, int(sample_rate)), w.shape[0])
    return torch.from_numpy(np.clip(dec, -1.0, 1.0).astype(np.float32)), len(data)


def estimate_delay(ref: torch.Tensor | np.ndarray, est: torch.Tensor | np.ndarray, max_lag: int = 4000) -> int:
    """Lag in samples (positive: ``est`` is late) maximising the cross-correlation of two ``[T]`` clips."""
    a, b = as_clip(ref).astype(np.float64), as_clip(est).astype(np.float64)
    n = a.shape[0] + b.shape[0]
    corr = np.fft.irfft(np.fft.rfft(b, n) * np.conj(np.fft.rfft(a, n)), n)
    max_lag = min(max_lag, n // 2 - 1)
    lags = np.r_[np.arange(0, max_lag + 1), np.arange(-max_lag, 0)]
    vals = np.r_[corr[: max_lag + 1], corr[n - max_lag:]]
    return int(lags[int(np.argmax(vals))])


def search_level(kbps_at: Callable[[float], float], target: float, hi: float, tol: float, max_evals: int,
                 guess: float | None = None) -> float:
    """Level in ``[0, hi]`` whose (decreasing) bitrate ``kbps_at(level)`` is nearest ``target``.

    Evaluates the lowest bitrate (``hi``) and ``guess`` (or 0), completes a bracket of the target if needed,
    then alternates regula-falsi and bisection steps until a bitrate within ``tol * target`` is found, the
    bracket is narrower than ``1e-3`` or ``max_evals`` encodes were spent. Returns the best level seen (ties ->
    the lower bitrate); a target outside ``[kbps_at(hi), kbps_at(0)]`` gives the nearest end.
    """
    seen: dict[float, float] = {}

    def f(level: float) -> float:
        if level not in seen:
            seen[level] = kbps_at(level)
        return seen[level]

    def best() -> float:
        return min(seen, key=lambda lv: (abs(seen[lv] - target), seen[lv]))

    b, fb = hi, f(hi)
    if target <= fb:
        return best()
    a = 0.0 if guess is None else min(max(float(guess), 0.0), hi)
    fa = f(a)
    if fa <= target:  # the guess is on the low-bitrate side: it bounds from below, level 0 from above
        b, fb = a, fa
        a, fa = 0.0, f(0.0)
        if target >= fa:
            return best()
    while len(seen) < max_evals and abs(seen[best()] - target) > tol * target and b - a >= 1e-3:
        if len(seen) % 2 == 0 and fa > fb:
            t = (fa - target) / (fa - fb)
            level = a + min(max(t, 0.05), 0.95) * (b - a)
        else:
            level = 0.5 * (a + b)
        fl = f(level)
        if fl > target:
            a, fa = level, fl
        else:
            b, fb = level, fl
    return best()


def opus_level_guess(target_kbps: float) -> float:
    """libsndfile's Opus level for a nominal bitrate: ``kbps = 6 + 250 * (1 - level)`` (measured, see module doc)."""
    return 1.0 - (target_kbps - 6.0) / 250.0


def at_bitrate(wave: torch.Tensor | np.ndarray, sample_rate: int, codec: Codec, target_kbps: float,
               mp3_mode: Mp3Mode = "CONSTANT", exclude_header: bool = False, tol: float = 0.02,
               max_evals: int = 12) -> CodedAudio:
    """Code a clip at the compression level whose measured bitrate is nearest ``target_kbps``.

    The bitrate is measured on the actual file of this clip: ``8 * bytes / seconds / 1000`` with
    ``seconds = T / sample_rate``; ``bytes`` include the container (Ogg header ~869 bytes for Opus) unless
    ``exclude_header``. Reachable ranges at 16 kHz mono speech (totals, 1-4 s clips): Opus ~8.2..261 kb/s
    (6 kb/s payload at the lowest level), MP3 CBR 8.2..165 kb/s in MPEG-2 steps (8, 16, 24, 32, 40, 48, 56,
    64, 80, ...), MP3 ABR ~11..109 kb/s. A target outside the range gives the nearest end (check ``kbps``).

    Args:
        wave: ``[T]`` float mono waveform in ``[-1, 1]``.
        sample_rate: Hz.
        codec: ``"opus"`` or ``"mp3"``.
        target_kbps: wanted bitrate in kb/s.
        mp3_mode: MP3 ``bitrate_mode``.
        exclude_header: subtract :func:`header_bytes` before computing the bitrate.
        tol: stop searching once within ``tol * target_kbps``.
        max_evals: most encodes spent on the search (each ~10-70 ms per second of audio on one core).
    Returns:
        :class:`CodedAudio` ``(decoded [T] float32, kbps, level, num_bytes)``.
    """
    check_codec(codec)
    w = as_clip(wave)
    sr = int(sample_rate)
    seconds = w.shape[0] / sr
    rate = codec_rate(codec, sr)
    coded_in = resample(w, sr, rate)
    overhead = header_bytes(codec, sr) if exclude_header else 0

    def kbps_of(n_bytes: int) -> float:
        return 8.0 * (n_bytes - overhead) / seconds / 1000.0

    def kbps_at(level: float) -> float:
        return kbps_of(len(write_bytes(coded_in, rate, codec, level, mp3_mode)))

    guess = opus_level_guess(float(target_kbps)) if codec == "opus" else None
    level = search_level(kbps_at, float(target_kbps), max_level(codec), tol, max_evals, guess)
    decoded, n_bytes = encode_decode(w, sr, codec, level, mp3_mode)
    return CodedAudio(decoded, kbps_of(n_bytes), level, n_bytes)


def baseline_table(clips: Sequence[torch.Tensor | np.ndarray], sample_rate: int, targets_kbps: Sequence[float],
                   codecs: Sequence[Codec] = ("opus", "mp3"), mp3_mode: Mp3Mode = "CONSTANT",
                   exclude_header: bool = False, rate_tolerance: float = 0.1, stoi: bool = True,
                   pesq: bool = True) -> list[dict]:
    """Classical codecs at given bitrates, scored with :class:`~tokenizers_mm.eval.audio_metrics.AudioMetrics`.

    Each clip is coded on its own with :func:`at_bitrate` (its level searched per clip), then all decoded clips
    of a ``(codec, target)`` are scored against the originals.

    Args:
        clips: ``[T]`` float mono waveforms in ``[-1, 1]`` (lengths may differ), all at ``sample_rate``.
        sample_rate: Hz.
        targets_kbps: bitrates in kb/s.
        codecs: subset of ``("opus", "mp3")``.
        mp3_mode, exclude_header: passed to :func:`at_bitrate`.
        rate_tolerance: relative tolerance for the ``within_tolerance`` flag.
        stoi, pesq: compute these (slower) metrics.
    Returns:
        One dict per ``(codec, target)`` in ``codecs x targets_kbps`` order, never dropped: ``codec``,
        ``target_kbps``, ``kbps`` (mean measured), ``kbps_min``, ``kbps_max``, ``level_mean``,
        ``within_tolerance`` (``|kbps - target| <= rate_tolerance * target``; False when the codec cannot
        reach the target, e.g. below MP3's 8 kb/s or Opus's ~6 kb/s + header), ``exclude_header``, and the
        keys of :meth:`AudioMetrics.compute` (``mel_distance``, ``stft_distance``, ``si_sdr``, ``stoi``,
        ``pesq``, ``stoi_nan``, ``pesq_nan``, ``n_clips``, ``n_empty``).
    Raises:
        CodecUnavailableError: soundfile cannot write one of the codecs.
    """
    if not clips:
        raise ValueError("baseline_table needs at least one clip")
    waves = [torch.from_numpy(as_clip(c)) for c in clips]
    rows = []
    for codec in codecs:
        check_codec(codec)
        for target in targets_kbps:
            metrics = AudioMetrics(sample_rate, stoi=stoi, pesq=pesq)
            rates, levels = [], []
            for w in waves:
                res = at_bitrate(w, sample_rate, codec, target, mp3_mode=mp3_mode, exclude_header=exclude_header)
                metrics.update(w, res.decoded)
                rates.append(res.kbps)
                levels.append(res.level)
            kbps = float(np.mean(rates))
            row = {"codec": codec, "target_kbps": float(target), "kbps": kbps, "kbps_min": float(min(rates)),
                   "kbps_max": float(max(rates)), "level_mean": float(np.mean(levels)),
                   "within_tolerance": bool(math.isfinite(kbps) and abs(kbps - target) <= rate_tolerance * target),
                   "exclude_header": bool(exclude_header)}
            row.update(metrics.compute())
            rows.append(row)
    return rows
