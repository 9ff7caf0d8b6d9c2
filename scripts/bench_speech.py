"""Speech codec benchmark beside the ``transformers`` reference at the same configuration, in the same run.

    python scripts/bench_speech.py [--configs codec_24k codec_16k] [--steps 10] [--warmup 3] [--threads 2]
                                   [--rounds 2] [--device cpu] [--out reports/bench/speech.json]

For each config of ``configs/speech/`` our :class:`SpeechCodec` and the reference model of its architecture
(``EncodecModel`` for EnCodec-shaped configs, ``DacModel`` for DAC-shaped ones) are measured in separate processes
(each peak memory is its own), fp32, on ``--device``:

- one training step = batch 4 x 1 s, waveform L1 + the config's multi-scale mel + commitment, backward, AdamW, all
  codebooks (no quantizer dropout, no discriminator). EnCodec's reference has no training path of its own: its
  encoder, quantizer (encode, decode) and decoder are composed with a straight-through estimator and a commitment
  term, as EnCodec trains; DAC's reference runs its own training forward (``loss`` = commitment + codebook);
- the median real-time factor (compute seconds per audio second) of encoding and of decoding one 10 s clip.

When the reference can express the config exactly (``tokenizers-mm export --format transformers`` succeeds), it
runs with our very weights; otherwise (DAC-shaped configs with a shared quantizer projection or other last kernel)
it is the reference built from the config's sizes. The two sides alternate for ``--rounds`` rounds (ours, reference,
ours, ...) and each keeps its fastest round, so load from other processes that comes and goes during the run
weighs on both alike. Reported: our numbers, the reference's, and ratios (our / reference speed; our / reference
peak memory: below 1 is less memory).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def model_args(config: str) -> dict:
    import yaml

    with open(os.path.join(ROOT, "configs", "speech", f"{config}.yaml")) as f:
        return yaml.safe_load(f)["model"]["init_args"]


def _peak_mib(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build(config: str):
    """``(our codec, reference model, reference name, exact)`` for ``config``."""
    import torch
    import transformers

    from tokenizers_mm.speech.codec import SpeechCodec
    from tokenizers_mm.speech.convert import ConversionError
    from tokenizers_mm.speech.convert.reference_export import pick_architecture, reference_model

    args = model_args(config)
    torch.manual_seed(0)
    codec = SpeechCodec(args["sample_rate"], args["seanet"], args["rvq"])
    try:
        name = pick_architecture(codec)
        return codec, reference_model(name, codec), name, True
    except ConversionError:
        pass
    s, q = codec.seanet_cfg, codec.rvq_cfg
    n = len(s.ratios)
    if s.activation == "snake":
        cfg = transformers.DacConfig(encoder_hidden_size=s.channels, downsampling_ratios=list(s.ratios)[::-1],
                                     decoder_hidden_size=(s.decoder_channels or s.channels) * 2 ** n,
                                     n_codebooks=q.num_quantizers, codebook_size=q.codebook_size,
                                     codebook_dim=q.codebook_dim or 8, sampling_rate=codec.sample_rate)
        return codec, transformers.DacModel(cfg), "dac", False
    cfg = transformers.EncodecConfig(sampling_rate=codec.sample_rate, num_filters=s.channels, hidden_size=s.dim,
                                     upsampling_ratios=list(s.ratios), use_causal_conv=s.causal,
                                     num_lstm_layers=s.bottleneck_layers, codebook_size=q.codebook_size,
                                     target_bandwidths=[q.num_quantizers * math.log2(q.codebook_size)
                                                        * math.ceil(codec.frame_rate) / 1000])
    return codec, transformers.EncodecModel(cfg), "encodec", False


def run_one(config: str, side: str, steps: int, warmup: int, device: str) -> dict:
    import torch
    import torch.nn.functional as F

    from tokenizers_mm.speech.losses import MultiScaleMelLoss

    codec, ref, name, exact = build(config)
    model = codec if side == "ours" else ref
    del codec, ref
    model = model.to(device)
    args = model_args(config)
    loss_cfg = args.get("loss") or {}
    sr = int(args["sample_rate"])
    mel = MultiScaleMelLoss(sr, loss_cfg.get("mel_windows", [32, 64, 128, 256, 512, 1024, 2048]),
                            loss_cfg.get("mel_bins", [5, 10, 20, 40, 80, 160, 320])).to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 1, sr, generator=g) * 0.1).clamp(-1, 1).to(device)

    def step() -> torch.Tensor:
        if side == "ours":
            out = model(x, dropout=0.0)
            return F.l1_loss(out["recon"], x) + mel(out["recon"], x) + out["commit"]
        if name == "dac":
            out = model(x)
            recon = out.audio_values[:, None]
            recon = F.pad(recon, (0, x.shape[-1] - recon.shape[-1]))  # an odd ratio ends DAC's output early
            return F.l1_loss(recon, x) + mel(recon, x) + out.loss.mean()
        emb = model.encoder(x)
        q = model.quantizer.decode(model.quantizer.encode(emb))
        recon = model.decoder(emb + (q - emb).detach())[..., : x.shape[-1]]
        return F.l1_loss(recon, x) + mel(recon, x) + F.mse_loss(emb, q.detach())

    model.train()
    times = []
    for _ in range(1 + warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        loss = step()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    steady = statistics.median(times[1 + warmup:])
    train_peak = _peak_mib(device)
    model.eval()
    clip = (torch.randn(1, 1, 10 * sr, generator=g) * 0.1).clamp(-1, 1).to(device)
    enc, dec = [], []
    with torch.no_grad():
        for i in range(2 + 3):
            _sync(device)
            t0 = time.perf_counter()
            if side == "ours":
                ids = model.encode(clip)
            elif name == "dac":
                ids = model.encode(clip).audio_codes
            else:
                ids = model.encode(clip, bandwidth=model.config.target_bandwidths[-1]).audio_codes
            _sync(device)
            t1 = time.perf_counter()
            if side == "ours":
                model.decode(ids)
            elif name == "dac":
                model.decode(audio_codes=ids)
            else:
                model.decode(ids, [None])
            _sync(device)
            t2 = time.perf_counter()
            if i >= 2:
                enc.append(t1 - t0)
                dec.append(t2 - t1)
    return {"side": side, "reference": name, "same_weights": exact,
            "parameters": sum(p.numel() for p in model.parameters()),
            "first_step_s": round(times[0], 3), "train_step_s": round(steady, 4),
            "train_audio_s_per_s": round(4.0 / steady, 3), "train_peak_mib": round(train_peak, 1),
            "encode_rtf": round(statistics.median(enc) / 10.0, 4), "decode_rtf": round(statistics.median(dec) / 10.0, 4)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["codec_24k", "codec_16k"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=2, help="alternating runs of each side; the fastest counts")
    p.add_argument("--out", default="reports/bench/speech.json")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    p.add_argument("--side", default="ours", choices=["ours", "reference"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        import torch

        torch.set_num_threads(a.threads)
        print(json.dumps(run_one(a.one, a.side, a.steps, a.warmup, a.device)))
        return 0
    results = {"batch": "4 x 1 s", "loss": "waveform L1 + multi-scale mel + commitment", "threads": a.threads,
               "device": a.device, "encode_decode": "one 10 s clip", "rounds": a.rounds, "configs": {}}
    for config in a.configs:
        sides: dict[str, dict] = {}
        for _ in range(max(1, a.rounds)):
            for side in ("ours", "reference"):
                cmd = [sys.executable, __file__, "--one", config, "--side", side, "--steps", str(a.steps),
                       "--warmup", str(a.warmup), "--threads", str(a.threads), "--device", a.device]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise SystemExit(f"bench_speech: {config} ({side}) failed: {proc.stderr.strip().splitlines()[-1:]}")
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                best = sides.get(side)
                sides[side] = res if best is None else {
                    **best, "train_step_s": min(best["train_step_s"], res["train_step_s"]),
                    "train_audio_s_per_s": max(best["train_audio_s_per_s"], res["train_audio_s_per_s"]),
                    "encode_rtf": min(best["encode_rtf"], res["encode_rtf"]),
                    "decode_rtf": min(best["decode_rtf"], res["decode_rtf"]),
                    "train_peak_mib": min(best["train_peak_mib"], res["train_peak_mib"])}
        ours, ref = sides["ours"], sides["reference"]
        ratio = {"train_speed": round(ours["train_audio_s_per_s"] / ref["train_audio_s_per_s"], 3),
                 "encode_speed": round(ref["encode_rtf"] / ours["encode_rtf"], 3),
                 "decode_speed": round(ref["decode_rtf"] / ours["decode_rtf"], 3),
                 "train_memory": round(ours["train_peak_mib"] / ref["train_peak_mib"], 3)}
        results["configs"][config] = {"ours": ours, "reference": ref, "ours_over_reference": ratio}
        print(f"{config} vs transformers {ref['reference']} (same weights: {ref['same_weights']}): "
              + ", ".join(f"{k} {v}x" for k, v in ratio.items()), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
