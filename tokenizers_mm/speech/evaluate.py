"""``tokenizers-mm evaluate`` for speech codecs: quality at every number of codebooks beside Opus and MP3.

Every held-out clip is taken whole (mixed to mono, resampled to the codec rate, loudness-normalized as in
training), encoded once, and decoded from its first ``n`` codebooks for each ``n`` in ``1..n_q``. Per ``n``: the
bitrate ``frame_rate * n * log2(codebook_size)`` bits/s, the mean multi-scale mel distance, STFT distance,
SI-SDR, STOI and PESQ (:mod:`tokenizers_mm.eval.audio_metrics`) and the usage of each codebook. Opus and MP3
(libsndfile) code the same clips at the codec's bitrates and at their own lowest ones, with the Ogg header left
out of Opus's bytes (the tokens carry no container either); each row keeps the measured bitrate. Writes
``report.json``, ``rate_quality.png`` and ``wav/``: originals and reconstructions of the first clips.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checkpointing import build_tokenizer, read_checkpoint
from ..data.audio import decode_audio, loudness_normalize, resample, to_mono
from ..data.shards import iter_raw_samples
from ..data.urls import expand_urls
from ..eval.audio_metrics import AudioMetrics, codebook_usage
from ..io import write_json_atomic
from .audio_io import write_wav

AUDIO_KEYS = ("flac", "wav", "ogg")


def load_clips(data: str | list[str], sample_rate: int, max_clips: int | None = None,
               loudness_lufs: float | None = None, errors: list[dict[str, str]] | None = None
               ) -> list[tuple[str, torch.Tensor]]:
    """Whole validation clips ``(key, [1, T])`` at ``sample_rate`` from audio shards (``val-*`` of a folder)."""
    errors = [] if errors is None else errors
    clips = []
    for raw in iter_raw_samples(expand_urls(data, split="val"), errors):
        if max_clips is not None and len(clips) >= max_clips:
            break
        ext = next((e for e in AUDIO_KEYS if e in raw), None)
        try:
            if ext is None:
                raise ValueError(f"no audio entry (expected one of {AUDIO_KEYS}) among {sorted(raw)}")
            wave, sr = decode_audio(raw[ext])
            clip = resample(to_mono(wave), sr, sample_rate)
            if loudness_lufs is not None:
                clip = loudness_normalize(clip, sample_rate, loudness_lufs)
        except Exception as exc:  # a broken sample is reported, not fatal
            errors.append({"key": raw.get("__key__", ""), "shard": raw.get("__url__", ""), "error": str(exc)})
            continue
        clips.append((raw["__key__"], clip))
    return clips


@torch.no_grad()
def evaluate_speech_checkpoint(ckpt: str, data: str | list[str], out: str, max_clips: int | None = None,
                               baselines: bool = True, wav_clips: int = 3, pesq: bool = True,
                               device: str | None = None, prior: str | None = None) -> dict[str, Any]:
    """Evaluate a speech codec checkpoint on evaluation shards; returns the report (see the module docstring).

    ``prior``: a token prior export; every per-codebooks row then gains the real compressed file bytes per clip
    (header included), the payload bytes, the nominal bytes, the prior's bits per token and ``file_kbps`` (all
    files' bits over all clips' seconds), drawn on the rate-quality plot as a curve of its own.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    raw = read_checkpoint(ckpt)
    model = build_tokenizer(raw, ckpt, map_location=device)
    codec = model.inference_codec().eval()
    sr, n_q = codec.sample_rate, codec.num_quantizers
    lufs = ((raw.get("datamodule_hyper_parameters") or {}).get("audio") or {}).get("loudness_lufs")
    errors: list[dict[str, str]] = []
    clips = load_clips(data, sr, max_clips, lufs, errors)
    if not clips:
        raise ValueError(f"no readable evaluation clips in {data!r} ({len(errors)} errors)")
    metrics = {n: AudioMetrics(sr, pesq=pesq) for n in range(1, n_q + 1)}
    all_ids, enc_t, dec_t, total_s = [], [], [], 0.0
    wav_dir = os.path.join(out, "wav")
    for i, (key, clip) in enumerate(tqdm(clips, desc="evaluate speech", unit="clip")):
        x = clip[None].to(device)
        total_s += x.shape[-1] / sr
        t0 = time.perf_counter()
        ids = codec.encode(x)
        enc_t.append((time.perf_counter() - t0, x.shape[-1] / sr))
        all_ids.append(ids[0].cpu())
        name = key.replace("/", "_")
        if i < wav_clips:
            write_wav(os.path.join(wav_dir, f"{name}_original.wav"), clip, sr)
        for n in range(1, n_q + 1):
            t0 = time.perf_counter()
            y = codec.decode(ids[:, :n])[..., : x.shape[-1]]
            if n == n_q:
                dec_t.append((time.perf_counter() - t0, x.shape[-1] / sr))
            metrics[n].update(x.cpu(), y.cpu())
            if i < wav_clips:
                write_wav(os.path.join(wav_dir, f"{name}_q{n}_{codec.bitrate_kbps(n):.2f}kbps.wav"), y[0], sr)
    usage = codebook_usage(torch.cat(all_ids, dim=-1)[None], codec.codebook_size)
    per_q = []
    for n in range(1, n_q + 1):
        row = {"num_quantizers": n, "kbps": round(codec.bitrate_kbps(n), 4)}
        row.update({k: round(v, 4) for k, v in metrics[n].compute().items()})
        per_q.append(row)
    if prior:
        from ..prior.evaluate import real_bytes_per_budget

        real = real_bytes_per_budget(prior, all_ids, [r["num_quantizers"] for r in per_q], codec.codebook_size,
                                     "audio")
        for r, rr in zip(per_q, real):
            r.update({k: rr[k] for k in ("file_bytes", "payload_bytes", "nominal_bytes", "prior_bits_per_token",
                                         "raw_files")},
                     file_kbps=round(rr["file_bytes"] * 8 * len(clips) / total_s / 1000, 4))

    def rtf(pairs: list[tuple[float, float]]) -> float:
        return round(sum(t for t, _ in pairs) / max(1e-9, sum(s for _, s in pairs)), 5)

    report: dict[str, Any] = {
        "checkpoint": os.path.abspath(ckpt), "model": type(model).__name__, "clips": len(clips),
        "seconds": round(total_s, 2), "sample_rate": sr, "frame_rate": codec.frame_rate,
        "num_quantizers": n_q, "codebook_size": codec.codebook_size,
        "conventions": {
            "clips": "whole validation clips, mono, resampled to the codec rate"
                     + (f", loudness-normalized to {lufs} LUFS" if lufs is not None else ""),
            "mel_distance": "log10 mel L1 summed over (2048/512, 150 mels) and (512/128, 80 mels)",
            "stft_distance": "log10 magnitude L1 summed over windows 2048, 1024, 512",
            "pesq": "wide band at 16 kHz, narrow band at 8 kHz, else resampled to 16 kHz",
            "baselines": "libsndfile Opus (Ogg header excluded from the bytes) and MP3 (CBR), coded per clip",
        },
        "per_quantizers": per_q,
        "codebook_usage": [{"codebook": q + 1, **{k: round(v, 4) for k, v in u.items()}} for q, u in enumerate(usage)],
        "real_time_factor": {"encode": rtf(enc_t), "decode": rtf(dec_t), "device": device,
                             "note": "seconds of compute per second of audio, one clip at a time"},
        "errors": errors,
    }
    if baselines:
        report["baselines"] = classical_baselines([c for _, c in clips], sr, sorted({r["kbps"] for r in per_q}),
                                                  pesq=pesq)
    files = {"report": os.path.join(out, "report.json"), "wav": wav_dir}
    files["rate_quality"] = rate_quality_plot(report, os.path.join(out, "rate_quality.png"))
    report["files"] = files
    write_json_atomic(files["report"], report)
    return report


# the lowest bitrates the classical codecs reach on speech at 16 kHz (libsndfile; see eval.audio_baselines)
CLASSICAL_FLOOR_KBPS = {"opus": 6.0, "mp3": 8.0}


def classical_baselines(clips: list[torch.Tensor], sample_rate: int, our_kbps: list[float],
                        pesq: bool = True) -> dict[str, Any]:
    """Opus and MP3 at the codec's bitrates that they can reach, at their own floor (below it every target gives
    the floor's file) and at twice it: ``{"rows": [...]}``, plus the reason a codec could not run."""
    from ..eval.audio_baselines import CodecUnavailableError, baseline_table

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


def rate_quality_plot(report: dict[str, Any], out_png: str) -> str:
    """Mel distance, SI-SDR, STOI and PESQ against kbps: ours per number of codebooks, Opus and MP3 beside."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4)
    rows = report["per_quantizers"]
    base = (report.get("baselines") or {}).get("rows", [])
    for ax, key, label in zip(axes, ("mel_distance", "si_sdr", "stoi", "pesq"),
                              ("mel distance (lower is better)", "SI-SDR (dB)", "STOI", "PESQ")):
        pts = [(r["kbps"], r.get(key)) for r in rows if r.get(key) is not None and np.isfinite(r[key])]
        if pts:
            ax.plot(*zip(*pts), marker="o", color="black", label="ours (1..n_q codebooks)")
        real = [(r["file_kbps"], r.get(key)) for r in rows if "file_kbps" in r and r.get(key) is not None
                and np.isfinite(r[key])]
        if real:
            ax.plot(*zip(*real), marker="o", color="black", linestyle="--", markerfacecolor="none",
                    label="ours, real file bytes (prior)")
        for codec, marker in (("opus", "s"), ("mp3", "^")):
            b = sorted((r["kbps"], r.get(key)) for r in base if r["codec"] == codec and r.get(key) is not None
                       and np.isfinite(r[key]))
            if b:
                ax.plot(*zip(*b), marker=marker, label=codec)
        ax.set_xscale("log")
        ax.set_xlabel("kbps")
        ax.set_title(label, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    from ..eval.plots import save_figure

    return save_figure(fig, out_png)


def format_speech_table(report: dict[str, Any]) -> str:
    """Markdown table: per number of codebooks, then the classical codecs at their measured bitrates."""

    def f(v: Any, fmt: str) -> str:
        return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, fmt)

    lines = ["| codec | codebooks | kbps | mel distance | STFT distance | SI-SDR (dB) | STOI | PESQ |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["per_quantizers"]:
        lines.append(f"| ours | {r['num_quantizers']} | {r['kbps']:.2f} | {f(r['mel_distance'], '.3f')} | "
                     f"{f(r['stft_distance'], '.3f')} | {f(r['si_sdr'], '.2f')} | {f(r.get('stoi'), '.3f')} | "
                     f"{f(r.get('pesq'), '.2f')} |")
    for r in (report.get("baselines") or {}).get("rows", []):
        lines.append(f"| {r['codec']} | - | {r['kbps']:.2f} (target {r['target_kbps']:g}) | "
                     f"{f(r['mel_distance'], '.3f')} | {f(r['stft_distance'], '.3f')} | {f(r['si_sdr'], '.2f')} | "
                     f"{f(r.get('stoi'), '.3f')} | {f(r.get('pesq'), '.2f')} |")
    real = [r for r in report["per_quantizers"] if "file_bytes" in r]
    if real:
        lines.append("real files with the prior, per clip: " + "; ".join(
            f"{r['num_quantizers']} cb {r['file_bytes']:.1f} B ({r['nominal_bytes']:.1f} B nominal, "
            f"{r['prior_bits_per_token']:.2f} bits/token, {r['file_kbps']:.2f} kbps)" for r in real))
    t = report["real_time_factor"]
    lines.append(f"real-time factor on {t['device']}: encode {t['encode']:.4f}, decode {t['decode']:.4f} "
                 f"({report['clips']} clips, {report['seconds']} s)")
    return "\n".join(lines)
