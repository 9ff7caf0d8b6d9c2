"""Build and inspect webdataset shards.

``build_shards`` packs a folder of files into ``train-000000.tar ...`` and ``val-000000.tar ...``
keyed by relative path, with a deterministic split, and writes ``dataset.json`` beside them.
Every shard is written under a temporary name and renamed when complete, so a crash never leaves a
half-written shard under its final name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import webdataset as wds
from tqdm.auto import tqdm

from .audio import AUDIO_EXTENSIONS, decode_audio
from .image import IMAGE_EXTENSIONS
from .mesh import (
    MESH_EXTENSIONS,
    MeshError,
    encode_npz,
    load_mesh,
    make_watertight,
    normalize_mesh,
    precompute_mesh_sample,
)
from .samples import SOURCE_MODALITIES

log = logging.getLogger("tokenizers_mm.data")

EXTENSIONS = {"image": IMAGE_EXTENSIONS, "audio": AUDIO_EXTENSIONS, "mesh": MESH_EXTENSIONS}
FORMAT_VERSION = 1


def sample_key(relpath: str) -> str:
    """Webdataset key of a file: its relative path without extension, dots replaced (keys hold no dots)."""
    stem = os.path.splitext(relpath.replace(os.sep, "/"))[0]
    return re.sub(r"[.\s]", "_", stem)


def list_source_files(src: str, modality: str) -> list[str]:
    """Relative paths of the files of ``modality`` under ``src``, sorted."""
    if not os.path.isdir(src):
        raise FileNotFoundError(f"source folder {src!r} does not exist")
    exts = {"." + e for e in EXTENSIONS[modality]} | ({".jpeg"} if modality == "image" else set())
    out = []
    for root, _dirs, files in os.walk(src):
        for name in files:
            if os.path.splitext(name)[1].lower() in exts:
                out.append(os.path.relpath(os.path.join(root, name), src))
    if not out:
        raise FileNotFoundError(f"no {modality} files ({', '.join(sorted(exts))}) under {src!r}")
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
class MeshBuildOptions:
    """Precomputation settings of mesh shards (points per sample stored in the ``npz``)."""

    num_surface: int = 16384
    num_volume: int = 16384
    num_near: int = 16384
    near_sigma: float = 0.02
    padding: float = 0.05


@dataclass
class BuildReport:
    counts: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    shards: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)


def _make_sample(src: str, relpath: str, modality: str, mesh_opts: MeshBuildOptions, seed: int,
                 report: BuildReport) -> dict[str, Any] | None:
    path = os.path.join(src, relpath)
    ext = os.path.splitext(relpath)[1].lower().lstrip(".")
    ext = "jpg" if ext == "jpeg" else ext
    with open(path, "rb") as f:
        data = f.read()
    meta: dict[str, Any] = {"source": relpath.replace(os.sep, "/"), "bytes": len(data)}
    sample: dict[str, Any] = {"__key__": sample_key(relpath), ext: data}
    try:
        if modality == "image":
            from .image import decode_image
            img = decode_image(data)
            meta.update(width=img.size[0], height=img.size[1])
        elif modality == "audio":
            wave, sr = decode_audio(data)
            meta.update(sample_rate=sr, channels=int(wave.shape[0]), seconds=wave.shape[1] / sr)
        else:
            mesh = load_mesh(data, ext)
            mesh, repaired = make_watertight(mesh)
            if repaired:
                report.repaired.append(relpath)
            mesh, center, scale = normalize_mesh(mesh, mesh_opts.padding)
            key_seed = int(hashlib.sha1(f"{seed}:{relpath}".encode()).hexdigest()[:8], 16)
            arrays = precompute_mesh_sample(mesh, mesh_opts.num_surface, mesh_opts.num_volume,
                                            mesh_opts.num_near, mesh_opts.near_sigma, seed=key_seed)
            sample["npz"] = encode_npz(arrays)
            meta.update(repaired=repaired, center=[float(c) for c in center], scale=float(scale),
                        faces=int(len(mesh.faces)), inside_fraction=float(arrays["volume_labels"].mean()))
    except (ValueError, MeshError) as exc:
        report.skipped.append({"file": relpath, "reason": str(exc)})
        log.warning("data build: skipped %s: %s", relpath, exc)
        return None
    sample["json"] = json.dumps(meta).encode()
    return sample


class AtomicTarFile:
    """One webdataset tar written to ``path.tmp<pid>``, fsynced and renamed to ``path`` by :meth:`commit`.

    Until ``commit`` the final name does not exist (or keeps its previous content), so a crash never
    leaves a truncated shard under a final name; :meth:`abort` removes the temporary file.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.tmp = f"{path}.tmp{os.getpid()}"
        self.count = 0
        self._stream = open(self.tmp, "wb")
        # fixed mtime: identical inputs give byte-identical shards
        self._writer = wds.TarWriter(self._stream, mtime=0.0)

    def write(self, sample: dict[str, Any]) -> None:
        self._writer.write(sample)
        self.count += 1

    def commit(self) -> str:
        self._writer.close()
        self._stream.flush()
        os.fsync(self._stream.fileno())
        self._stream.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._writer.close()
        except Exception:  # the tar may be half-written; the temporary file is removed anyway
            pass
        finally:
            self._stream.close()
            if os.path.exists(self.tmp):
                os.remove(self.tmp)


class AtomicShardWriter:
    """Write numbered shards ``{prefix}-{i:06d}.tar`` of at most ``shard_size`` samples, atomically."""

    def __init__(self, out_dir: str, prefix: str, shard_size: int) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.out_dir, self.prefix, self.shard_size = out_dir, prefix, shard_size
        self.index, self.finished = 0, []
        self._tar: AtomicTarFile | None = None

    def write(self, sample: dict[str, Any]) -> None:
        if self._tar is None:
            self._tar = AtomicTarFile(os.path.join(self.out_dir, f"{self.prefix}-{self.index:06d}.tar"))
        self._tar.write(sample)
        if self._tar.count == self.shard_size:
            self._finish()

    def _finish(self) -> None:
        assert self._tar is not None
        self.finished.append(os.path.basename(self._tar.commit()))
        self._tar = None
        self.index += 1

    def close(self) -> list[str]:
        if self._tar is not None:
            self._finish()
        return self.finished

    def abort(self) -> None:
        if self._tar is not None:
            self._tar.abort()
            self._tar = None


def write_json_atomic(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def build_shards(modality: str, src: str, out: str, shard_size: int = 64, val_fraction: float = 0.1,
                 seed: int = 0, split_by: str = "file", mesh: MeshBuildOptions | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Pack the ``modality`` files under ``src`` into train / val shards in ``out``.

    Files that cannot be decoded (and meshes that stay open after repair) are skipped and listed in
    ``dataset.json`` with their reason. Shards of an earlier build in ``out`` that this build does not
    overwrite are removed, after the new ones are complete. Returns the ``dataset.json`` content.
    """
    if modality not in SOURCE_MODALITIES:
        raise ValueError(f"modality must be one of {SOURCE_MODALITIES}, got {modality!r}")
    mesh_opts = mesh or MeshBuildOptions()
    files = list_source_files(src, modality)
    keys = Counter(sample_key(p) for p in files)
    clashes = [k for k, n in keys.items() if n > 1]
    if clashes:
        raise ValueError(f"files map to the same sample key (same path, different extension): {clashes[:5]}")
    train, val = split_files(files, val_fraction, seed, split_by)
    rng = random.Random(seed)
    rng.shuffle(train)  # mix sources inside training shards; val keeps path order
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(out):
        if ".tar.tmp" in name:
            os.remove(os.path.join(out, name))  # leftovers of a crashed build
    report = BuildReport()
    t0 = time.time()
    for split, names in (("train", train), ("val", val)):
        writer = AtomicShardWriter(out, split, shard_size)
        nbytes = 0
        try:
            for rel in tqdm(names, desc=f"{modality} {split}", unit="file", disable=not progress):
                sample = _make_sample(src, rel, modality, mesh_opts, seed, report)
                if sample is None:
                    continue
                nbytes += sum(len(v) for k, v in sample.items() if not k.startswith("__"))
                writer.write(sample)
                report.counts[split] = report.counts.get(split, 0) + 1
        except BaseException:
            writer.abort()
            raise
        report.shards[split] = writer.close()
        report.counts.setdefault(split, 0)
        report.bytes[split] = nbytes
    for name in os.listdir(out):  # stale shards of an earlier, larger build
        m = re.fullmatch(r"(train|val)-(\d{6})\.tar", name)
        if m and name not in report.shards[m.group(1)]:
            os.remove(os.path.join(out, name))
    manifest = {
        "format_version": FORMAT_VERSION,
        "modality": modality,
        "counts": report.counts,
        "bytes": report.bytes,
        "shards": report.shards,
        "skipped": report.skipped,
        "repaired": report.repaired,
        "settings": {"src": os.path.abspath(src), "shard_size": shard_size, "val_fraction": val_fraction,
                     "seed": seed, "split_by": split_by,
                     **({"mesh": vars(mesh_opts)} if modality == "mesh" else {})},
        "build_seconds": round(time.time() - t0, 2),
    }
    write_json_atomic(os.path.join(out, "dataset.json"), manifest)
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
    for modality in ("mesh", "audio", "image"):
        if exts & set(EXTENSIONS[modality]) or (modality == "mesh" and "npz" in exts):
            return modality
    raise ValueError(f"cannot tell the modality of a sample with files {sorted(exts)}")


def inspect_shards(urls: list[str], modality: str | None = None, limit: int | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Count samples, list extensions, decode every sample (up to ``limit``) and report the corrupt ones.

    Returns ``{"samples", "shards", "extensions", "modality", "example", "corrupt"}`` where ``example``
    gives the shapes of the first decoded sample (evaluation transforms of the modality).
    """
    from .samples import make_decoder

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
