"""DDP-correct streaming of webdataset shards into batches.

Two datasets share the reading and decoding code:

- :class:`TrainStream` splits the shard list by rank and then by dataloader worker, resamples shards
  of its own part forever (with a seeded RNG) and stops after a fixed number of batches, so every rank
  runs the same number of optimizer steps whatever the shard sizes are.
- :class:`EvalStream` reads every evaluation sample exactly once across all ranks and workers, in
  order, and pads each rank with repeats (flagged ``pad=True``) up to ``ceil(N / world_size)``
  samples, so every rank sees the same number of batches and no collective call can hang.

Corrupt input (unreadable tar, undecodable member, missing file) is skipped, counted and logged with
its key and shard; in evaluation it is replaced by a padded repeat so batch counts stay equal. Each
batch reports how many samples its worker skipped since its previous batch in ``batch["skipped"]``.
"""

from __future__ import annotations

import logging
import math
import os
import random
import tarfile
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.filters import _shuffle
from webdataset.tariterators import tarfile_samples

from .samples import SampleDecoder
from .urls import is_remote

log = logging.getLogger("tokenizers_mm.data")


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` from torch.distributed when initialized, else from the launcher's env."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def worker_info() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def shard_of(exc: BaseException) -> str | None:
    """The shard URL that webdataset appends to an exception's args (None when there is none)."""
    return next((a for a in exc.args[1:] if isinstance(a, str)), None)


class SkipCounter:
    """Counts and logs corrupt samples without sleeping (webdataset's ``warn_and_continue`` sleeps 0.5 s)."""

    def __init__(self) -> None:
        self.pending = 0
        self.total = 0
        self.reasons: list[tuple[str, str]] = []  # the first three ("key in shard", error)

    def skip(self, what: str, key: str | None, url: str | None, exc: BaseException) -> None:
        self.pending += 1
        self.total += 1
        if len(self.reasons) < 3:
            self.reasons.append((f"{key or what} in {url}", f"{type(exc).__name__}: {exc}"))
        log.warning("skipped corrupt %s key=%s shard=%s: %s", what, key, url, exc)

    def tar_handler(self, exc: BaseException) -> bool:
        """webdataset exception handler: count, log, keep going."""
        self.skip("shard data", None, shard_of(exc), exc)
        return True

    def take(self) -> int:
        n, self.pending = self.pending, 0
        return n


def collate(samples: list[dict[str, Any]], skipped: int) -> dict[str, Any]:
    """Stack tensors of a list of decoded samples; keys and shard URLs stay lists."""
    batch: dict[str, Any] = {}
    for name in samples[0]:
        values = [s[name] for s in samples]
        batch[name] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    batch["skipped"] = skipped
    return batch


def _decode(raw: dict[str, Any], decoder: SampleDecoder, rng: random.Random,
            counter: SkipCounter) -> dict[str, Any] | None:
    try:
        out = decoder(raw, rng)
    except Exception as exc:  # any decode failure of one sample must not stop training
        counter.skip("sample", raw.get("__key__"), raw.get("__url__"), exc)
        return None
    out["__key__"] = raw.get("__key__")
    out["__url__"] = raw.get("__url__")
    return out


class TrainStream(IterableDataset):
    """Infinite, resampled, rank- and worker-split training stream cut to a fixed number of batches.

    Args:
        urls: shard URLs (already expanded).
        decoder: the modality's training decoder.
        batch_size: samples per batch (per rank).
        batches_per_epoch: batches each rank yields per epoch, split exactly across its workers.
        seed: base seed; the sample order is a function of (seed, epoch, rank, worker).
        shuffle_buffer: sample-level shuffle buffer (0 disables it).
    """

    def __init__(self, urls: list[str], decoder: SampleDecoder, batch_size: int, batches_per_epoch: int,
                 seed: int = 0, shuffle_buffer: int = 256) -> None:
        super().__init__()
        if batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be >= 1, got {batches_per_epoch}")
        self.urls = list(urls)
        self.decoder = decoder
        self.batch_size = batch_size
        self.batches_per_epoch = batches_per_epoch
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.epoch = 0
        self._iters = 0

    def __len__(self) -> int:
        return self.batches_per_epoch

    def shards_for(self, rank: int, world: int, worker: int, num_workers: int) -> list[str]:
        """The shards one worker of one rank reads; overlapping only when there are too few shards."""
        mine = self.urls[rank::world]
        if not mine:
            mine = self.urls  # fewer shards than ranks: warned about in the datamodule
        part = mine[worker::num_workers]
        return part or mine

    def batches_for(self, worker: int, num_workers: int) -> int:
        base, extra = divmod(self.batches_per_epoch, num_workers)
        return base + (1 if worker < extra else 0)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world = dist_info()
        worker, num_workers = worker_info()
        self._iters += 1
        n_batches = self.batches_for(worker, num_workers)
        if n_batches == 0:
            return
        shards = self.shards_for(rank, world, worker, num_workers)
        rng = random.Random(f"{self.seed}/{self.epoch}/{self._iters}/{rank}/{worker}")
        counter = SkipCounter()

        def shard_source() -> Iterator[dict[str, str]]:
            while True:
                yield {"url": rng.choice(shards)}

        raw = tarfile_samples(shard_source(), handler=counter.tar_handler)
        if self.shuffle_buffer > 1:
            raw = _shuffle(raw, bufsize=self.shuffle_buffer, initial=min(64, self.shuffle_buffer), rng=rng)
        produced, buf, consecutive_failures = 0, [], 0
        for sample in raw:
            dec = _decode(sample, self.decoder, rng, counter)
            if dec is None:
                consecutive_failures += 1
                if consecutive_failures >= 1000:
                    reasons = "; ".join(f"{w}: {r}" for w, r in counter.reasons)
                    raise ValueError(f"1000 consecutive corrupt samples in shards {shards[:4]}: the data is unusable "
                                     f"(first reasons: {reasons})")
                continue
            consecutive_failures = 0
            buf.append(dec)
            if len(buf) == self.batch_size:
                yield collate(buf, counter.take())
                buf = []
                produced += 1
                if produced == n_batches:
                    return


SAMPLE_EXTENSIONS = {"image": ("jpg", "jpeg", "png", "webp"), "speech": ("flac", "wav", "ogg", "mp3"),
                     "shape": ("npz",), "tokens": ("ids.npy",)}


def first_sample_extensions(url: str) -> list[str] | None:
    """The member extensions of the first sample of a local tar shard (``None`` for remote or unreadable ones)."""
    if is_remote(url) or not os.path.isfile(url):
        return None
    try:
        with tarfile.open(url, mode="r") as tf:
            key, exts = None, []
            for member in tf:
                if not member.isreg():
                    continue
                base = os.path.basename(member.name)
                k, _, ext = base.partition(".")
                if key is None:
                    key = os.path.join(os.path.dirname(member.name), k)
                elif os.path.join(os.path.dirname(member.name), k) != key:
                    break
                exts.append(ext)
            return exts if key is not None else []
    except (tarfile.TarError, OSError, EOFError):
        return None


def first_samples(url: str, n: int) -> list[dict[str, Any]]:
    """Up to ``n`` raw samples from the start of a local shard (none for remote or unreadable shards)."""
    out: list[dict[str, Any]] = []
    if is_remote(url) or not os.path.isfile(url):
        return out
    try:
        for sample in tarfile_samples([{"url": url}]):
            out.append(sample)
            if len(out) == n:
                break
    except Exception:  # unreadable shards are reported, with their key, by the loader
        pass
    return out


def check_first_sample(urls: list[str], decoder: SampleDecoder, what: str, n: int = 8) -> None:
    """Decode the first ``n`` samples of the first local shard with ``decoder``; when none of them decodes, a
    ``ValueError`` names ``what`` (the config key), the shard, the first key and its error. Settings that fit no
    sample (a crop larger than the images, more tokens than the shards hold) then fail before training instead of
    after 1,000 skipped samples; a single corrupt sample is still skipped by the stream."""
    url = next((u for u in urls if not is_remote(u)), None)
    samples = first_samples(url, n) if url else []
    first: tuple[Any, Exception] | None = None
    for sample in samples:
        try:
            decoder(sample, random.Random(0))
            return
        except Exception as exc:
            first = first or (sample.get("__key__"), exc)
    if first is not None:
        raise ValueError(f"{what}: none of the first {len(samples)} samples of {url} decodes with these data "
                         f"settings (the first, {first[0]!r}: {first[1]})") from first[1]


def check_shard_modality(urls: list[str], modality: str, what: str) -> None:
    """Refuse local shards whose first sample is not of ``modality``, naming ``what`` (the config key or flag).

    Reads one tar header block per check (the first local shard), so a folder of audio shards given to an image
    model is one clear ``ValueError`` instead of a thousand skipped samples.
    """
    from ..registry import canonical

    modality = canonical(modality)
    wanted = SAMPLE_EXTENSIONS.get(modality)
    url = next((u for u in urls if not is_remote(u)), None)
    if wanted is None or url is None:
        return
    exts = first_sample_extensions(url)
    if exts is None:
        return  # unreadable shards are reported, with their key, by the loader
    if not exts:
        raise ValueError(f"{what}: shard {url!r} holds no sample (an empty tar)")
    if any(e in wanted for e in exts):
        return
    held = next((m for m, e in SAMPLE_EXTENSIONS.items() if any(x in e for x in exts)), None)
    raise ValueError(f"{what}: shard {url!r} holds {held + ' ' if held else ''}samples ({', '.join(exts)}); "
                     f"{'an' if modality[0] in 'aeiou' else 'a'} {modality} model reads samples with {' / '.join(wanted)}")


def count_samples(url: str) -> int:
    """Count the samples (distinct keys) of a local tar shard, reading headers only.

    A truncated shard counts the samples it can read, matching what the stream will yield.
    """
    keys: set[str] = set()
    try:
        with tarfile.open(url, mode="r") as tf:
            for member in tf:
                if member.isreg() and not os.path.basename(member.name).startswith("__"):
                    base = member.name
                    d, b = os.path.split(base)
                    keys.add(os.path.join(d, b.split(".", 1)[0]))
    except (tarfile.TarError, OSError, EOFError) as exc:
        log.warning("shard %s is damaged after %d samples: %s", url, len(keys), exc)
    return len(keys)


class EvalStream(IterableDataset):
    """Every evaluation sample once, split by global index across ranks and workers, padded to equal counts.

    Args:
        urls: shard URLs in a fixed order.
        decoder: the modality's evaluation decoder.
        batch_size: samples per batch.
        num_samples: total samples in ``urls``; counted from local shards when ``None``.
        max_samples: evaluate only the first ``max_samples`` (``None`` = all).

    Each sample carries ``pad`` (bool): True for the repeats that fill a rank up.
    Every rank reads all shards (evaluation sets are small) and keeps its own indices before decoding.
    """

    def __init__(self, urls: list[str], decoder: SampleDecoder, batch_size: int,
                 num_samples: int | None = None, max_samples: int | None = None, num_workers: int = 0) -> None:
        super().__init__()
        self.num_workers = num_workers
        self.urls = list(urls)
        self.decoder = decoder
        self.batch_size = batch_size
        if num_samples is None:
            remote = [u for u in self.urls if is_remote(u)]
            if remote:
                raise ValueError(f"cannot count evaluation samples of remote shards ({remote[0]}, ...): "
                                 "set data.val_samples to their total number")
            num_samples = sum(count_samples(u) for u in self.urls)
        if max_samples is not None:
            num_samples = min(num_samples, max_samples)
        if num_samples < 1:
            raise ValueError(f"no evaluation samples in {self.urls[:4]}")
        self.num_samples = num_samples

    def __len__(self) -> int:
        """Batches per rank for the configured ``num_workers`` (progress bars)."""
        return self.num_batches(dist_info()[1], self.num_workers)

    def per_rank(self, world: int) -> int:
        return math.ceil(self.num_samples / world)

    def num_batches(self, world: int, num_workers: int) -> int:
        """Batches one rank yields with ``num_workers`` loader workers (the same on every rank)."""
        target = self.per_rank(world)
        w = max(1, num_workers)
        return sum(math.ceil(len(range(i, target, w)) / self.batch_size) for i in range(w))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world = dist_info()
        worker, num_workers = worker_info()
        target = self.per_rank(world)
        mine = range(worker, target, num_workers)  # local indices of this worker
        wanted = len(mine)
        if wanted == 0:
            return
        rng = random.Random(0)
        counter = SkipCounter()
        buf: list[dict[str, Any]] = []
        first_good: dict[str, Any] | None = None
        missing = 0  # samples of ours that were corrupt: replaced by pads
        seen = 0
        raw = tarfile_samples(({"url": u} for u in self.urls), handler=counter.tar_handler)
        for global_idx, sample in enumerate(raw):
            if global_idx >= self.num_samples:
                break
            if global_idx % world != rank:
                continue
            local = global_idx // world
            if local % num_workers != worker:
                continue
            seen += 1
            dec = _decode(sample, self.decoder, rng, counter)
            if dec is None:
                missing += 1
                continue
            dec["pad"] = torch.tensor(False)
            if first_good is None:
                first_good = dec
            buf.append(dec)
            if len(buf) == self.batch_size:
                yield collate(buf, counter.take())
                buf = []
        n_pad = wanted - seen + missing
        if n_pad and first_good is None:
            from ..io import EmptyOutputError, empty_output_message

            raise EmptyOutputError(empty_output_message(f"evaluation of {self.urls[:2]}", seen, counter.reasons))
        for _ in range(n_pad):
            pad = dict(first_good)
            pad["pad"] = torch.tensor(True)
            buf.append(pad)
            if len(buf) == self.batch_size:
                yield collate(buf, counter.take())
                buf = []
        if buf:
            yield collate(buf, counter.take())
