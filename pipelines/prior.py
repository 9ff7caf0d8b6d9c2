"""``TokenPriorPipeline``: an exported token prior: compress / decompress ids, bits per token, samples.

    import pipelines
    tok = pipelines.load("exports/flextok_tiny")
    prior = pipelines.load("exports/flextok_tiny_prior")
    blob = prior.compress(tok, tok.encode(images)[0])     # bytes: header + range-coded ids
    ids, header = prior.decompress(tok, blob)             # the same ids, bit-exact
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from tokenizers_mm.prior.coding import (
    SHA_BYTES,
    CompressedFileError,
    Header,
    coded_payload,
    decode_frames,
    ids_crc,
    raw_bytes,
    unpack_raw,
)
from tokenizers_mm.prior.ordering import from_frames, to_frames

from .base import TokenizerPipeline


class TokenPriorPipeline(TokenizerPipeline):
    """Wraps a :class:`~tokenizers_mm.prior.model.TokenPrior` loaded from an export (always run on CPU, fp32:
    coding must give the same numbers in the encoder and the decoder)."""

    modality = "prior"

    def __init__(self, codec: torch.nn.Module, config: dict[str, Any], device: torch.device,
                 dtype: torch.dtype | str | None = None, path: str | None = None) -> None:
        super().__init__(codec.cpu().eval(), config, torch.device("cpu"), None, path)

    @classmethod
    def from_module(cls, prior: torch.nn.Module) -> TokenPriorPipeline:
        """A pipeline around an in-memory prior (its id: the sha256 of its float32 weights)."""
        from safetensors.torch import save

        state = {k: v.detach().cpu().float().contiguous() for k, v in prior.state_dict().items()}
        sha = hashlib.sha256(save(state)).hexdigest()
        return cls(prior, {"architecture": prior.architecture, "tokens": prior.token_spec(),
                           "weights": {"sha256": sha}}, torch.device("cpu"))

    @property
    def prior(self) -> torch.nn.Module:
        return self.codec

    @staticmethod
    def input_spec(codec: torch.nn.Module, data_hparams: dict[str, Any]) -> dict[str, Any]:
        return {"kind": "tokens", "layout": codec.layout, "tokenizer": codec.tokenizer,
                "frames": "[B, F, D]: 1D / multi-scale ids are F frames of one code, RVQ ids [n_q, F] are F frames of "
                          "n_q"}

    @property
    def layout(self) -> str:
        return self.codec.layout

    def check_tokenizer(self, tok: TokenizerPipeline) -> None:
        """Refuse a tokenizer other than the one the prior was trained on (when the prior records it)."""
        want = (self.codec.tokenizer or {}).get("sha256")
        if want and want != tok.model_id:
            raise ValueError(f"prior {self.path or ''} models the tokens of tokenizer {want[:16]}..., not of "
                             f"{tok.path or 'this tokenizer'} ({tok.model_id[:16]}...)")
        if tok.codebook_size != self.codec.codebook_size:
            raise ValueError(f"prior codes {self.codec.codebook_size} ids per codebook; the tokenizer has "
                             f"{tok.codebook_size}")

    # ---- coding -------------------------------------------------------------------------------------
    def compress(self, tok: TokenizerPipeline, ids: Any, extra: int = 0) -> bytes:
        """One sample's ids (``[k]`` or ``[n_q, F]``) -> the bytes of a compressed file: the header and the
        range-coded ids, or the ids stored plainly when that is shorter (never more than the nominal bytes)."""
        return self.compress_with_bits(tok, ids, extra)[0]

    def compress_with_bits(self, tok: TokenizerPipeline, ids: Any, extra: int = 0) -> tuple[bytes, float]:
        """:meth:`compress` plus the ideal code length of the ids under the prior in bits."""
        self.check_tokenizer(tok)
        t = torch.as_tensor(np.asarray(ids)).long()
        payload, bits, raw = coded_payload(self.codec, t)
        arr = t.numpy()
        head = Header(tok.modality, bytes.fromhex(tok.model_id), bytes.fromhex(self.model_id),
                      tuple(int(s) for s in arr.shape), int(extra), ids_crc(arr), raw=raw)
        return head.pack() + payload, bits

    def read_header(self, data: bytes, name: str = "compressed data") -> tuple[Header, int]:
        return Header.unpack(data, name)

    def decompress(self, tok: TokenizerPipeline, data: bytes, name: str = "compressed data"
                   ) -> tuple[torch.Tensor, Header]:
        """The ids (int64, the shape of the header) of compressed bytes ``data``; ``name`` names it in errors.

        Raises :class:`CompressedFileError` for data that is not ours, truncated or corrupt, or that another
        tokenizer or prior wrote.
        """
        head, off = Header.unpack(data, name)
        if head.modality != tok.modality:
            raise CompressedFileError(f"{name} holds {head.modality} tokens; the tokenizer is a {tok.modality} "
                                      "tokenizer")
        if head.tokenizer_sha != bytes.fromhex(tok.model_id)[:SHA_BYTES]:
            raise CompressedFileError(f"{name} was compressed with another tokenizer (weights {head.tokenizer_sha.hex()}"
                                      f"..., this one is {tok.model_id[:16]}...)")
        if head.prior_sha != bytes.fromhex(self.model_id)[:SHA_BYTES]:
            raise CompressedFileError(f"{name} was compressed with another prior (weights {head.prior_sha.hex()}..., "
                                      f"this one is {self.model_id[:16]}...)")
        payload = data[off:]
        if head.version == 1:
            if len(payload) % 4 or not payload:
                raise CompressedFileError(f"{name} is truncated: its payload of {len(payload)} bytes is not whole "
                                          "32-bit words")
            payload = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
        shape = head.shape
        if self.layout == "rvq":
            if len(shape) != 2:
                raise CompressedFileError(f"{name}: RVQ ids need a [n_q, F] shape, header says {list(shape)}")
            n, f = shape
        else:
            if len(shape) != 1:
                raise CompressedFileError(f"{name}: ids of shape {list(shape)} are not a token sequence")
            n, f = 1, shape[0]
        if n > self.codec.depth_codes:
            raise CompressedFileError(f"{name} holds {n} codebooks; the prior models {self.codec.depth_codes}")
        if head.raw:
            want = raw_bytes(head.num_tokens, self.codec.codebook_size)
            if len(payload) != want:
                raise CompressedFileError(f"{name} is corrupt or truncated: its raw payload has {len(payload)} bytes, "
                                          f"{want} expected for {head.num_tokens} ids")
            try:
                ids = torch.from_numpy(unpack_raw(payload, shape, self.codec.codebook_size))
            except CompressedFileError as exc:
                raise CompressedFileError(f"{name} is corrupt: {exc}") from exc
        else:
            try:
                frames = decode_frames(self.codec, payload, f, n)
            except CompressedFileError as exc:
                raise CompressedFileError(f"{name} is corrupt or truncated: {exc}") from exc
            except (ValueError, RuntimeError, AssertionError) as exc:
                raise CompressedFileError(f"{name} is corrupt or truncated: the range decoder failed ({exc})") from exc
            ids = from_frames(frames[None], self.layout)[0]
        if ids_crc(ids.numpy()) != head.crc:
            raise CompressedFileError(f"{name} is corrupt or truncated (or was written by a prior whose numbers "
                                      "differ on this machine): the decoded ids fail the header's CRC")
        return ids, head

    # ---- likelihoods and samples ---------------------------------------------------------------------
    @torch.no_grad()
    def bits(self, ids: Any) -> torch.Tensor:
        """Ideal code length in bits per sample ``[B]`` of ids ``[B, k]`` / ``[B, n_q, F]`` (one teacher-forced pass
        per context window; for reports, not for coding)."""
        frames = to_frames(torch.as_tensor(np.asarray(ids)).long(), self.layout)
        cap, total = self.codec.max_frames, torch.zeros(frames.shape[0], dtype=torch.float64)
        start = 0
        while start < frames.shape[1]:
            chunk = frames[:, start:start + cap]
            logp = self.codec(chunk).float().log_softmax(-1)
            nll = -logp.gather(-1, chunk[..., None])[..., 0]
            total += nll.double().sum((1, 2)) / np.log(2)
            start += cap
        return total

    @torch.no_grad()
    def sample(self, n: int, num_frames: int | None = None, num_codes: int | None = None, temperature: float = 1.0,
               top_k: int | None = None, seed: int = 0) -> torch.Tensor:
        """``n`` token sequences in the tokenizer's layout (``[n, k]`` or ``[n, n_q, F]``), seeded."""
        g = torch.Generator().manual_seed(int(seed))
        frames = self.codec.sample(n, num_frames or self.codec.max_frames, num_codes, temperature, top_k, g)
        return from_frames(frames, self.layout)
