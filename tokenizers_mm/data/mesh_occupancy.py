"""Inside / outside labels of query points by the generalized winding number (libigl's fast winding number).

The winding number ``w(p)`` of a closed, outward-oriented surface is 1 inside and 0 outside; for open,
self-intersecting or overlapping surfaces it stays close to those values away from the defects (Jacobson et
al. 2013), which is why one method labels watertight and broken meshes alike. libigl evaluates it with a
hierarchy of Taylor expansions (Barill et al. 2018): ``O(F log F)`` to build, ``O(log F)`` per query, and
memory linear in the number of faces, independent of the number of queries. Queries run in fixed-size chunks,
so peak memory does not grow with the number of points either.

A point is inside when ``|w| > 0.5``: the absolute value keeps a mesh whose faces all point inwards correct.
"""

from __future__ import annotations

import numpy as np
import trimesh

DEFAULT_CHUNK = 65536


class WindingNumber:
    """Winding numbers of query points with respect to one triangle mesh (the hierarchy is built once).

    Args:
        mesh: any triangle mesh (need not be watertight).
        chunk: query points per libigl call; bounds the temporary arrays to ``chunk x 3`` float64.
        accuracy: libigl's Barnes-Hut accuracy term (larger: more exact near the surface, slower).
    """

    def __init__(self, mesh: trimesh.Trimesh, chunk: int = DEFAULT_CHUNK, accuracy: float = 2.0) -> None:
        import igl

        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.chunk = int(chunk)
        self.accuracy = float(accuracy)
        self._bvh = igl.FastWindingNumberBVH()
        self._bvh.init(np.ascontiguousarray(mesh.vertices, dtype=np.float64),
                       np.ascontiguousarray(mesh.faces, dtype=np.int64))

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """float64 ``[N]`` winding numbers of ``points`` ``[N, 3]``."""
        points = np.asarray(points)
        if points.ndim != 2 or points.shape[1] != 3:
            raise ValueError(f"query points must have shape [N, 3], got {list(points.shape)}")
        out = np.empty(len(points), dtype=np.float64)
        for i in range(0, len(points), self.chunk):
            q = np.ascontiguousarray(points[i:i + self.chunk], dtype=np.float64)
            out[i:i + len(q)] = self._bvh.winding_number(q, self.accuracy)
        return out


def inside(winding: np.ndarray) -> np.ndarray:
    """bool ``[N]``: True where ``|winding| > 0.5``."""
    return np.abs(winding) > 0.5


def label_occupancy(mesh: trimesh.Trimesh, points: np.ndarray, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """bool ``[N]`` inside / outside labels of ``points`` ``[N, 3]`` for ``mesh`` (watertight or not)."""
    return inside(WindingNumber(mesh, chunk)(points))
