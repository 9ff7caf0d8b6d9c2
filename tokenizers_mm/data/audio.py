"""Audio decoding and transforms: flac / wav / ogg bytes -> mono float ``[1, T]`` at a target rate."""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import soundfile as sf
import torch
import torchaudio

AUDIO_EXTENSIONS = ("flac", "wav", "ogg")


def decode_audio(data: bytes) -> tuple[torch.Tensor, int]:
    """Decode audio bytes with soundfile.

    Returns ``(wave, sample_rate)`` with ``wave`` float32 ``[C, T]`` in ``[-1, 1]``.
    Raises ``ValueError`` when the bytes are not readable audio or hold no samples.
    """
    try:
        arr, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        raise ValueError(f"not decodable audio ({len(data)} bytes): {exc}") from exc
    if arr.shape[0] == 0:
        raise ValueError("audio file holds no samples")
    return torch.from_numpy(np.ascontiguousarray(arr.T)), int(sr)


@lru_cache(maxsize=32)
def _resampler(orig: int, new: int) -> torchaudio.transforms.Resample:
    return torchaudio.transforms.Resample(orig, new)


def to_mono(wave: torch.Tensor) -> torch.Tensor:
    """``[C, T]`` -> ``[1, T]`` by averaging channels."""
    return wave.mean(dim=0, keepdim=True) if wave.shape[0] > 1 else wave


def resample(wave: torch.Tensor, orig_sr: int, target_sr: int) -> torch.Tensor:
    """Resample ``[C, T]`` from ``orig_sr`` to ``target_sr`` (torchaudio sinc interpolation, cached kernels)."""
    if orig_sr == target_sr:
        return wave
    return _resampler(int(orig_sr), int(target_sr))(wave)


def loudness_normalize(wave: torch.Tensor, sample_rate: int, target_lufs: float = -23.0,
                       peak: float = 0.99) -> torch.Tensor:
    """Scale ``[1, T]`` to ``target_lufs`` (ITU-R BS.1770 via torchaudio), never past ``peak``.

    Clips shorter than the 400 ms loudness window and silent clips are returned unchanged.
    """
    if wave.shape[-1] < int(0.4 * sample_rate):
        return wave
    lufs = float(torchaudio.functional.loudness(wave, sample_rate))
    if not math.isfinite(lufs):
        return wave
    gain = 10.0 ** ((target_lufs - lufs) / 20.0)
    max_abs = float(wave.abs().max())
    if max_abs * gain > peak:
        gain = peak / max_abs
    return wave * gain


def crop_start(length: int, num_samples: int, mode: str, rng: random.Random) -> int:
    """First sample of the ``num_samples`` window cut from a clip of ``length`` samples.

    ``mode`` is ``random`` (training: a uniform start in ``[0, length - num_samples]``, one ``rng.randint``
    draw) or ``start`` (evaluation: 0). Clips shorter than the window start at 0 without drawing.
    """
    if mode not in ("random", "start"):
        raise ValueError(f"audio crop mode must be 'random' or 'start', got {mode!r}")
    if length < num_samples or mode == "start":
        return 0
    return rng.randint(0, length - num_samples)


def crop_or_pad(wave: torch.Tensor, num_samples: int, mode: str, rng: random.Random
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut or zero-pad ``[1, T]`` to exactly ``num_samples``.

    ``mode`` is ``random`` (training: a random window) or ``start`` (evaluation: the first window).
    Returns ``(wave [1, N], mask [1, N] bool)`` where ``mask`` is True on real samples, False on padding.
    """
    wave, mask, _ = crop_or_pad_at(wave, num_samples, mode, rng)
    return wave, mask


def crop_or_pad_at(wave: torch.Tensor, num_samples: int, mode: str, rng: random.Random
                   ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """:func:`crop_or_pad` that also returns the window's first sample (0 for padded clips)."""
    t = wave.shape[-1]
    start = crop_start(t, num_samples, mode, rng)
    if t >= num_samples:
        out = wave[..., start:start + num_samples]
        return out, torch.ones_like(out, dtype=torch.bool), start
    mask = torch.zeros(wave.shape[0], num_samples, dtype=torch.bool)
    mask[:, :t] = True
    return torch.nn.functional.pad(wave, (0, num_samples - t)), mask, 0


def crop_frames(feats: np.ndarray | torch.Tensor, start_seconds: float, frame_rate: float, num_frames: int,
                valid: np.ndarray | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut the time window of an audio crop out of per-frame features, zero-padded to ``num_frames``.

    Args:
        feats: ``[T', D]`` features of the whole clip; frame ``i`` covers ``[i, i + 1) / frame_rate`` seconds.
        start_seconds: where the audio crop starts in the clip (``>= 0``).
        frame_rate: frames per second of ``feats`` (``> 0``).
        num_frames: frames of the output window (the clip length times ``frame_rate``, rounded).
        valid: optional ``[T']`` bool mask of meaningful frames (False frames stay False).

    Returns ``(window [num_frames, D] float32, mask [num_frames] bool)``: the window starts at frame
    ``round(start_seconds * frame_rate)``; frames past the end of ``feats`` are zeros with mask False.
    """
    if frame_rate <= 0:
        raise ValueError(f"feature frame rate must be > 0 frames per second, got {frame_rate}")
    x = torch.as_tensor(feats).float()
    if x.ndim != 2:
        raise ValueError(f"features must be [frames, dim], got shape {tuple(x.shape)}")
    first = int(round(start_seconds * frame_rate))
    piece = x[first:first + num_frames]
    n = piece.shape[0]
    out = torch.zeros(num_frames, x.shape[1], dtype=torch.float32)
    out[:n] = piece
    mask = torch.zeros(num_frames, dtype=torch.bool)
    if valid is None:
        mask[:n] = True
    else:
        v = torch.as_tensor(valid).bool()
        if v.shape != x.shape[:1]:
            raise ValueError(f"feature mask shape {tuple(v.shape)} does not match {x.shape[0]} frames")
        mask[:n] = v[first:first + num_frames]
        out[~mask] = 0.0
    return out, mask


@dataclass
class AudioTransform:
    """Decoded audio -> fixed-length mono clip at ``sample_rate``.

    Args:
        sample_rate: target rate in Hz; inputs at other rates are resampled.
        seconds: clip length; shorter clips are zero-padded and masked.
        crop: ``random`` (training) or ``start`` (evaluation).
        loudness_lufs: target loudness in LUFS, or ``None`` to keep the level.
    """

    sample_rate: int = 16000
    seconds: float = 1.0
    crop: str = "start"
    loudness_lufs: float | None = None

    def __call__(self, wave: torch.Tensor, sr: int, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
        audio, mask, _ = self.crop_with_start(wave, sr, rng)
        return audio, mask

    def crop_with_start(self, wave: torch.Tensor, sr: int, rng: random.Random
                        ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Like calling the transform, plus where the clip starts in the source: ``(wave, mask, seconds)``."""
        wave = resample(to_mono(wave), sr, self.sample_rate)
        if self.loudness_lufs is not None:
            wave = loudness_normalize(wave, self.sample_rate, self.loudness_lufs)
        out, mask, start = crop_or_pad_at(wave, self.num_samples, self.crop, rng)
        return out, mask, start / self.sample_rate

    @property
    def num_samples(self) -> int:
        """Samples per clip: ``round(seconds * sample_rate)``."""
        return int(round(self.seconds * self.sample_rate))

    def num_frames(self, frame_rate: float) -> int:
        """Frames per clip of per-frame features at ``frame_rate`` frames per second: ``round(seconds * rate)``."""
        return int(round(self.seconds * frame_rate))
