"""Frozen teachers for DM-Codec-style distillation of a speech codec's first RVQ layer.

- :class:`SpeechTeacher`: hidden states of a self-supervised speech model (HuBERT / WavLM / wav2vec2),
  "speech-model-guided" targets.
- :class:`LMTeacher`: contextual embeddings of a text LM (e.g. BERT) for the transcript, "LM-guided" targets.
  Unlike DM-Codec, which pads word-piece embeddings to the codec frame count, each word piece is placed on
  the frames where its word is spoken: word timings come from a CTC recognizer's argmax path, or, given only
  a transcript, the pieces are spread uniformly over the voiced part of the clip.
- :func:`align_to_frames`: teacher frames -> codec frames by linear interpolation in time.
- :class:`DistillationTargets`: ``{"speech": (feats, mask), "lm": (feats, mask)}`` for a batch, from
  precomputed batch keys (``tokenizers-mm data teacher-features``) or the online teachers.

Time convention: a teacher frame ``i`` at ``frame_rate`` covers ``[i, i + 1) / frame_rate`` seconds of the clip.
The speech models' convolutional front end is padded by half its receptive-field overhang on each side so
that this holds exactly (``floor(T / hop)`` frames for ``T`` samples).

Teachers load from local folders only (``local_files_only=True``); nothing is downloaded. Their weights are
frozen, kept in eval mode, and deliberately not registered as submodules: they never appear in
``parameters()`` or ``state_dict()`` of a codec that holds them (no optimizer state, no checkpoint bloat),
yet ``.to(device)`` / ``.half()`` on the codec move them along.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


# ---- alignment ------------------------------------------------------------------------------------
def _interp(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """``[B, T', D]`` -> ``[B, F, D]``: linear interpolation, frame centres mapped onto frame centres."""
    if x.shape[1] == num_frames:
        return x
    return F.interpolate(x.transpose(1, 2), size=num_frames, mode="linear", align_corners=False).transpose(1, 2)


def align_mask(mask: torch.Tensor, num_frames: int) -> torch.Tensor:
    """``[B, T']`` bool -> ``[B, F]`` bool: an output frame is valid when its centre falls on valid input time.

    Both axes span the same duration. For a prefix mask of ``L`` valid frames, output frame ``j`` is valid iff
    ``(j + 0.5) / F <= L / T'``.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be [batch, frames], got shape {tuple(mask.shape)}")
    return _interp(mask.float().unsqueeze(-1), num_frames).squeeze(-1) >= 0.5 - 1e-6


def align_masked(feats: torch.Tensor, mask: torch.Tensor, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample ``feats [B, T', D]`` with valid frames ``mask [B, T']`` to ``num_frames``, ignoring invalid frames.

    Normalized interpolation: ``interp(feats * mask) / interp(mask)``, so invalid (padding, silence) frames
    never blend into valid ones. Returns ``(feats [B, F, D], mask [B, F])``; invalid output frames are zeros.
    Where every input frame is valid this equals plain linear interpolation.
    """
    m = mask.to(feats.dtype).unsqueeze(-1)
    num = _interp(feats * m, num_frames)
    den = _interp(m, num_frames)
    out_mask = align_mask(mask, num_frames)
    out = torch.where(out_mask.unsqueeze(-1), num / den.clamp_min(1e-6), torch.zeros_like(num))
    return out, out_mask


def align_to_frames(feats: torch.Tensor, num_frames: int, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Teacher frames -> codec frames by linear interpolation in time (``F.interpolate``, no corner alignment).

    Args:
        feats: ``[B, T', D]`` teacher features; the ``T'`` frames and the ``num_frames`` output frames span the
            same clip (frame centres map onto frame centres: input position ``(j + 0.5) T' / F - 0.5``).
        num_frames: ``F`` (``>= 1``), the codec's frame count for the clip.
        lengths: optional ``[B]`` valid teacher frames per item (the rest is padding). Padding never blends
            into valid frames, and output frames whose centre lies past the valid time are zeros.

    Returns ``[B, F, D]`` in the dtype of ``feats``.
    """
    if feats.ndim != 3:
        raise ValueError(f"teacher features must be [batch, frames, dim], got shape {tuple(feats.shape)}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if lengths is None:
        return _interp(feats, num_frames)
    lengths = torch.as_tensor(lengths, device=feats.device).reshape(-1)
    if lengths.numel() != feats.shape[0]:
        raise ValueError(f"lengths holds {lengths.numel()} values for a batch of {feats.shape[0]}")
    mask = torch.arange(feats.shape[1], device=feats.device)[None] < lengths[:, None]
    if bool(mask.all()):
        return _interp(feats, num_frames)
    return align_masked(feats, mask, num_frames)[0]


# ---- loading --------------------------------------------------------------------------------------
def check_model_dir(path: str, what: str) -> None:
    """Raise ``FileNotFoundError`` unless ``path`` is a local ``save_pretrained`` folder (config + weights)."""
    expected = ("expected a local folder with config.json and model weights (model.safetensors or "
                "pytorch_model.bin) written by save_pretrained; teachers are never downloaded")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist or is not a folder: {expected}")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{what} {path!r} has no config.json: {expected}")
    if not any(os.path.isfile(os.path.join(path, w)) for w in WEIGHT_FILES):
        raise FileNotFoundError(f"{what} {path!r} has no weights ({' / '.join(WEIGHT_FILES)}): {expected}")


def read_preprocessor_config(path: str) -> dict[str, Any]:
    """``preprocessor_config.json`` of a model folder, or ``{}`` when there is none."""
    file = os.path.join(path, "preprocessor_config.json")
    if not os.path.isfile(file):
        return {}
    with open(file) as f:
        return json.load(f)


def _hide(owner: nn.Module, name: str, model: nn.Module) -> nn.Module:
    """Freeze ``model`` and store it on ``owner`` without registering it as a submodule."""
    model.eval().requires_grad_(False)
    object.__setattr__(owner, name, model)
    return model


class _FrozenTeacher(nn.Module):
    """Base of the teachers: hidden frozen models that still follow ``.to()`` / ``.half()`` of their owner."""

    _hidden: tuple[str, ...] = ()

    def _apply(self, fn: Any, recurse: bool = True) -> _FrozenTeacher:
        super()._apply(fn, recurse)
        for name in self._hidden:
            model = getattr(self, name, None)
            if model is not None:
                model._apply(fn)
        return self

    def train(self, mode: bool = True) -> _FrozenTeacher:
        """Teachers stay in eval mode (no dropout, no SpecAugment) whatever the owner's mode."""
        return super().train(False)

    def frozen_parameters(self) -> list[nn.Parameter]:
        """The teacher weights (all with ``requires_grad=False``), which ``parameters()`` deliberately omits."""
        return [p for name in self._hidden if getattr(self, name, None) is not None
                for p in getattr(self, name).parameters()]


class WaveFrontEnd:
    """Audio -> the input a wav2vec2-family model expects, on the frame grid of its conv front end.

    Args:
        config: the model's config (``conv_kernel``, ``conv_stride``, ``feat_extract_norm``).
        preprocessor: its ``preprocessor_config.json`` (``sampling_rate``, ``do_normalize``,
            ``return_attention_mask``); missing entries follow the fairseq convention of the config.
        sample_rate: the rate the model expects; must agree with the preprocessor's ``sampling_rate``.
        what: the model's description for error messages.
    """

    def __init__(self, config: Any, preprocessor: dict[str, Any], sample_rate: int, what: str) -> None:
        rate = int(preprocessor.get("sampling_rate", sample_rate))
        if rate != sample_rate:
            raise ValueError(f"{what} expects {rate} Hz audio (preprocessor_config.json) but sample_rate={sample_rate}")
        self.sample_rate = rate
        layer_norm = getattr(config, "feat_extract_norm", "group") == "layer"
        self.do_normalize = bool(preprocessor.get("do_normalize", layer_norm))
        self.use_attention_mask = bool(preprocessor.get("return_attention_mask", layer_norm))
        self.hop = math.prod(int(s) for s in config.conv_stride)
        field, jump = 1, 1
        for k, s in zip(config.conv_kernel, config.conv_stride):
            field += (int(k) - 1) * jump
            jump *= int(s)
        self.receptive_field = field

    @property
    def frame_rate(self) -> float:
        """Model frames per second."""
        return self.sample_rate / self.hop

    def prepare(self, wave: torch.Tensor, mask: torch.Tensor | None, input_rate: int
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """``wave [B, 1, T]`` or ``[B, T]`` at ``input_rate`` (right-padded; ``mask`` True on real samples) ->
        ``(input_values [B, T''], attention_mask [B, T''] long | None, valid_frames [B] long)``.

        Resamples to the model rate, zero-mean / unit-variance normalizes each clip over its valid samples
        when the preprocessor says so, and pads so that the model gives ``floor(T_resampled / hop)`` frames,
        frame ``i`` centred on ``(i + 0.5) * hop`` (at least one frame).
        """
        x = wave.reshape(wave.shape[0], -1).float()
        lens = torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
        if mask is not None:
            lens = mask.reshape(mask.shape[0], -1).sum(-1).to(device=x.device, dtype=torch.long)
        if input_rate != self.sample_rate:
            x = torchaudio.functional.resample(x, int(input_rate), self.sample_rate)
            lens = torch.ceil(lens * (self.sample_rate / input_rate)).long().clamp(max=x.shape[1])
        valid = torch.arange(x.shape[1], device=x.device)[None] < lens[:, None]
        x = x * valid
        if self.do_normalize:
            n = lens.clamp_min(1).unsqueeze(-1).to(x.dtype)
            mean = x.sum(-1, keepdim=True) / n
            var = (((x - mean) * valid) ** 2).sum(-1, keepdim=True) / n
            x = (x - mean) / torch.sqrt(var + 1e-7) * valid
        if x.shape[1] < self.hop:
            x = F.pad(x, (0, self.hop - x.shape[1]))
        num_frames = x.shape[1] // self.hop
        overhang = self.receptive_field - self.hop
        left = overhang // 2
        x = F.pad(x, (left, overhang - left))
        attention = None
        if self.use_attention_mask:
            attention = (torch.arange(x.shape[1], device=x.device)[None] < (lens + overhang)[:, None]).long()
        frames = torch.div(lens + self.hop // 2, self.hop, rounding_mode="floor")
        return x, attention, frames.clamp(max=num_frames)


def _model_dtype_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    p = next(model.parameters())
    return p.dtype, p.device


def _check_layer(layer: int, num_layers: int, what: str) -> int:
    if not -(num_layers + 1) <= layer <= num_layers:
        raise ValueError(f"{what} has {num_layers} layers: layer must be in [{-(num_layers + 1)}, {num_layers}] "
                         f"(0 = input to the first layer, -1 = last), got {layer}")
    return layer


# ---- speech-model teacher -------------------------------------------------------------------------
class SpeechTeacher(_FrozenTeacher):
    """Frozen self-supervised speech model (HuBERT / WavLM / wav2vec2 folder) whose hidden states are targets.

    Args:
        path: local ``save_pretrained`` folder (``config.json`` with ``conv_kernel`` / ``conv_stride``,
            weights, optionally ``preprocessor_config.json``). ``*ForCTC`` checkpoints load their base model.
        layer: index into the model's hidden states: 0 = input to the first transformer layer,
            ``i`` = output of layer ``i``, -1 = last.
        sample_rate: the rate the model expects (16 kHz for the usual checkpoints).
        input_rate: the rate of the waves given to :meth:`forward` (the codec's); default ``sample_rate``.

    Raises ``FileNotFoundError`` (missing folder, config or weights) or ``ValueError`` (not a speech model,
    layer out of range, sample-rate mismatch), each naming the path.
    """

    _hidden = ("model",)

    def __init__(self, path: str, layer: int = -1, sample_rate: int = 16000, input_rate: int | None = None) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        what = f"speech teacher {path!r}"
        check_model_dir(path, "speech teacher")
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        if not (hasattr(config, "conv_stride") and hasattr(config, "conv_kernel")):
            raise ValueError(f"{what} holds a {config.model_type!r} model, not a self-supervised speech model: "
                             "expected a HuBERT / WavLM / wav2vec2 folder (config.json with conv_kernel and "
                             "conv_stride)")
        self.path = path
        self.layer = _check_layer(layer, int(config.num_hidden_layers), what)
        self.front = WaveFrontEnd(config, read_preprocessor_config(path), sample_rate, what)
        self.input_rate = int(input_rate or sample_rate)
        _hide(self, "model", AutoModel.from_pretrained(path, local_files_only=True).float())
        self._dim = int(config.hidden_size)
        super().train(False)

    @property
    def dim(self) -> int:
        """Feature size ``D``."""
        return self._dim

    @property
    def frame_rate(self) -> float:
        """Native frames per second (50 for 16 kHz models with hop 320)."""
        return self.front.frame_rate

    @torch.no_grad()
    def features(self, wave: torch.Tensor, mask: torch.Tensor | None = None, input_rate: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Native-rate hidden states: ``wave [B, 1, T]`` (mask ``[B, 1, T]`` bool, right padding) ->
        ``(feats [B, T', D] float32, lengths [B] long)`` with ``T' = floor(T_model / hop)`` and frame ``i``
        covering ``[i, i + 1) / frame_rate`` seconds; ``lengths`` counts the frames over real audio."""
        dtype, device = _model_dtype_device(self.model)
        x, attention, lengths = self.front.prepare(wave.to(device), mask, int(input_rate or self.input_rate))
        out = self.model(x.to(dtype), attention_mask=attention, output_hidden_states=True)
        return out.hidden_states[self.layer].float(), lengths

    def forward(self, wave: torch.Tensor, num_frames: int, mask: torch.Tensor | None = None,
                input_rate: int | None = None) -> torch.Tensor:
        """``wave [B, 1, T]`` at ``input_rate`` (default ``self.input_rate``) -> targets ``[B, F, D]`` float32 on
        the ``F = num_frames`` codec frames of the clip; frames over padding (``mask`` False) are zeros."""
        feats, lengths = self.features(wave, mask, input_rate)
        return align_to_frames(feats, num_frames, lengths)


# ---- CTC word timing (pure functions) -------------------------------------------------------------
def ctc_word_spans(path: Sequence[int] | torch.Tensor, blank_id: int, delimiter_id: int | None,
                   ignore_ids: Sequence[int] = ()) -> list[tuple[list[int], int, int]]:
    """Words of a CTC argmax path with their frame spans.

    Repeated ids collapse into one token unless a blank separates them; ``delimiter_id`` (``|`` of wav2vec2
    vocabularies) ends a word, as does the end of the path; ``ignore_ids`` (``<s>``, ``</s>``) act as blanks.

    Returns ``[(token_ids, start, end), ...]``: ``[start, end)`` runs from the first frame of the word's first
    token to the last frame of its last token (blanks inside the word included, around it excluded).
    """
    ids = path.tolist() if isinstance(path, torch.Tensor) else list(path)
    skip = {blank_id, *ignore_ids}
    words: list[tuple[list[int], int, int]] = []
    cur: list[int] = []
    start = end = 0
    prev: int | None = None
    for t, tok in enumerate(ids):
        repeat = tok == prev
        prev = tok
        if tok in skip:
            continue
        if tok == delimiter_id:
            if cur:
                words.append((cur, start, end))
                cur = []
            continue
        if repeat:
            end = t + 1  # the same token continues
            continue
        if not cur:
            start = t
        cur.append(tok)
        end = t + 1
    if cur:
        words.append((cur, start, end))
    return words


def piece_spans(word_ids: Sequence[int | None], word_times: Sequence[tuple[float, float]]
                ) -> tuple[list[int], list[tuple[float, float]]]:
    """Word pieces -> time spans: the pieces of one word split its ``(start, end)`` seconds evenly, in order.

    ``word_ids`` is a fast tokenizer's ``word_ids()`` (None for special tokens, which are dropped); pieces of
    words beyond ``word_times`` (truncation) are dropped too. Returns ``(piece positions, spans)``.
    """
    by_word: dict[int, list[int]] = {}
    for pos, w in enumerate(word_ids):
        if w is not None and w < len(word_times):
            by_word.setdefault(w, []).append(pos)
    positions: list[int] = []
    spans: list[tuple[float, float]] = []
    for w, pos_list in by_word.items():
        s, e = word_times[w]
        step = (e - s) / len(pos_list)
        for k, pos in enumerate(pos_list):
            positions.append(pos)
            spans.append((s + k * step, s + (k + 1) * step))
    return positions, spans


def render_spans(embs: torch.Tensor, spans: Sequence[tuple[float, float]], num_frames: int, frame_seconds: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Place piece embeddings ``[P, D]`` on their time spans (seconds) over ``num_frames`` frames of
    ``frame_seconds`` each (frame ``f`` covers ``[f, f + 1) * frame_seconds``).

    Each frame is the overlap-weighted mean of the pieces it overlaps, valid when pieces cover at least half
    of it. Returns ``(feats [F, D], mask [F] bool)``; invalid frames are zeros.
    """
    out = torch.zeros(num_frames, embs.shape[-1], dtype=embs.dtype, device=embs.device)
    if not len(spans):
        return out, torch.zeros(num_frames, dtype=torch.bool, device=embs.device)
    sp = torch.as_tensor(spans, dtype=torch.float64, device=embs.device)
    lo = torch.arange(num_frames, dtype=torch.float64, device=embs.device)[:, None] * frame_seconds
    overlap = (torch.minimum(sp[None, :, 1], lo + frame_seconds) - torch.maximum(sp[None, :, 0], lo)).clamp_min(0)
    cover = overlap.sum(1)
    mask = cover >= 0.5 * frame_seconds - 1e-9
    w = (overlap / cover.clamp_min(1e-12)[:, None]).to(embs.dtype)
    out = torch.where(mask[:, None], w @ embs, out)
    return out, mask


def spread_uniform(embs: torch.Tensor, extent: tuple[float, float], num_frames: int, frame_seconds: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Spread piece embeddings ``[P, D]`` over the frames whose centres lie in ``extent`` (seconds) by linear
    interpolation (:func:`align_to_frames`). Returns ``(feats [F, D], mask [F] bool)``."""
    centres = (torch.arange(num_frames, dtype=torch.float64) + 0.5) * frame_seconds
    mask = (centres >= extent[0]) & (centres < extent[1])
    out = torch.zeros(num_frames, embs.shape[-1], dtype=embs.dtype, device=embs.device)
    n = int(mask.sum())
    if n == 0 or embs.shape[0] == 0:
        return out, torch.zeros(num_frames, dtype=torch.bool, device=embs.device)
    first = int(mask.nonzero()[0])
    out[first:first + n] = align_to_frames(embs[None], n)[0]
    return out, mask.to(embs.device)


def voiced_extent(wave: torch.Tensor, length: int, sample_rate: int, threshold_db: float = -40.0,
                  window_seconds: float = 0.02) -> tuple[float, float]:
    """``(start, end)`` seconds of the voiced part of ``wave [T]`` (its first ``length`` samples are real).

    Windows of ``window_seconds`` whose RMS is within ``threshold_db`` of the loudest window are voiced; the
    extent runs from the first to the last sample of that span reaching the threshold (sample-accurate).
    A silent or very short clip gives its whole valid part.
    """
    x = wave.reshape(-1)[:length].float()
    hop = max(1, int(window_seconds * sample_rate))
    whole = (0.0, length / sample_rate)
    if x.numel() < hop:
        return whole
    rms = x[: x.numel() // hop * hop].reshape(-1, hop).pow(2).mean(-1).sqrt()
    threshold = float(rms.max()) * 10 ** (threshold_db / 20)
    if threshold <= 0:
        return whole
    loud = (rms >= threshold).nonzero().reshape(-1)
    a, b = int(loud[0]) * hop, int(loud[-1] + 1) * hop
    hits = (x[a:b].abs() >= threshold).nonzero().reshape(-1)
    if hits.numel():
        a, b = a + int(hits[0]), a + int(hits[-1]) + 1
    return a / sample_rate, b / sample_rate


# ---- LM teacher -----------------------------------------------------------------------------------
class LMTeacher(_FrozenTeacher):
    """Frozen text LM whose contextual word-piece embeddings of the transcript are placed on the codec frames.

    Args:
        lm_path: local folder of a text model with a fast tokenizer (``tokenizer.json``), e.g. BERT.
        recognizer_path: optional local CTC recognizer (``*ForCTC`` + its CTC tokenizer, e.g. wav2vec2): it
            transcribes every clip and times every word (see :func:`ctc_word_spans`); given texts are then
            ignored. Without it, :meth:`forward` needs ``texts``.
        layer: LM hidden-state index (0 = embeddings, -1 = last layer).
        sample_rate: the rate the recognizer expects.
        input_rate: the rate of the waves given to :meth:`forward`; default ``sample_rate``.
        lowercase: lowercase recognized words (CTC vocabularies are often upper case).
        silence_db: without a recognizer, pieces are spread over the part of the clip within this many dB of
            its loudest 20 ms.
    """

    _hidden = ("lm", "recognizer")

    def __init__(self, lm_path: str, recognizer_path: str | None = None, layer: int = -1,
                 sample_rate: int = 16000, input_rate: int | None = None, lowercase: bool = True,
                 silence_db: float = -40.0) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoModelForCTC, AutoTokenizer

        check_model_dir(lm_path, "LM teacher")
        config = AutoConfig.from_pretrained(lm_path, local_files_only=True)
        if hasattr(config, "conv_stride"):
            raise ValueError(f"LM teacher {lm_path!r} holds a {config.model_type!r} speech model: expected a text "
                             "language model (e.g. BERT) with its tokenizer")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(lm_path, local_files_only=True)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"LM teacher {lm_path!r} has no loadable tokenizer (expected tokenizer.json / "
                             f"vocab files saved with the model): {exc}") from exc
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError(f"LM teacher {lm_path!r} needs a fast tokenizer (tokenizer.json) to map word pieces "
                             "to words")
        self.lm_path, self.recognizer_path = lm_path, recognizer_path
        n_layers = int(getattr(config, "num_hidden_layers", 0) or 0)
        self.layer = _check_layer(layer, n_layers, f"LM teacher {lm_path!r}") if n_layers else layer
        _hide(self, "lm", AutoModel.from_pretrained(lm_path, local_files_only=True).float())
        self._dim = int(config.hidden_size)
        self.max_length = int(min(getattr(self.tokenizer, "model_max_length", 512) or 512,
                                  getattr(config, "max_position_embeddings", 512) or 512))
        self.lowercase, self.silence_db = lowercase, silence_db
        self.input_rate = int(input_rate or sample_rate)
        self.sample_rate = int(sample_rate)
        self.recognizer: nn.Module | None = None
        if recognizer_path is not None:
            what = f"recognizer {recognizer_path!r}"
            check_model_dir(recognizer_path, "recognizer")
            try:
                model = AutoModelForCTC.from_pretrained(recognizer_path, local_files_only=True)
                self.ctc_tokenizer = AutoTokenizer.from_pretrained(recognizer_path, local_files_only=True)
            except (OSError, ValueError, KeyError) as exc:
                raise ValueError(f"{what} is not a CTC speech recognizer with its tokenizer (expected e.g. "
                                 f"Wav2Vec2ForCTC / HubertForCTC + vocab.json): {exc}") from exc
            _hide(self, "recognizer", model.float())
            self.front = WaveFrontEnd(model.config, read_preprocessor_config(recognizer_path), sample_rate, what)
            tok = self.ctc_tokenizer
            self.blank_id = tok.pad_token_id if tok.pad_token_id is not None else model.config.pad_token_id
            delim = getattr(tok, "word_delimiter_token_id", None)
            self.delimiter_id = delim if delim is not None else tok.convert_tokens_to_ids("|")
            if self.blank_id is None:
                raise ValueError(f"{what}: its tokenizer defines no pad token, which CTC uses as the blank")
            self.ignore_ids = [i for i in (tok.bos_token_id, tok.eos_token_id) if i is not None]
        super().train(False)

    @property
    def dim(self) -> int:
        """Feature size ``D`` of the LM."""
        return self._dim

    # -- words and their times --
    @torch.no_grad()
    def transcribe(self, wave: torch.Tensor, mask: torch.Tensor | None = None, input_rate: int | None = None
                   ) -> list[list[tuple[str, float, float]]]:
        """Recognize ``wave [B, 1, T]``: per clip ``[(word, start_seconds, end_seconds), ...]``."""
        if self.recognizer is None:
            raise ValueError("LMTeacher.transcribe needs a recognizer (recognizer_path)")
        dtype, device = _model_dtype_device(self.recognizer)
        x, attention, frames = self.front.prepare(wave.to(device), mask, int(input_rate or self.input_rate))
        logits = self.recognizer(x.to(dtype), attention_mask=attention).logits
        return [self.words_from_logits(logits[b, : int(frames[b])]) for b in range(logits.shape[0])]

    def words_from_logits(self, logits: torch.Tensor) -> list[tuple[str, float, float]]:
        """CTC logits ``[T_r, V]`` of one clip (frame ``i`` = ``[i, i + 1) / frame_rate`` s) -> timed words."""
        hop_s = 1.0 / self.front.frame_rate
        out = []
        for ids, s, e in ctc_word_spans(logits.argmax(-1).cpu(), self.blank_id, self.delimiter_id, self.ignore_ids):
            word = "".join(self.ctc_tokenizer.convert_ids_to_tokens(ids))
            out.append((word.lower() if self.lowercase else word, s * hop_s, e * hop_s))
        return out

    @torch.no_grad()
    def embed_words(self, words: list[list[str]]) -> list[tuple[torch.Tensor, list[int | None]]]:
        """Contextual embeddings of word lists: per item ``(pieces [P, D] float32, word_ids [P])`` including
        special tokens (``word_ids`` None). Empty lists give ``P = 0``."""
        out: list[tuple[torch.Tensor, list[int | None]]] = [(torch.zeros(0, self.dim), []) for _ in words]
        todo = [i for i, w in enumerate(words) if w]
        if not todo:
            return out
        enc = self.tokenizer([words[i] for i in todo], is_split_into_words=True, padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        _, device = _model_dtype_device(self.lm)
        inputs = {k: v.to(device) for k, v in enc.items()}
        hidden = self.lm(**inputs, output_hidden_states=True).hidden_states[self.layer].float()
        for j, i in enumerate(todo):
            wid = enc.word_ids(j)
            keep = [p for p in range(len(wid)) if enc["attention_mask"][j, p]]
            out[i] = (hidden[j, keep], [wid[p] for p in keep])
        return out

    # -- targets --
    def targets(self, wave: torch.Tensor, num_frames: int, frame_seconds: float,
                texts: Sequence[str | None] | None = None, mask: torch.Tensor | None = None,
                input_rate: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
        """LM targets on ``num_frames`` frames of ``frame_seconds`` each from the clip start.

        Returns ``(feats [B, F, D] float32, mask [B, F] bool, info)`` where ``info[b]`` holds ``words`` and the
        ``alignment`` used (``ctc``: recognizer timing; ``uniform``: transcript spread over the voiced part;
        ``none``: no words, all frames invalid).
        """
        rate = int(input_rate or self.input_rate)
        b = wave.shape[0]
        lengths = (mask.reshape(b, -1).sum(-1) if mask is not None
                   else torch.full((b,), wave.shape[-1])).tolist()
        if self.recognizer is not None:
            timed = self.transcribe(wave, mask, rate)
            words = [[w for w, _, _ in t] for t in timed]
        else:
            if texts is None or len(texts) != b:
                raise ValueError(f"LMTeacher without a recognizer needs one transcript per clip, got "
                                 f"{None if texts is None else len(texts)} for a batch of {b}")
            words = [(t or "").split() for t in texts]
            timed = None
        feats = torch.zeros(b, num_frames, self.dim)
        fmask = torch.zeros(b, num_frames, dtype=torch.bool)
        info: list[dict[str, Any]] = []
        for i, (embs, wid) in enumerate(self.embed_words(words)):
            embs = embs.cpu()
            if embs.shape[0] == 0:
                info.append({"words": words[i], "alignment": "none"})
                continue
            if timed is not None:
                pos, spans = piece_spans(wid, [(s, e) for _, s, e in timed[i]])
                feats[i], fmask[i] = render_spans(embs[pos], spans, num_frames, frame_seconds)
                info.append({"words": words[i], "alignment": "ctc"})
            else:
                pieces = embs[[p for p, w in enumerate(wid) if w is not None]]
                extent = voiced_extent(wave[i].cpu(), int(lengths[i]), rate, self.silence_db)
                feats[i], fmask[i] = spread_uniform(pieces, extent, num_frames, frame_seconds)
                info.append({"words": words[i], "alignment": "uniform"})
        return feats.to(wave.device), fmask.to(wave.device), info

    def forward(self, wave: torch.Tensor, num_frames: int, texts: Sequence[str | None] | None = None,
                mask: torch.Tensor | None = None, input_rate: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``wave [B, 1, T]`` at ``input_rate`` -> ``(targets [B, F, D] float32, frame_mask [B, F] bool)`` on the
        ``F = num_frames`` codec frames spanning the clip; frames outside any word are zeros, mask False."""
        rate = int(input_rate or self.input_rate)
        feats, fmask, _ = self.targets(wave, num_frames, wave.shape[-1] / rate / num_frames, texts, mask, rate)
        return feats, fmask


# ---- both, for a batch ----------------------------------------------------------------------------
class DistillationTargets(nn.Module):
    """Distillation targets of a batch: ``{"speech": (feats [B, F, D_s], mask [B, F]), "lm": (...)}``.

    Precomputed batch keys (``teacher_speech`` / ``teacher_speech_mask``, ``teacher_lm`` / ``teacher_lm_mask``,
    written by ``tokenizers-mm data teacher-features`` and cropped by the audio decoder) are aligned to the
    codec's ``F`` frames with :func:`align_masked`; kinds without keys run the online teacher on
    ``batch["audio"]`` (``[B, 1, T]``, mask ``audio_mask``). A kind with neither is left out of the dict.
    """

    def __init__(self, speech: SpeechTeacher | None = None, lm: LMTeacher | None = None) -> None:
        super().__init__()
        self.speech, self.lm = speech, lm

    @classmethod
    def from_paths(cls, speech_teacher: str | None = None, lm_teacher: str | None = None,
                   recognizer: str | None = None, layer: int = -1, lm_layer: int = -1,
                   sample_rate: int = 16000, input_rate: int | None = None) -> DistillationTargets:
        """Load the teachers named by paths (``None`` leaves that kind to precomputed features)."""
        speech = SpeechTeacher(speech_teacher, layer, sample_rate, input_rate) if speech_teacher else None
        lm = LMTeacher(lm_teacher, recognizer, lm_layer, sample_rate, input_rate) if lm_teacher else None
        return cls(speech, lm)

    def forward(self, batch: dict[str, Any], num_frames: int, texts: Sequence[str | None] | None = None
                ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        audio, amask = batch.get("audio"), batch.get("audio_mask")
        for kind, teacher in (("speech", self.speech), ("lm", self.lm)):
            key = f"teacher_{kind}"
            if key in batch:
                out[kind] = align_masked(batch[key].float(), batch[f"{key}_mask"].bool(), num_frames)
            elif teacher is not None:
                if audio is None:
                    raise ValueError(f"batch has neither {key!r} nor 'audio' for the online {kind} teacher")
                if kind == "speech":
                    frame_mask = (align_mask(amask.reshape(amask.shape[0], -1), num_frames) if amask is not None
                                  else torch.ones(audio.shape[0], num_frames, dtype=torch.bool, device=audio.device))
                    out[kind] = (teacher(audio, num_frames, amask), frame_mask)
                else:
                    out[kind] = teacher(audio, num_frames, texts, amask)
        return out
