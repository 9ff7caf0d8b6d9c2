"""``SpeechPipeline``: encode audio to token ids and decode ids to waveforms from an export folder."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from tokenizers_mm.data.audio import AUDIO_EXTENSIONS

from .base import LOAD_LINE, TokenizerPipeline, file_stems

AUDIO_FILE_EXTENSIONS = (*AUDIO_EXTENSIONS, "mp3")


class WholeClipDecoder:
    """Audio sample -> the whole clip ``{"audio": [1, T]}`` as the codec takes it: mono, resampled to its rate,
    loudness-normalized when its export's preprocessing says so."""

    def __init__(self, sample_rate: int, loudness_lufs: float | None) -> None:
        self.sample_rate, self.loudness_lufs = sample_rate, loudness_lufs

    def __call__(self, raw: dict[str, Any], rng: Any) -> dict[str, torch.Tensor]:
        from tokenizers_mm.data.audio import decode_audio, loudness_normalize, resample, to_mono

        ext = next((e for e in AUDIO_EXTENSIONS if e in raw), None)
        if ext is None:
            raise ValueError(f"sample has no audio file: expected one of {list(AUDIO_EXTENSIONS)}")
        wave, sr = decode_audio(raw[ext])
        clip = resample(to_mono(wave), sr, self.sample_rate)
        if self.loudness_lufs is not None:
            clip = loudness_normalize(clip, self.sample_rate, self.loudness_lufs)
        return {"audio": clip.clamp(-1, 1)}


class SpeechPipeline(TokenizerPipeline):
    """Speech codec of an export folder (built by :func:`pipelines.load`).

    Token ids of one clip are ``[n, F]``: the first ``n`` of the ``n_q`` codebooks (bitrate chosen by ``n``) at
    ``frame_rate`` frames per second. ``encode`` takes audio files (wav / flac / ogg / mp3: mixed to mono and
    resampled to the model rate) or waveforms (``[T]``, ``[1, T]`` or ``[B, 1, T]`` in [-1, 1] at the model
    rate). Long inputs are encoded in chunks of ``chunk_seconds``; a causal model gives exactly the tokens of
    one pass.
    """

    modality = "speech"
    extensions = AUDIO_FILE_EXTENSIONS
    token_unit = "codebooks per frame"

    @property
    def sample_rate(self) -> int:
        return int(self.config["inputs"]["sample_rate"])

    @property
    def num_quantizers(self) -> int:
        return int(self.config["tokens"]["num_quantizers"])

    @property
    def num_tokens(self) -> int:
        """Codebooks per frame (the most a decode can use)."""
        return self.num_quantizers

    @property
    def frame_rate(self) -> float:
        return float(self.config["tokens"]["frame_rate"])

    def bitrate_kbps(self, num_quantizers: int | None = None) -> float:
        return float(self.codec.bitrate_kbps(num_quantizers))

    def __repr__(self) -> str:
        return (f"SpeechPipeline({self.config['architecture']}, {self.num_quantizers} codebooks x {self.codebook_size} "
                f"codes at {self.frame_rate:g} Hz, {self.sample_rate} Hz audio, device={self.device})")

    # ---- inputs -------------------------------------------------------------------------------------
    def read(self, path: str | os.PathLike) -> torch.Tensor:
        """One audio file -> ``[1, T]`` at the model rate."""
        from tokenizers_mm.speech.audio_io import read_audio

        return read_audio(self.input_file(path, AUDIO_FILE_EXTENSIONS, "an audio"), self.sample_rate)

    def to_model_input(self, x: Any) -> list[torch.Tensor]:
        """Any accepted input -> a list of ``[1, 1, T_i]`` waveforms on CPU."""
        if isinstance(x, (str, os.PathLike)):
            return [self.read(x)[None]]
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(x))
        if isinstance(x, torch.Tensor):
            t = x.detach().float().cpu()
            t = t.reshape(1, 1, -1) if t.ndim == 1 else t[None] if t.ndim == 2 else t
            if t.ndim != 3 or t.shape[1] != 1:
                raise ValueError(f"waveforms must be [T], [1, T] or [B, 1, T] (mono), got shape {tuple(x.shape)}")
            if t.numel() and float(t.abs().max()) > 1.0 + 1e-4:
                raise ValueError(f"waveforms must lie in [-1, 1], got peak {float(t.abs().max()):.3f}")
            return list(t.split(1))
        if isinstance(x, Sequence) and len(x) > 0:
            return [w for item in x for w in self.to_model_input(item)]
        raise TypeError(f"cannot read audio from {type(x).__name__}")

    def check_clip_ids(self, ids: Any) -> torch.Tensor:
        """ids of one clip or a batch (``[n, F]`` or ``[B, n, F]``) -> int64 ``[B, n, F]``, validated."""
        t = ids.detach().cpu() if isinstance(ids, torch.Tensor) else torch.from_numpy(np.asarray(ids))
        if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
            raise ValueError(f"token ids must be integers, got {t.dtype}")
        t = t.long()
        t = t[None] if t.ndim == 2 else t
        if t.ndim != 3 or not 1 <= t.shape[1] <= self.num_quantizers or t.shape[2] == 0:
            raise ValueError(f"audio token ids must be [n, F] or [B, n, F] with 1 <= n <= {self.num_quantizers} "
                             f"codebooks, got shape {tuple(t.shape)}")
        if int(t.min()) < 0 or int(t.max()) >= self.codebook_size:
            raise ValueError(f"token ids must lie in [0, {self.codebook_size}), got min {int(t.min())} max {int(t.max())}")
        return t

    # ---- encode / decode ----------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, x: Any, num_tokens: int | None = None, batch_size: int = 16, chunk_seconds: float = 30.0
               ) -> torch.Tensor | list[torch.Tensor]:
        """Audio -> int64 ids. A waveform tensor ``[B, 1, T]`` gives ``[B, n, F]``; one file gives ``[1, n, F]``; a
        list of files gives a list of ``[n, F_i]`` (clips differ in length). ``num_tokens``: codebooks kept."""
        waves = self.to_model_input(x)
        same = len({w.shape[-1] for w in waves}) == 1
        out: list[torch.Tensor] = []
        if same and waves[0].shape[-1] <= chunk_seconds * self.sample_rate:
            batch = torch.cat(waves)
            for sl in self.batches(len(batch), batch_size):
                with self.autocast():
                    out.append(self.codec.encode(batch[sl].to(self.device), num_tokens).cpu())
            ids = torch.cat(out)
            return ids if isinstance(x, (torch.Tensor, np.ndarray, str, os.PathLike)) else list(ids)
        for w in waves:
            with self.autocast():
                out.append(self.codec.encode_chunked(w.to(self.device), chunk_seconds, num_tokens).cpu()[0])
        return out

    @torch.inference_mode()
    def decode(self, ids: Any, batch_size: int = 16, num_samples: Sequence[int] | None = None
               ) -> torch.Tensor | list[torch.Tensor]:
        """ids ``[B, n, F]`` -> waveforms ``[B, 1, F * hop]`` in [-1, 1]; a list of ``[n, F_i]`` -> a list of ``[1, T_i]``.

        ``num_samples`` trims each output to its original length (the last frame is zero-padded at encode).
        """
        if isinstance(ids, (list, tuple)):
            waves = [self.decode(self.check_clip_ids(i), batch_size)[0] for i in ids]
        else:
            t = self.check_clip_ids(ids)
            parts = []
            for sl in self.batches(len(t), batch_size):
                with self.autocast():
                    parts.append(self.codec.decode(t[sl].to(self.device)).float().cpu())
            waves = torch.cat(parts)
        if num_samples is not None:
            if len(num_samples) != len(waves):
                raise ValueError(f"{len(num_samples)} lengths for {len(waves)} clips")
            waves = [w[..., :n] for w, n in zip(waves, num_samples)]
        return waves

    def save(self, waves: Sequence[torch.Tensor], out_dir: str, names: Sequence[str]) -> list[str]:
        """Write ``[1, T]`` waveforms as ``out_dir/<name>.wav`` (16-bit PCM)."""
        from tokenizers_mm.speech.audio_io import write_wav

        paths = []
        for wave, safe in zip(waves, file_stems(names, "clip"), strict=True):
            paths.append(write_wav(os.path.join(out_dir, f"{safe}.wav"), wave, self.sample_rate))
        return paths

    shard_input_key = "audio"

    def shard_decoder(self) -> WholeClipDecoder:
        """Whole clips at the model rate, loudness-normalized as the export's preprocessing says."""
        inp = self.config["inputs"]
        return WholeClipDecoder(int(inp["sample_rate"]), (inp.get("preprocess") or {}).get("loudness_lufs"))

    # ---- files --------------------------------------------------------------------------------------------
    def encode_files(self, files: list[str], num_tokens: int | None = None, batch_size: int = 16,
                     chunk_seconds: float = 30.0) -> tuple[list[torch.Tensor], dict[str, Any], str]:
        """Each file's ids ``[n, F_i]`` (long files in chunks); the meta records each clip's length in samples."""
        from .files import token_meta

        waves = [self.read(f) for f in files]
        ids = [self.encode(w, num_tokens=num_tokens, chunk_seconds=chunk_seconds)[0] for w in waves]
        meta = token_meta(self, ids[0].shape[0])
        meta.update(num_samples=[int(w.shape[-1]) for w in waves], sample_rate=self.sample_rate,
                    frame_rate=self.frame_rate, kbps=round(self.bitrate_kbps(ids[0].shape[0]), 4))
        seconds = sum(w.shape[-1] for w in waves) / self.sample_rate
        return ids, meta, (f"encoded {len(files)} audio file(s), {seconds:.1f} s, with {ids[0].shape[0]} codebooks "
                           f"({meta['kbps']} kbps)")

    def save_decoded(self, ids: list[Any], out: str, names: Sequence[str], lengths: Sequence[int | None] | None = None,
                     overview: str | None = None, **options: Any) -> list[str]:
        """WAV files of clips ``[n, F_i]``, each trimmed to its length in ``lengths`` (None or 0: untrimmed)."""
        waves = self.decode([torch.as_tensor(np.asarray(i)) for i in ids])
        waves = [w[..., :n] if n else w for w, n in zip(waves, lengths or [None] * len(waves))]
        return self.save(waves, out, names)

    def write_decoded(self, ids: Any, keys: list[str], meta: dict[str, Any], out: str, shown: str | None = None,
                      num_tokens: int | None = None, batch_size: int = 16, file_format: str | None = None,
                      **options: Any) -> str:
        """WAV files of clips ``[n, F_i]`` from the first ``num_tokens`` codebooks, trimmed to ``meta``'s lengths."""
        if not isinstance(ids, list):
            raise ValueError("audio decodes from a tokens.npz written by `tokenizers-mm encode`")
        if num_tokens:
            if num_tokens > ids[0].shape[0]:
                raise ValueError(f"--num-tokens {num_tokens}: the file holds {ids[0].shape[0]} codebooks")
            ids = [i[:num_tokens] for i in ids]
        lengths = (meta.get("num_samples") or [None] * len(ids))[: len(ids)]
        waves = self.decode(ids, batch_size=batch_size)
        waves = [w[..., :n] if n else w for w, n in zip(waves, lengths)]
        paths = self.save(waves, out, keys)
        n_q = ids[0].shape[0]
        return (f"decoded {len(paths)} clip(s) with {n_q} codebooks ({self.bitrate_kbps(n_q):.3f} kbps) into "
                f"{shown or out}/ (WAV)")

    # ---- export -------------------------------------------------------------------------------------------
    @staticmethod
    def input_spec(codec: torch.nn.Module, data_hparams: dict[str, Any]) -> dict[str, Any]:
        audio = data_hparams.get("audio") or {}
        return {"kind": "audio", "sample_rate": int(codec.sample_rate), "channels": 1, "layout": "[B, 1, T]",
                "range": [-1.0, 1.0], "hop_length": int(codec.hop_length), "causal": bool(codec.causal),
                "preprocess": {"mono": "mean of the channels", "resample": "torchaudio sinc interpolation",
                               "loudness_lufs": audio.get("loudness_lufs")}}

    @classmethod
    def token_summary(cls, cfg: dict[str, Any]) -> str:
        t = cfg["tokens"]
        return (f"{t['num_quantizers']} codebooks x {t['codebook_sizes'][0]} codes at {t['frame_rate']:g} frames/s = "
                f"{t['kbps']} kbps (first n codebooks: {t['bitrates_kbps']} kbps)")

    @classmethod
    def card_tokens(cls, cfg: dict[str, Any]) -> list[str]:
        t, inp = cfg["tokens"], cfg["inputs"]
        causal = ("causal: long files are encoded in chunks with the tokens of one pass" if inp.get("causal")
                  else "non-causal")
        return [f"- {t['num_quantizers']} codebooks of {t['codebook_sizes'][0]} codes at {t['frame_rate']:g} "
                f"frames/s: {t['kbps']} kbps with all of them. Any first n codebooks decode (bitrate chosen at decode "
                f"time): {t['bitrates_kbps']} kbps.",
                f"- Input: mono audio `[B, 1, T]` in [-1, 1] at {inp['sample_rate']} Hz (files are mixed to mono and "
                f"resampled); {causal}."]

    @classmethod
    def card_use(cls, cfg: dict[str, Any]) -> list[str]:
        return ["```python", "import pipelines", "", LOAD_LINE,
                "ids = tok.encode(\"clip.wav\")       # int64 [1, n_q, F]; num_tokens=n keeps the first n codebooks",
                "wave = tok.decode(ids)             # [1, 1, F * hop] in [-1, 1]", "```", "",
                "```bash", "tokenizers-mm encode --model THIS_FOLDER a.wav b.flac --out tokens.npz --num-tokens 4",
                "tokenizers-mm decode --model THIS_FOLDER tokens.npz --out recon/", "```"]


AudioTokenizer = SpeechPipeline  # the old name, still importable
