"""Rendered views of meshes (PNG) for a person to look at: matplotlib's 3D triangle plots, no GPU, no display."""

from __future__ import annotations

import numpy as np
import trimesh

from ..io import atomic_path

VIEWS = ((20, 30), (20, 150), (70, 60))  # (elevation, azimuth) in degrees


def render_views(meshes: list[tuple[str, trimesh.Trimesh]], out_png: str, title: str = "",
                 max_faces: int = 4000) -> str:
    """One row per view, one column per labeled mesh; writes ``out_png`` atomically and returns it.

    Meshes with more than ``max_faces`` faces are drawn quadric-decimated to ``max_faces`` (plots stay fast; a
    random subset of faces would leave holes that read as surface noise).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = max(1, len(meshes))
    fig = Figure(figsize=(2.6 * cols, 2.6 * len(VIEWS)), dpi=90)
    FigureCanvasAgg(fig)
    for c, (label, mesh) in enumerate(meshes):
        if len(mesh.faces) > max_faces:
            mesh = mesh.simplify_quadric_decimation(face_count=max_faces)
        faces = np.asarray(mesh.faces)
        for r, (elev, azim) in enumerate(VIEWS):
            ax = fig.add_subplot(len(VIEWS), cols, r * cols + c + 1, projection="3d")
            if len(faces):
                v = np.asarray(mesh.vertices)
                ax.plot_trisurf(v[:, 0], v[:, 2], v[:, 1], triangles=faces, color="lightsteelblue",
                                edgecolor="none", linewidth=0, shade=True)
            ax.set_xlim(-1, 1)
            ax.set_ylim(-1, 1)
            ax.set_zlim(-1, 1)
            ax.view_init(elev=elev, azim=azim)
            ax.set_axis_off()
            if r == 0:
                ax.set_title(label if len(faces) else f"{label}\n(empty)", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    return out_png
