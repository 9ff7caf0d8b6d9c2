"""One mesh file -> the arrays ``data build`` stores, with a record of what was done to the mesh.

Steps: refuse a file too large to load within the memory bound (by size, and by the face count its header
declares); load, merging duplicate vertices only when the mesh is not closed as stored; decimate a mesh above
``max_faces`` (quadric, fast-simplification); use a watertight mesh as is, else repair it with trimesh (merge
vertices, drop degenerate and duplicate faces, fill holes, fix winding); normalize into ``[-1, 1]^3``; sample
and label by the generalized winding number (:mod:`.mesh_occupancy`), which stays correct away from the defects
of a mesh that is still open, self-intersecting or made of overlapping parts. A surface without a meaningful
inside (an open scan, a single sheet) shows as many volume points with a winding number near 0.5 and is skipped
with that reason. Every outcome is a :class:`MeshError` (skipped, with its reason) or a record:

``status``: ``watertight`` (closed 2-manifold as is), ``repaired`` (closed after trimesh's repair) or
``winding_number`` (still open or non-manifold: labeled as is by the winding number); ``how``: one line saying
what was done; ``faces_source`` / ``faces``; ``open_edges``; ``ambiguous`` (share of volume points with winding
number in ``[0.2, 0.8]``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import trimesh

from .mesh import MeshError, load_mesh, normalize_mesh, repair_mesh
from .mesh_sampling import sample_occupancy


@dataclass
class MeshBuildOptions:
    """Precomputation settings of mesh shards (points per sample stored in the ``npz``) and the safety bounds.

    Args:
        num_surface / num_volume / num_near: uniform surface points, uniform volume queries, near-surface queries.
        near_sigma: std of the Gaussian offset of near-surface queries (normalized units).
        padding: margin left inside ``[-1, 1]^3`` by the normalization.
        num_sharp: points on sharp edges (0: none stored).
        sharp_angle: dihedral angle in degrees above which an edge is sharp.
        max_faces: meshes with more faces are decimated to this many before labeling.
        max_load_faces: meshes whose file declares more faces are skipped before parsing (loading and decimating
            them would exceed the memory bound).
        max_file_mb: larger files are skipped before parsing (for formats whose face count is not read ahead).
        max_ambiguous: a mesh with a larger share of volume points whose winding number lies in ``[0.2, 0.8]``
            has no meaningful inside and is skipped.
        chunk: query points per winding-number call.
    """

    num_surface: int = 16384
    num_volume: int = 16384
    num_near: int = 16384
    near_sigma: float = 0.02
    padding: float = 0.05
    num_sharp: int = 0
    sharp_angle: float = 30.0
    max_faces: int = 1_000_000
    max_load_faces: int = 2_000_000
    max_file_mb: float = 512.0
    max_ambiguous: float = 0.02
    chunk: int = 65536


def declared_faces(data: bytes, ext: str) -> int | None:
    """The number of faces a mesh file declares, read without parsing it (None when the format does not say).

    PLY and OFF headers state it; binary STL stores the triangle count at byte 80; OBJ and ASCII STL count their
    face / facet lines (polygons count once).
    """
    ext = ext.lower()
    try:
        if ext == "ply":
            header = data[: data.find(b"end_header")].decode("ascii", "replace")
            m = re.search(r"element\s+face\s+(\d+)", header)
            return int(m.group(1)) if m else None
        if ext == "off":
            lines = [ln for ln in data[:4096].decode("ascii", "replace").splitlines()
                     if ln.strip() and not ln.startswith("#")]
            counts = lines[0][3:].split() or lines[1].split()
            return int(counts[1])
        if ext == "stl":
            if len(data) >= 84 and len(data) == 84 + 50 * int.from_bytes(data[80:84], "little"):
                return int.from_bytes(data[80:84], "little")
            return data.count(b"facet normal")
        if ext == "obj":
            return data.count(b"\nf ") + int(data.startswith(b"f "))
    except (ValueError, IndexError):
        return None
    return None


def check_file_size(data: bytes, ext: str, opts: MeshBuildOptions) -> None:
    """Raise :class:`MeshError` when a mesh file is too large to load within the memory bound."""
    nbytes = len(data)
    if nbytes > opts.max_file_mb * 2**20:
        raise MeshError(f"file of {nbytes / 2**20:.0f} MB exceeds max_file_mb={opts.max_file_mb:g}: loading it "
                        "would exceed the memory bound (decimate it first, or raise --mesh-max-file-mb)")
    faces = declared_faces(data, ext)
    if faces is not None and faces > opts.max_load_faces:
        raise MeshError(f"the file declares {faces} faces, above max_load_faces={opts.max_load_faces}: loading it "
                        "would exceed the memory bound (decimate it first)")


def edge_use(faces: np.ndarray) -> tuple[int, int]:
    """``(open, non_manifold)``: how many undirected edges of ``faces`` ``[F, 3]`` one face / three or more use.

    Both are 0 for a closed 2-manifold. Sorting one int64 key per edge is several times faster than trimesh's
    row hashing (``is_watertight``) on meshes of a million faces.
    """
    f = np.asarray(faces, dtype=np.int64)
    a, b = f.ravel(), f[:, [1, 2, 0]].ravel()
    keys = np.minimum(a, b) * (int(f.max()) + 1) + np.maximum(a, b)
    _, counts = np.unique(keys, return_counts=True)
    return int((counts == 1).sum()), int((counts > 2).sum())


def _open_edges(mesh: trimesh.Trimesh) -> int:
    return edge_use(mesh.faces)[0]


def prepare_mesh(mesh: trimesh.Trimesh, opts: MeshBuildOptions) -> tuple[trimesh.Trimesh, dict[str, Any]]:
    """Decimate if too large and repair if open; returns ``(mesh, record)`` (see the module docstring).

    The vertices of ``mesh`` itself are merged when it is not closed as given.
    """
    record: dict[str, Any] = {"faces_source": int(len(mesh.faces))}
    steps = []
    closed = edge_use(mesh.faces) == (0, 0)
    if not closed:  # a vertex per face corner (STL, unprocessed loads): merge as trimesh's loader does by default
        mesh.merge_vertices()
        closed = edge_use(mesh.faces) == (0, 0)
    if len(mesh.faces) > opts.max_faces:
        try:
            mesh = mesh.simplify_quadric_decimation(face_count=opts.max_faces)
        except Exception as exc:  # fast-simplification raises several types on degenerate input
            raise MeshError(f"{len(mesh.faces)} faces exceed max_faces={opts.max_faces} and decimation failed: "
                            f"{exc}") from exc
        if len(mesh.faces) == 0 or len(mesh.faces) > opts.max_faces:
            raise MeshError(f"{record['faces_source']} faces exceed max_faces={opts.max_faces}; decimation left "
                            f"{len(mesh.faces)}")
        steps.append(f"decimated from {record['faces_source']} to {len(mesh.faces)} faces (quadric)")
        closed = edge_use(mesh.faces) == (0, 0)
    if closed:
        status = "watertight"
        steps.append("watertight as is")
    else:
        before = _open_edges(mesh)
        mesh = repair_mesh(mesh)
        if edge_use(mesh.faces) == (0, 0):
            status = "repaired"
            steps.append(f"repaired by trimesh (merge vertices, drop degenerate faces, fill holes, fix winding): "
                         f"{before} open edges -> 0")
        else:
            status = "winding_number"
            steps.append(f"open after trimesh's repair ({before} -> {_open_edges(mesh)} open edges): labeled by "
                         "the generalized winding number")
    record.update(status=status, how="; ".join(steps), faces=int(len(mesh.faces)),
                  open_edges=0 if status != "winding_number" else _open_edges(mesh))
    return mesh, record


def build_mesh_sample(data: bytes, ext: str, opts: MeshBuildOptions, seed: int
                      ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays of :func:`~.mesh_sampling.sample_occupancy` and the record of one mesh file's bytes.

    The record also holds ``center`` / ``scale`` of the normalization and ``inside_fraction`` of the volume
    points. Raises :class:`MeshError` with the reason when the mesh is skipped.
    """
    check_file_size(data, ext, opts)
    mesh = load_mesh(data, ext, process=False)  # prepare_mesh merges vertices only where the mesh needs it
    mesh, record = prepare_mesh(mesh, opts)
    mesh, center, scale = normalize_mesh(mesh, opts.padding, copy=False)
    arrays, stats = sample_occupancy(mesh, opts.num_surface, opts.num_volume, opts.num_near, opts.near_sigma,
                                     seed, opts.num_sharp, opts.sharp_angle, opts.chunk)
    inside = float(arrays["volume_labels"].mean()) if opts.num_volume else float(arrays["near_labels"].mean())
    if stats["ambiguous"] > opts.max_ambiguous:
        raise MeshError(f"no meaningful inside ({record['how']}): {100 * stats['ambiguous']:.1f}% of volume points "
                        f"have a winding number in [0.2, 0.8] (max_ambiguous={opts.max_ambiguous:g}); an open "
                        "scan or a single sheet")
    if not arrays["volume_labels"].any() and not arrays["near_labels"].any():
        raise MeshError(f"no inside ({record['how']}): no query point has a winding number above 0.5")
    if stats["inverted"]:
        record["how"] += "; faces point inwards: normals flipped"
    record.update(ambiguous=round(stats["ambiguous"], 5), sharp_edges=stats["sharp_edges"],
                  center=[float(c) for c in center], scale=float(scale), inside_fraction=inside)
    return arrays, record
