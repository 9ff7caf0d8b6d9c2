"""Precompute distillation-teacher features into audio shards (``tokenizers-mm data teacher-features``).

Every input shard ``NAME.tar`` becomes ``OUT/NAME.tar`` (written atomically) holding each readable sample's
original fields plus, for the whole clip:

- ``speech_feats.npy``: float16 ``[T', D]`` hidden states of the speech teacher at its native frame rate
  (frame ``i`` covers ``[i, i + 1) / frame_rate`` seconds, e.g. 50 frames per second for HuBERT);
- ``lm_feats.npy`` float16 ``[T_lm, D]`` + ``lm_mask.npy`` bool ``[T_lm]``: LM embeddings of the transcript
  placed on ``lm_frame_rate`` frames by the recognizer's word timings, or spread over the voiced part of the
  clip when only a ``txt`` transcript is present (no words: all frames masked);
- ``teacher.json``: frame rates, dims, frame counts, teacher paths and layers (and the LM's words and
  alignment), which the audio decoder reads to crop the features with the audio.

``OUT/dataset.json`` is the input folder's manifest with the output shards, the counts and a ``teacher``
section. Reruns skip output shards that exist (resume) unless ``overwrite``; resuming with other teachers
than the folder's (``OUT/.teacher-features.json``) is an error.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import time
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.audio import AUDIO_EXTENSIONS, decode_audio, to_mono
from ..data.samples import TEACHER_FIELDS, TEACHER_META
from ..data.stream import SkipCounter, count_samples
from ..data.urls import expand_urls, is_remote
from ..io import AtomicTarFile, write_json_atomic
from .teachers import LMTeacher, SpeechTeacher

log = logging.getLogger("tokenizers_mm.speech")
TEXT_FIELDS = ("txt", "text", "transcript")
STATE_FILE = ".teacher-features.json"  # the teachers of an output folder, checked when a run resumes
WRITTEN_FIELDS = (TEACHER_META, *(n for pair in TEACHER_FIELDS.values() for n in pair if n))


def encode_npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def sample_text(sample: dict[str, Any]) -> str | None:
    """The transcript of a raw sample (``txt`` / ``text`` / ``transcript`` field, UTF-8), or None."""
    for name in TEXT_FIELDS:
        if name in sample:
            value = sample[name]
            return value.decode("utf-8") if isinstance(value, bytes) else str(value)
    return None


def teacher_features(wave: torch.Tensor, sr: int, text: str | None, speech: SpeechTeacher | None,
                     lm: LMTeacher | None, lm_frame_rate: float) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Features of one clip ``wave [C, T]`` at ``sr``: ``(fields to add, teacher.json content)``."""
    x = to_mono(wave)[None]  # [1, 1, T]
    fields: dict[str, bytes] = {}
    meta: dict[str, Any] = {}
    if speech is not None:
        feats, lengths = speech.features(x, input_rate=sr)
        feats = feats[0, : max(int(lengths[0]), 1)].cpu().numpy().astype(np.float16)
        fields["speech_feats.npy"] = encode_npy(feats)
        meta["speech"] = {"frame_rate": speech.frame_rate, "dim": speech.dim, "frames": int(feats.shape[0]),
                          "path": os.path.abspath(speech.path), "layer": speech.layer}
    if lm is not None:
        n = max(1, math.ceil(x.shape[-1] / sr * lm_frame_rate - 1e-6))
        feats, mask, info = lm.targets(x, n, 1.0 / lm_frame_rate, [text], None, sr)
        fields["lm_feats.npy"] = encode_npy(feats[0].cpu().numpy().astype(np.float16))
        fields["lm_mask.npy"] = encode_npy(mask[0].cpu().numpy())
        meta["lm"] = {"frame_rate": float(lm_frame_rate), "dim": lm.dim, "frames": n,
                      "path": os.path.abspath(lm.lm_path), "layer": lm.layer,
                      "recognizer": os.path.abspath(lm.recognizer_path) if lm.recognizer_path else None,
                      "alignment": info[0]["alignment"], "words": info[0]["words"]}
    fields[TEACHER_META] = json.dumps(meta).encode()
    return fields, meta


def _input_manifest(urls: list[str]) -> dict[str, Any]:
    for d in dict.fromkeys(os.path.dirname(u) for u in urls if not is_remote(u)):
        path = os.path.join(d, "dataset.json")
        if os.path.isfile(path):
            with open(path) as f:
                return json.load(f)
    return {"format_version": 1, "modality": "audio"}


def precompute_teacher_features(urls: str | list[str], out_dir: str, speech_teacher: str | SpeechTeacher | None = None,
                                lm_teacher: str | LMTeacher | None = None, recognizer: str | None = None,
                                sample_rate: int = 16000, layer: int = -1, lm_layer: int = -1,
                                lm_frame_rate: float = 50.0, split: str | None = None, device: str | None = None,
                                overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Write teacher-feature shards of the audio shards ``urls`` into ``out_dir`` (see the module docstring).

    Args:
        urls: input shards (pattern, folder, ``@list.txt`` ...); a folder gives all its ``*.tar`` unless
            ``split`` (``train`` / ``val``) picks one.
        out_dir: output folder (created); must differ from the input folders (shard names carry over).
        speech_teacher / lm_teacher: local model folders, or loaded teachers; at least one.
        recognizer: local CTC recognizer folder timing the LM's words (only with an ``lm_teacher`` path).
        sample_rate: the teachers' audio rate (inputs are resampled from their own rate).
        layer / lm_layer: hidden-state indices of the speech teacher / the LM (for paths).
        lm_frame_rate: frames per second of ``lm_feats.npy``.
        device: ``cpu`` / ``cuda`` ...; default cuda when available.
        overwrite: recompute output shards that exist (default: skip them, which resumes a killed run).

    Returns the ``dataset.json`` content. Undecodable samples are skipped, logged and counted.
    """
    if speech_teacher is None and lm_teacher is None:
        raise ValueError("teacher-features needs a speech teacher and / or an LM teacher")
    if recognizer is not None and not isinstance(lm_teacher, str):
        raise ValueError("a recognizer times the LM teacher's words: give it with an LM teacher path")
    if lm_frame_rate <= 0:
        raise ValueError(f"lm_frame_rate must be > 0 frames per second, got {lm_frame_rate}")
    urls = expand_urls(urls, split=split)
    names = [os.path.basename(u.rstrip("/")) for u in urls]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"input shards share file names {dupes[:5]}; output shards are named after inputs, so "
                         "process each folder into its own --out")
    out_real = os.path.realpath(out_dir)
    if any(not is_remote(u) and os.path.realpath(os.path.dirname(u)) == out_real for u in urls):
        raise ValueError(f"--out {out_dir!r} holds the input shards; write teacher features to another folder")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    speech = SpeechTeacher(speech_teacher, layer, sample_rate) if isinstance(speech_teacher, str) else speech_teacher
    lm = LMTeacher(lm_teacher, recognizer, lm_layer, sample_rate) if isinstance(lm_teacher, str) else lm_teacher
    for t in (speech, lm):
        if t is not None:
            t.to(device)
    os.makedirs(out_dir, exist_ok=True)
    config = teacher_config(speech, lm, lm_frame_rate)
    _claim_out_dir(out_dir, config, overwrite)
    from webdataset.tariterators import tarfile_samples

    t0 = time.time()
    skipped = 0
    for url, name in zip(urls, names):
        path = os.path.join(out_dir, name)
        if os.path.exists(path) and not overwrite:
            log.info("teacher-features: %s exists, skipped (resume)", path)
            continue
        counter = SkipCounter()
        tar = AtomicTarFile(path)
        try:
            samples = tarfile_samples([{"url": url}], handler=counter.tar_handler)
            for raw in tqdm(samples, desc=f"teachers {name}", unit="sample", disable=not progress):
                try:
                    ext = next((e for e in AUDIO_EXTENSIONS if e in raw), None)
                    if ext is None:
                        raise ValueError(f"sample has no audio file ({list(AUDIO_EXTENSIONS)})")
                    wave, sr = decode_audio(raw[ext])
                    fields, _ = teacher_features(wave, sr, sample_text(raw), speech, lm, lm_frame_rate)
                except ValueError as exc:
                    counter.skip("sample", raw.get("__key__"), url, exc)
                    continue
                kept = {k: v for k, v in raw.items() if not k.startswith("__") and k not in WRITTEN_FIELDS}
                tar.write({"__key__": raw["__key__"], **kept, **fields})
            tar.commit()
        except BaseException:
            tar.abort()
            raise
        skipped += counter.total
    return write_manifest(out_dir, urls, names, config, skipped, time.time() - t0)


def teacher_config(speech: SpeechTeacher | None, lm: LMTeacher | None, lm_frame_rate: float) -> dict[str, Any]:
    """What identifies the features: teacher paths, layers, dims and frame rates (``dataset.json`` ``teacher``)."""
    config: dict[str, Any] = {}
    if speech is not None:
        config["speech"] = {"path": os.path.abspath(speech.path), "layer": speech.layer, "dim": speech.dim,
                            "frame_rate": speech.frame_rate, "sample_rate": speech.front.sample_rate}
    if lm is not None:
        config["lm"] = {"path": os.path.abspath(lm.lm_path), "layer": lm.layer, "dim": lm.dim,
                        "frame_rate": float(lm_frame_rate),
                        "recognizer": os.path.abspath(lm.recognizer_path) if lm.recognizer_path else None}
    return config


def _claim_out_dir(out_dir: str, config: dict[str, Any], overwrite: bool) -> None:
    """Record the teachers of ``out_dir`` (``.teacher-features.json``); refuse to resume with other teachers."""
    path = os.path.join(out_dir, STATE_FILE)
    if os.path.isfile(path) and not overwrite:
        with open(path) as f:
            before = json.load(f)
        if before != json.loads(json.dumps(config)):
            raise ValueError(f"{out_dir!r} holds features of other teachers ({before}); resuming there would mix "
                             "them: pass --overwrite or choose another --out")
    write_json_atomic(path, config)


def write_manifest(out_dir: str, urls: list[str], names: list[str], config: dict[str, Any], skipped: int,
                   seconds: float) -> dict[str, Any]:
    """``out_dir/dataset.json``: the input manifest with the output shards, counts and a ``teacher`` section
    (``config`` plus the source folders, this run's skipped samples and seconds)."""
    manifest = dict(_input_manifest(urls))
    shards: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for name in names:
        if os.path.exists(os.path.join(out_dir, name)):
            split = name.split("-", 1)[0] if "-" in name else "all"
            shards.setdefault(split, []).append(name)
            counts[split] = counts.get(split, 0) + count_samples(os.path.join(out_dir, name))
    source = sorted({os.path.abspath(os.path.dirname(u)) for u in urls if not is_remote(u)})
    teacher = {**config, "source": source, "skipped_samples": skipped, "seconds": round(seconds, 2)}
    manifest.update(shards=shards, counts=counts, teacher=teacher)
    manifest.pop("bytes", None)  # sizes of the source shards no longer hold
    write_json_atomic(os.path.join(out_dir, "dataset.json"), manifest)
    return manifest


# ---- CLI ------------------------------------------------------------------------------------------
def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``teacher-features`` to the ``tokenizers-mm data`` subcommands."""
    p = subparsers.add_parser("teacher-features",
                              help="precompute distillation-teacher features (HuBERT / WavLM, LM) into audio shards")
    p.add_argument("--data", required=True, nargs="+", metavar="URLS", help="audio shards: pattern, folder, @list.txt")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (shards keep their names) + dataset.json")
    p.add_argument("--speech-teacher", default=None, metavar="PATH", help="local HuBERT / WavLM / wav2vec2 folder")
    p.add_argument("--lm-teacher", default=None, metavar="PATH", help="local text LM folder with a fast tokenizer (e.g. BERT)")
    p.add_argument("--recognizer", default=None, metavar="PATH", help="local CTC recognizer folder timing the LM's words")
    p.add_argument("--layer", type=int, default=-1, metavar="N", help="speech teacher hidden state (0 = input, -1 = last)")
    p.add_argument("--lm-layer", type=int, default=-1, metavar="N", help="LM hidden state (0 = embeddings, -1 = last)")
    p.add_argument("--lm-frame-rate", type=float, default=50.0, metavar="FPS", help="frames per second of lm_feats.npy")
    p.add_argument("--sample-rate", type=int, default=16000, metavar="HZ", help="the teachers' audio rate in Hz")
    p.add_argument("--split", choices=["train", "val"], default=None, help="for folders: only this split")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--overwrite", action="store_true", help="recompute output shards that exist")
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    """Run ``tokenizers-mm data teacher-features``; prints a summary, returns the exit status."""
    m = precompute_teacher_features(args.data, args.out, speech_teacher=args.speech_teacher,
                                    lm_teacher=args.lm_teacher, recognizer=args.recognizer,
                                    sample_rate=args.sample_rate, layer=args.layer, lm_layer=args.lm_layer,
                                    lm_frame_rate=args.lm_frame_rate, split=args.split, device=args.device,
                                    overwrite=args.overwrite)
    kinds = [k for k in ("speech", "lm") if k in m["teacher"]]
    print(f"teacher features ({', '.join(kinds)}) in {args.out}: {m['counts']} samples, "
          f"{m['teacher']['skipped_samples']} skipped (dataset.json)")
    return 0
