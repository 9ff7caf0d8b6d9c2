"""Image tokenizer benchmark: training images/s, peak memory, encode and decode latency on CPU.

    python scripts/bench_image.py [--configs a b] [--steps 10] [--warmup 3] [--threads 2] [--out reports/bench/image.json]

Two fixed configurations of ``OneDTokenizer`` (plain ViT: linear patch embedding and head, learned registers
and queries, FSQ [8,5,5,5], pixel L2 + quantizer loss, fp32, AdamW):

    a: 64 px, patch 16, width 256, depth 4 + 4, 4 heads, 32 tokens, batch 8
    b: 256 px, patch 16, width 384, depth 4 + 4, 6 heads, 128 tokens, batch 2

Each configuration runs in its own process so that peak memory (max RSS) is its own. Reported: median
seconds per training step over ``--steps`` after ``--warmup`` steps, images/s, peak RSS in MiB, and median
encode / decode latency per batch in eval mode.
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

CONFIGS = {
    "a": {"image_size": 64, "patch_size": 16, "width": 256, "depth": 4, "heads": 4, "num_tokens": 32, "batch": 8},
    "b": {"image_size": 256, "patch_size": 16, "width": 384, "depth": 4, "heads": 6, "num_tokens": 128, "batch": 2},
}


def run_one(name: str, steps: int, warmup: int, threads: int) -> dict:
    import torch

    from tokenizers_mm.image.tokenizer1d import OneDTokenizer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    c = CONFIGS[name]
    vit = {"width": c["width"], "depth": c["depth"], "heads": c["heads"]}
    model = OneDTokenizer(image_size=c["image_size"], patch_size=c["patch_size"], num_tokens=c["num_tokens"],
                          encoder=vit, decoder=vit, ordering={"kind": "none"},
                          quantizer={"kind": "fsq", "levels": [8, 5, 5, 5]})
    opt = torch.optim.AdamW(model.generator.parameters(), lr=1e-4)
    x = torch.rand(c["batch"], 3, c["image_size"], c["image_size"]) * 2 - 1
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        out = model(x)
        loss = (out["recon"] - x).pow(2).mean() + out["aux_loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    model.eval()
    enc, dec = [], []
    with torch.inference_mode():
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            ids = model.encode(x).ids
            t1 = time.perf_counter()
            model.decode(ids)
            t2 = time.perf_counter()
            if i >= warmup:
                enc.append(t1 - t0)
                dec.append(t2 - t1)
    step = statistics.median(times)
    return {"config": name, **c, "threads": threads, "step_s": round(step, 4),
            "images_per_s": round(c["batch"] / step, 2),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "encode_ms_per_batch": round(1000 * statistics.median(enc), 2),
            "decode_ms_per_batch": round(1000 * statistics.median(dec), 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["a", "b"], choices=sorted(CONFIGS))
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="reports/bench/image.json")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one config in this process
    a = p.parse_args()
    if a.one:
        print(json.dumps(run_one(a.one, a.steps, a.warmup, a.threads)))
        return 0
    results = []
    for name in a.configs:
        cmd = [sys.executable, __file__, "--one", name, "--steps", str(a.steps), "--warmup", str(a.warmup),
               "--threads", str(a.threads)]
        env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout.splitlines()[-1])
        results.append(res)
        print(f"({name}) {res['image_size']}px batch {res['batch']}: {res['images_per_s']} images/s, "
              f"peak {res['peak_rss_mib']} MiB RSS, encode {res['encode_ms_per_batch']} ms, "
              f"decode {res['decode_ms_per_batch']} ms per batch")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
