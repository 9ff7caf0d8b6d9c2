"""Pre-tokenization: stream webdataset shards through an exported tokenizer into token shards.

Every input shard ``NAME.tar`` becomes an output shard ``OUT/NAME.tar`` with one sample per readable input
sample: ``__key__`` (the input key), ``ids.npy`` (uint16 or int32: ``[k]`` ids of an image or of a shape, scales
coarse first; ``[n, F]`` of a speech clip taken whole, ``n`` codebooks by ``F`` frames) and ``json`` (the source
shard, the number of tokens or codebooks, and a clip's frames). Because names carry over, ``train-*.tar`` / ``val-*.tar`` splits stay
splits, and :class:`~tokenizers_mm.data.ShardDataModule` with ``modality: tokens`` reads the folder back.

- Parallel: input shards are dealt round-robin to ranks (``RANK`` / ``WORLD_SIZE`` from torchrun or SLURM,
  or ``--rank`` / ``--world-size``), then to dataloader workers that decode; the rank's process encodes.
- Resumable and safe: shards are written into a staging folder beside ``--out`` (each shard under a temporary
  name, renamed when complete) whose ``made_by.json`` records the model's sha256, the inputs' fingerprint and
  the settings; a rerun that agrees skips the shards already there, so a killed job continues where it stopped,
  and one that does not is refused with the difference. The folder is swapped in as ``--out`` when every shard
  is done; an ``--out`` holding anything else (the input shards themselves included) is never overwritten.
- Corrupt samples are skipped, counted and logged with key and shard; the counts go into ``dataset.json``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from tokenizers_mm.data.stream import SkipCounter, check_shard_modality, count_samples, dist_info
from tokenizers_mm.data.urls import expand_urls, is_remote
from tokenizers_mm.io import (
    AtomicTarFile,
    EmptyOutputError,
    OutputFolder,
    empty_output_message,
    file_fingerprint,
    remove_temp_files,
    write_json_atomic,
)

from .base import TokenizerPipeline
from .files import ids_dtype, token_meta

log = logging.getLogger("tokenizers_mm.tokenize")
PROGRESS_DIR = ".tokenize"
COMMIT_LOCK = ".commit-lock"


class ShardBatches(IterableDataset):
    """Decoded batches of whole shards, never mixing two shards in one batch.

    Yields ``{"shard", "keys", "x"}`` batches (``x`` stacked, or a list when the inputs differ in shape, as
    audio clips do) and, after each shard, ``{"shard", "end": True, "skipped"}``.
    Worker ``w`` of ``n`` takes shards ``w, w + n, ...`` of the list.
    """

    def __init__(self, urls: list[str], decoder: Any, batch_size: int, input_key: str) -> None:
        self.urls, self.decoder, self.batch_size, self.input_key = urls, decoder, batch_size, input_key

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from webdataset.tariterators import tarfile_samples

        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        rng = random.Random(0)
        for url in self.urls[wid::nw]:
            counter = SkipCounter()
            keys: list[str] = []
            xs: list[torch.Tensor] = []
            for raw in tarfile_samples([{"url": url}], handler=counter.tar_handler):
                try:
                    x = self.decoder(raw, rng)[self.input_key]
                except Exception as exc:  # one corrupt sample must not stop the job
                    counter.skip("sample", raw.get("__key__"), url, exc)
                    continue
                keys.append(raw["__key__"])
                xs.append(x)
                if len(xs) == self.batch_size:
                    yield {"shard": url, "keys": keys, "x": _batch(xs), "end": False}
                    keys, xs = [], []
            if xs:
                yield {"shard": url, "keys": keys, "x": _batch(xs), "end": False}
            yield {"shard": url, "end": True, "skipped": counter.total, "reasons": counter.reasons}


def _batch(xs: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    return torch.stack(xs) if len({tuple(x.shape) for x in xs}) == 1 else xs


def output_name(url: str) -> str:
    name = os.path.basename(url.rstrip("/").split("?")[0])
    return name if name.endswith(".tar") else f"{name}.tar"


def _made_by(tok: TokenizerPipeline, k: int, urls: list[str], split: str | None) -> dict[str, Any]:
    local = [u for u in urls if not is_remote(u)]
    return {"command": "tokenize", "modality": "tokens", "source_modality": tok.modality,
            "model": {"sha256": tok.model_id, "architecture": tok.config["architecture"]},
            "settings": {"num_tokens": k, "split": split},
            "inputs": {"shards": [output_name(u) for u in urls],
                       "fingerprint": file_fingerprint(local) if len(local) == len(urls) else None}}


def tokenize_shards(model: str | TokenizerPipeline, data: str | list[str], out: str, num_tokens: int | None = None,
                    batch_size: int = 64, num_workers: int = 2, split: str | None = None, rank: int | None = None,
                    world_size: int | None = None, device: str | None = None, dtype: str | None = None,
                    progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Tokenize the shards ``data`` into ``out`` (see the module docstring); returns the ``dataset.json`` content.

    Args:
        model: an export folder or a loaded pipeline.
        data: shard URLs (pattern, directory, ``@list.txt`` ...); a directory gives all its ``*.tar``
            unless ``split`` (``train`` / ``val``) picks one.
        out: output folder. Shards are written into a staging folder beside it (``.NAME.partial``) that is swapped
            in when every input shard is done; a rerun with the same model, inputs and settings resumes there,
            and one with other settings is an ``OutputError`` naming the difference. An existing ``out`` that is
            not this very output is refused unless ``overwrite``.
        num_tokens: keep the first ``num_tokens`` of each sample (1D tokenizers); default all.
        rank / world_size: this process's part; default from torch.distributed or the launcher's environment.
    Raises:
        EmptyOutputError: no input sample could be tokenized (the message gives the first reasons).
    """
    import pipelines

    if isinstance(model, TokenizerPipeline):
        tok = model
    else:
        if device is None and torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        tok = pipelines.load(model, device=device, dtype=dtype)
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"--workers must be >= 0, got {num_workers}")
    k = tok.num_tokens if num_tokens is None else num_tokens
    what = tok.token_unit.split()[0]  # tokens, or codebooks
    if not 1 <= k <= tok.num_tokens or (not tok.prefix_decodable and k != tok.num_tokens):
        raise ValueError(f"--num-tokens ({what}) must be in 1..{tok.num_tokens} for this tokenizer"
                         + ("" if tok.prefix_decodable else f" (exactly {tok.num_tokens}: it is not prefix-decodable)")
                         + f", got {num_tokens}")
    prefixes = tok.config["tokens"].get("prefix_lengths")
    if prefixes and k not in prefixes:
        raise ValueError(f"--num-tokens must be a whole number of scales for this tokenizer: one of {prefixes}, "
                         f"got {num_tokens}")
    try:
        urls = expand_urls(data, split=split)
    except (FileNotFoundError, ValueError) as exc:
        raise type(exc)(f"--data: {exc}") from exc
    check_shard_modality(urls, tok.modality, "--data")
    names = [output_name(u) for u in urls]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"--data: input shards share file names {dupes[:5]}; output shards are named after inputs, "
                         "so tokenize each folder into its own --out")
    r, w = dist_info()
    r = r if rank is None else rank
    w = w if world_size is None else world_size
    if not 0 <= r < w:
        raise ValueError(f"--rank must be in 0..{w - 1}, got {r}")
    folder = OutputFolder(out, _made_by(tok, k, urls, split), overwrite=overwrite, resumable=True,
                          inputs=[*([model] if isinstance(model, str) else []), *(u for u in urls if not is_remote(u))])
    if not overwrite and folder.existing():
        log.warning("%s already holds these token shards (same model, inputs and settings): nothing to do", out)
        with open(os.path.join(out, "dataset.json")) as f:
            return json.load(f)
    stage = folder.check().path
    os.makedirs(os.path.join(stage, PROGRESS_DIR), exist_ok=True)
    mine = [u for i, u in enumerate(urls) if i % w == r]
    remove_temp_files(stage, [output_name(u) for u in mine])
    todo = [u for u in mine if not os.path.exists(os.path.join(stage, output_name(u)))]
    if len(todo) < len(mine):
        log.warning("resuming: %d of this rank's %d shards are already tokenized", len(mine) - len(todo), len(mine))
    total = sum(count_samples(u) for u in todo) if todo and not any(is_remote(u) for u in todo) else None
    loader = DataLoader(ShardBatches(todo, tok.shard_decoder(), batch_size, tok.shard_input_key), batch_size=None,
                        num_workers=min(num_workers, len(todo)))
    meta = token_meta(tok, k)
    dtype_np = ids_dtype(tok.codebook_size)
    writers: dict[str, AtomicTarFile] = {}
    bar = tqdm(total=total, desc=f"tokenize rank {r}/{w}", unit="sample", disable=not progress or not todo)
    try:
        for item in loader if todo else []:
            url = item["shard"]
            name = output_name(url)
            if item["end"]:
                tar = writers.pop(url, None) or AtomicTarFile(os.path.join(stage, name))
                write_json_atomic(os.path.join(stage, PROGRESS_DIR, f"{name}.json"),
                                  {"source": url, "samples": tar.count, "skipped": int(item["skipped"]),
                                   "reasons": item["reasons"]})
                tar.commit()
                continue
            ids = tok.encode(item["x"], num_tokens=k, batch_size=batch_size)  # [B, k], [B, n, F] or a list of [n, F_i]
            tar = writers.get(url)
            if tar is None:
                tar = writers[url] = AtomicTarFile(os.path.join(stage, name))
            for key, row in zip(item["keys"], ids, strict=True):
                row = row.numpy().astype(dtype_np)
                info = {"source_shard": name, "num_tokens": k, **({"frames": row.shape[-1]} if row.ndim == 2 else {})}
                tar.write({"__key__": key, "ids.npy": row, "json": info})
            bar.update(len(ids))
    except BaseException:
        for tar in writers.values():
            tar.abort()
        raise
    finally:
        bar.close()
    manifest = write_manifest(stage, tok, meta, urls)
    if not manifest["complete"]:
        return manifest  # other ranks' shards are still missing: the last rank to finish swaps the folder in
    if not sum(manifest["counts"].values()):
        shutil.rmtree(stage, ignore_errors=True)
        raise EmptyOutputError(empty_output_message(f"tokenize of {len(urls)} shard(s)", manifest["input_samples"],
                                                    [tuple(x) for x in manifest["skip_reasons"]]))
    try:
        os.mkdir(os.path.join(stage, COMMIT_LOCK))
    except FileExistsError:
        return manifest  # another rank is swapping the folder in
    except FileNotFoundError:
        return manifest  # another rank has swapped it in already
    folder.commit()
    os.rmdir(os.path.join(out, COMMIT_LOCK))
    return manifest


def write_manifest(out: str, tok: TokenizerPipeline, meta: dict[str, Any], urls: list[str]) -> dict[str, Any]:
    """Write ``out/dataset.json`` from the shards present (every rank may call it; the content converges)."""
    shards: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    skipped = 0
    reasons: list[list[str]] = []
    done = 0
    for u in urls:
        name = output_name(u)
        if not os.path.exists(os.path.join(out, name)):
            continue
        done += 1
        split = name.split("-", 1)[0] if "-" in name else "all"
        shards.setdefault(split, []).append(name)
        try:
            with open(os.path.join(out, PROGRESS_DIR, f"{name}.json")) as f:
                prog = json.load(f)
        except (OSError, ValueError):
            prog = {"samples": count_samples(os.path.join(out, name)), "skipped": 0}
        counts[split] = counts.get(split, 0) + int(prog["samples"])
        skipped += int(prog["skipped"])
        reasons += [list(x) for x in prog.get("reasons", [])][: 3 - len(reasons)]
    manifest = {"format_version": 1, "modality": "tokens", "source_modality": tok.modality,
                "counts": counts, "shards": shards, "skipped_samples": skipped, "skip_reasons": reasons,
                "input_samples": sum(counts.values()) + skipped,
                "complete": done == len(urls), "input_shards": len(urls), "tokens": meta,
                "tokenizer": {"architecture": tok.config["architecture"], "arch": tok.config["arch"],
                              "tokens": tok.config["tokens"]}}
    write_json_atomic(os.path.join(out, "dataset.json"), manifest)
    return manifest


def read_token_ids(urls: list[str]) -> Iterator[tuple[str, np.ndarray]]:
    """``(key, ids [k])`` of every sample in token shards (used by ``tokenizers-mm decode``)."""
    from webdataset.tariterators import tarfile_samples

    from tokenizers_mm.data.samples import decode_ids_npy

    def refuse(exc: BaseException) -> bool:
        from tokenizers_mm.data.stream import shard_of

        raise ValueError(f"{shard_of(exc) or urls[0]}: not a readable tar shard ({exc.args[0] if exc.args else exc})")

    for raw in tarfile_samples([{"url": u} for u in urls], handler=refuse):
        if "ids.npy" not in raw:
            raise ValueError(f"sample {raw.get('__key__')} of {raw.get('__url__')} has no ids.npy: not a token shard "
                             "(write token shards with `tokenizers-mm tokenize`)")
        yield raw["__key__"], decode_ids_npy(raw["ids.npy"])
