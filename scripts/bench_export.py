"""Exported-tokenizer benchmark: export size, load time, encode / decode latency per image through `pipelines`.

    python scripts/bench_export.py [--model exports/flextok_tiny] [--threads 2] [--out reports/bench/export.json]

Without ``--model`` it exports an untrained model of the ``flextok_tiny`` recipe into a temporary folder
(latency does not depend on the weights' values). CPU, fp32, ``--threads`` intra-op threads. Reported:

- the size of each export file;
- load time (``pipelines.load``: read JSON, hash and parse the safetensors, build the network), median of 5,
  and the cold start of a fresh interpreter (imports + load);
- encode and decode latency per image: median over ``--repeats`` calls after 2 warm-up calls, at batch 1 and
  batch 32 (per-image time = batch time / 32), decode at k = K and k = 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _untrained_export(out: str) -> str:
    from tokenizers_mm import recipes
    from tokenizers_mm.config import as_config
    from tokenizers_mm.export import export_codec, input_spec
    from tokenizers_mm.image.codec1d import OneDImageCodec
    from tokenizers_mm.image.first_stage import FirstStageConfig

    args = recipes.resolve(recipes.files("flextok_tiny", os.path.join(ROOT, "configs")))["model"]["init_args"]
    arch = {k: v for k, v in args.items() if k in OneDImageCodec.__init__.__code__.co_varnames}
    if arch.get("first_stage") is not None:  # the codec takes the autoencoder's architecture, not its training
        arch["first_stage"] = as_config(FirstStageConfig, arch["first_stage"]).arch()
    codec = OneDImageCodec(**arch).eval()
    export_codec(codec, out, input_spec(codec, {}), {"note": "untrained, for latency only"})
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="export folder (default: an untrained flextok_tiny export)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", default="reports/bench/export.json")
    a = p.parse_args()

    import torch

    import pipelines

    torch.set_num_threads(a.threads)
    tmp = None
    model = a.model
    if model is None:
        tmp = tempfile.TemporaryDirectory()
        model = _untrained_export(os.path.join(tmp.name, "flextok_tiny"))
    sizes = {n: os.path.getsize(os.path.join(model, n)) for n in sorted(os.listdir(model))}
    load_s = _median_seconds(lambda: pipelines.load(model, device="cpu"), repeats=5, warmup=1)
    import subprocess

    t0 = time.perf_counter()  # a fresh interpreter: imports (torch ...) + load, as a user's script pays it
    subprocess.run([sys.executable, "-c", f"import pipelines; pipelines.load({model!r}, device='cpu')"], check=True,
                   cwd=ROOT)
    cold_s = time.perf_counter() - t0
    tok = pipelines.load(model, device="cpu")
    s = tok.image_size
    x1 = torch.rand(1, 3, s, s) * 2 - 1
    x32 = torch.rand(32, 3, s, s) * 2 - 1
    ids1, ids32 = tok.encode(x1), tok.encode(x32)
    res = {
        "model": os.path.abspath(model) if a.model else "untrained flextok_tiny (recipe: configs/image/base_1d_tiny.yaml + flextok_tiny.yaml)",
        "device": "cpu", "threads": a.threads, "dtype": "float32", "image_size": s,
        "tokens_per_image": tok.num_tokens, "codebook_size": tok.codebook_size,
        "parameters": tok.config["weights"]["parameters"],
        "export_bytes": sizes, "export_total_bytes": sum(sizes.values()),
        "load_ms": round(1000 * load_s, 2), "cold_start_import_and_load_s": round(cold_s, 2),
        "encode_ms_per_image_batch1": round(1000 * _median_seconds(lambda: tok.encode(x1), a.repeats), 2),
        "encode_ms_per_image_batch32": round(1000 * _median_seconds(lambda: tok.encode(x32), a.repeats) / 32, 3),
        "decode_ms_per_image_batch1_kK": round(1000 * _median_seconds(lambda: tok.decode(ids1), a.repeats), 2),
        "decode_ms_per_image_batch32_kK": round(1000 * _median_seconds(lambda: tok.decode(ids32), a.repeats) / 32, 3),
    }
    if tok.prefix_decodable:
        res["decode_ms_per_image_batch32_k1"] = round(
            1000 * _median_seconds(lambda: tok.decode(ids32[:, :1]), a.repeats) / 32, 3)
    print(json.dumps(res, indent=2))
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=2)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
