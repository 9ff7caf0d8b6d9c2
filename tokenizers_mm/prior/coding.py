"""Range coding of token ids with a :class:`~.model.TokenPrior` (``constriction``'s range coder).

Compressed file layout (little-endian):

====== ===== ============================================================================================
bytes  type  field
====== ===== ============================================================================================
4      ascii magic ``TMMc``
1      u8    format version (:data:`VERSION`)
1      u8    modality (1 image, 2 audio, 3 mesh) in the low 7 bits; the high bit flags a raw payload
4      bytes first 4 bytes of the tokenizer's weights sha256
4      bytes first 4 bytes of the prior's weights sha256
1      u8    number of id dimensions ``r`` (1: ``[k]``; 2: ``[n_q, F]``)
2r     u16   the ids' shape
4      u32   number of tokens (the product of the shape)
4      u32   audio only: samples of the original clip (the decoder trims to it)
4      u32   CRC-32 of the ids (``uint32`` little-endian), checked after decoding
rest   bytes payload
====== ===== ============================================================================================

25 bytes for 1D ids, 31 for a speech clip.

Payload (version 2): the range coder's 32-bit words written most significant byte first and cut to the shortest
byte string that still decodes to the same ids when the decoder pads it with zero bytes (the last kept byte may be
raised by one: the shortest number inside the coder's final interval), so files do not end on whole words. When
that is longer than the ids stored plainly, the payload is the raw code instead (raw flag set): the ids as one
base-``V`` integer in ``ceil(n log2 V / 8)`` bytes, the nominal size. A file is never longer than the nominal
bytes plus the header. Version 1 files (whole little-endian words) still decode.

Determinism: the probabilities of token ``i`` come from the same step-by-step computation in the encoder and
the decoder (batch of one, the same tensor shapes, one CPU thread, float32); logits are rounded to fixed point
(1/64 nat) and turned into integer frequencies summing to at most ``2**20`` (every code at least 1) with float64
``numpy`` arithmetic, so both sides hand ``constriction`` the same table. A decoder whose numbers still differ
(another CPU's kernels) fails the CRC and raises instead of returning wrong ids.
"""

from __future__ import annotations

import contextlib
import math
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .model import TokenPrior

MAGIC = b"TMMc"
VERSION = 2
RAW_FLAG = 0x80
# the modality words of tokenizers_mm.registry (older names read through canonical())
MODALITY_CODES = {"image": 1, "speech": 2, "shape": 3}
CODE_MODALITIES = {v: k for k, v in MODALITY_CODES.items()}
SHA_BYTES = 4
FREQ_TOTAL = 1 << 20
LOGIT_SCALE = 64.0


class CompressedFileError(ValueError):
    """A compressed file is not ours, truncated, corrupt, or made with another tokenizer / prior."""


@dataclass
class Header:
    """The decoded header of a compressed file (see the module docstring)."""

    modality: str
    tokenizer_sha: bytes
    prior_sha: bytes
    shape: tuple[int, ...]
    extra: int = 0
    crc: int = 0
    version: int = VERSION
    raw: bool = False

    @property
    def num_tokens(self) -> int:
        return int(np.prod(self.shape))

    def pack(self) -> bytes:
        from ..registry import canonical

        modality = canonical(self.modality)
        extra = struct.pack("<I", self.extra) if modality == "speech" else b""
        mod = MODALITY_CODES[modality] | (RAW_FLAG if self.raw else 0)
        return (MAGIC + struct.pack("<BB", self.version, mod) + self.tokenizer_sha[:SHA_BYTES]
                + self.prior_sha[:SHA_BYTES] + struct.pack("<B", len(self.shape))
                + struct.pack(f"<{len(self.shape)}H", *self.shape) + struct.pack("<I", self.num_tokens) + extra
                + struct.pack("<I", self.crc))

    @classmethod
    def unpack(cls, data: bytes, name: str) -> tuple[Header, int]:
        """Parse the header at the start of ``data``; returns it and the payload offset."""
        if data[:4] != MAGIC:
            raise CompressedFileError(f"{name} is not a tokenizers-mm compressed file (it does not start with "
                                      f"{MAGIC!r})")
        fixed = 7 + 2 * SHA_BYTES  # magic, version, modality, two sha prefixes, ndim
        if len(data) < fixed:
            raise CompressedFileError(f"{name} is truncated: {len(data)} bytes, shorter than a header")
        version, mod = struct.unpack_from("<BB", data, 4)
        if version > VERSION or version < 1:
            raise CompressedFileError(f"{name} has compressed-file version {version}; this tokenizers-mm reads "
                                      f"1..{VERSION}: upgrade tokenizers-mm")
        raw = bool(mod & RAW_FLAG) and version >= 2
        mod = mod & ~RAW_FLAG if version >= 2 else mod
        if mod not in CODE_MODALITIES:
            raise CompressedFileError(f"{name} names an unknown modality code {mod} (corrupt header)")
        modality = CODE_MODALITIES[mod]
        tok, prior = data[6:6 + SHA_BYTES], data[6 + SHA_BYTES:6 + 2 * SHA_BYTES]
        ndim = data[fixed - 1]
        end = fixed + 2 * ndim + (12 if modality == "speech" else 8)
        if ndim not in (1, 2) or len(data) < end:
            raise CompressedFileError(f"{name} is truncated or corrupt: header of {len(data)} bytes, ids of "
                                      f"{ndim} dimensions")
        shape = struct.unpack_from(f"<{ndim}H", data, fixed)
        count = struct.unpack_from("<I", data, fixed + 2 * ndim)[0]
        extra = struct.unpack_from("<I", data, fixed + 2 * ndim + 4)[0] if modality == "speech" else 0
        crc = struct.unpack_from("<I", data, end - 4)[0]
        head = cls(modality, tok, prior, tuple(shape), extra, crc, version, raw)
        if head.num_tokens != count or count == 0:
            raise CompressedFileError(f"{name} is corrupt: its header says {count} tokens for ids of shape "
                                      f"{list(shape)}")
        return head, end


def ids_crc(ids: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(ids, dtype="<u4").tobytes())


def frequencies(logits: torch.Tensor) -> np.ndarray:
    """Logits ``[V]`` (float) -> integer frequencies ``[V]`` (float64 holding integers), each >= 1, summing to at
    most :data:`FREQ_TOTAL`; the same logits give the same table on every machine."""
    fixed = np.round(logits.detach().to(torch.float32).cpu().numpy().astype(np.float64) * LOGIT_SCALE)
    p = np.exp((fixed - fixed.max()) / LOGIT_SCALE)
    p /= p.sum()
    v = p.shape[0]
    return np.floor(p * (FREQ_TOTAL - v)) + 1.0


def code_bits(freq: np.ndarray, symbol: int) -> float:
    """Ideal code length (bits) of ``symbol`` under the integer table ``freq``."""
    return -math.log2(freq[symbol] / freq.sum())


@contextlib.contextmanager
def deterministic_cpu() -> Iterator[None]:
    """One intra-op thread while coding (reduction order does not depend on the thread count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def walk(prior: TokenPrior, num_frames: int, depth: int, step: Callable[[int, int, np.ndarray], int]) -> np.ndarray:
    """Visit the tokens of one stream in the prior's order, frame by frame and codebook by codebook.

    ``step(t, q, freq)`` gets the integer frequency table of code ``q`` of frame ``t`` and returns that code
    (the encoder returns the known one, the decoder decodes it). Returns the frames ``[F, d]`` (int64).
    """
    frames = torch.zeros(1, num_frames, depth, dtype=torch.long)
    with deterministic_cpu():
        for t in range(num_frames):
            h = prior.context(prior.window(frames, t), depth)[:, -1]
            for q in range(depth):
                logits = prior.depth_logits(h, frames[:, t, : q + 1])[0, q]
                sym = int(step(t, q, frequencies(logits)))
                if not 0 <= sym < prior.codebook_size:
                    raise CompressedFileError(f"decoded id {sym} outside [0, {prior.codebook_size})")
                frames[0, t, q] = sym
    return frames[0]


def _words(payload: bytes) -> np.ndarray:
    """A version-2 payload -> the coder's ``uint32`` words (zero bytes complete the last word)."""
    padded = payload + b"\0" * (-len(payload) % 4)
    return np.frombuffer(padded, dtype=">u4").astype(np.uint32)


def _decodes_to(payload: bytes, models: list, symbols: list[int]) -> bool:
    import constriction

    dec = constriction.stream.queue.RangeDecoder(_words(payload))
    return all(int(dec.decode(m)) == s for m, s in zip(models, symbols))


def shortest_payload(words: np.ndarray, models: list, symbols: list[int], bits: float) -> bytes:
    """The shortest byte string that decodes (zero-padded) to ``symbols`` under ``models``: a prefix of the coder's
    output, or that prefix plus one in its last byte. Lengths are tried upwards from just below the ideal
    ``bits / 8``; the whole output always decodes, so the search ends."""
    full = np.asarray(words, dtype=np.uint32).astype(">u4").tobytes()
    for n in range(max(0, int(bits // 8) - 1), len(full)):
        cands = [full[:n]]
        if n:
            up = int.from_bytes(full[:n], "big") + 1
            if up < 256 ** n:
                cands.append(up.to_bytes(n, "big"))
        for c in cands:
            if _decodes_to(c, models, symbols):
                return c
    return full


def encode_frames(prior: TokenPrior, frames: torch.Tensor) -> tuple[bytes, float]:
    """Range-code one stream ``[F, d]``; returns the shortest payload (see the module docstring) and the ideal
    size in bits under the integer tables."""
    import constriction

    enc = constriction.stream.queue.RangeEncoder()
    known = frames.long().cpu()
    bits = 0.0
    models: list = []
    symbols: list[int] = []

    def step(t: int, q: int, freq: np.ndarray) -> int:
        nonlocal bits
        sym = int(known[t, q])
        model = constriction.stream.model.Categorical(freq, perfect=False)
        enc.encode(sym, model)
        models.append(model)
        symbols.append(sym)
        bits += code_bits(freq, sym)
        return sym

    prior_cpu = prior.cpu().eval()
    walk(prior_cpu, known.shape[0], known.shape[1], step)
    return shortest_payload(enc.get_compressed(), models, symbols, bits), bits


def decode_frames(prior: TokenPrior, payload: bytes | np.ndarray, num_frames: int, depth: int) -> torch.Tensor:
    """Inverse of :func:`encode_frames`: frames ``[F, d]`` from a payload (bytes), or from the coder's words of a
    version-1 file (``uint32`` array)."""
    import constriction

    words = payload if isinstance(payload, np.ndarray) else _words(payload)
    dec = constriction.stream.queue.RangeDecoder(words)

    def step(t: int, q: int, freq: np.ndarray) -> int:
        return int(dec.decode(constriction.stream.model.Categorical(freq, perfect=False)))

    return walk(prior.cpu().eval(), num_frames, depth, step)


def raw_bytes(num_tokens: int, codebook_size: int) -> int:
    """Bytes of ``num_tokens`` ids stored plainly: ``ceil(num_tokens * log2(V) / 8)`` (the nominal size)."""
    return ((codebook_size ** num_tokens - 1).bit_length() + 7) // 8


def pack_raw(ids: np.ndarray, codebook_size: int) -> bytes:
    """Ids (any shape, C order) as one base-``V`` integer, little digit first, in :func:`raw_bytes` bytes."""
    value = 0
    for i in np.asarray(ids, dtype=np.int64).reshape(-1)[::-1]:
        value = value * codebook_size + int(i)
    return value.to_bytes(raw_bytes(int(np.asarray(ids).size), codebook_size), "little")


def unpack_raw(data: bytes, shape: tuple[int, ...], codebook_size: int) -> np.ndarray:
    """Inverse of :func:`pack_raw`: int64 ids of ``shape``."""
    value = int.from_bytes(data, "little")
    n = int(np.prod(shape))
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        value, out[i] = divmod(value, codebook_size)
    if value:
        raise CompressedFileError("raw payload holds more than its ids")
    return out.reshape(shape)


def coded_payload(prior: TokenPrior, ids: torch.Tensor) -> tuple[bytes, float, bool]:
    """One sample's ids (``[k]`` or ``[n_q, F]``) -> ``(payload, ideal bits, raw)``: the trimmed range code, or
    the raw code (``raw`` True) when that is shorter."""
    from .ordering import to_frames

    t = torch.as_tensor(ids).long().cpu()
    payload, bits = encode_frames(prior, to_frames(t[None], prior.layout)[0])
    raw = len(payload) > raw_bytes(int(t.numel()), prior.codebook_size)
    if raw:
        payload = pack_raw(t.numpy(), prior.codebook_size)
    return payload, bits, raw
