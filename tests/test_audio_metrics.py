"""Tests of tokenizers_mm.eval.audio_metrics (mel / STFT distances, SI-SDR, STOI, PESQ, codebook usage,
masked accumulation) and tokenizers_mm.eval.audio_baselines (Opus / MP3 through soundfile at matched
bitrates), on real speech: the vendored 8 kHz FLAC clips, resampled to 16 kHz."""

from __future__ import annotations

import logging
import math
import os

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from tokenizers_mm.eval import audio_baselines as ab
from tokenizers_mm.eval.audio_metrics import (
    AudioMetrics,
    codebook_usage,
    mel_distance,
    pesq_score,
    si_sdr,
    stft_distance,
    stoi_score,
)
from tokenizers_mm.quantize import codebook_stats

SPEECH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tokenizers_mm", "embedded",
                      "speech")
SR = 16000
#: Three different sentences, 2.6-3.2 s each.
CLIPS = ("conf-onlyperson.flac", "vm-next.flac", "call-fwd-no-ans.flac")


def load(name: str, rate: int = SR) -> torch.Tensor:
    """A vendored speech clip as a ``[T]`` float32 tensor at ``rate``."""
    x, sr = sf.read(os.path.join(SPEECH, name), dtype="float32")
    x = torch.from_numpy(x)
    return x if sr == rate else AF.resample(x, sr, rate)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Single-threaded torch for these small per-clip transforms (much faster on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def speech() -> list[torch.Tensor]:
    return [load(n) for n in CLIPS]


def add_noise(x: torch.Tensor, snr_db: float, seed: int = 0) -> torch.Tensor:
    """``x`` plus white Gaussian noise scaled to an exact SNR (dB) over the whole clip."""
    n = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    n = n * (x.pow(2).mean() / n.pow(2).mean() / 10 ** (snr_db / 10)).sqrt()
    return x + n


# ------------------------------------------------------------------------------------------------- SI-SDR


def test_si_sdr_identity_scale_invariance_and_known_snr(speech):
    x = speech[0]
    ident = si_sdr(x, x)
    assert ident > 90.0
    assert si_sdr(x, 0.5 * x) == pytest.approx(ident, abs=1e-6)
    assert si_sdr(2.0 * x, x) == pytest.approx(ident, abs=1e-6)
    for snr in (0.0, 10.0, 20.0):
        y = add_noise(x, snr)
        assert si_sdr(x, y) == pytest.approx(snr, abs=0.5)
        # Rescaling the estimate does not change SI-SDR.
        assert si_sdr(x, 0.3 * y) == pytest.approx(si_sdr(x, y), abs=1e-6)
    # numpy input and batches: per-item values, and the float is their mean.
    b = torch.stack([x, add_noise(x, 10.0)])[:, None]
    per = si_sdr(b[:1].expand(2, 1, -1), b, reduction="none")
    assert per.shape == (2,) and per[0] > 90 and abs(per[1] - 10.0) < 0.5
    assert si_sdr(b[:1].expand(2, 1, -1).numpy(), b.numpy()) == pytest.approx(float(per.mean()))


def test_si_sdr_silence_is_finite():
    z = torch.zeros(1000)
    assert si_sdr(z, z) == 0.0
    assert math.isfinite(si_sdr(z, torch.randn(1000)))
    assert math.isfinite(si_sdr(torch.randn(1000), z))
    with pytest.raises(ValueError):
        si_sdr(torch.zeros(2, 100), torch.zeros(2, 100))  # [B, T] is ambiguous: want [T] or [B, 1, T]


# --------------------------------------------------------------------------------------- spectral distances


def test_spectral_distances_zero_when_identical_and_grow_with_noise(speech):
    x = speech[1]
    assert mel_distance(x, x, SR) == 0.0
    assert stft_distance(x, x, SR) == 0.0
    mels = [mel_distance(x, add_noise(x, snr), SR) for snr in (40, 30, 20, 10, 0)]
    stfts = [stft_distance(x, add_noise(x, snr), SR) for snr in (40, 30, 20, 10, 0)]
    assert all(a < b for a, b in zip(mels, mels[1:])), mels
    assert all(a < b for a, b in zip(stfts, stfts[1:])), stfts
    # Batch form: per-item values equal the single-clip ones.
    y = add_noise(x, 10)
    per = mel_distance(torch.stack([x, x])[:, None], torch.stack([x, y])[:, None], SR, reduction="none")
    assert per[0] == 0.0 and per[1] == pytest.approx(mels[3], rel=1e-5)


# ---------------------------------------------------------------------------------------------- STOI / PESQ


def test_stoi_and_pesq_rank_clean_above_noisy(speech):
    x = speech[2]
    noisy, very_noisy = add_noise(x, 15), add_noise(x, 0)
    assert stoi_score(x, x, SR) == pytest.approx(1.0, abs=1e-6)
    assert 1.0 > stoi_score(x, noisy, SR) > stoi_score(x, very_noisy, SR)
    clean = pesq_score(x, x, SR)
    assert clean > 4.0
    assert clean > pesq_score(x, noisy, SR) > 0.9
    # 8 kHz scores narrow-band, other rates are resampled to 16 kHz; both give finite values.
    x8 = load(CLIPS[2], 8000)
    assert pesq_score(x8, x8, 8000) > 4.0
    x22 = AF.resample(x, SR, 22050)
    assert pesq_score(x22, x22, 22050) > 4.0


def test_pesq_and_stoi_give_nan_not_errors(speech, caplog):
    z = torch.zeros(SR)
    x = speech[0]
    with caplog.at_level(logging.WARNING, logger="tokenizers_mm.eval.audio_metrics"):
        assert math.isnan(pesq_score(z, z, SR))
        assert math.isnan(pesq_score(x, torch.zeros_like(x), SR))  # pesq itself fails on a silent estimate
        assert math.isnan(pesq_score(x[:2000], x[:2000], SR))  # < 0.25 s: BufferTooShortError
        assert math.isnan(stoi_score(z, z, SR))
        assert math.isnan(stoi_score(x[:2000], x[:2000], SR))
    text = caplog.text
    assert "PESQ" in text and "2000 samples" in text and "BufferTooShortError" in text
    # A batch mixing a defined and an undefined clip: per-item nan, nan-aware mean.
    b_ref = torch.stack([x, torch.zeros_like(x)])[:, None]
    per = pesq_score(b_ref, b_ref, SR, reduction="none")
    assert per[0] > 4.0 and math.isnan(per[1])
    assert pesq_score(b_ref, b_ref, SR) == pytest.approx(float(per[0]))


# --------------------------------------------------------------------------------------------- codebooks


def test_codebook_usage_per_codebook():
    k = 16
    ids = torch.stack([torch.zeros(2, 64, dtype=torch.long),  # one code only
                       torch.arange(128).reshape(2, 64) % k,  # uniform over all codes
                       torch.randint(0, 4, (2, 64), generator=torch.Generator().manual_seed(0))], dim=1)
    stats = codebook_usage(ids, k)
    assert len(stats) == 3
    assert stats[0]["usage"] == pytest.approx(1 / k) and stats[0]["perplexity"] == pytest.approx(1.0)
    assert stats[1]["usage"] == 1.0 and stats[1]["entropy_bits"] == pytest.approx(4.0)
    assert stats[2] == codebook_stats(ids[:, 2], k)
    with pytest.raises(ValueError):
        codebook_usage(ids[0], k)


# ------------------------------------------------------------------------------------------------ accumulator


def test_audio_metrics_masked_accumulation_ignores_padding(speech):
    a, b = speech[0], speech[1][: SR * 2]
    ea, eb = add_noise(a, 20, seed=1), add_noise(b, 10, seed=2)
    t = max(a.numel(), b.numel())
    ref = torch.zeros(2, 1, t)
    est = torch.randn(2, 1, t)  # loud garbage in the padding of the estimates
    mask = torch.zeros(2, 1, t, dtype=torch.bool)
    for i, (r, e) in enumerate(((a, ea), (b, eb))):
        ref[i, 0, : r.numel()], est[i, 0, : e.numel()], mask[i, 0, : r.numel()] = r, e, True

    masked = AudioMetrics(SR)
    masked.update(ref, est, mask)
    separate = AudioMetrics(SR)
    separate.update(a, ea)
    separate.update(b[None, None], eb[None, None])
    got, want = masked.compute(), separate.compute()
    assert set(got) == {"mel_distance", "stft_distance", "si_sdr", "stoi", "pesq", "stoi_nan", "pesq_nan",
                        "n_clips", "n_empty"}
    assert got["n_clips"] == 2 and got["pesq_nan"] == 0
    for k in ("mel_distance", "stft_distance", "si_sdr", "stoi", "pesq"):
        assert got[k] == pytest.approx(want[k], rel=1e-4, abs=1e-6), k
    assert got["si_sdr"] == pytest.approx((si_sdr(a, ea) + si_sdr(b, eb)) / 2, abs=1e-6)

    unmasked = AudioMetrics(SR, stoi=False, pesq=False)
    unmasked.update(ref, est)
    assert unmasked.compute()["si_sdr"] < got["si_sdr"] - 3  # the padding garbage would have counted

    # A silent clip: PESQ / STOI are nan and counted, the means ignore it; empty clips are skipped.
    masked.update(torch.zeros(1, 1, SR), torch.zeros(1, 1, SR))
    masked.update(ref[:1], est[:1], torch.zeros(1, 1, t, dtype=torch.bool))
    out = masked.compute()
    assert out["n_clips"] == 3 and out["n_empty"] == 1 and out["pesq_nan"] == 1 and out["stoi_nan"] == 1
    assert out["pesq"] == pytest.approx(want["pesq"], rel=1e-4)


# ------------------------------------------------------------------------------------------ codec baselines


@pytest.mark.parametrize("codec,level", [("opus", 0.5), ("opus", 1.0), ("mp3", 0.5), ("mp3", 0.97),
                                         ("mp3", ab.MP3_MAX_LEVEL)])
def test_codec_roundtrip_keeps_length_and_alignment(speech, codec, level):
    x = speech[0]
    dec, n_bytes = ab.encode_decode(x, SR, codec, level)
    assert dec.shape == x.shape and dec.dtype == torch.float32 and n_bytes > 0
    # Low-rate CBR MP3 has no gapless frame: the 1105-sample priming must have been removed.
    assert abs(ab.estimate_delay(x, dec)) <= 1
    assert si_sdr(x, dec) > 5.0


def test_codec_resamples_unsupported_rates(speech):
    x = AF.resample(speech[0], SR, 22050)
    assert ab.codec_rate("opus", 22050) == 24000 and ab.codec_rate("mp3", 22050) == 22050
    dec, _ = ab.encode_decode(x, 22050, "opus", 0.8)
    assert dec.shape == x.shape and abs(ab.estimate_delay(x, dec)) <= 2 and si_sdr(x, dec) > 15


@pytest.mark.parametrize("codec,low,high", [("opus", 12.0, 32.0), ("mp3", 16.0, 32.0)])
def test_codec_quality_grows_with_bitrate_and_hits_target(speech, codec, low, high):
    x = speech[1]
    lo = ab.at_bitrate(x, SR, codec, low)
    hi = ab.at_bitrate(x, SR, codec, high)
    # Stated tolerance: within 10 % of the target (Opus is continuous, the MP3 targets are CBR steps).
    assert lo.kbps == pytest.approx(low, rel=0.1) and hi.kbps == pytest.approx(high, rel=0.1)
    assert lo.level > hi.level and lo.num_bytes < hi.num_bytes
    assert lo.decoded.shape == x.shape == hi.decoded.shape
    assert mel_distance(x, hi.decoded, SR) < mel_distance(x, lo.decoded, SR)
    assert si_sdr(x, hi.decoded) > si_sdr(x, lo.decoded)
    assert stoi_score(x, hi.decoded, SR) > stoi_score(x, lo.decoded, SR)


def test_opus_header_exclusion():
    assert ab.header_bytes("opus", SR) > 500 and ab.header_bytes("mp3", SR) == 0
    x = load(CLIPS[1])
    with_header = ab.at_bitrate(x, SR, "opus", 16.0)
    without = ab.at_bitrate(x, SR, "opus", 16.0, exclude_header=True)
    assert without.kbps == pytest.approx(16.0, rel=0.1)
    assert without.num_bytes > with_header.num_bytes  # the payload gets the header's share of the budget


def test_baseline_table_reports_unreachable_rates(speech):
    clips = [speech[0], speech[2]]
    rows = ab.baseline_table(clips, SR, [4.0, 16.0], pesq=False)
    assert [(r["codec"], r["target_kbps"]) for r in rows] == [("opus", 4.0), ("opus", 16.0), ("mp3", 4.0),
                                                               ("mp3", 16.0)]
    by = {(r["codec"], r["target_kbps"]): r for r in rows}
    for codec in ("opus", "mp3"):
        low, ok = by[(codec, 4.0)], by[(codec, 16.0)]
        assert not low["within_tolerance"] and low["kbps"] > 7.5  # below both codecs' minimum, still reported
        assert ok["within_tolerance"] and ok["kbps_min"] <= ok["kbps"] <= ok["kbps_max"]
        assert ok["n_clips"] == 2 and ok["mel_distance"] < low["mel_distance"]
        assert ok["stoi"] > low["stoi"] and "pesq" not in ok


def test_unwritable_format_raises_clear_error(monkeypatch):
    ab.check_codec.cache_clear()
    monkeypatch.setattr(sf, "available_subtypes", lambda fmt=None: {"VORBIS": "Vorbis"})
    try:
        with pytest.raises(ab.CodecUnavailableError, match="OGG/OPUS.*") as err:
            ab.encode_decode(np.zeros(1600, np.float32), SR, "opus", 0.5)
        assert sf.__libsndfile_version__ in str(err.value)
    finally:
        ab.check_codec.cache_clear()
