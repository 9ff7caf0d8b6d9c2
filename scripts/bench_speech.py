"""Speech codec benchmark: training seconds-of-audio/s and peak memory, encode / decode real-time factor.

    python scripts/bench_speech.py [--configs codec_24k codec_16k] [--steps 10] [--warmup 3] [--threads 2]
                                   [--out reports/bench/speech.json]

The issue's fixed setting, fp32 on CPU with 2 threads, for each architecture taken from its YAML in
``configs/speech/`` (EnCodec's: 24 kHz, causal, strides [8, 5, 4, 2], LSTM, 32 x 1024 codebooks; DAC's: 16 kHz,
rates [2, 4, 5, 8], 12 x 1024 codes of dim 8, decoder width 1536): one training step = batch 4 x 1 s, waveform
L1 + the config's multi-scale mel + commitment, backward, AdamW (no discriminator). Reported: the first step
apart (it runs the k-means initialisation of every codebook), the median of ``--steps`` steps after ``--warmup``
(seconds of audio per second), the process's peak RSS, and the median real-time factor (compute seconds per
audio second) of encoding and decoding one 10 s clip. Each config runs in its own process, so each peak RSS
is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# measured on this machine kind by the authors (reference EnCodec and DAC implementations)
REFERENCE = {"codec_24k": {"name": "EnCodec", "train_audio_s_per_s": 2.56, "encode_rtf": 0.070, "decode_rtf": 0.076},
             "codec_16k": {"name": "DAC", "train_audio_s_per_s": 0.34, "train_peak_gb": 8.0, "encode_rtf": 0.52}}


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def model_args(config: str) -> dict:
    import yaml

    with open(os.path.join(ROOT, "configs", "speech", f"{config}.yaml")) as f:
        args = yaml.safe_load(f)["model"]["init_args"]
    return args


def run_one(config: str, steps: int, warmup: int) -> dict:
    import torch
    import torch.nn.functional as F

    from tokenizers_mm.speech.codec import SpeechCodec
    from tokenizers_mm.speech.losses import MultiScaleMelLoss

    args = model_args(config)
    torch.manual_seed(0)
    codec = SpeechCodec(args["sample_rate"], args["seanet"], args["rvq"])
    loss_cfg = args.get("loss") or {}
    mel = MultiScaleMelLoss(codec.sample_rate, loss_cfg.get("mel_windows", [32, 64, 128, 256, 512, 1024, 2048]),
                            loss_cfg.get("mel_bins", [5, 10, 20, 40, 80, 160, 320]))
    opt = torch.optim.AdamW(codec.parameters(), lr=1e-4)
    sr = codec.sample_rate
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 1, sr, generator=g) * 0.1).clamp(-1, 1)
    times = []
    for _ in range(1 + warmup + steps):
        t0 = time.perf_counter()
        out = codec(x, dropout=codec.rvq_cfg.quantizer_dropout)
        loss = F.l1_loss(out["recon"], x) + mel(out["recon"], x) + out["commit"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    first, steady = times[0], statistics.median(times[1 + warmup:])
    train_peak = _peak_mib()
    codec.eval()
    clip = (torch.randn(1, 1, 10 * sr, generator=g) * 0.1).clamp(-1, 1)
    enc, dec = [], []
    with torch.no_grad():
        for i in range(2 + 3):
            t0 = time.perf_counter()
            ids = codec.encode(clip)
            t1 = time.perf_counter()
            codec.decode(ids)
            t2 = time.perf_counter()
            if i >= 2:
                enc.append(t1 - t0)
                dec.append(t2 - t1)
    return {"sample_rate": sr, "frame_rate": codec.frame_rate, "num_quantizers": codec.num_quantizers,
            "codebook_size": codec.codebook_size, "kbps": codec.bitrate_kbps(),
            "parameters": sum(p.numel() for p in codec.parameters()),
            "first_step_s (k-means init)": round(first, 3), "train_step_s": round(steady, 4),
            "train_audio_s_per_s": round(4.0 / steady, 3), "train_peak_rss_mib": round(train_peak, 1),
            "encode_rtf": round(statistics.median(enc) / 10.0, 4), "decode_rtf": round(statistics.median(dec) / 10.0, 4)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["codec_24k", "codec_16k"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="reports/bench/speech.json")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        import torch

        torch.set_num_threads(a.threads)
        print(json.dumps(run_one(a.one, a.steps, a.warmup)))
        return 0
    results = {"batch": "4 x 1 s", "loss": "waveform L1 + multi-scale mel + commitment", "threads": a.threads,
               "encode_decode": "one 10 s clip", "reference": REFERENCE, "configs": {}}
    for config in a.configs:
        cmd = [sys.executable, __file__, "--one", config, "--steps", str(a.steps), "--warmup", str(a.warmup),
               "--threads", str(a.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        ref = REFERENCE.get(config)
        if ref:
            res["ratio_to_reference"] = {
                "train_speed": round(res["train_audio_s_per_s"] / ref["train_audio_s_per_s"], 2),
                "encode_speed": round(ref["encode_rtf"] / res["encode_rtf"], 2),
                **({"decode_speed": round(ref["decode_rtf"] / res["decode_rtf"], 2)} if "decode_rtf" in ref else {}),
                **({"train_memory": round(res["train_peak_rss_mib"] / 1024 / ref["train_peak_gb"], 2)}
                   if "train_peak_gb" in ref else {})}
        results["configs"][config] = res
        print(config, json.dumps(res), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
