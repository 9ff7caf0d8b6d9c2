"""``ShapeTokenizer``: encode meshes to token ids and decode ids to meshes from an export folder."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import trimesh

from tokenizers_mm.data.mesh import MESH_EXTENSIONS, load_mesh, normalize_mesh
from tokenizers_mm.data.mesh_prep import MeshBuildOptions, prepare_mesh

from .base import TokenizerPipeline, file_stems


class ShapeTokenizer(TokenizerPipeline):
    """Shape tokenizer of an export folder (built by :func:`pipelines.load`).

    ``encode`` accepts mesh files (obj / ply / stl / glb / off), ``trimesh.Trimesh`` objects (both are prepared as
    ``data build`` prepares training meshes: decimated when huge, repaired when open, an open mesh that stays open
    is used as is; then normalized into ``[-1, 1]^3`` and sampled), or surface points ``[B, N, 6]`` / ``[N, 6]``
    (xyz in the normalized frame + unit normals). ``decode`` returns one ``trimesh.Trimesh`` per row of ids, in
    the normalized frame, from any whole number of scales.
    """

    modality = "mesh"

    @property
    def prefix_lengths(self) -> list[int]:
        return list(self.config["tokens"]["prefix_lengths"])

    def check_ids(self, ids: Any) -> torch.Tensor:
        t = super().check_ids(ids)
        if t.shape[1] not in self.prefix_lengths:
            raise ValueError(f"a shape decodes from whole scales: {self.prefix_lengths} tokens, got {t.shape[1]}")
        return t

    # ---- inputs -------------------------------------------------------------------------------------
    def surface_of(self, mesh: trimesh.Trimesh, name: str = "mesh") -> torch.Tensor:
        """Prepare (as ``data build`` does), normalize and sample one mesh -> ``[N, 6]``."""
        inp = self.config["inputs"]
        mesh, _ = prepare_mesh(mesh.copy(), MeshBuildOptions())
        mesh, _, _ = normalize_mesh(mesh, padding=float(inp["normalize"]["padding"]))
        pts, face = trimesh.sample.sample_surface(mesh, int(inp["num_surface"]), seed=0)
        return torch.from_numpy(np.concatenate([pts, mesh.face_normals[face]], axis=1).astype(np.float32))

    def _one(self, item: Any) -> torch.Tensor:
        if isinstance(item, (str, os.PathLike)):
            path = self.input_file(item, MESH_EXTENSIONS, "a mesh")
            ext = os.path.splitext(path)[1].lower().lstrip(".")
            try:
                with open(path, "rb") as f:
                    mesh = load_mesh(f.read(), ext)
                return self.surface_of(mesh, path)
            except ValueError as exc:  # MeshError included: name the file it came from
                raise ValueError(f"{path!r}: {exc}") from exc
        if isinstance(item, trimesh.Trimesh):
            return self.surface_of(item)
        raise TypeError(f"cannot read a shape from {type(item).__name__}")

    def to_model_input(self, x: Any) -> torch.Tensor:
        """Any accepted input -> surface points ``[B, N, 6]`` on CPU."""
        if isinstance(x, torch.Tensor):
            t = x.detach().float().cpu()
            t = t[None] if t.ndim == 2 else t
            if t.ndim != 3 or t.shape[-1] != 6:
                raise ValueError(f"surface tensors must be [B, N, 6] (xyz + unit normal), got shape {tuple(x.shape)}")
            return t
        if isinstance(x, (str, os.PathLike, trimesh.Trimesh)):
            x = [x]
        if isinstance(x, Sequence) and len(x) > 0:
            return torch.stack([self._one(item) for item in x])
        raise TypeError(f"cannot read shapes from {type(x).__name__}")

    # ---- encode / decode ----------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, x: Any, num_tokens: int | None = None, batch_size: int = 16) -> torch.Tensor:
        """Shapes -> int64 ids ``[B, num_tokens or all]`` (``num_tokens``: a whole number of scales)."""
        surface = self.to_model_input(x)
        out = []
        for sl in self.batches(len(surface), batch_size):
            with self.autocast():
                out.append(self.codec.encode(surface[sl].to(self.device), num_tokens).cpu())
        return torch.cat(out)

    @torch.inference_mode()
    def decode(self, ids: Any, batch_size: int = 16, resolution: int = 64, chunk: int = 32768) -> list[trimesh.Trimesh]:
        """ids ``[B, n]`` -> meshes (marching cubes of the occupancy on a ``resolution^3`` grid, in chunks)."""
        from tokenizers_mm.shape.mesh_out import marching_cubes_mesh, occupancy_grid

        t = self.check_ids(ids)
        meshes = []
        for i in range(len(t)):
            with self.autocast():
                states = self.codec.decode(t[i:i + 1].to(self.device))
                grid = occupancy_grid(lambda p, st=states: self.codec.occupancy(st, p), resolution, chunk,
                                      device=self.device)
            meshes.append(marching_cubes_mesh(grid))
        return meshes

    def save(self, meshes: list[trimesh.Trimesh], out_dir: str, names: Sequence[str], fmt: str = "ply") -> list[str]:
        """Write meshes as ``out_dir/<name>.<fmt>`` (ply, obj or glb)."""
        from tokenizers_mm.shape.mesh_out import save_mesh

        paths = []
        for mesh, safe in zip(meshes, file_stems(names, "shape"), strict=True):
            paths.append(save_mesh(mesh, os.path.join(out_dir, f"{safe}.{fmt}")))
        return paths
