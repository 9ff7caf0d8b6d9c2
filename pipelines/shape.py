"""``ShapePipeline``: encode meshes to token ids and decode ids to meshes from an export folder."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import trimesh

from tokenizers_mm.data.mesh import MESH_EXTENSIONS, load_mesh, normalize_mesh
from tokenizers_mm.data.mesh_prep import MeshBuildOptions, prepare_mesh

from .base import LOAD_LINE, TokenizerPipeline, file_stems


class ShapePipeline(TokenizerPipeline):
    """Shape tokenizer of an export folder (built by :func:`pipelines.load`).

    ``encode`` accepts mesh files (obj / ply / stl / glb / off), ``trimesh.Trimesh`` objects (both are prepared as
    ``data build`` prepares training meshes: decimated when huge, repaired when open, an open mesh that stays open
    is used as is; then normalized into ``[-1, 1]^3`` and sampled), or surface points ``[B, N, 6]`` / ``[N, 6]``
    (xyz in the normalized frame + unit normals). ``decode`` returns one ``trimesh.Trimesh`` per row of ids, in
    the normalized frame, from any whole number of scales.
    """

    modality = "shape"
    extensions = MESH_EXTENSIONS

    @property
    def prefix_lengths(self) -> list[int]:
        return list(self.config["tokens"]["prefix_lengths"])

    def check_ids(self, ids: Any) -> torch.Tensor:
        t = super().check_ids(ids)
        if t.shape[1] not in self.prefix_lengths:
            raise ValueError(f"a shape decodes from whole scales: {self.prefix_lengths} tokens, got {t.shape[1]}")
        return t

    # ---- inputs -------------------------------------------------------------------------------------
    def prepared(self, mesh: trimesh.Trimesh) -> trimesh.Trimesh:
        """Prepare one mesh as ``data build`` does and normalize it into the model's frame."""
        mesh, _ = prepare_mesh(mesh.copy(), MeshBuildOptions())
        mesh, _, _ = normalize_mesh(mesh, padding=float(self.config["inputs"]["normalize"]["padding"]))
        return mesh

    def sample_surface(self, mesh: trimesh.Trimesh) -> torch.Tensor:
        """Area-uniform surface points of a prepared mesh (seed 0) -> ``[N, 6]`` (xyz + unit normal)."""
        pts, face = trimesh.sample.sample_surface(mesh, int(self.config["inputs"]["num_surface"]), seed=0)
        return torch.from_numpy(np.concatenate([pts, mesh.face_normals[face]], axis=1).astype(np.float32))

    def surface_of(self, mesh: trimesh.Trimesh, name: str = "mesh") -> torch.Tensor:
        """Prepare (as ``data build`` does), normalize and sample one mesh -> ``[N, 6]``."""
        return self.sample_surface(self.prepared(mesh))

    def read_mesh(self, item: Any) -> trimesh.Trimesh:
        """A mesh file or ``trimesh.Trimesh`` -> the prepared, normalized mesh (``ValueError`` naming the file)."""
        if isinstance(item, trimesh.Trimesh):
            return self.prepared(item)
        path = self.input_file(item, MESH_EXTENSIONS, "a mesh")
        ext = os.path.splitext(path)[1].lower().lstrip(".")
        try:
            with open(path, "rb") as f:
                return self.prepared(load_mesh(f.read(), ext))
        except ValueError as exc:  # MeshError included: name the file it came from
            raise ValueError(f"{path!r}: {exc}") from exc

    # ---- rate control -------------------------------------------------------------------------------
    def labeled_points(self, mesh: trimesh.Trimesh, num_points: int = 8192, seed: int = 0
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference of ``--target-iou``: ``num_points`` points uniform in the normalized cube ``[-1, 1]^3``
        (seeded) and their inside / outside labels for the prepared ``mesh`` (generalized winding number, as
        ``data build`` labels training points) -> ``points [Q, 3]`` float32, ``labels [Q]`` bool."""
        from tokenizers_mm.data.mesh_occupancy import label_occupancy

        pts = np.random.default_rng(seed).uniform(-1.0, 1.0, size=(num_points, 3))
        return torch.from_numpy(pts.astype(np.float32)), torch.from_numpy(label_occupancy(mesh, pts))

    @torch.inference_mode()
    def iou(self, ids: Any, points: torch.Tensor, labels: torch.Tensor) -> float:
        """Volume IoU of the shape decoded from one row of ``ids`` against ``labels`` at ``points`` ``[Q, 3]``."""
        from tokenizers_mm.eval.shape_metrics import volume_iou

        t = self.check_ids(ids)[:1].to(self.device)
        with self.autocast():
            logits = self.codec.occupancy(self.codec.decode(t), points[None].to(self.device))
        return float(volume_iou(logits.float().cpu(), labels[None].cpu())[0])

    def _one(self, item: Any) -> torch.Tensor:
        if isinstance(item, (str, os.PathLike, trimesh.Trimesh)):
            return self.sample_surface(self.read_mesh(item))
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

    shard_input_key = "surface"

    def shard_decoder(self) -> Any:
        """The first ``num_surface`` precomputed surface points of a mesh sample."""
        from tokenizers_mm.data.samples import make_decoder

        return make_decoder("shape", train=False, mesh={"num_surface": int(self.config["inputs"]["num_surface"]),
                                                        "num_volume": 0, "num_near": 0})

    # ---- files --------------------------------------------------------------------------------------------
    def write_decoded(self, ids: Any, keys: list[str], meta: dict[str, Any], out: str, shown: str | None = None,
                      num_tokens: int | None = None, batch_size: int = 16, file_format: str | None = None,
                      **options: Any) -> str:
        """Mesh files (``file_format``: ply, obj or glb; ply by default)."""
        fmt = file_format or "ply"
        samples, each = self.decode_rows(ids, num_tokens, batch_size, **options)
        paths = self.save(samples, out, keys, fmt=fmt)
        return f"decoded {len(paths)} mesh(es) from {each} tokens each into {shown or out}/ ({fmt})"

    # ---- export -------------------------------------------------------------------------------------------
    @staticmethod
    def input_spec(codec: torch.nn.Module, data_hparams: dict[str, Any]) -> dict[str, Any]:
        mesh = data_hparams.get("mesh") or {}
        return {"kind": "mesh", "num_surface": int(mesh.get("num_surface", 2048)),
                "layout": "[B, N, 6] xyz + unit normal",
                "normalize": {"padding": 0.05, "frame": "centered, longest side scaled into [-1 + padding, 1 - padding]"},
                "repair": "trimesh repair of small holes; meshes that stay open are an error",
                "surface_sampling": "area-uniform points on the normalized mesh, seed 0"}

    @classmethod
    def card_tokens(cls, cfg: dict[str, Any]) -> list[str]:
        return [*super().card_tokens(cfg),
                f"- Input: meshes (obj / ply / stl / glb / off), normalized into [-1, 1]^3, "
                f"{cfg['inputs']['num_surface']} surface points with normals. Any whole number of scales decodes: "
                f"{cfg['tokens'].get('prefix_lengths')} tokens."]

    @classmethod
    def card_use(cls, cfg: dict[str, Any]) -> list[str]:
        return ["```python", "import pipelines", "", LOAD_LINE,
                "ids = tok.encode([\"a.obj\", \"b.ply\"])  # int64 [B, K]; num_tokens=n keeps the first n tokens (whole scales)",
                "meshes = tok.decode(ids)             # one trimesh.Trimesh per row, in [-1, 1]^3", "```", "",
                "```bash", "tokenizers-mm encode --model THIS_FOLDER a.obj b.ply --out tokens.npz",
                "tokenizers-mm decode --model THIS_FOLDER tokens.npz --out recon/ --mesh-format glb", "```"]


ShapeTokenizer = ShapePipeline  # the old name, still importable
