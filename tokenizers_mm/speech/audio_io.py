"""Audio files in and out (soundfile) and spectrogram figures for a person to look at."""

from __future__ import annotations

import os

import numpy as np
import soundfile as sf
import torch

from ..data.audio import resample, to_mono
from ..io import atomic_path


def read_audio(path: str, sample_rate: int) -> torch.Tensor:
    """Read an audio file (wav / flac / ogg / mp3 ...) as mono float32 ``[1, T]`` in [-1, 1] at ``sample_rate``.

    Raises ``ValueError`` naming the file when it is not readable audio or holds no samples.
    """
    try:
        arr, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        raise ValueError(f"{path!r} is not a readable audio file (expected wav, flac, ogg or mp3): {exc}") from exc
    if arr.shape[0] == 0:
        raise ValueError(f"{path!r} holds no audio samples")
    wave = to_mono(torch.from_numpy(np.ascontiguousarray(arr.T)))
    return resample(wave, int(sr), sample_rate)


def write_wav(path: str, wave: torch.Tensor, sample_rate: int) -> str:
    """Write ``[1, T]`` or ``[T]`` in [-1, 1] as 16-bit PCM WAV (written beside ``path`` and renamed)."""
    data = wave.detach().float().cpu().reshape(-1).clamp(-1, 1).numpy()
    with atomic_path(path) as tmp:
        sf.write(tmp, data, sample_rate, format="WAV", subtype="PCM_16")
    return path


def save_spectrograms(rows: dict[str, torch.Tensor], sample_rate: int, path: str, title: str = "") -> str:
    """One log-magnitude spectrogram per entry (``[1, T]`` waveforms), stacked top to bottom, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_fft = 512 if sample_rate >= 16000 else 256
    fig, axes = plt.subplots(len(rows), 1, figsize=(8, 1.8 * len(rows)), squeeze=False)
    for ax, (name, wave) in zip(axes[:, 0], rows.items()):
        spec = torch.stft(wave.reshape(-1).float(), n_fft, n_fft // 4, window=torch.hann_window(n_fft),
                          return_complex=True).abs()
        db = 20 * torch.log10(spec.clamp_min(1e-5))
        ax.imshow(db.numpy(), origin="lower", aspect="auto", vmin=float(db.max()) - 80, vmax=float(db.max()),
                  extent=[0, wave.shape[-1] / sample_rate, 0, sample_rate / 2000], cmap="magma")
        ax.set_ylabel("kHz")
        ax.set_title(name, fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("seconds")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
