"""``tokenizers-mm evaluate`` for shape tokenizers: quality per token budget beside a decimation baseline.

For every held-out mesh and every number of scales s (a byte budget ``ceil(tokens * log2(codebook) / 8)``):
volume IoU on the precomputed labeled points, and -- on the mesh extracted by marching cubes at
``resolution``^3 -- Chamfer-L1, F-score at 0.02 and normal consistency against the normalized ground-truth mesh
(:mod:`tokenizers_mm.shape.metrics`). The baseline is the same mesh decimated (quadric) until its vertex
coordinates quantized to ``baseline_bits`` bits plus its face indices fit the same bytes. Writes
``report.json``, ``rate_quality.png`` and one ``renders/<key>.png`` per shape (ground truth, every scale, the
baseline).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np
import torch
import trimesh
from tqdm.auto import tqdm

from ..checkpointing import load_tokenizer
from ..data.mesh import MESH_EXTENSIONS, decode_mesh_npz, load_mesh, normalize_mesh
from ..data.mesh_prep import MeshBuildOptions, prepare_mesh
from ..data.shards import iter_raw_samples
from ..data.urls import expand_urls
from ..io import write_json_atomic
from ..quantize import bytes_for
from .mesh_out import marching_cubes_mesh, occupancy_grid
from .metrics import surface_metrics, volume_iou
from .render import render_views


def mesh_bytes(num_vertices: int, num_faces: int, bits: int) -> int:
    """Bytes of a mesh stored as ``bits``-bit vertex coordinates and ``ceil(log2 V)``-bit face indices."""
    index_bits = max(1, math.ceil(math.log2(max(num_vertices, 2))))
    return math.ceil((3 * bits * num_vertices + 3 * index_bits * num_faces) / 8)


def quantize_vertices(mesh: trimesh.Trimesh, bits: int, bound: float = 1.0) -> trimesh.Trimesh:
    """Snap vertex coordinates in ``[-bound, bound]`` to a ``2^bits`` grid (what ``bits`` per coordinate stores)."""
    levels = 2 ** bits - 1
    q = np.round((np.clip(mesh.vertices, -bound, bound) + bound) / (2 * bound) * levels)
    return trimesh.Trimesh(vertices=q / levels * 2 * bound - bound, faces=mesh.faces, process=False)


def decimation_baseline(mesh: trimesh.Trimesh, target_bytes: int, bits: int = 10) -> tuple[trimesh.Trimesh, int] | None:
    """The finest quadric decimation of ``mesh`` whose quantized storage fits ``target_bytes``; None if even a
    tetrahedron does not fit. Returns ``(mesh, bytes)``."""
    # faces need at least 3 * ceil(log2 4) bits each: no more than this many can fit at all
    lo, hi, best = 4, max(4, min(len(mesh.faces), 8 * target_bytes // 6)), None
    while lo <= hi:
        faces = (lo + hi) // 2
        dec = mesh.simplify_quadric_decimation(face_count=faces) if faces < len(mesh.faces) else mesh
        size = mesh_bytes(len(dec.vertices), len(dec.faces), bits)
        if size <= target_bytes:
            best, lo = (quantize_vertices(dec, bits), size), faces + 1
        else:
            hi = faces - 1
    return best


def _ground_truth(raw: dict[str, Any], padding: float) -> trimesh.Trimesh:
    ext = next(e for e in MESH_EXTENSIONS if e in raw)
    # the same preparation as data build gave the stored samples (an open mesh stays open and is still scored)
    mesh, _ = prepare_mesh(load_mesh(raw[ext], ext, process=False), MeshBuildOptions())
    mesh, _, _ = normalize_mesh(mesh, padding=padding)
    return mesh


@torch.no_grad()
def evaluate_shape_checkpoint(ckpt: str, data: str | list[str], out: str, resolution: int = 64,
                              max_samples: int | None = None, chamfer_points: int = 100_000,
                              baseline_bits: int = 10, num_surface: int = 2048, padding: float = 0.05,
                              device: str | None = None, prior: str | None = None) -> dict[str, Any]:
    """Evaluate a shape tokenizer checkpoint on evaluation shards; returns the report (see module docstring).

    ``prior``: a token prior export; every per-scale row then gains the real compressed file bytes (header
    included), the payload bytes and the prior's bits per token, drawn on the rate-quality plot as a curve of its
    own.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_tokenizer(ckpt, map_location=device)
    codec = model.inference_codec()
    prefixes = codec.prefix_lengths
    bits = math.log2(codec.codebook_size)
    budgets = [bytes_for(n, codec.codebook_size) for n in prefixes]
    rows: dict[int, list[dict[str, float]]] = {s: [] for s in range(1, len(prefixes) + 1)}
    base_rows: dict[int, list[dict[str, float]]] = {s: [] for s in rows}
    times = {"encode_s": [], "decode_s": [], "mesh_s": []}
    errors: list[dict[str, str]] = []
    os.makedirs(os.path.join(out, "renders"), exist_ok=True)
    urls = expand_urls(data, split="val")
    seen = 0
    all_ids: list[torch.Tensor] = []
    for raw in tqdm(iter_raw_samples(urls, errors), desc="evaluate shapes", unit="shape", total=max_samples):
        if max_samples is not None and seen >= max_samples:
            break
        try:
            gt = _ground_truth(raw, padding)
            arrays = decode_mesh_npz(raw["npz"])
        except Exception as exc:  # a broken sample is reported, not fatal
            errors.append({"key": raw.get("__key__", ""), "shard": raw.get("__url__", ""), "error": str(exc)})
            continue
        surface = torch.from_numpy(arrays["surface"][:num_surface]).to(device)[None]
        vol = torch.from_numpy(arrays["volume_points"]).to(device)[None]
        labels = torch.from_numpy(arrays["volume_labels"]).to(device)[None]
        t0 = time.perf_counter()
        ids = codec.encode(surface)
        times["encode_s"].append(time.perf_counter() - t0)
        all_ids.append(ids[0].cpu())
        views = [("ground truth", gt)]
        for s, n in enumerate(prefixes, start=1):
            t0 = time.perf_counter()
            states = codec.decode(ids[:, :n])
            if s == len(prefixes):
                times["decode_s"].append(time.perf_counter() - t0)
            iou = float(volume_iou(codec.occupancy(states, vol), labels)[0])
            t0 = time.perf_counter()
            mesh = marching_cubes_mesh(occupancy_grid(lambda p, st=states: codec.occupancy(st, p), resolution,
                                                      device=device))
            if s == len(prefixes):
                times["mesh_s"].append(time.perf_counter() - t0)
            rows[s].append({"iou": iou, **surface_metrics(mesh, gt, chamfer_points)})
            views.append((f"{n} tokens ({budgets[s - 1]} B)", mesh))
            base = decimation_baseline(gt, budgets[s - 1], baseline_bits)
            if base is not None:
                bmesh, bbytes = base
                base_rows[s].append({"bytes": bbytes, "faces": len(bmesh.faces),
                                     **surface_metrics(bmesh, gt, chamfer_points)})
                if s == len(prefixes):
                    views.append((f"decimated ({bbytes} B)", bmesh))
        render_views(views, os.path.join(out, "renders", f"{raw['__key__'].replace('/', '_')}.png"),
                     title=raw["__key__"])
        seen += 1
    if not seen:
        raise ValueError(f"no readable evaluation shapes in {data!r} ({len(errors)} errors)")

    def mean(items: list[dict[str, float]], key: str) -> float | None:
        vals = [r[key] for r in items if key in r and np.isfinite(r[key])]
        return round(float(np.mean(vals)), 5) if vals else None

    per_scale = []
    for s, n in enumerate(prefixes, start=1):
        row = {"scales": s, "tokens": n, "bytes": budgets[s - 1],
               **{k: mean(rows[s], k) for k in ("iou", "chamfer_l1", "fscore", "normal_consistency")}}
        b = base_rows[s]
        row["decimation"] = ({"shapes": len(b), "bytes": mean(b, "bytes"), "faces": mean(b, "faces"),
                              **{k: mean(b, k) for k in ("chamfer_l1", "fscore", "normal_consistency")}}
                             if b else {"shapes": 0, "note": "no decimated mesh fits this budget"})
        per_scale.append(row)
    if prior:
        from ..prior.evaluate import real_bytes_per_budget

        real = real_bytes_per_budget(prior, all_ids, prefixes, codec.codebook_size, "mesh")
        for r, rr in zip(per_scale, real):
            r.update({k: rr[k] for k in ("file_bytes", "payload_bytes", "prior_bits_per_token", "raw_files")})
    report = {
        "checkpoint": os.path.abspath(ckpt), "model": type(model).__name__, "shapes": seen,
        "codebook_size": codec.codebook_size, "bits_per_token": round(bits, 3), "grid_resolution": resolution,
        "conventions": {"chamfer": f"{chamfer_points} surface samples per mesh, mean L1 nearest-neighbour distance "
                                   "both ways, summed, in the [-1, 1]^3 normalized frame",
                        "fscore_tau": 0.02, "iou": "on the precomputed uniform volume points",
                        "baseline": f"quadric decimation, vertices quantized to {baseline_bits} bits per coordinate"},
        "per_scale": per_scale,
        "seconds_per_shape": {k: round(float(np.median(v)), 4) for k, v in times.items() if v},
        "errors": errors,
    }
    files = {"report": os.path.join(out, "report.json"), "renders": os.path.join(out, "renders")}
    files["rate_quality"] = rate_quality_plot(per_scale, os.path.join(out, "rate_quality.png"))
    report["files"] = files
    write_json_atomic(files["report"], report)
    return report


def rate_quality_plot(per_scale: list[dict[str, Any]], out_png: str) -> str:
    """IoU, Chamfer and F-score against bytes: ours per scale, the decimation baseline beside it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.8), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax, key, label in zip(axes, ("iou", "chamfer_l1", "fscore"), ("volume IoU", "Chamfer-L1", "F-score@0.02")):
        xs = [r["bytes"] for r in per_scale if r.get(key) is not None]
        ax.plot(xs, [r[key] for r in per_scale if r.get(key) is not None], marker="o", color="black", label="ours")
        real = [(r["file_bytes"], r[key]) for r in per_scale if "file_bytes" in r and r.get(key) is not None]
        if real:
            ax.plot(*zip(*real), marker="o", color="black", linestyle="--", markerfacecolor="none",
                    label="ours, real file bytes (prior)")
        base = [(r["decimation"]["bytes"], r["decimation"].get(key)) for r in per_scale
                if r["decimation"].get(key) is not None]
        if base:
            ax.plot([b[0] for b in base], [b[1] for b in base], marker="s", label="decimated mesh")
        ax.set_xscale("log")
        ax.set_xlabel("bytes per shape")
        ax.set_title(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    from ..eval.plots import save_figure

    return save_figure(fig, out_png)


def format_shape_table(report: dict[str, Any]) -> str:
    """Markdown table: per token budget, ours beside the decimation baseline."""
    lines = ["| scales | tokens | bytes | IoU | Chamfer-L1 | F-score | NC | decimated: Chamfer-L1 | F-score | NC |",
             "|" + "---|" * 10]

    def f(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    for r in report["per_scale"]:
        d = r["decimation"]
        lines.append(f"| {r['scales']} | {r['tokens']} | {r['bytes']} | {f(r['iou'], '.3f')} | "
                     f"{f(r['chamfer_l1'], '.4f')} | {f(r['fscore'], '.3f')} | {f(r['normal_consistency'], '.3f')} | "
                     f"{f(d.get('chamfer_l1'), '.4f')} | {f(d.get('fscore'), '.3f')} | "
                     f"{f(d.get('normal_consistency'), '.3f')} |")
    real = [r for r in report["per_scale"] if "file_bytes" in r]
    if real:
        lines.append("real files with the prior: " + "; ".join(
            f"{r['scales']} scales {r['file_bytes']:.1f} B ({r['bytes']} B nominal, {r['prior_bits_per_token']:.2f} "
            "bits/token)" for r in real))
    t = report["seconds_per_shape"]
    lines.append(f"per shape on {report['grid_resolution']}^3: encode {t.get('encode_s', 0) * 1000:.1f} ms, "
                 f"decode {t.get('decode_s', 0) * 1000:.1f} ms, mesh extraction {t.get('mesh_s', 0):.2f} s")
    return "\n".join(lines)
