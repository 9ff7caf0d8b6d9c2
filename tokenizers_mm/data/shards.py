"""Build and inspect webdataset shards.

``build_shards`` packs a folder of files into ``train-000000.tar ...`` and ``val-000000.tar ...``
keyed by relative path, with a deterministic split, and writes ``dataset.json`` beside them.
A build writes into a staging folder beside ``--out`` (:class:`tokenizers_mm.io.OutputFolder`) and swaps it in
whole when complete, with ``made_by.json``: an interrupted build leaves ``--out`` as it was, a build that decodes
no file is an error, and an ``--out`` holding anything but an earlier build with the same settings is refused
unless ``overwrite``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import random
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from ..io import (
    AtomicTarFile,
    EmptyOutputError,
    OutputFolder,
    empty_output_message,
    file_fingerprint,
    list_files,
    write_json_atomic,
)
from .audio import AUDIO_EXTENSIONS, decode_audio
from .build_jobs import (
    PARTS_DIR,
    ShardJob,
    for_rank,
    plan_shards,
    rank_from_env,
    run_jobs,
    summarize,
    write_record,
)
from .image import IMAGE_EXTENSIONS
from .mesh import MESH_EXTENSIONS, MeshError, encode_npz
from .mesh_prep import MeshBuildOptions, build_mesh_sample
from .samples import SOURCE_MODALITIES

log = logging.getLogger("tokenizers_mm.data")

EXTENSIONS = {"image": IMAGE_EXTENSIONS, "speech": AUDIO_EXTENSIONS, "shape": MESH_EXTENSIONS}
FORMAT_VERSION = 1


def sample_key(relpath: str) -> str:
    """Webdataset key of a file: its relative path without extension, dots replaced (keys hold no dots)."""
    stem = os.path.splitext(relpath.replace(os.sep, "/"))[0]
    return re.sub(r"[.\s]", "_", stem)


def list_source_files(src: str, modality: str) -> list[str]:
    """Relative paths of the files of ``modality`` under ``src``, sorted."""
    if not os.path.exists(src):
        raise FileNotFoundError(f"source folder {src!r} does not exist")
    if not os.path.isdir(src):
        raise NotADirectoryError(f"--src {src!r} is a file; expected a folder of {modality} files")
    exts = {"." + e for e in EXTENSIONS[modality]} | ({".jpeg"} if modality == "image" else set())
    out = []
    ignored: Counter[str] = Counter()
    for root, _dirs, files in os.walk(src):
        for name in files:
            ext = os.path.splitext(name)[1].lower()
            if ext in exts:
                out.append(os.path.relpath(os.path.join(root, name), src))
            elif not name.startswith("."):
                ignored[ext or "(no extension)"] += 1
    if not out:
        raise FileNotFoundError(f"no {modality} files ({', '.join(sorted(exts))}) under {src!r}")
    if ignored:  # said, not silently dropped
        log.warning("data build: ignoring %d file(s) under %s that are not %s files: %s", sum(ignored.values()), src,
                    modality, ", ".join(f"{e} x{n}" for e, n in ignored.most_common(5)))
    return sorted(out)


def split_files(relpaths: list[str], val_fraction: float, seed: int, split_by: str = "file"
                ) -> tuple[list[str], list[str]]:
    """Deterministic train / val split.

    ``split_by='file'`` ranks files by a seeded hash of their path; ``'dir'`` ranks their parent
    folders instead, so all files of one folder (one photo's tiles, one speaker) land in the same split.
    Exactly ``round(n_groups * val_fraction)`` groups go to val (at least one when the fraction is
    positive and there are two or more groups).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if split_by not in ("file", "dir"):
        raise ValueError(f"split_by must be 'file' or 'dir', got {split_by!r}")

    def group(p: str) -> str:
        return p if split_by == "file" else os.path.dirname(p)

    groups = sorted({group(p) for p in relpaths})
    n_val = round(len(groups) * val_fraction)
    if val_fraction > 0 and n_val == 0 and len(groups) >= 2:
        n_val = 1
    ranked = sorted(groups, key=lambda g: hashlib.sha1(f"{seed}:{g}".encode()).hexdigest())
    val_groups = set(ranked[:n_val])
    train = [p for p in relpaths if group(p) not in val_groups]
    val = [p for p in relpaths if group(p) in val_groups]
    return train, val


@dataclass
class BuildReport:
    """What happened to the files of one shard: skipped ones with reasons, repaired meshes, per-mesh records."""

    skipped: list[dict[str, str]] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    meshes: list[dict[str, str]] = field(default_factory=list)  # per mesh: file, status, how (mesh_prep)


def _make_sample(src: str, relpath: str, modality: str, mesh_opts: MeshBuildOptions, seed: int,
                 report: BuildReport) -> dict[str, Any] | None:
    path = os.path.join(src, relpath)
    ext = os.path.splitext(relpath)[1].lower().lstrip(".")
    ext = "jpg" if ext == "jpeg" else ext
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        report.skipped.append({"file": relpath, "reason": f"cannot read: {exc.strerror or exc}"})
        log.warning("data build: skipped %s: %s", relpath, exc)
        return None
    meta: dict[str, Any] = {"source": relpath.replace(os.sep, "/"), "bytes": len(data)}
    sample: dict[str, Any] = {"__key__": sample_key(relpath), ext: data}
    try:
        if modality == "image":
            from .image import decode_image
            img = decode_image(data)
            meta.update(width=img.size[0], height=img.size[1])
        elif modality == "speech":
            wave, sr = decode_audio(data)
            meta.update(sample_rate=sr, channels=int(wave.shape[0]), seconds=wave.shape[1] / sr)
        else:
            key_seed = int(hashlib.sha1(f"{seed}:{relpath}".encode()).hexdigest()[:8], 16)
            arrays, record = build_mesh_sample(data, ext, mesh_opts, key_seed)
            if record["status"] == "repaired":
                report.repaired.append(relpath)
            report.meshes.append({"file": relpath, "status": record["status"], "how": record["how"]})
            sample["npz"] = encode_npz(arrays)
            meta.update(repaired=record["status"] == "repaired", **record)
    except Exception as exc:  # any file that does not decode is skipped with its reason, never fatal
        reason = str(exc) if isinstance(exc, (ValueError, MeshError)) else f"{type(exc).__name__}: {exc}"
        report.skipped.append({"file": relpath, "reason": reason})
        log.warning("data build: skipped %s: %s", relpath, exc)
        return None
    sample["json"] = json.dumps(meta).encode()
    return sample


def _legacy_build(modality: str, settings: dict[str, Any]):
    """Recognise a build of this modality and settings written before ``made_by.json`` existed."""
    def check(folder: str) -> bool:
        try:
            with open(os.path.join(folder, "dataset.json")) as f:
                old = json.load(f)
        except (OSError, ValueError):
            return False
        from ..registry import canonical

        if not isinstance(old, dict) or canonical(str(old.get("modality"))) != modality or old.get("settings") != settings:
            return False
        listed = {"dataset.json", *(n for names in (old.get("shards") or {}).values() for n in names)}
        return set(list_files(folder)) <= listed
    return check


def build_one_shard(job: ShardJob, stage: str, src: str, modality: str, mesh_opts: MeshBuildOptions,
                    seed: int) -> dict[str, Any]:
    """Write the planned shard ``job`` into ``stage`` (atomically; no tar when every file is skipped), then its
    record (:mod:`.build_jobs`); returns the record. Module-level so that worker processes can run it."""
    report = BuildReport()
    tar, count, nbytes = None, 0, 0
    try:
        for rel in job.files:
            sample = _make_sample(src, rel, modality, mesh_opts, seed, report)
            if sample is None:
                continue
            if tar is None:
                tar = AtomicTarFile(os.path.join(stage, job.name))
            tar.write(sample)
            count += 1
            nbytes += sum(len(v) for k, v in sample.items() if not k.startswith("__"))
    except BaseException:
        if tar is not None:
            tar.abort()
        raise
    if tar is not None:
        tar.commit()
    record = {"split": job.split, "index": job.index, "shard": job.name if count else None, "count": count,
              "bytes": nbytes, "skipped": report.skipped, "repaired": report.repaired, "meshes": report.meshes}
    write_record(stage, job, record)
    return {**record, "files": list(job.files)}


def build_shards(modality: str, src: str, out: str, shard_size: int = 64, val_fraction: float = 0.1,
                 seed: int = 0, split_by: str = "file", mesh: MeshBuildOptions | None = None,
                 progress: bool = True, overwrite: bool = False, workers: int = 1, rank: int | None = None,
                 world_size: int | None = None) -> dict[str, Any]:
    """Pack the ``modality`` files under ``src`` into train / val shards in ``out``.

    Shards are planned before anything is decoded and built independently (:mod:`.build_jobs`): ``workers``
    processes build them in parallel; ``rank`` of ``world_size`` (default: torchrun's or SLURM's environment)
    builds every ``world_size``-th shard into its own ``out``, and :func:`~.build_jobs.merge_builds` combines the
    ranks' folders; an interrupted build resumes from its complete shards when rerun with the same settings.
    The shards do not depend on ``workers`` or ``world_size``.

    Files that cannot be decoded (and meshes without a meaningful inside, or over the memory bounds of
    :class:`~.mesh_prep.MeshBuildOptions`) are skipped and listed in ``dataset.json`` with their reason; a build
    where every file is skipped raises ``EmptyOutputError``.
    The shards are written into a staging folder beside ``out`` and swapped in whole when complete
    (:class:`~tokenizers_mm.io.OutputFolder`): an existing ``out`` is replaced only when it holds an earlier
    build with the same modality and settings and nothing else, or when ``overwrite`` is set; otherwise
    ``OutputError`` names what is there. Returns the ``dataset.json`` content.
    """
    from ..registry import canonical

    if canonical(modality) not in SOURCE_MODALITIES:
        raise ValueError(f"--modality must be one of {SOURCE_MODALITIES} (or audio / mesh, their older names), got "
                         f"{modality!r}")
    modality = canonical(modality)
    if shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {shard_size}")
    mesh_opts = mesh or MeshBuildOptions()
    files = list_source_files(src, modality)
    keys = Counter(sample_key(p) for p in files)
    clashes = [k for k, n in keys.items() if n > 1]
    if clashes:
        names = [p for p in files if sample_key(p) in clashes[:1]]
        raise ValueError(f"files under {src!r} map to the same sample key {clashes[0]!r} (same path, different "
                         f"extension): {names}")
    train, val = split_files(files, val_fraction, seed, split_by)
    settings = {"src": os.path.abspath(src), "shard_size": shard_size, "val_fraction": val_fraction,
                "seed": seed, "split_by": split_by, **({"mesh": vars(mesh_opts)} if modality == "shape" else {})}
    rank, world_size = rank_from_env(rank, world_size)
    if world_size > 1:
        settings.update(rank=rank, world_size=world_size)
    folder = OutputFolder(out, {"command": "data build", "modality": modality, "settings": settings,
                                "inputs": {"files": len(files),
                                           "fingerprint": file_fingerprint([os.path.join(src, p) for p in files], src)}},
                          overwrite=overwrite, legacy=_legacy_build(modality, settings), inputs=[src],
                          identity=("command", "modality", "settings"), resumable=True).check()
    stage = folder.path
    rng = random.Random(seed)
    rng.shuffle(train)  # mix sources inside training shards; val keeps path order
    jobs = plan_shards(train, val, shard_size)
    mine = for_rank(jobs, rank, world_size)
    t0 = time.time()
    try:
        bar = tqdm(total=sum(len(j.files) for j in mine), desc=f"{modality} build", unit="file", disable=not progress)
        build_one = functools.partial(build_one_shard, stage=stage, src=src, modality=modality, mesh_opts=mesh_opts,
                                      seed=seed)
        records, resumed = run_jobs(mine, stage, build_one, workers, on_done=lambda j: bar.update(len(j.files)))
        bar.close()
        summary = summarize(records, modality)
        if not sum(summary["counts"].values()) and world_size == 1:
            raise EmptyOutputError(empty_output_message(
                f"data build of {src!r}", len(files), [(s["file"], s["reason"]) for s in summary["skipped"]]))
        manifest = {
            "format_version": FORMAT_VERSION,
            "modality": modality,
            **summary,
            "settings": settings,
            "build_seconds": round(time.time() - t0, 2),
            **({"partial": {"rank": rank, "world_size": world_size, "shards_planned": len(jobs)}}
               if world_size > 1 else {}),
        }
        write_json_atomic(os.path.join(stage, "dataset.json"), manifest)
        if world_size == 1:  # the shard records serve resume (and a rank's merge) only
            shutil.rmtree(os.path.join(stage, PARTS_DIR))
        folder.commit()
    except EmptyOutputError:
        shutil.rmtree(stage, ignore_errors=True)  # nothing to resume
        raise
    except BaseException:
        folder.discard()  # the staging folder stays: a rerun with the same settings resumes from its shards
        raise
    return manifest


def iter_raw_samples(urls: list[str], errors: list[dict[str, str]]) -> Iterator[dict[str, Any]]:
    """Raw samples of ``urls`` in order; tar-level errors are appended to ``errors`` and skipped."""
    from webdataset.tariterators import tarfile_samples

    from .stream import shard_of

    def handler(exc: BaseException) -> bool:
        errors.append({"key": "", "shard": str(shard_of(exc)), "error": f"{type(exc).__name__}: {exc.args[0]}"})
        return True

    yield from tarfile_samples(({"url": u} for u in urls), handler=handler)


def guess_modality(sample: dict[str, Any]) -> str:
    exts = set(sample)
    if "ids.npy" in exts:
        return "tokens"
    for modality in ("shape", "speech", "image"):
        if exts & set(EXTENSIONS[modality]) or (modality == "shape" and "npz" in exts):
            return modality
    raise ValueError(f"cannot tell the modality of a sample with files {sorted(exts)}")


def inspect_shards(urls: list[str], modality: str | None = None, limit: int | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Count samples, list extensions, decode every sample (up to ``limit``) and report the corrupt ones.

    Returns ``{"samples", "shards", "extensions", "modality", "example", "corrupt"}`` where ``example``
    gives the shapes of the first decoded sample (evaluation transforms of the modality).
    """
    from ..registry import canonical
    from .samples import make_decoder

    modality = canonical(modality) if modality else None
    errors: list[dict[str, str]] = []
    ext_counts: Counter[str] = Counter()
    n = 0
    example: dict[str, Any] | None = None
    decoder = None
    rng = random.Random(0)
    bar = tqdm(desc="inspect", unit="sample", disable=not progress)
    for sample in iter_raw_samples(urls, errors):
        if limit is not None and n >= limit:
            break
        n += 1
        bar.update(1)
        ext_counts.update(k for k in sample if not k.startswith("__"))
        try:
            if decoder is None:
                modality = modality or guess_modality(sample)
                decoder = make_decoder(modality, train=False)
            out = decoder(sample, rng)
        except Exception as exc:
            errors.append({"key": sample.get("__key__", ""), "shard": sample.get("__url__", ""),
                           "error": f"{type(exc).__name__}: {exc}"})
            continue
        if example is None:
            example = {"key": sample["__key__"],
                       **{k: {"shape": list(v.shape), "dtype": str(v.dtype),
                              "min": float(v.float().min()), "max": float(v.float().max())}
                          for k, v in out.items()}}
    bar.close()
    return {"samples": n, "shards": len(urls), "modality": modality, "extensions": dict(ext_counts),
            "example": example, "corrupt": errors}
