"""Token files: ``tokens.npz`` written by ``tokenizers-mm encode`` and read by ``decode``.

Layout (numpy ``.npz``, no pickles):

- ``ids``: ``[N, k]`` token ids, ``uint16`` when the codebook has at most 65,536 codes, else ``int32``; for
  audio, whose clips differ in length, ``[n, sum F_i]``: each clip's ``[n codebooks, F_i frames]`` side by side
  along the frames, with ``frames`` ``[N]`` giving each ``F_i`` (and ``meta["num_samples"]`` each clip's length);
- ``keys``: ``[N]`` unicode names of the inputs (file names without extension);
- ``meta``: a JSON string: format, modality, architecture, codebook size, tokens per sample, the sha256 of
  the tokenizer's weights (``model_id``) and its export path.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

import numpy as np
import torch

TOKENS_FORMAT = "tokenizers-mm-tokens"


def ids_dtype(codebook_size: int) -> np.dtype:
    """The smallest integer type that stores ids of ``codebook_size`` codes."""
    return np.dtype(np.uint16) if codebook_size <= 2 ** 16 else np.dtype(np.int32)


def token_meta(pipeline: Any, num_tokens: int) -> dict[str, Any]:
    cfg = pipeline.config
    return {"format": TOKENS_FORMAT, "format_version": 1, "modality": pipeline.modality,
            "architecture": cfg["architecture"], "codebook_size": pipeline.codebook_size,
            "tokens_per_sample": pipeline.num_tokens, "num_tokens": num_tokens,
            "model_id": pipeline.model_id, "model_path": pipeline.path}


def save_tokens(path: str, ids: torch.Tensor | list[torch.Tensor], keys: list[str], meta: dict[str, Any]) -> str:
    """Write ``tokens.npz`` atomically (temp file + fsync + rename); returns the path.

    ``ids``: ``[N, k]``, or a list of ``[n, F_i]`` (audio clips) stored side by side with their ``frames``.
    """
    if len(keys) != len(ids):
        raise ValueError(f"{len(keys)} keys for {len(ids)} rows of ids")
    dtype = ids_dtype(meta["codebook_size"])
    arrays: dict[str, np.ndarray] = {}
    if isinstance(ids, (list, tuple)):
        arrays["frames"] = np.array([int(i.shape[-1]) for i in ids], dtype=np.int64)
        arrays["ids"] = np.concatenate([i.cpu().numpy() for i in ids], axis=-1).astype(dtype)
    else:
        arrays["ids"] = ids.cpu().numpy().astype(dtype)
    buf = io.BytesIO()
    np.savez(buf, keys=np.array(keys, dtype=np.str_), meta=np.array(json.dumps(meta)), **arrays)
    from tokenizers_mm.io import write_bytes_atomic

    return write_bytes_atomic(path, buf.getvalue())


def load_tokens(path: str) -> tuple[np.ndarray | list[np.ndarray], list[str], dict[str, Any]]:
    """Read a ``tokens.npz``: ``(ids [N, k] or a list of [n, F_i] for audio, keys, meta)``; ``ValueError`` names
    what is wrong."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"token file {path!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
            if "ids" not in files:
                raise ValueError(f"{path!r} holds no 'ids' array (found {sorted(files)}); expected a file "
                                 "written by `tokenizers-mm encode`")
            ids = z["ids"]
            keys = [str(k) for k in z["keys"]] if "keys" in files else [f"{i:06d}" for i in range(len(ids))]
            meta = json.loads(str(z["meta"])) if "meta" in files else {}
            if "frames" in files:
                frames = z["frames"]
                if int(frames.sum()) != ids.shape[-1] or len(frames) != len(keys):
                    raise ValueError(f"{path!r}: 'frames' ({len(frames)} clips, {int(frames.sum())} frames) does not "
                                     f"match ids {ids.shape} and {len(keys)} keys")
                ids = np.split(ids, np.cumsum(frames)[:-1], axis=-1)
    except (OSError, ValueError) as exc:
        if isinstance(exc, ValueError) and "holds no 'ids'" in str(exc):
            raise
        raise ValueError(f"{path!r} is not a readable .npz token file: {exc}") from exc
    return ids, keys, meta


def check_meta(meta: dict[str, Any], pipeline: Any, source: str) -> list[str]:
    """Compare a token file's metadata with the tokenizer about to decode it.

    Raises ``ValueError`` for another modality or codebook size; returns warnings (another model id).
    """
    warnings = []
    if not meta:
        return [f"{source} carries no metadata: cannot check which tokenizer wrote it"]
    from tokenizers_mm.registry import canonical

    if meta.get("modality") is not None and canonical(meta["modality"]) != pipeline.modality:
        raise ValueError(f"{source} holds {meta['modality']} tokens; the model is a {pipeline.modality} tokenizer")
    if meta.get("codebook_size") not in (None, pipeline.codebook_size):
        raise ValueError(f"{source} holds ids of a {meta['codebook_size']}-code codebook; the model has "
                         f"{pipeline.codebook_size} codes")
    if meta.get("model_id") and meta["model_id"] != pipeline.model_id:
        warnings.append(f"{source} was written by another tokenizer ({meta.get('model_path')}, weights "
                        f"{meta['model_id'][:12]}...) than the one decoding it ({pipeline.model_id[:12]}...)")
    return warnings


def expand_inputs(inputs: list[str], extensions: tuple[str, ...]) -> list[str]:
    """Input files of ``encode`` / ``compress``: each file as given, each folder's files of ``extensions``
    (recursively, sorted; the others are named in a warning). A folder without any is a ``FileNotFoundError``."""
    import logging

    files: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            every = [os.path.join(root, n) for root, _, names in os.walk(item) for n in names if not n.startswith(".")]
            found = sorted(f for f in every if f.lower().rsplit(".", 1)[-1] in extensions)
            if not found:
                raise FileNotFoundError(f"folder {item!r} holds no {'/'.join(extensions)} files")
            if len(found) < len(every):  # said, not silently dropped
                logging.getLogger("tokenizers_mm").warning(
                    "encode: ignoring %d file(s) in %s that are not %s files", len(every) - len(found), item,
                    "/".join(extensions))
            files += found
        else:
            files.append(item)
    return files
