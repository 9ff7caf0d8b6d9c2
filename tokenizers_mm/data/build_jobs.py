"""Shard-granular jobs of ``data build``: a fixed plan, worker processes, ranks, resume and merge.

The plan assigns files to shards before anything is decoded (``shard_size`` consecutive files of the shuffled
train list, then of the val list), so a shard's content never depends on which other files were skipped, on
the number of worker processes, or on which machine built it; samples are seeded by their path. Hence
``--workers N`` and ``--rank R --world-size W`` give byte-identical shards to one process.

Each finished shard leaves ``_parts/<split>-<index>.json`` beside it in the staging folder (written after the
tar is renamed into place): its sample count, bytes, skipped files with reasons and per-mesh records. A rerun
of an interrupted build skips the shards whose record exists; the manifest (``dataset.json``) is assembled
from the records. A rank's output keeps its records, from which :func:`merge_builds` assembles the folder one
process would have written; a single-process build drops them when it completes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("tokenizers_mm.data")

PARTS_DIR = "_parts"


@dataclass(frozen=True)
class ShardJob:
    """One shard to write: ``{split}-{index:06d}.tar`` from ``files`` (relative paths, in this order)."""

    split: str
    index: int
    files: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:06d}.tar"

    @property
    def record_name(self) -> str:
        return f"{self.split}-{self.index:06d}.json"


def plan_shards(train: list[str], val: list[str], shard_size: int) -> list[ShardJob]:
    """Every shard of a build, train shards first, each with its fixed files."""
    if shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {shard_size}")
    jobs = []
    for split, names in (("train", train), ("val", val)):
        for i in range(0, len(names), shard_size):
            jobs.append(ShardJob(split, i // shard_size, tuple(names[i:i + shard_size])))
    return jobs


def rank_from_env(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``(rank, world_size)``: the given values, else torchrun's ``RANK`` / ``WORLD_SIZE``, else SLURM's
    ``SLURM_PROCID`` / ``SLURM_NTASKS``, else ``(0, 1)``. Raises ``ValueError`` for an impossible pair."""
    env = os.environ
    if world_size is None:
        if "WORLD_SIZE" in env and "RANK" in env:
            rank = int(env["RANK"]) if rank is None else rank
            world_size = int(env["WORLD_SIZE"])
        elif "SLURM_NTASKS" in env and "SLURM_PROCID" in env:
            rank = int(env["SLURM_PROCID"]) if rank is None else rank
            world_size = int(env["SLURM_NTASKS"])
        else:
            world_size = 1
    rank = 0 if rank is None else rank
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"--rank must be in [0, --world-size) and --world-size >= 1, got rank {rank} of {world_size}")
    return rank, world_size


def for_rank(jobs: list[ShardJob], rank: int, world_size: int) -> list[ShardJob]:
    """The shards rank ``rank`` of ``world_size`` builds: every ``world_size``-th of the plan."""
    return jobs[rank::world_size]


def read_record(stage: str, job: ShardJob) -> dict[str, Any] | None:
    """The record of a finished shard in ``stage`` (None when the shard is not complete)."""
    path = os.path.join(stage, PARTS_DIR, job.record_name)
    try:
        with open(path) as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return None
    if rec.get("files") != list(job.files):
        return None
    if rec.get("shard") and not os.path.exists(os.path.join(stage, rec["shard"])):
        return None
    return rec


def run_jobs(jobs: list[ShardJob], stage: str, build_one: Callable[[ShardJob], dict[str, Any]], workers: int = 1,
             on_done: Callable[[ShardJob], None] | None = None) -> tuple[list[dict[str, Any]], int]:
    """Build the shards of ``jobs`` not yet complete in ``stage``; returns ``(records in plan order, resumed)``.

    ``build_one(job)`` writes one shard and its record and returns the record; with ``workers > 1`` it runs in
    that many processes (it must be picklable: a module-level function or a ``functools.partial`` of one).
    Temporary files of an interrupted run (``*.tmp*``) are removed first.
    """
    os.makedirs(os.path.join(stage, PARTS_DIR), exist_ok=True)
    for d in (stage, os.path.join(stage, PARTS_DIR)):
        for n in os.listdir(d):
            if ".tmp" in n:
                os.remove(os.path.join(d, n))
    records: dict[ShardJob, dict[str, Any]] = {}
    for job in jobs:
        rec = read_record(stage, job)
        if rec is not None:
            records[job] = rec
    resumed = len(records)
    if resumed:
        log.warning("data build: resuming, %d of %d shards are already complete", resumed, len(jobs))
    todo = [j for j in jobs if j not in records]
    if workers > 1 and len(todo) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=mp.get_context("spawn")) as pool:
            for job, rec in zip(todo, pool.map(build_one, todo)):
                records[job] = rec
                if on_done:
                    on_done(job)
    else:
        for job in todo:
            records[job] = build_one(job)
            if on_done:
                on_done(job)
    return [records[j] for j in jobs], resumed


def write_record(stage: str, job: ShardJob, record: dict[str, Any]) -> None:
    """Write a finished shard's record atomically (after its tar is in place)."""
    from ..io import write_json_atomic

    write_json_atomic(os.path.join(stage, PARTS_DIR, job.record_name), {**record, "files": list(job.files)})


def summarize(records: Iterable[dict[str, Any]], modality: str) -> dict[str, Any]:
    """``counts``, ``bytes``, ``shards``, ``skipped``, ``repaired`` (and ``meshes``) of a manifest, from records."""
    out: dict[str, Any] = {"counts": {"train": 0, "val": 0}, "bytes": {"train": 0, "val": 0},
                           "shards": {"train": [], "val": []}, "skipped": [], "repaired": []}
    meshes: list[dict[str, Any]] = []
    for rec in records:
        split = rec["split"]
        out["counts"][split] += rec["count"]
        out["bytes"][split] += rec["bytes"]
        if rec.get("shard"):
            out["shards"][split].append(rec["shard"])
        out["skipped"] += rec.get("skipped", [])
        out["repaired"] += rec.get("repaired", [])
        meshes += rec.get("meshes", [])
    from ..registry import canonical

    if canonical(modality) == "shape":
        out["meshes"] = meshes
        statuses = [m["status"] for m in meshes] + ["skipped"] * len(out["skipped"])
        out["mesh_summary"] = {s: statuses.count(s) for s in ("watertight", "repaired", "winding_number", "skipped")}
        out["mesh_summary"]["decimated"] = sum("decimated" in m["how"] for m in meshes)
    return out


def merge_builds(parts: list[str], out: str, overwrite: bool = False) -> dict[str, Any]:
    """Combine the ``--out`` folders of the ``W`` ranks of one build into ``out``; returns its ``dataset.json``.

    Every rank ``0 .. W-1`` must be present once, with the same modality, settings and inputs. ``out`` then holds
    what one process would have written (shards hard-linked where the file system allows, else copied), and is
    written like any build output (staged beside it, swapped in when complete; see :class:`~tokenizers_mm.io.OutputFolder`).
    """
    import shutil

    from ..io import OutputFolder, read_made_by, write_json_atomic
    from ..registry import canonical

    if not parts:
        raise ValueError("data merge needs the --out folders of the ranks")
    manifests, made = [], []
    for p in parts:
        try:
            with open(os.path.join(p, "dataset.json")) as f:
                m = json.load(f)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{p!r} holds no readable dataset.json of a rank's `data build`: {exc}") from None
        if not isinstance(m, dict) or "partial" not in m:
            raise ValueError(f"{p!r} is not the output of a `data build --rank R --world-size W` (no 'partial' entry)")
        manifests.append(m)
        made.append(read_made_by(p) or {})
    world = manifests[0]["partial"]["world_size"]
    ranks = sorted(m["partial"]["rank"] for m in manifests)
    if ranks != list(range(world)):
        raise ValueError(f"data merge needs ranks 0..{world - 1} once each, got ranks {ranks} from {parts}")

    def common(m: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in m["settings"].items() if k not in ("rank", "world_size")}

    for p, m, mb in zip(parts, manifests, made):
        if canonical(m["modality"]) != canonical(manifests[0]["modality"]) or common(m) != common(manifests[0]):
            raise ValueError(f"{p!r} was built with other settings than {parts[0]!r}; all ranks must share them")
        if mb.get("inputs") != made[0].get("inputs"):
            raise ValueError(f"{p!r} was built from other input files than {parts[0]!r}")
    modality, settings = canonical(manifests[0]["modality"]), common(manifests[0])
    folder = OutputFolder(out, {"command": "data build", "modality": modality, "settings": settings,
                                "inputs": made[0].get("inputs")}, overwrite=overwrite,
                          inputs=parts, identity=("command", "modality", "settings")).check()
    stage = folder.path
    try:
        os.makedirs(os.path.join(stage, PARTS_DIR), exist_ok=True)
        records = []
        for p in parts:
            for name in sorted(os.listdir(os.path.join(p, PARTS_DIR))):
                with open(os.path.join(p, PARTS_DIR, name)) as f:
                    rec = json.load(f)
                records.append(rec)
                files = [os.path.join(PARTS_DIR, name)] + ([rec["shard"]] if rec.get("shard") else [])
                for rel in files:
                    try:
                        os.link(os.path.join(p, rel), os.path.join(stage, rel))
                    except OSError:
                        shutil.copy2(os.path.join(p, rel), os.path.join(stage, rel))
        records.sort(key=lambda r: (r["split"] != "train", r["index"]))
        planned = manifests[0]["partial"]["shards_planned"]
        if len(records) != planned:
            raise ValueError(f"the ranks hold {len(records)} shard records, the build planned {planned}")
        manifest = {"format_version": manifests[0]["format_version"], "modality": modality,
                    **summarize(records, modality), "settings": settings,
                    "build_seconds": max(m["build_seconds"] for m in manifests)}
        write_json_atomic(os.path.join(stage, "dataset.json"), manifest)
        shutil.rmtree(os.path.join(stage, PARTS_DIR))  # as one process leaves it
        folder.commit()
    except BaseException:
        folder.discard()
        raise
    return manifest
