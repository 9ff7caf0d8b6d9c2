"""Surface samples of a mesh: uniform by area, and on sharp edges (Dora's salient-edge sampling).

Uniform samples miss the thin creases that carry a CAD-like shape's identity; Dora (Chen et al. 2024) adds
points drawn on the edges whose dihedral angle exceeds a threshold. Both return ``[N, 6]`` arrays: xyz, then
the unit normal of the face the point lies on (for an edge point: one of its two faces, drawn at random).
"""

from __future__ import annotations

import numpy as np
import trimesh


def sample_uniform(mesh: trimesh.Trimesh, count: int, rng: np.random.Generator) -> np.ndarray:
    """float64 ``[count, 6]`` points uniform by area, with their face normals."""
    points, face_idx = trimesh.sample.sample_surface(mesh, count, seed=int(rng.integers(2**31)))
    return np.concatenate([points, mesh.face_normals[face_idx]], axis=1)


def sharp_edges(mesh: trimesh.Trimesh, angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Edges whose two faces meet at more than ``angle_deg`` degrees.

    Returns ``(edges [E, 2] vertex ids, faces [E, 2] the two adjacent face ids)``; boundary edges of open
    meshes have one face and are not included.
    """
    angles = mesh.face_adjacency_angles
    keep = angles > np.radians(angle_deg)
    return mesh.face_adjacency_edges[keep], mesh.face_adjacency[keep]


def sample_sharp(mesh: trimesh.Trimesh, count: int, rng: np.random.Generator, angle_deg: float = 30.0
                 ) -> tuple[np.ndarray, int]:
    """float64 ``[count, 6]`` points on sharp edges, uniform by edge length, and the number of sharp edges.

    A mesh without sharp edges (a sphere) gets uniform surface samples instead, so the array always holds
    ``count`` points.
    """
    edges, faces = sharp_edges(mesh, angle_deg)
    if len(edges) == 0 or count == 0:
        return sample_uniform(mesh, count, rng), 0
    a, b = mesh.vertices[edges[:, 0]], mesh.vertices[edges[:, 1]]
    length = np.linalg.norm(b - a, axis=1)
    if length.sum() <= 0:
        return sample_uniform(mesh, count, rng), 0
    pick = rng.choice(len(edges), size=count, p=length / length.sum())
    t = rng.random((count, 1))
    points = a[pick] + t * (b[pick] - a[pick])
    side = rng.integers(0, 2, size=count)
    normals = mesh.face_normals[faces[pick, side]]
    return np.concatenate([points, normals], axis=1), int(len(edges))


def sample_occupancy(mesh: trimesh.Trimesh, num_surface: int, num_volume: int, num_near: int,
                     near_sigma: float = 0.02, seed: int = 0, num_sharp: int = 0, sharp_angle: float = 30.0,
                     chunk: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Surface samples and labeled occupancy queries of a normalized mesh (watertight or not).

    Returns ``(arrays, stats)``. ``arrays``: ``surface`` float32 ``[num_surface, 6]``; ``volume_points``
    float32 ``[num_volume, 3]`` uniform in ``[-1, 1]^3`` and ``volume_labels`` bool; ``near_points`` (surface
    points plus Gaussian noise of std ``near_sigma``) and ``near_labels``; with ``num_sharp > 0`` also ``sharp``
    float32 ``[num_sharp, 6]`` (:func:`sample_sharp`). ``stats``: ``ambiguous``, the share of volume points whose
    winding number lies in ``[0.2, 0.8]`` (0 for a closed surface; large for a surface without an inside),
    ``sharp_edges``, and ``inverted`` (the faces point inwards; the stored normals are flipped to point out). The same ``seed`` gives the same arrays.
    """
    from .mesh_occupancy import DEFAULT_CHUNK, WindingNumber, inside

    rng = np.random.default_rng(seed)
    both = sample_uniform(mesh, num_surface + num_near, rng)  # one pass over the face areas
    surface = both[:num_surface]
    volume = rng.uniform(-1.0, 1.0, size=(num_volume, 3))
    near = both[num_surface:, :3] + rng.normal(scale=near_sigma, size=(num_near, 3))
    winding = WindingNumber(mesh, chunk or DEFAULT_CHUNK)
    w_volume, w_near = winding(volume), winding(near)
    a = np.abs(w_volume)
    # faces wound inwards give winding number -1 inside: labels use |w|, and the normals are flipped outwards
    inverted = bool(w_volume.sum() + w_near.sum() < 0)
    if inverted:
        surface[:, 3:] *= -1
    arrays = {
        "surface": surface.astype(np.float32),
        "volume_points": volume.astype(np.float32),
        "volume_labels": inside(w_volume),
        "near_points": near.astype(np.float32),
        "near_labels": inside(w_near),
    }
    stats = {"ambiguous": float(((a >= 0.2) & (a <= 0.8)).mean()) if num_volume else 0.0, "sharp_edges": 0,
             "inverted": inverted}
    if num_sharp > 0:
        sharp, n_edges = sample_sharp(mesh, num_sharp, rng, sharp_angle)
        if inverted:
            sharp[:, 3:] *= -1
        arrays["sharp"] = sharp.astype(np.float32)
        stats["sharp_edges"] = n_edges
    return arrays, stats
