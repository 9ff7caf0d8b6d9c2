"""Inference on exported tokenizers, without Lightning or the training code.

    import pipelines
    tok = pipelines.load("exports/flextok_tiny")          # CPU, fp32; device="cuda", dtype=torch.bfloat16
    ids = tok.encode(images, num_tokens=None)             # int64 [B, k] on CPU
    recon = tok.decode(ids)                               # the modality's samples, e.g. [B, 3, S, S] in [-1, 1]

An export folder (``tokenizers-mm export``) holds ``config.json`` + ``model.safetensors`` + a model card; loading
reads JSON and safetensors only (no pickle, no network). Encoding and decoding run batched under
``torch.inference_mode``, optionally under bf16 autocast.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import TokenizerPipeline

__all__ = ["load", "read_config", "TokenizerPipeline"]


def read_config(path: str, modality: str | None = None) -> dict[str, Any]:
    """The validated ``config.json`` of export folder ``path`` (``ExportError`` names what is wrong)."""
    from tokenizers_mm.export import read_export_config

    return read_export_config(path, modality)


def load(path: str, device: str | torch.device | None = None, dtype: torch.dtype | str | None = None,
         modality: str | None = None) -> TokenizerPipeline:
    """Load export folder ``path`` as its modality's pipeline.

    Args:
        path: folder written by ``tokenizers-mm export``.
        device: ``cpu``, ``cuda``, ``cuda:1`` ...; default CUDA when available, else CPU.
        dtype: ``None`` / ``float32`` for full precision, ``bfloat16`` (or ``"bf16"``) for bf16 autocast.
        modality: when given, an export of another modality is an error.
    Raises:
        tokenizers_mm.export.ExportError (a ``ValueError``): not an export, a future format version,
        another modality, weights that do not match the config.
    """
    from tokenizers_mm.export import ExportError, load_codec
    from tokenizers_mm.registry import MODALITIES, canonical, spec

    cfg = read_config(path, modality)
    if canonical(cfg["modality"]) not in MODALITIES:
        raise ExportError(f"{path!r} holds a {cfg['modality']} tokenizer, which this version of pipelines "
                          f"cannot run (known: {sorted(MODALITIES)})")
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available()
                                                                        else "cpu")
    codec, cfg = load_codec(path, modality, device=dev)
    return spec(cfg["modality"]).pipeline_class()(codec, cfg, dev, dtype, path)
