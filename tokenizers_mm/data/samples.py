"""Per-modality sample decoders: a raw webdataset sample (bytes by extension) -> dict of tensors.

Each decoder is configured from YAML through its options dataclass and knows whether it serves
training (random crops / subsets) or evaluation (deterministic views).
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from ..config import as_config
from .audio import AUDIO_EXTENSIONS, AudioTransform, crop_frames, decode_audio
from .image import IMAGE_EXTENSIONS, ImageTransform, decode_image
from .mesh import MESH_EXTENSIONS, MeshTransform, decode_mesh_npz

# the modality words of tokenizers_mm.registry; "audio" and "mesh" (older names) are read as "speech" and "shape"
SOURCE_MODALITIES = ("image", "speech", "shape")  # what `data build` packs from files
#: the datamodule's options section of each modality (``data.audio`` / ``data.mesh`` in configs)
OPTIONS_SECTION = {"image": "image", "speech": "audio", "shape": "mesh", "tokens": "tokens"}
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
        teacher: precomputed teacher features (``tokenizers-mm data teacher-features``): ``auto`` adds them to
            batches when the shards hold them (every sample must agree; see :class:`AudioSampleDecoder`),
            ``require`` rejects samples without them, ``ignore`` never reads them.
    """

    sample_rate: int = 16000
    seconds: float = 1.0
    val_seconds: float | None = None
    loudness_lufs: float | None = None
    teacher: str = "auto"


@dataclass
class MeshOptions:
    """Mesh data options: how many precomputed points each sample hands to the model."""

    num_surface: int = 2048
    num_volume: int = 1024
    num_near: int = 1024
    num_sharp: int = 0  # of the num_surface points, drawn on sharp edges (shards built with --mesh-sharp-points)


@dataclass
class TokenOptions:
    """Token shard options (shards written by ``tokenizers-mm tokenize``).

    Args:
        num_tokens: keep the first ``num_tokens`` ids of every sample (prefix-decodable tokenizers); ``None``
            keeps all. Samples with fewer ids are an error.
        frames: speech ids ``[n_q, F]`` of clips of any length: a window of ``frames`` frames (random start in
            training, the first frames in evaluation); shorter clips are padded with id 0 and batches gain
            ``ids_mask`` bool ``[frames]`` (True on real frames). ``None`` keeps whole clips (equal lengths only).
    """

    num_tokens: int | None = None
    frames: int | None = None


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


TEACHER_META = "teacher.json"  # per-sample description of precomputed teacher features
TEACHER_FIELDS = {"speech": ("speech_feats.npy", None), "lm": ("lm_feats.npy", "lm_mask.npy")}
TEACHER_MODES = ("auto", "require", "ignore")


def decode_npy(data: bytes, name: str) -> np.ndarray:
    """``.npy`` bytes -> array (no pickles). Raises ``ValueError`` naming the field for anything else."""
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:
        raise ValueError(f"{name} is not a readable .npy array: {exc}") from exc


@dataclass
class AudioSampleDecoder:
    """Audio sample -> ``audio [1, N]`` + ``audio_mask [1, N]``, plus cropped teacher features when present.

    Samples written by ``tokenizers-mm data teacher-features`` carry ``teacher.json`` and per-frame features
    of the whole clip (``speech_feats.npy`` ``[T', D]``; ``lm_feats.npy`` ``[T', D]`` + ``lm_mask.npy``
    ``[T']``). They are cut to the same time window as the audio crop (first frame
    ``round(start_seconds * frame_rate)``) and zero-padded to ``round(seconds * frame_rate)`` frames:
    ``teacher_speech [Ft, D]`` float32 + ``teacher_speech_mask [Ft]`` bool, ``teacher_lm`` + ``teacher_lm_mask``.

    With ``teacher="auto"`` the first sample a decoder sees fixes which teacher keys every later sample
    must carry: a dataset mixing samples with and without features (or with different teachers) cannot be
    batched, so the odd samples raise ``ValueError`` (the stream skips and logs them as corrupt).
    """

    transform: AudioTransform
    teacher: str = "auto"
    _kinds: tuple[str, ...] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.teacher not in TEACHER_MODES:
            raise ValueError(f"data.audio.teacher must be one of {TEACHER_MODES}, got {self.teacher!r}")

    def __call__(self, sample: dict[str, Any], rng: random.Random) -> dict[str, torch.Tensor]:
        ext = _find(sample, AUDIO_EXTENSIONS, "audio")
        wave, sr = decode_audio(sample[ext])
        audio, mask, start = self.transform.crop_with_start(wave, sr, rng)
        out = {"audio": audio, "audio_mask": mask}
        if self.teacher != "ignore":
            out.update(self._teacher_features(sample, start))
        return out

    def _teacher_features(self, sample: dict[str, Any], start_seconds: float) -> dict[str, torch.Tensor]:
        meta = json.loads(sample[TEACHER_META]) if TEACHER_META in sample else {}
        kinds = tuple(k for k in TEACHER_FIELDS if k in meta)
        if not kinds and self.teacher == "require":
            raise ValueError("sample has no precomputed teacher features (teacher.json + speech_feats.npy / "
                             "lm_feats.npy): write them with `tokenizers-mm data teacher-features`, or set "
                             "data.audio.teacher: auto")
        if self._kinds is None:
            self._kinds = kinds
        elif kinds != self._kinds:
            raise ValueError(f"sample carries teacher features {list(kinds)} but earlier samples carried "
                             f"{list(self._kinds)}: a dataset must be all with or all without the same teacher "
                             "features (rerun `tokenizers-mm data teacher-features` on every shard, or set "
                             "data.audio.teacher: ignore)")
        out: dict[str, torch.Tensor] = {}
        for kind in kinds:
            feats_name, mask_name = TEACHER_FIELDS[kind]
            for name in (feats_name, mask_name):
                if name is not None and name not in sample:
                    raise ValueError(f"teacher.json lists {kind!r} features but the sample has no {name!r}")
            rate = meta[kind].get("frame_rate") if isinstance(meta[kind], dict) else None
            if not isinstance(rate, (int, float)) or rate <= 0:
                raise ValueError(f"teacher.json gives no positive frame_rate for {kind!r}: {meta[kind]!r}")
            valid = decode_npy(sample[mask_name], mask_name) if mask_name else None
            feats, fmask = crop_frames(decode_npy(sample[feats_name], feats_name), start_seconds, float(rate),
                                       self.transform.num_frames(float(rate)), valid)
            out[f"teacher_{kind}"], out[f"teacher_{kind}_mask"] = feats, fmask
        return out


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
    frames: int | None = None
    train: bool = False

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
        if self.frames is None:
            return {"ids": ids}
        if ids.ndim != 2:
            raise ValueError(f"data.tokens.frames windows speech ids [n_q, F]; this sample holds ids of shape "
                             f"{tuple(ids.shape)}")
        f = ids.shape[-1]
        start = rng.randrange(f - self.frames + 1) if self.train and f > self.frames else 0
        ids = ids[:, start:start + self.frames]
        mask = torch.zeros(self.frames, dtype=torch.bool)
        mask[: ids.shape[-1]] = True
        return {"ids": torch.nn.functional.pad(ids, (0, self.frames - ids.shape[-1])), "ids_mask": mask}


def make_decoder(modality: str, train: bool, image: ImageOptions | dict | None = None,
                 audio: AudioOptions | dict | None = None, mesh: MeshOptions | dict | None = None,
                 tokens: TokenOptions | dict | None = None) -> SampleDecoder:
    """Build the decoder of ``modality`` for training (``train=True``) or evaluation (older names accepted)."""
    from ..registry import canonical

    modality = canonical(modality)
    if modality == "image":
        o = as_config(ImageOptions, image)
        if train:
            t = ImageTransform(size=o.size, crop="random", resize=o.resize, flip=o.flip)
        else:
            t = ImageTransform(size=o.size, crop="center", resize=o.val_resize, flip=False)
        return ImageSampleDecoder(t)
    if modality == "speech":
        o = as_config(AudioOptions, audio)
        seconds = o.seconds if train or o.val_seconds is None else o.val_seconds
        return AudioSampleDecoder(AudioTransform(o.sample_rate, seconds, "random" if train else "start",
                                                 o.loudness_lufs), teacher=o.teacher)
    if modality == "shape":
        o = as_config(MeshOptions, mesh)
        return MeshSampleDecoder(MeshTransform(o.num_surface, o.num_volume, o.num_near, random_subset=train,
                                               num_sharp=o.num_sharp))
    if modality == "tokens":
        o = as_config(TokenOptions, tokens)
        if o.frames is not None and o.frames < 1:
            raise ValueError(f"data.tokens.frames must be >= 1, got {o.frames}")
        return TokenSampleDecoder(o.num_tokens, o.frames, train)
    raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
