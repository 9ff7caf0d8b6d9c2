"""From an occupancy field to meshes: chunked grid evaluation, marching cubes (scikit-image), mesh files."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
import trimesh

from ..io import atomic_path

MESH_FORMATS = ("ply", "obj", "glb")


def grid_points(resolution: int, bound: float = 1.0) -> torch.Tensor:
    """``[R^3, 3]`` cell-corner coordinates of a regular grid over ``[-bound, bound]^3`` (x slowest, z fastest)."""
    axis = torch.linspace(-bound, bound, resolution)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


@torch.no_grad()
def occupancy_grid(field: Callable[[torch.Tensor], torch.Tensor], resolution: int = 64, chunk: int = 32768,
                   bound: float = 1.0, device: torch.device | str = "cpu") -> np.ndarray:
    """Evaluate ``field(points [1, Q, 3]) -> logits [1, Q]`` on a ``resolution^3`` grid, ``chunk`` points at a
    time (memory stays bounded whatever the resolution); returns float32 logits ``[R, R, R]``."""
    pts = grid_points(resolution, bound)
    out = np.empty(len(pts), dtype=np.float32)
    for start in range(0, len(pts), chunk):
        part = pts[start:start + chunk].to(device)[None]
        out[start:start + len(part[0])] = field(part)[0].float().cpu().numpy()
    return out.reshape(resolution, resolution, resolution)


def marching_cubes_mesh(logits: np.ndarray, level: float = 0.0, bound: float = 1.0) -> trimesh.Trimesh:
    """Iso-surface of a logit grid ``[R, R, R]`` (inside > ``level``) as a trimesh in ``[-bound, bound]^3``.

    The grid is padded with one layer of "outside" so the surface is closed (watertight) even where the shape
    touches the box. An empty or full grid gives an empty mesh.
    """
    from skimage.measure import marching_cubes

    r = logits.shape[0]
    padded = np.pad(logits, 1, mode="constant", constant_values=min(float(logits.min()), level) - 1.0)
    if not (padded.max() > level > padded.min()):
        return trimesh.Trimesh()
    verts, faces, _, _ = marching_cubes(padded, level=level)
    spacing = 2 * bound / (r - 1)
    verts = (verts - 1) * spacing - bound
    # skimage orients faces for "inside = greater" as pointing towards increasing values: flip to outward normals
    mesh = trimesh.Trimesh(vertices=verts, faces=faces[:, ::-1], process=True)
    return mesh


def save_mesh(mesh: trimesh.Trimesh, path: str) -> str:
    """Write ``mesh`` as ply / obj / glb (by extension), atomically (temp file + rename)."""
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext not in MESH_FORMATS:
        raise ValueError(f"mesh files are written as {', '.join(MESH_FORMATS)}, got {path!r}")
    with atomic_path(path) as tmp:
        mesh.export(tmp, file_type=ext)
    return path
