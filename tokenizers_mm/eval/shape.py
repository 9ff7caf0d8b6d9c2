"""Shape evaluation: quality per token budget beside a decimation baseline.

For every held-out mesh and every number of scales s (a byte budget ``ceil(tokens * log2(codebook) / 8)``):
volume IoU on the precomputed labeled points, and -- on the mesh extracted by marching cubes at
``resolution``^3 -- Chamfer-L1, F-score at 0.02 and normal consistency against the normalized ground-truth mesh
(:mod:`tokenizers_mm.eval.shape_metrics`). The baseline is the same mesh decimated (quadric) until its vertex
coordinates quantized to ``baseline_bits`` bits plus its face indices fit the same bytes. Figures:
``rate_quality.png`` and one ``renders/<key>.png`` per shape (ground truth, every scale, the baseline).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np
import torch
import trimesh

from ..quantize import bytes_for
from . import report as rep
from .evaluator import Evaluator
from .shape_metrics import surface_metrics, volume_iou

SHAPE_METRICS = [rep.metric("iou", "IoU", ".3f", plot=True), rep.metric("chamfer_l1", "Chamfer-L1", ".4f", plot=True),
                 rep.metric("fscore", "F-score@0.02", ".3f", plot=True),
                 rep.metric("normal_consistency", "NC", ".3f")]
SURFACE_KEYS = ("chamfer_l1", "fscore", "normal_consistency")


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


def decimation_row(d: dict[str, Any]) -> dict[str, Any]:
    """A row's baseline entry from the decimation means (``shapes``, ``bytes``, ``faces``, surface metrics)."""
    out = {"codec": "decimation", "shapes": d["shapes"], "bytes": d.get("bytes"),
           "metrics": {k: d[k] for k in SURFACE_KEYS if k in d}}
    if "faces" in d:
        out["faces"] = d["faces"]
    if "note" in d:
        out["note"] = d["note"]
    return out


def _mean(items: list[dict[str, float]], key: str) -> float | None:
    vals = [r[key] for r in items if key in r and np.isfinite(r[key])]
    return round(float(np.mean(vals)), 5) if vals else None


class ShapeEvaluator(Evaluator):
    """Shape tokenizers (occupancy decoders with multi-scale token prefixes).

    Options: ``resolution`` (marching-cubes grid, 64), ``chamfer_points`` (surface samples per mesh, 100k),
    ``baseline_bits`` (bits per vertex coordinate of the decimated mesh, 10), ``num_surface`` (encoder input
    points, 2048), ``padding`` (normalization margin, 0.05).
    """

    modality = "shape"
    title = "3D shape"
    budget = ("scales", "scales")
    kind = "shapes"
    rate = {"per": "shape", **rep.RATE_PER_SAMPLE}
    metrics = SHAPE_METRICS

    def __init__(self, model: Any, checkpoint: dict[str, Any], out: str, device: str, resolution: int = 64,
                 chamfer_points: int = 100_000, baseline_bits: int = 10, num_surface: int = 2048,
                 padding: float = 0.05, **_: Any) -> None:
        super().__init__(model, checkpoint, out, device)
        self.codec = model.inference_codec()
        self.prefixes = self.codec.prefix_lengths
        self.budgets = [bytes_for(n, self.codec.codebook_size) for n in self.prefixes]
        self.resolution, self.chamfer_points, self.baseline_bits = resolution, chamfer_points, baseline_bits
        self.num_surface, self.padding = num_surface, padding
        self.rows: dict[int, list[dict[str, float]]] = {s: [] for s in range(1, len(self.prefixes) + 1)}
        self.base_rows: dict[int, list[dict[str, float]]] = {s: [] for s in self.rows}
        self.times: dict[str, list[float]] = {"encode_s": [], "decode_s": [], "mesh_s": []}
        self.all_ids: list[torch.Tensor] = []
        os.makedirs(os.path.join(out, "renders"), exist_ok=True)

    @property
    def codebook_size(self) -> int:
        return int(self.codec.codebook_size)

    def read(self, raw: dict[str, Any]) -> tuple[trimesh.Trimesh, dict[str, np.ndarray]]:
        from ..data.mesh import MESH_EXTENSIONS, decode_mesh_npz, load_mesh, normalize_mesh
        from ..data.mesh_prep import MeshBuildOptions, prepare_mesh

        ext = next(e for e in MESH_EXTENSIONS if e in raw)
        # the same preparation as data build gave the stored samples (an open mesh stays open and is still scored)
        mesh, _ = prepare_mesh(load_mesh(raw[ext], ext, process=False), MeshBuildOptions())
        mesh, _, _ = normalize_mesh(mesh, padding=self.padding)
        return mesh, decode_mesh_npz(raw["npz"])

    def update(self, batch: list[tuple[str, Any]]) -> None:
        from ..shape.mesh_out import marching_cubes_mesh, occupancy_grid
        from ..shape.render import render_views

        codec, device, last = self.codec, self.device, len(self.prefixes)
        for key, (gt, arrays) in batch:
            surface = torch.from_numpy(arrays["surface"][: self.num_surface]).to(device)[None]
            vol = torch.from_numpy(arrays["volume_points"]).to(device)[None]
            labels = torch.from_numpy(arrays["volume_labels"]).to(device)[None]
            t0 = time.perf_counter()
            ids = codec.encode(surface)
            self.times["encode_s"].append(time.perf_counter() - t0)
            self.all_ids.append(ids[0].cpu())
            views = [("ground truth", gt)]
            for s, n in enumerate(self.prefixes, start=1):
                t0 = time.perf_counter()
                states = codec.decode(ids[:, :n])
                if s == last:
                    self.times["decode_s"].append(time.perf_counter() - t0)
                iou = float(volume_iou(codec.occupancy(states, vol), labels)[0])
                t0 = time.perf_counter()
                mesh = marching_cubes_mesh(occupancy_grid(lambda p, st=states: codec.occupancy(st, p),
                                                          self.resolution, device=device))
                if s == last:
                    self.times["mesh_s"].append(time.perf_counter() - t0)
                self.rows[s].append({"iou": iou, **surface_metrics(mesh, gt, self.chamfer_points)})
                views.append((f"{n} tokens ({self.budgets[s - 1]} B)", mesh))
                base = decimation_baseline(gt, self.budgets[s - 1], self.baseline_bits)
                if base is not None:
                    bmesh, bbytes = base
                    self.base_rows[s].append({"bytes": bbytes, "faces": len(bmesh.faces),
                                              **surface_metrics(bmesh, gt, self.chamfer_points)})
                    if s == last:
                        views.append((f"decimated ({bbytes} B)", bmesh))
            render_views(views, os.path.join(self.out, "renders", f"{key.replace('/', '_')}.png"), title=key)

    def compute(self) -> list[dict[str, Any]]:
        rows = []
        for s, n in enumerate(self.prefixes, start=1):
            b = self.base_rows[s]
            dec = ({"shapes": len(b), "bytes": _mean(b, "bytes"), "faces": _mean(b, "faces"),
                    **{k: _mean(b, k) for k in SURFACE_KEYS}}
                   if b else {"shapes": 0, "note": "no decimated mesh fits this budget"})
            rows.append(rep.budget_row("scales", s, n, self.budgets[s - 1],
                                       {k: _mean(self.rows[s], k) for k in ("iou", *SURFACE_KEYS)},
                                       baselines=[decimation_row(dec)]))
        return rows

    def prior_ids(self) -> tuple[list[torch.Tensor], list[int], str]:
        return self.all_ids, list(self.prefixes), self.modality

    def finish(self, report: dict[str, Any]) -> None:
        bits = round(math.log2(self.codec.codebook_size), 3)
        report["summary"] = f"{report['model']}: {self.count} shapes, {bits} bits per token"
        report["tokens"] = {"codebook_size": self.codebook_size, "bits_per_token": bits,
                            "prefix_lengths": list(self.prefixes)}
        report["setup"] = {"grid_resolution": self.resolution}
        report["conventions"] = {
            "chamfer": f"{self.chamfer_points} surface samples per mesh, mean L1 nearest-neighbour distance both "
                       "ways, summed, in the [-1, 1]^3 normalized frame",
            "fscore_tau": 0.02, "iou": "on the precomputed uniform volume points",
            "baseline": f"quadric decimation, vertices quantized to {self.baseline_bits} bits per coordinate"}
        t = {k: round(float(np.median(v)), 4) for k, v in self.times.items() if v}
        report["timing"]["seconds_per_shape"] = t
        report["notes"].append(f"per shape on {self.resolution}^3: encode {t.get('encode_s', 0) * 1000:.1f} ms, "
                               f"decode {t.get('decode_s', 0) * 1000:.1f} ms, mesh extraction "
                               f"{t.get('mesh_s', 0):.2f} s")
        report["pictures"] = ["rate_quality.png"]

    def plots(self, report: dict[str, Any]) -> dict[str, str]:
        from .plots import rate_quality_plot

        return {"renders": os.path.join(self.out, "renders"),
                "rate_quality": rate_quality_plot(report, ["iou", "chamfer_l1", "fscore"],
                                                  os.path.join(self.out, "rate_quality.png"))}
