"""Per-modality sample decoders: a raw webdataset sample (bytes by extension) -> dict of tensors.

Each decoder is configured from YAML through its options dataclass and knows whether it serves
training (random crops / subsets) or evaluation (deterministic views).
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from ..config import as_config
from .audio import AUDIO_EXTENSIONS, AudioTransform, decode_audio
from .image import IMAGE_EXTENSIONS, ImageTransform, decode_image
from .mesh import MESH_EXTENSIONS, MeshTransform, decode_mesh_npz

SOURCE_MODALITIES = ("image", "audio", "mesh")  # what `data build` packs from files
MODALITIES = (*SOURCE_MODALITIES, "tokens")  # what the loader reads (tokens: `tokenizers-mm tokenize` output)


@dataclass
class ImageOptions:
    """Image data options.

    Args:
        size: side of the square crop fed to the model (``[3, size, size]`` in ``[-1, 1]``).
        resize: training shorter side before the random crop: an int, or ``[lo, hi]`` drawn per sample.
            ``None`` resizes to ``size``.
        val_resize: evaluation shorter side before the center crop; ``None`` resizes to ``size``.
        flip: random horizontal flips in training.
    """

    size: int = 64
    resize: int | list[int] | None = None
    val_resize: int | None = None
    flip: bool = True


@dataclass
class AudioOptions:
    """Audio data options.

    Args:
        sample_rate: model rate in Hz; other rates are resampled with torchaudio.
        seconds: training clip length (random crop; short clips padded and masked).
        val_seconds: evaluation clip length (from the start); ``None`` = ``seconds``.
        loudness_lufs: normalize every clip to this loudness, or ``None``.
    """

    sample_rate: int = 16000
    seconds: float = 1.0
    val_seconds: float | None = None
    loudness_lufs: float | None = None


@dataclass
class MeshOptions:
    """Mesh data options: how many precomputed points each sample hands to the model."""

    num_surface: int = 2048
    num_volume: int = 1024
    num_near: int = 1024


@dataclass
class TokenOptions:
    """Token shard options (shards written by ``tokenizers-mm tokenize``).

    Args:
        num_tokens: keep the first ``num_tokens`` ids of every sample (prefix-decodable tokenizers); ``None``
            keeps all. Samples with fewer ids are an error.
    """

    num_tokens: int | None = None


class SampleDecoder(Protocol):
    def __call__(self, sample: dict[str, Any], rng: random.Random) -> dict[str, torch.Tensor]: ...


def _find(sample: dict[str, Any], extensions: tuple[str, ...], what: str) -> str:
    for ext in extensions:
        if ext in sample:
            return ext
    present = sorted(k for k in sample if not k.startswith("__"))
    raise ValueError(f"sample has no {what} file: expected one of {list(extensions)}, found {present}")


@dataclass
class ImageSampleDecoder:
    transform: ImageTransform

    def __call__(self, sample: dict[str, Any], rng: random.Random) -> dict[str, torch.Tensor]:
        ext = _find(sample, IMAGE_EXTENSIONS, "image")
        return {"image": self.transform(decode_image(sample[ext]), rng)}


@dataclass
class AudioSampleDecoder:
    transform: AudioTransform

    def __call__(self, sample: dict[str, Any], rng: random.Random) -> dict[str, torch.Tensor]:
        ext = _find(sample, AUDIO_EXTENSIONS, "audio")
        wave, sr = decode_audio(sample[ext])
        audio, mask = self.transform(wave, sr, rng)
        return {"audio": audio, "audio_mask": mask}


@dataclass
class MeshSampleDecoder:
    transform: MeshTransform

    def __call__(self, sample: dict[str, Any], rng: random.Random) -> dict[str, torch.Tensor]:
        if "npz" not in sample:
            _find(sample, MESH_EXTENSIONS, "mesh")  # names what is there if not even a mesh
            raise ValueError("mesh sample has no precomputed 'npz' labels; build shards with "
                             "`tokenizers-mm data build --modality mesh`")
        return self.transform(decode_mesh_npz(sample["npz"]), rng)


def decode_ids_npy(data: bytes) -> np.ndarray:
    """``ids.npy`` bytes -> 1D+ integer array (no pickles). Raises ``ValueError`` for anything else."""
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:
        raise ValueError(f"ids.npy is not a readable .npy array: {exc}") from exc
    if arr.dtype.kind not in "iu" or arr.ndim < 1:
        raise ValueError(f"ids.npy must hold integer token ids of at least one dimension, got {arr.dtype} "
                         f"of shape {arr.shape}")
    return arr


@dataclass
class TokenSampleDecoder:
    num_tokens: int | None = None

    def __call__(self, sample: dict[str, Any], rng: random.Random) -> dict[str, torch.Tensor]:
        if "ids.npy" not in sample:
            present = sorted(k for k in sample if not k.startswith("__"))
            raise ValueError(f"token sample has no 'ids.npy' (found {present}); write token shards with "
                             "`tokenizers-mm tokenize`")
        ids = torch.from_numpy(decode_ids_npy(sample["ids.npy"]).astype(np.int64))
        if self.num_tokens is not None:
            if ids.shape[-1] < self.num_tokens:
                raise ValueError(f"sample holds {ids.shape[-1]} tokens, fewer than data.tokens.num_tokens="
                                 f"{self.num_tokens}")
            ids = ids[..., : self.num_tokens]
        return {"ids": ids}


def make_decoder(modality: str, train: bool, image: ImageOptions | dict | None = None,
                 audio: AudioOptions | dict | None = None, mesh: MeshOptions | dict | None = None,
                 tokens: TokenOptions | dict | None = None) -> SampleDecoder:
    """Build the decoder of ``modality`` for training (``train=True``) or evaluation."""
    if modality == "image":
        o = as_config(ImageOptions, image)
        if train:
            t = ImageTransform(size=o.size, crop="random", resize=o.resize, flip=o.flip)
        else:
            t = ImageTransform(size=o.size, crop="center", resize=o.val_resize, flip=False)
        return ImageSampleDecoder(t)
    if modality == "audio":
        o = as_config(AudioOptions, audio)
        seconds = o.seconds if train or o.val_seconds is None else o.val_seconds
        return AudioSampleDecoder(AudioTransform(o.sample_rate, seconds, "random" if train else "start",
                                                 o.loudness_lufs))
    if modality == "mesh":
        o = as_config(MeshOptions, mesh)
        return MeshSampleDecoder(MeshTransform(o.num_surface, o.num_volume, o.num_near, random_subset=train))
    if modality == "tokens":
        return TokenSampleDecoder(as_config(TokenOptions, tokens).num_tokens)
    raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
