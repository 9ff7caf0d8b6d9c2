"""Shape tokenizer benchmark: training shapes/s, peak memory, encode / decode time, chunked 64^3 grid decode.

    python scripts/bench_shape.py [--steps 10] [--warmup 3] [--threads 2] [--out reports/bench/shape.json]

The issue's fixed setting, fp32 on CPU: ``ShapeCodec`` with encoder and decoder depth 4, width 256, 4 heads,
256 latents (farthest-point-sampled queries), multi-scale residual FSQ over scales 1, 4, 16, 64, 256; 2,048 input
points; 1,024 volume + 1,024 near-surface queries; batch 4; BCE loss; AdamW. Reported: median seconds per
training step over ``--steps`` after ``--warmup`` steps (shapes/s), peak RSS of that process; median encode time
(one shape); decode time (latent transformer + 2,048 queries, one shape); and, in a separate process, a full
64^3 grid decoded in chunks of 32,768 points with that process's peak RSS.
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

ARCH = {"num_latents": 256, "latent_dim": 32, "encoder": {"width": 256, "depth": 4, "heads": 4, "num_freqs": 8,
                                                         "queries": "fps"},
        "decoder": {"width": 256, "depth": 4, "heads": 4}, "bottleneck": "multiscale", "scales": [1, 4, 16, 64, 256],
        "quantizer": {"kind": "fsq", "levels": [8, 5, 5, 5], "batch_norm": True}}


def _batch(b: int = 4, n: int = 2048, q: int = 1024):
    import torch

    g = torch.Generator().manual_seed(0)
    xyz = torch.rand(b, n, 3, generator=g) * 2 - 1
    normals = torch.nn.functional.normalize(torch.randn(b, n, 3, generator=g), dim=-1)
    return (torch.cat([xyz, normals], -1), torch.rand(b, 2 * q, 3, generator=g) * 2 - 1,
            (torch.rand(b, 2 * q, generator=g) > 0.5).float())


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_train(steps: int, warmup: int) -> dict:
    import torch
    import torch.nn.functional as F

    from tokenizers_mm.shape.codec import ShapeCodec

    torch.manual_seed(0)
    codec = ShapeCodec(**ARCH)
    opt = torch.optim.AdamW(codec.parameters(), lr=1e-4)
    surface, points, labels = _batch()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        out = codec(surface, points, sample=True)
        loss = F.binary_cross_entropy_with_logits(out["logits"], labels) + 1e-3 * out["kl"] + out["aux_loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    codec.eval()
    enc, dec = [], []
    with torch.no_grad():
        one, pts = surface[:1], points[:1, :2048]
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            ids = codec.encode(one)
            t1 = time.perf_counter()
            codec.occupancy(codec.decode(ids), pts)
            t2 = time.perf_counter()
            if i >= warmup:
                enc.append(t1 - t0)
                dec.append(t2 - t1)
    step = statistics.median(times)
    return {"train_step_s": round(step, 4), "train_shapes_per_s": round(4 / step, 2),
            "train_peak_rss_mib": round(_peak_mib(), 1), "parameters": sum(p.numel() for p in codec.parameters()),
            "encode_ms": round(1000 * statistics.median(enc), 2),
            "decode_2048_queries_ms": round(1000 * statistics.median(dec), 2)}


def run_grid(resolution: int, chunk: int) -> dict:
    import torch

    from tokenizers_mm.shape.codec import ShapeCodec
    from tokenizers_mm.shape.mesh_out import marching_cubes_mesh, occupancy_grid

    torch.manual_seed(0)
    codec = ShapeCodec(**ARCH).eval()
    surface, _, _ = _batch(1)
    before = _peak_mib()
    with torch.no_grad():
        states = codec.decode(codec.encode(surface))
        t0 = time.perf_counter()
        grid = occupancy_grid(lambda p: codec.occupancy(states, p), resolution, chunk)
        t1 = time.perf_counter()
    marching_cubes_mesh(grid)
    t2 = time.perf_counter()
    return {"grid_resolution": resolution, "grid_chunk": chunk, "grid_decode_s": round(t1 - t0, 3),
            "marching_cubes_s": round(t2 - t1, 3), "grid_peak_rss_mib": round(_peak_mib(), 1),
            "rss_before_grid_mib": round(before, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--chunk", type=int, default=32768)
    p.add_argument("--out", default="reports/bench/shape.json")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        import torch

        torch.set_num_threads(a.threads)
        res = run_train(a.steps, a.warmup) if a.one == "train" else run_grid(a.resolution, a.chunk)
        print(json.dumps(res))
        return 0
    results = {"setting": ARCH, "batch": 4, "points": 2048, "queries": "1024 volume + 1024 near", "threads": a.threads,
               "reference": {"3DShape2VecSet_train_shapes_per_s": 4.76, "unchunked_grid_decode_s": 2.5,
                             "unchunked_grid_peak_gb": 2.6}}
    for part in ("train", "grid"):
        cmd = [sys.executable, __file__, "--one", part, "--steps", str(a.steps), "--warmup", str(a.warmup),
               "--threads", str(a.threads), "--resolution", str(a.resolution), "--chunk", str(a.chunk)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    results["train_speed_ratio_to_reference"] = round(results["train_shapes_per_s"] / 4.76, 2)
    print(json.dumps(results, indent=2))
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
