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


def crop_or_pad(wave: torch.Tensor, num_samples: int, mode: str, rng: random.Random
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut or zero-pad ``[1, T]`` to exactly ``num_samples``.

    ``mode`` is ``random`` (training: a random window) or ``start`` (evaluation: the first window).
    Returns ``(wave [1, N], mask [1, N] bool)`` where ``mask`` is True on real samples, False on padding.
    """
    t = wave.shape[-1]
    if t >= num_samples:
        if mode == "random":
            start = rng.randint(0, t - num_samples)
        elif mode == "start":
            start = 0
        else:
            raise ValueError(f"audio crop mode must be 'random' or 'start', got {mode!r}")
        out = wave[..., start:start + num_samples]
        return out, torch.ones_like(out, dtype=torch.bool)
    mask = torch.zeros(wave.shape[0], num_samples, dtype=torch.bool)
    mask[:, :t] = True
    return torch.nn.functional.pad(wave, (0, num_samples - t)), mask


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
        wave = resample(to_mono(wave), sr, self.sample_rate)
        if self.loudness_lufs is not None:
            wave = loudness_normalize(wave, self.sample_rate, self.loudness_lufs)
        return crop_or_pad(wave, int(round(self.seconds * self.sample_rate)), self.crop, rng)
