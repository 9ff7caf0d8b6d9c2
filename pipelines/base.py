"""``TokenizerPipeline``: what every modality's inference wrapper shares (device, precision, batching, ids)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
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

    def save(self, samples: Any, out_dir: str, names: Sequence[str], **options: Any) -> list[str]:
        raise NotImplementedError

    # ---- files: what ``encode`` reads and ``decode`` writes -----------------------------------------------
    #: file extensions ``encode`` / ``compress`` read (lower case, without the dot)
    extensions: tuple[str, ...] = ()
    #: what a row of ids holds, for messages
    token_unit = "tokens per sample"

    def encode_files(self, files: list[str], num_tokens: int | None = None, batch_size: int = 64,
                     chunk_seconds: float = 30.0) -> tuple[Any, dict[str, Any], str]:
        """Token ids of ``files`` (``[N, k]``), the meta of their tokens.npz and a line saying what was done."""
        from .files import token_meta

        ids = self.encode(files, num_tokens=num_tokens, batch_size=batch_size)
        return (ids, token_meta(self, ids.shape[1]),
                f"encoded {len(files)} {self.modality} file(s) into {ids.shape[1]} tokens each")

    def join(self, decoded: list[Any]) -> Any:
        """The samples of several :meth:`decode` calls as one sequence."""
        return [sample for part in decoded for sample in part]

    def decode_rows(self, ids: Any, num_tokens: int | None = None, batch_size: int = 64, **options: Any
                    ) -> tuple[Any, str]:
        """Decode ``[N, k]`` ids, or a list of rows of different lengths (``encode --target-*``: one at a time),
        from their first ``num_tokens`` when given; returns the samples and how many tokens each had (text)."""
        if isinstance(ids, list):
            if num_tokens:
                ids = [i[:num_tokens] for i in ids]
            samples = self.join([self.decode(np.asarray(i)[None], batch_size=1, **options) for i in ids])
            lengths = sorted({len(i) for i in ids})
            return samples, f"{lengths[0]}..{lengths[-1]}" if len(lengths) > 1 else str(lengths[0])
        if num_tokens:  # a prefix of each sample's tokens (check_ids refuses what the model cannot decode)
            if num_tokens > ids.shape[1]:
                raise ValueError(f"--num-tokens {num_tokens}: the samples hold {ids.shape[1]} tokens")
            ids = ids[:, :num_tokens]
        return self.decode(ids, batch_size=batch_size, **options), str(ids.shape[1])

    def save_decoded(self, ids: list[Any], out: str, names: Sequence[str], lengths: Sequence[int | None] | None = None,
                     overview: str | None = None, **options: Any) -> list[str]:
        """Decode one sample's ids per entry of ``ids`` (all of one length) and write them as ``out/<name>.*``;
        ``lengths``: each sample's length where the modality trims (audio); ``overview``: the file name of an
        overview picture where the modality draws one (images). Returns the paths."""
        return self.save(self.decode(np.stack([np.asarray(i) for i in ids]), **options), out,
                         names)

    def write_decoded(self, ids: Any, keys: list[str], meta: dict[str, Any], out: str, shown: str | None = None,
                      num_tokens: int | None = None, batch_size: int = 64, file_format: str | None = None,
                      **options: Any) -> str:
        """Decode ``ids`` into one file per key in folder ``out`` (``shown``: the folder named in the message);
        ``meta``: the tokens.npz meta; ``options``: the decoder's. Returns a line saying what was written."""
        samples, each = self.decode_rows(ids, num_tokens, batch_size, **options)
        paths = self.save(samples, out, keys)
        return f"decoded {len(paths)} {self.modality} sample(s) from {each} tokens each into {shown or out}/"

    # ---- shards (``tokenizers-mm tokenize``) ------------------------------------------------------------------
    #: the entry of a decoded shard sample that :meth:`encode` takes
    shard_input_key = ""

    def shard_decoder(self) -> Any:
        """The decoder (picklable, ``(raw sample, rng) -> dict``) that turns a raw shard sample into this
        tokenizer's input, prepared as the export's ``inputs`` say."""
        raise NotImplementedError

    # ---- what an export says about this modality (``tokenizers-mm export``) ---------------------------------
    @staticmethod
    def input_spec(codec: nn.Module, data_hparams: dict[str, Any]) -> dict[str, Any]:
        """The ``inputs`` entry of an export's config.json: what the codec takes and how files are prepared."""
        raise NotImplementedError

    @classmethod
    def token_summary(cls, cfg: dict[str, Any]) -> str:
        """One line on an export's tokens (config.json)."""
        t = cfg["tokens"]
        return (f"{t['tokens_per_sample']} tokens x {t['codebook_sizes']} codes = {t['bytes_per_sample']} bytes per "
                "sample")

    @classmethod
    def card_tokens(cls, cfg: dict[str, Any]) -> list[str]:
        """The model card's lines on the tokens and the inputs."""
        t = cfg["tokens"]
        return [f"- {t['tokens_per_sample']} tokens per sample, codebook size {t['codebook_sizes']}, "
                f"{t['bits_per_token']:.2f} bits per token: {t['bytes_per_sample']} bytes per sample.",
                "- Any prefix of 1..K tokens decodes (quality rises with the number kept)." if t.get("prefix_decodable")
                else "- Every token is needed to decode (a grid of tokens)."]

    @classmethod
    def card_use(cls, cfg: dict[str, Any]) -> list[str]:
        """The model card's usage lines (Python and command line)."""
        return ["```python", "import pipelines", "", LOAD_LINE,
                "ids = tok.encode(inputs)            # int64 [B, K]; num_tokens=k keeps a prefix",
                "recon = tok.decode(ids)             # the decoded samples", "```"]

    @classmethod
    def card_lines(cls, cfg: dict[str, Any]) -> list[str]:
        """The model card's Tokens and Use sections of an export config."""
        return ["## Tokens", "", *cls.card_tokens(cfg), "", "## Use", "", *cls.card_use(cfg)]


LOAD_LINE = "tok = pipelines.load(\"THIS_FOLDER\")  # cpu; device=\"cuda\", dtype=torch.bfloat16 also work"
