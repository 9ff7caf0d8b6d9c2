"""Meshes: load, normalize into the cube ``[-1, 1]^3``, repair, and label occupancy queries.

Labeling (inside / outside tests) is slow, so ``tokenizers-mm data build --modality mesh`` runs
:func:`precompute_mesh_sample` once per mesh and stores the result as an ``npz`` beside the mesh in
the shard; training only reads and subsamples it (:class:`MeshTransform`).
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

import numpy as np
import torch
import trimesh

MESH_EXTENSIONS = ("obj", "ply", "stl", "glb", "off")


class MeshError(ValueError):
    """A mesh that cannot be used: unreadable, empty, or not watertight after repair."""


def load_mesh(data: bytes, ext: str, process: bool = True) -> trimesh.Trimesh:
    """Read mesh bytes of type ``ext`` (obj / ply / stl / glb / off) into one triangle mesh.

    Scenes (glb, multi-object obj) are merged into one mesh. ``process`` merges duplicate vertices (trimesh's
    default); without it only non-finite vertices are dropped, which is much faster for large indexed meshes.
    Raises :class:`MeshError` when the file cannot be read or holds no triangles.
    """
    ext = ext.lower().lstrip(".")
    if ext not in MESH_EXTENSIONS:
        raise MeshError(f"unsupported mesh extension {ext!r}; expected one of {MESH_EXTENSIONS}")
    try:
        loaded = trimesh.load(io.BytesIO(data), file_type=ext, force="mesh", process=process)
        if isinstance(loaded, trimesh.Trimesh) and not process:
            loaded.remove_infinite_values()
    except Exception as exc:  # trimesh raises many types for bad files
        raise MeshError(f"unreadable {ext} mesh ({len(data)} bytes): {exc}") from exc
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0 or len(loaded.vertices) < 4:
        raise MeshError(f"{ext} mesh holds no triangles")
    return loaded


def normalize_mesh(mesh: trimesh.Trimesh, padding: float = 0.05, copy: bool = True
                   ) -> tuple[trimesh.Trimesh, np.ndarray, float]:
    """Center the bounding box at the origin and scale its longest side to ``2 * (1 - padding)``.

    Returns ``(mesh, center [3], scale)`` such that ``normalized = (original - center) * scale``; with
    ``copy=False`` the vertices of ``mesh`` itself are replaced (no copy of a large mesh and its caches).
    """
    lo, hi = mesh.bounds
    center = (lo + hi) / 2.0
    extent = float((hi - lo).max())
    if extent <= 0:
        raise MeshError("mesh has zero extent")
    scale = 2.0 * (1.0 - padding) / extent
    if not copy:
        mesh.vertices = (mesh.vertices - center) * scale
        return mesh, center, scale
    out = mesh.copy()
    out.apply_translation(-center)
    out.apply_scale(scale)
    return out, center, scale


def repair_mesh(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """A copy of ``mesh`` repaired with trimesh: vertices merged (also across texture and normal seams),
    degenerate and duplicate faces dropped, holes filled, winding made consistent. It may still be open."""
    fixed = mesh.copy()
    fixed.merge_vertices(merge_tex=True, merge_norm=True)
    fixed.update_faces(fixed.nondegenerate_faces())
    fixed.update_faces(fixed.unique_faces())
    fixed.remove_unreferenced_vertices()
    trimesh.repair.fill_holes(fixed)
    trimesh.repair.fix_winding(fixed)
    return fixed


def make_watertight(mesh: trimesh.Trimesh) -> tuple[trimesh.Trimesh, bool]:
    """Return ``(mesh, repaired)``; repairs with :func:`repair_mesh` and orients the faces outwards.

    Raises :class:`MeshError` with the reason when the mesh stays open (``data build`` labels such meshes by
    their winding number instead: :mod:`.mesh_prep`).
    """
    if mesh.is_watertight:
        return mesh, False
    fixed = repair_mesh(mesh)
    trimesh.repair.fix_normals(fixed)
    if not fixed.is_watertight:
        open_edges = len(trimesh.grouping.group_rows(fixed.edges_sorted, require_count=1))
        raise MeshError(f"not watertight and trimesh could not repair it ({open_edges} open edges remain)")
    return fixed, True


def precompute_mesh_sample(mesh: trimesh.Trimesh, num_surface: int = 16384, num_volume: int = 16384,
                           num_near: int = 16384, near_sigma: float = 0.02, seed: int = 0, num_sharp: int = 0,
                           sharp_angle: float = 30.0) -> dict[str, np.ndarray]:
    """Sample surface points with normals and labeled occupancy queries of a normalized mesh.

    Labels come from the generalized winding number (:mod:`.mesh_occupancy`), so the mesh need not be
    watertight. Returns arrays:
        ``surface``: float32 ``[num_surface, 6]``, xyz then unit normal;
        ``volume_points``: float32 ``[num_volume, 3]`` uniform in ``[-1, 1]^3``;
        ``volume_labels``: bool ``[num_volume]``, True inside;
        ``near_points`` / ``near_labels``: surface points plus Gaussian noise of std ``near_sigma``;
        ``sharp`` (only when ``num_sharp > 0``): float32 ``[num_sharp, 6]`` points on sharp edges.
    """
    from .mesh_sampling import sample_occupancy

    arrays, _ = sample_occupancy(mesh, num_surface, num_volume, num_near, near_sigma, seed, num_sharp, sharp_angle)
    return arrays


def encode_npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


REQUIRED_MESH_ARRAYS = ("surface", "volume_points", "volume_labels", "near_points", "near_labels")


def decode_mesh_npz(data: bytes) -> dict[str, np.ndarray]:
    """Read a precomputed mesh sample; raises ``ValueError`` naming missing arrays."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:
        raise ValueError(f"not a readable npz ({len(data)} bytes): {exc}") from exc
    missing = [k for k in REQUIRED_MESH_ARRAYS if k not in arrays]
    if missing:
        raise ValueError(f"mesh npz lacks arrays {missing}; rebuild the shards with `tokenizers-mm data build`")
    return arrays


def _take(n_total: int, n: int, rng: random.Random) -> np.ndarray:
    if n > n_total:
        raise ValueError(f"asked for {n} points but the shard holds {n_total}; rebuild with more points")
    return np.asarray(rng.sample(range(n_total), n))


@dataclass
class MeshTransform:
    """Subsample a precomputed mesh sample into fixed-size tensors.

    Args:
        num_surface: encoder input points (xyz + normal).
        num_volume: uniform occupancy queries.
        num_near: near-surface occupancy queries.
        random_subset: draw random subsets (training) or take the first points (evaluation).
        num_sharp: how many of the ``num_surface`` encoder points come from the sharp-edge samples (``sharp``
            array of shards built with ``--mesh-sharp-points``); 0 uses uniform samples only.
    """

    num_surface: int = 2048
    num_volume: int = 1024
    num_near: int = 1024
    random_subset: bool = True
    num_sharp: int = 0

    def _idx(self, n_total: int, n: int, rng: random.Random) -> np.ndarray:
        if not self.random_subset:
            if n > n_total:
                raise ValueError(f"asked for {n} points but the shard holds {n_total}")
            return np.arange(n)
        return _take(n_total, n, rng)

    def __call__(self, arrays: dict[str, np.ndarray], rng: random.Random) -> dict[str, torch.Tensor]:
        if not 0 <= self.num_sharp <= self.num_surface:
            raise ValueError(f"num_sharp must be in [0, num_surface={self.num_surface}], got {self.num_sharp}")
        if self.num_sharp and "sharp" not in arrays:
            raise ValueError("num_sharp > 0 needs shards built with sharp-edge samples (data build --mesh-sharp-points)")
        s = self._idx(len(arrays["surface"]), self.num_surface - self.num_sharp, rng)
        surface = arrays["surface"][s]
        if self.num_sharp:
            surface = np.concatenate([surface, arrays["sharp"][self._idx(len(arrays["sharp"]), self.num_sharp, rng)]])
        v = self._idx(len(arrays["volume_points"]), self.num_volume, rng)
        n = self._idx(len(arrays["near_points"]), self.num_near, rng)
        return {
            "surface": torch.from_numpy(surface).float(),
            "volume_points": torch.from_numpy(arrays["volume_points"][v]).float(),
            "volume_labels": torch.from_numpy(arrays["volume_labels"][v].astype(np.float32)),
            "near_points": torch.from_numpy(arrays["near_points"][n]).float(),
            "near_labels": torch.from_numpy(arrays["near_labels"][n].astype(np.float32)),
        }
