"""``TokenizerPipeline``: what every modality's inference wrapper shares (device, precision, batching, ids)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

DTYPES = {None: None, "float32": None, "fp32": None, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``None`` / ``float32`` -> None (full precision); ``bfloat16`` / ``"bf16"`` -> ``torch.bfloat16``."""
    if isinstance(dtype, torch.dtype):
        if dtype == torch.float32:
            return None
        if dtype == torch.bfloat16:
            return dtype
    elif dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")


def file_stems(names: Any, default: str) -> list[str]:
    """File names (without extension) for sample ``names``: characters other than letters, digits, ``-_.`` become
    ``_``; an empty name becomes ``default``. Two names that would share a file are a ``ValueError`` naming both
    (one decoded sample must never overwrite another)."""
    stems: dict[str, str] = {}
    out = []
    for name in names:
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name)) or default
        if stem.strip(".") == "":
            stem = default
        if stem in stems:
            raise ValueError(f"keys {stems[stem]!r} and {str(name)!r} would both be written as {stem!r}; "
                             "give the samples distinct keys")
        stems[stem] = str(name)
        out.append(stem)
    return out


class TokenizerPipeline:
    """Base of the modality pipelines: wraps a codec ``nn.Module`` loaded from an export.

    Subclasses implement ``encode(x, num_tokens=None) -> ids`` and ``decode(ids, **options) -> x``
    using :meth:`batches`, :meth:`autocast` and :meth:`check_ids`.
    """

    modality = ""

    def __init__(self, codec: nn.Module, config: dict[str, Any], device: torch.device,
                 dtype: torch.dtype | str | None = None, path: str | None = None) -> None:
        self.codec = codec
        self.config = config
        self.device = device
        self.dtype = resolve_dtype(dtype)
        self.path = os.path.abspath(path) if path else None

    # ---- facts from the config --------------------------------------------------------------------
    @property
    def codebook_size(self) -> int:
        return int(self.config["tokens"]["codebook_sizes"][0])

    @property
    def num_tokens(self) -> int:
        """Tokens per sample at full length (K)."""
        return int(self.config["tokens"]["tokens_per_sample"])

    @property
    def prefix_decodable(self) -> bool:
        return bool(self.config["tokens"].get("prefix_decodable"))

    @property
    def model_id(self) -> str:
        """sha256 of the weights: names the exact tokenizer that produced a set of ids."""
        return str(self.config["weights"]["sha256"])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.config['architecture']}, {self.num_tokens} tokens x "
                f"{self.codebook_size} codes, device={self.device}, dtype={self.dtype or torch.float32})")

    # ---- helpers ------------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on the pipeline's device when ``dtype`` is bfloat16, else nothing."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @staticmethod
    def batches(n: int, batch_size: int) -> Iterator[slice]:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for start in range(0, n, batch_size):
            yield slice(start, min(n, start + batch_size))

    def check_ids(self, ids: Any) -> torch.Tensor:
        """Token ids (tensor, numpy array or nested lists) -> int64 tensor ``[B, k]`` on CPU, validated.

        ``[k]`` is taken as one sample. Raises ``ValueError`` for non-integer ids, a wrong shape (more or fewer
        tokens than the tokenizer decodes) or ids outside ``[0, codebook_size)``.
        """
        if isinstance(ids, torch.Tensor):
            t = ids.detach().cpu()
        else:
            arr = np.asarray(ids)
            if arr.dtype.kind not in "iu":
                raise ValueError(f"token ids must be integers, got an array of {arr.dtype}")
            t = torch.from_numpy(arr.astype(np.int64))
        if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
            raise ValueError(f"token ids must be integers, got {t.dtype}")
        t = t.long()
        if t.ndim == 1:
            t = t[None]
        if t.ndim != 2:
            raise ValueError(f"token ids must be [B, k] (or [k] for one sample), got shape {tuple(t.shape)}")
        k, K = t.shape[1], self.num_tokens
        if self.prefix_decodable and not 1 <= k <= K:
            raise ValueError(f"this tokenizer decodes 1..{K} tokens per sample, got {k}")
        if not self.prefix_decodable and k != K:
            raise ValueError(f"this tokenizer decodes exactly {K} tokens per sample, got {k}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.codebook_size):
            raise ValueError(f"token ids must lie in [0, {self.codebook_size}), got min {int(t.min())} "
                             f"max {int(t.max())}")
        return t

    @staticmethod
    def input_file(item: str | os.PathLike, extensions: tuple[str, ...], kind: str) -> str:
        """Check that ``item`` is an existing file of one of ``extensions``; returns its path."""
        path = os.fspath(item)
        ext = os.path.splitext(path)[1].lower().lstrip(".")
        if ext not in extensions:
            raise ValueError(f"{path!r} is not {kind} file: this tokenizer reads {', '.join(extensions)}")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{kind.split()[-1]} file {path!r} does not exist")
        return path

    def encode(self, x: Any, num_tokens: int | None = None, batch_size: int = 64) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, ids: Any, batch_size: int = 64, **options: Any) -> Any:
        raise NotImplementedError
