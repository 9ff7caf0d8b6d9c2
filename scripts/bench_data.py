"""Benchmark the training loader of every modality: samples/s on the embedded shards.

    python scripts/bench_data.py [--batches 50] [--out reports/bench/data.json]

Runs ``tokenizers-mm data bench`` on ``configs/data/{image,audio,mesh}.yaml`` in one process each and
writes one JSON with all results.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=50)
    p.add_argument("--out", default="reports/bench/data.json")
    p.add_argument("--modalities", nargs="+", default=["image", "audio", "mesh"])
    a = p.parse_args()
    results = {}
    for m in a.modalities:
        cmd = [sys.executable, "-m", "tokenizers_mm.cli", "data", "bench", "--config", f"configs/data/{m}.yaml",
               "--batches", str(a.batches)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        results[m] = json.loads(out)
        print(f"{m:6s} {results[m]['samples_per_s']:8.1f} samples/s  (batch {results[m]['batch_size']}, "
              f"{results[m]['num_workers']} workers)")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
