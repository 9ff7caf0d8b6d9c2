"""Atomic checkpoint writes and safe checkpoint reads.

- :class:`AtomicCheckpointIO` writes every Lightning checkpoint to a temporary file in the target
  folder, fsyncs it and renames it over the final name: a crash or a full disk never leaves a
  truncated ``last.ckpt`` behind, and the previous one stays readable until the new one is complete.
- :func:`load_tokenizer` rebuilds a tokenizer from a checkpoint with ``torch.load(weights_only=True)``:
  nothing is unpickled, and the class must live inside the ``tokenizers_mm`` package.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning_fabric.utilities.cloud_io import get_filesystem
from lightning_fabric.utilities.types import _PATH

CLASS_KEY = "tokenizers_mm_class"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are temp-file + fsync + rename."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        from .io import atomic_path

        with atomic_path(os.fspath(path)) as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)


def load_weights_file(path: str | os.PathLike[str], what: str) -> dict[str, torch.Tensor]:
    """Read a local ``.safetensors`` / ``.pt`` / ``.pth`` state dict of tensors without unpickling.

    ``{"state_dict": {...}}`` wrappers are unwrapped. ``what`` names the file's role in error messages:
    ``FileNotFoundError`` when it is missing, ``ValueError`` for another extension or content.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} weights file not found: {path!r}")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(path, device="cpu")
    elif ext in (".pt", ".pth"):
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    else:
        raise ValueError(f"{what} weights must be .safetensors, .pt or .pth, got {path!r}")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ValueError(f"{path!r} does not hold a flat state dict of tensors (str -> Tensor)")
    return state


def checkpoint_file(path: str, flag: str = "--ckpt") -> str:
    """``path`` when it is a checkpoint file; one-line errors naming ``flag`` for an export folder, a run folder or
    nothing."""
    if os.path.isdir(path):
        from .export import is_export_dir

        if is_export_dir(path):
            raise ValueError(f"{flag} {path!r} is an export folder; {flag} takes a training checkpoint (.ckpt), "
                             "e.g. runs/NAME/checkpoints/last.ckpt")
        last = os.path.join(path, "checkpoints", "last.ckpt")
        hint = f" (did you mean {last!r}?)" if os.path.isfile(last) else ""
        raise ValueError(f"{flag} {path!r} is a folder; expected a checkpoint file (.ckpt){hint}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag}: checkpoint {path!r} does not exist")
    return path


def read_checkpoint(path: str) -> dict[str, Any]:
    """Load a Lightning checkpoint with ``weights_only=True``; clear errors for missing or foreign files."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path!r} is not a readable tokenizers-mm checkpoint (weights-only load failed: "
                         f"{exc})") from exc


def load_tokenizer(path: str, map_location: str | torch.device = "cpu") -> Any:
    """Rebuild the ``TokenizerModule`` stored in checkpoint ``path`` (eval mode, on ``map_location``)."""
    return build_tokenizer(read_checkpoint(path), path, map_location)


def build_tokenizer(ckpt: dict[str, Any], source: str, map_location: str | torch.device = "cpu") -> Any:
    """Rebuild the ``TokenizerModule`` of an already read checkpoint dict (``source`` names it in errors)."""
    cls_path = ckpt.get(CLASS_KEY)
    if not cls_path:
        raise ValueError(f"{source!r} was not written by a tokenizers-mm module (no {CLASS_KEY!r} entry)")
    module_name, _, cls_name = cls_path.rpartition(".")
    if not module_name.startswith("tokenizers_mm."):
        raise ValueError(f"refusing to load class {cls_path!r} from outside the tokenizers_mm package")
    cls = getattr(importlib.import_module(module_name), cls_name)
    model = cls(**ckpt.get("hyper_parameters", {}))
    model.load_state_dict(ckpt["state_dict"])
    return model.to(map_location).eval()
