"""Speech evaluation: quality at every number of codebooks beside Opus and MP3.

Every held-out clip is taken whole (mixed to mono, resampled to the codec rate, loudness-normalized as in
training), encoded once, and decoded from its first ``n`` codebooks for each ``n`` in ``1..n_q``. Per ``n``: the
bitrate ``frame_rate * n * log2(codebook_size)`` bits/s, the mean multi-scale mel distance, STFT distance,
SI-SDR, STOI and PESQ (:mod:`tokenizers_mm.eval.audio_metrics`) and the usage of each codebook. Opus and MP3
(libsndfile) code the same clips at the codec's bitrates and at their own lowest ones, with the Ogg header left
out of Opus's bytes (the tokens carry no container either); each baseline keeps its measured bitrate. Figures:
``rate_quality.png``; ``wav/`` holds originals and reconstructions of the first clips.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import torch

from . import report as rep
from .audio_metrics import AudioMetrics, codebook_usage
from .evaluator import Evaluator

AUDIO_KEYS = ("flac", "wav", "ogg")
SPEECH_METRICS = [rep.metric("mel_distance", "mel distance", ".3f", plot=True),
                  rep.metric("stft_distance", "STFT distance", ".3f"),
                  rep.metric("si_sdr", "SI-SDR (dB)", ".2f", plot=True), rep.metric("stoi", "STOI", ".3f", plot=True),
                  rep.metric("pesq", "PESQ", ".2f", plot=True)]
# the lowest bitrates the classical codecs reach on speech at 16 kHz (libsndfile; see eval.audio_baselines)
CLASSICAL_FLOOR_KBPS = {"opus": 6.0, "mp3": 8.0}
#: entries of a classical codec's measurement that are facts of the codec, not metrics
_CODEC_FACTS = ("codec", "target_kbps", "kbps", "kbps_min", "kbps_max", "level_mean", "within_tolerance",
                "exclude_header")


def decode_clip(raw: dict[str, Any], sample_rate: int, loudness_lufs: float | None) -> torch.Tensor:
    """The audio of one shard sample as ``[1, T]`` mono at ``sample_rate`` (loudness-normalized when given)."""
    from ..data.audio import decode_audio, loudness_normalize, resample, to_mono

    ext = next((e for e in AUDIO_KEYS if e in raw), None)
    if ext is None:
        raise ValueError(f"no audio entry (expected one of {AUDIO_KEYS}) among {sorted(raw)}")
    wave, sr = decode_audio(raw[ext])
    clip = resample(to_mono(wave), sr, sample_rate)
    if loudness_lufs is not None:
        clip = loudness_normalize(clip, sample_rate, loudness_lufs)
    return clip


def load_clips(data: str | list[str], sample_rate: int, max_clips: int | None = None,
               loudness_lufs: float | None = None, errors: list[dict[str, str]] | None = None
               ) -> list[tuple[str, torch.Tensor]]:
    """Whole validation clips ``(key, [1, T])`` at ``sample_rate`` from audio shards (``val-*`` of a folder);
    unreadable ones are appended to ``errors`` (``key``, ``shard``, ``reason``)."""
    from ..data.shards import iter_raw_samples
    from ..data.urls import expand_urls

    errors = [] if errors is None else errors
    clips = []
    for raw in iter_raw_samples(expand_urls(data, split="val"), errors):
        if max_clips is not None and len(clips) >= max_clips:
            break
        try:
            clip = decode_clip(raw, sample_rate, loudness_lufs)
        except Exception as exc:  # a broken sample is reported, not fatal
            errors.append({"key": raw.get("__key__", ""), "shard": raw.get("__url__", ""), "reason": str(exc)})
            continue
        clips.append((raw["__key__"], clip))
    return clips


def speech_row(n: int, kbps: float, frame_rate: float | None, metrics: dict[str, Any], **extra: Any
               ) -> dict[str, Any]:
    """A row of ``n`` codebooks: tokens and nominal bytes per second, the bitrate, the metrics."""
    tokens = n * frame_rate if frame_rate is not None else None
    return rep.budget_row("codebooks", n, tokens, round(kbps * 125, 3), metrics, kbps=kbps, **extra)


def classical_baselines(clips: list[torch.Tensor], sample_rate: int, our_kbps: list[float],
                        pesq: bool = True) -> dict[str, Any]:
    """Opus and MP3 at the codec's bitrates that they can reach, at their own floor (below it every target gives
    the floor's file) and at twice it: ``{"rows": [...]}``, plus the reason a codec could not run."""
    from .audio_baselines import CodecUnavailableError, baseline_table

    waves = [c.reshape(-1) for c in clips]
    out: dict[str, Any] = {"floor_kbps": CLASSICAL_FLOOR_KBPS, "rows": []}
    for codec, floor in CLASSICAL_FLOOR_KBPS.items():
        targets = sorted({floor, 2 * floor} | {k for k in our_kbps if k >= floor})
        try:
            out["rows"] += baseline_table(waves, sample_rate, targets, codecs=(codec,), exclude_header=codec == "opus",
                                          pesq=pesq)
        except CodecUnavailableError as exc:
            out[f"{codec}_unavailable"] = str(exc)
    for r in out["rows"]:
        for k, v in list(r.items()):
            if isinstance(v, float):
                r[k] = round(v, 4)
    return out


def attach_baselines(rows: list[dict[str, Any]], measured: dict[str, Any]) -> dict[str, Any]:
    """The report's ``baselines`` from :func:`classical_baselines`: a measurement whose target is a row's bitrate
    goes into that row's ``baselines``, the others (the codecs' floors) into ``rows``; ``curves`` holds all of
    them per codec (for the plots)."""
    out: dict[str, Any] = {k: v for k, v in measured.items() if k != "rows"}
    out.update(curves={}, rows=[])
    by_kbps = {r["kbps"]: r for r in rows}
    for m in measured.get("rows", []):
        entry = {"codec": m["codec"], "kbps": m["kbps"], "target": m["target_kbps"],
                 "metrics": {k: v for k, v in m.items() if k not in _CODEC_FACTS},
                 **{k: m[k] for k in _CODEC_FACTS if k in m and k not in ("codec", "kbps")}}
        out["curves"].setdefault(m["codec"], []).append(entry)
        (by_kbps[m["target_kbps"]]["baselines"] if m["target_kbps"] in by_kbps else out["rows"]).append(entry)
    return out


class SpeechEvaluator(Evaluator):
    """Speech codecs (residual codebooks, any first n of them decode).

    Options: ``baselines`` (True: Opus and MP3), ``pesq`` (True; the slowest metric), ``wav_clips`` (3: clips
    whose original and reconstructions are written as WAV).
    """

    modality = "speech"
    title = "Speech"
    budget = ("codebooks", "codebooks")
    kind = "clips"
    rate = rep.RATE_PER_SECOND
    metrics = SPEECH_METRICS

    def __init__(self, model: Any, checkpoint: dict[str, Any], out: str, device: str, baselines: bool = True,
                 pesq: bool = True, wav_clips: int = 3, **_: Any) -> None:
        super().__init__(model, checkpoint, out, device)
        self.codec = model.inference_codec().eval()
        self.sr, self.n_q = self.codec.sample_rate, self.codec.num_quantizers
        self.lufs = (self.data_hparams.get("audio") or {}).get("loudness_lufs")
        self.baselines, self.pesq, self.wav_clips = baselines, pesq, wav_clips
        self.scores = {n: AudioMetrics(self.sr, pesq=pesq) for n in range(1, self.n_q + 1)}
        self.all_ids: list[torch.Tensor] = []
        self.clips: list[torch.Tensor] = []
        self.enc_t: list[tuple[float, float]] = []
        self.dec_t: list[tuple[float, float]] = []
        self.total_s = 0.0
        self.wav_dir = os.path.join(out, "wav")

    @property
    def codebook_size(self) -> int:
        return int(self.codec.codebook_size)

    def read(self, raw: dict[str, Any]) -> torch.Tensor:
        return decode_clip(raw, self.sr, self.lufs)

    def update(self, batch: list[tuple[str, Any]]) -> None:
        from ..speech.audio_io import write_wav

        codec, sr = self.codec, self.sr
        for i, (key, clip) in enumerate(batch, start=self.count):
            self.clips.append(clip)
            x = clip[None].to(self.device)
            seconds = x.shape[-1] / sr
            self.total_s += seconds
            t0 = time.perf_counter()
            ids = codec.encode(x)
            self.enc_t.append((time.perf_counter() - t0, seconds))
            self.all_ids.append(ids[0].cpu())
            name = key.replace("/", "_")
            if i < self.wav_clips:
                write_wav(os.path.join(self.wav_dir, f"{name}_original.wav"), clip, sr)
            for n in range(1, self.n_q + 1):
                t0 = time.perf_counter()
                y = codec.decode(ids[:, :n])[..., : x.shape[-1]]
                if n == self.n_q:
                    self.dec_t.append((time.perf_counter() - t0, seconds))
                self.scores[n].update(x.cpu(), y.cpu())
                if i < self.wav_clips:
                    write_wav(os.path.join(self.wav_dir, f"{name}_q{n}_{codec.bitrate_kbps(n):.2f}kbps.wav"), y[0], sr)

    def compute(self) -> list[dict[str, Any]]:
        return [speech_row(n, round(self.codec.bitrate_kbps(n), 4), self.codec.frame_rate,
                           {k: round(v, 4) for k, v in self.scores[n].compute().items()})
                for n in range(1, self.n_q + 1)]

    def prior_ids(self) -> tuple[list[torch.Tensor], list[int], str]:
        return self.all_ids, list(range(1, self.n_q + 1)), self.modality

    def prior_entry(self, real: dict[str, Any]) -> dict[str, Any]:
        entry = super().prior_entry(real)
        entry["file_kbps"] = round(real["file_bytes"] * 8 * self.count / self.total_s / 1000, 4)
        return entry

    def finish(self, report: dict[str, Any]) -> None:
        codec = self.codec
        seconds = round(self.total_s, 2)
        report["samples"]["seconds"] = seconds
        report["summary"] = (f"{report['model']}: {self.count} clips ({seconds} s) at {self.sr} Hz, {self.n_q} "
                             f"codebooks x {codec.codebook_size} codes at {codec.frame_rate:g} Hz")
        report["tokens"] = {"codebook_size": self.codebook_size, "num_quantizers": self.n_q,
                            "bits_per_token": round(math.log2(self.codebook_size), 3)}
        report["setup"] = {"sample_rate": self.sr, "frame_rate": codec.frame_rate}
        report["conventions"] = {
            "clips": "whole validation clips, mono, resampled to the codec rate"
                     + (f", loudness-normalized to {self.lufs} LUFS" if self.lufs is not None else ""),
            "mel_distance": "log10 mel L1 summed over (2048/512, 150 mels) and (512/128, 80 mels)",
            "stft_distance": "log10 magnitude L1 summed over windows 2048, 1024, 512",
            "pesq": "wide band at 16 kHz, narrow band at 8 kHz, else resampled to 16 kHz",
            "baselines": "libsndfile Opus (Ogg header excluded from the bytes) and MP3 (CBR), coded per clip",
            "tokens and bytes": "per second of audio"}
        usage = codebook_usage(torch.cat(self.all_ids, dim=-1)[None], codec.codebook_size)
        report["details"]["codebook_usage"] = [{"codebook": q + 1, **{k: round(v, 4) for k, v in u.items()}}
                                               for q, u in enumerate(usage)]

        def rtf(pairs: list[tuple[float, float]]) -> float:
            return round(sum(t for t, _ in pairs) / max(1e-9, sum(s for _, s in pairs)), 5)

        t = {"encode": rtf(self.enc_t), "decode": rtf(self.dec_t), "device": self.device,
             "note": "seconds of compute per second of audio, one clip at a time"}
        report["timing"]["real_time_factor"] = t
        report["notes"].append(f"real-time factor on {t['device']}: encode {t['encode']:.4f}, decode "
                               f"{t['decode']:.4f} ({self.count} clips, {seconds} s)")
        report["pictures"] = ["rate_quality.png"]
        if self.baselines:
            measured = classical_baselines(self.clips, self.sr, sorted({r["kbps"] for r in report["rows"]}),
                                           pesq=self.pesq)
            report["baselines"] = attach_baselines(report["rows"], measured)

    def plots(self, report: dict[str, Any]) -> dict[str, str]:
        from .plots import rate_quality_plot

        return {"wav": self.wav_dir,
                "rate_quality": rate_quality_plot(report, ["mel_distance", "si_sdr", "stoi", "pesq"],
                                                  os.path.join(self.out, "rate_quality.png"))}
