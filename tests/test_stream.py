"""The streaming layer: rank / worker splits, exact batch counts, evaluation padding, corrupt input."""

import io
import os
import tarfile

import numpy as np
import pytest
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader

from tokenizers_mm.data import ShardDataModule
from tokenizers_mm.data.samples import make_decoder
from tokenizers_mm.data.stream import EvalStream, TrainStream, count_samples
from tokenizers_mm.data.urls import expand_urls


def _png(seed: int, size: int = 24) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _write_shards(root, n_shards, per_shard, prefix="train", corrupt=None):
    """Write tiny image shards; ``corrupt`` maps a global index to ``(extension, bytes)`` replacing it."""
    corrupt = corrupt or {}
    urls, idx = [], 0
    for s in range(n_shards):
        path = os.path.join(root, f"{prefix}-{s:06d}.tar")
        with wds.TarWriter(path) as w:
            for _ in range(per_shard):
                ext, data = corrupt.get(idx, ("png", _png(idx)))
                w.write({"__key__": f"s{idx:04d}", ext: data})
                idx += 1
        urls.append(path)
    return urls


def _decoder():
    return make_decoder("image", train=False, image={"size": 16})


def _run_train(urls, rank, world, workers, monkeypatch, batches=7, batch_size=3, seed=0):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    stream = TrainStream(urls, _decoder(), batch_size, batches, seed=seed, shuffle_buffer=8)
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    return list(loader)


def test_train_stream_exact_batches_and_disjoint_rank_shards(tmp_path, monkeypatch):
    urls = _write_shards(str(tmp_path), 8, 5)
    seen = {}
    for rank in range(2):
        batches = _run_train(urls, rank, 2, workers=2, monkeypatch=monkeypatch)
        assert len(batches) == 7  # exact, whatever the shard sizes
        assert all(b["image"].shape == (3, 3, 16, 16) for b in batches)
        seen[rank] = {u for b in batches for u in b["__url__"]}
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert seen[0] <= set(urls[0::2]) and seen[1] <= set(urls[1::2])


def test_worker_split_is_disjoint(tmp_path):
    urls = _write_shards(str(tmp_path), 4, 2)
    stream = TrainStream(urls, _decoder(), 2, 4)
    parts = [set(stream.shards_for(0, 1, w, 2)) for w in range(2)]
    assert parts[0] and parts[1] and not parts[0] & parts[1]
    assert [stream.batches_for(w, 3) for w in range(3)] == [2, 1, 1]


def test_same_seed_same_order(tmp_path, monkeypatch):
    urls = _write_shards(str(tmp_path), 3, 6)
    a = [b["__key__"] for b in _run_train(urls, 0, 1, 0, monkeypatch, seed=1)]
    b = [b["__key__"] for b in _run_train(urls, 0, 1, 0, monkeypatch, seed=1)]
    c = [b["__key__"] for b in _run_train(urls, 0, 1, 0, monkeypatch, seed=2)]
    assert a == b and a != c


def test_fewer_shards_than_readers_warns(tmp_path):
    urls = _write_shards(str(tmp_path), 2, 2)
    dm = ShardDataModule(modality="image", train_urls=urls, num_workers=3, image={"size": 16})
    with pytest.warns(UserWarning, match="2 training shards for 1 ranks x 3 workers"):
        dm.check_shard_count(len(urls), world=1, workers=3)
    with pytest.warns(UserWarning, match="2 training shards for 4 ranks x 1 workers"):
        dm.check_shard_count(len(urls), world=4, workers=0)


@pytest.mark.parametrize("world,workers", [(1, 0), (2, 0), (3, 2), (4, 1)])
def test_eval_stream_covers_everything_once_with_equal_batches(tmp_path, monkeypatch, world, workers):
    urls = _write_shards(str(tmp_path), 3, 5, prefix="val")  # 15 samples
    per_rank_batches, real_keys = [], []
    for rank in range(world):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world))
        stream = EvalStream(urls, _decoder(), batch_size=2, num_workers=workers)
        batches = list(DataLoader(stream, batch_size=None, num_workers=workers))
        assert len(batches) == len(stream) == stream.num_batches(world, workers)
        per_rank_batches.append(len(batches))
        for b in batches:
            real_keys += [k for k, p in zip(b["__key__"], b["pad"].tolist()) if not p]
        assert sum(len(b["__key__"]) for b in batches) == -(-15 // world)
    assert len(set(per_rank_batches)) == 1
    assert sorted(real_keys) == [f"s{i:04d}" for i in range(15)]


def test_corrupt_samples_are_skipped_and_counted(tmp_path, monkeypatch, caplog):
    bad = {3: ("jpg", b"\xff\xd8\xff\xe0 garbage jpg bytes"), 11: ("png", b"\x89PNG\r\n\x1a\n truncated")}
    urls = _write_shards(str(tmp_path), 4, 4, corrupt=bad)
    # a truncated tar: the last shard cut in half
    with open(urls[-1], "rb") as f:
        data = f.read()
    with open(urls[-1], "wb") as f:
        f.write(data[: len(data) // 2 + 100])
    # a shard that is not a tar at all
    junk = os.path.join(str(tmp_path), "train-000009.tar")
    with open(junk, "wb") as f:
        f.write(os.urandom(3000))
    urls.append(junk)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    stream = TrainStream(urls, _decoder(), batch_size=4, batches_per_epoch=30, seed=0, shuffle_buffer=0)
    with caplog.at_level("WARNING", logger="tokenizers_mm.data"):
        batches = list(DataLoader(stream, batch_size=None, num_workers=0))
    assert len(batches) == 30  # training goes on
    skipped = sum(b["skipped"] for b in batches)
    assert skipped > 0
    keys = {k for b in batches for k in b["__key__"]}
    assert "s0003" not in keys and "s0011" not in keys
    msgs = " ".join(r.getMessage() for r in caplog.records)
    assert "key=s0003" in msgs and "train-000000.tar" in msgs


def test_corrupt_eval_samples_become_pads(tmp_path):
    urls = _write_shards(str(tmp_path), 2, 3, prefix="val", corrupt={1: ("png", b"bad")})
    stream = EvalStream(urls, _decoder(), batch_size=4)
    batches = list(stream)
    pads = [p for b in batches for p in b["pad"].tolist()]
    assert len(pads) == 6 and sum(pads) == 1 and sum(b["skipped"] for b in batches) == 1


@pytest.mark.parametrize("modality,ext,payload", [
    ("audio", "flac", b"fLaC\x00\x00\x00\x22" + b"\x00" * 40),
    ("mesh", "npz", b"PK\x03\x04 not an npz"),
])
def test_corrupt_audio_and_mesh_skipped(embedded, tmp_path, monkeypatch, modality, ext, payload):
    src = expand_urls(os.path.join(embedded, modality), split="train")[0]
    out = os.path.join(str(tmp_path), "train-000000.tar")
    with wds.TarWriter(out) as w:
        w.write({"__key__": "broken", ext: payload})  # read first: shuffle_buffer=0 keeps the order
        for s in wds.WebDataset(src, shardshuffle=False):
            w.write({k: v for k, v in s.items() if k not in ("__url__", "__local_path__")})
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    dec = make_decoder(modality, train=True, mesh={"num_surface": 64, "num_volume": 32, "num_near": 32})
    batches = list(TrainStream([out], dec, batch_size=1, batches_per_epoch=5, shuffle_buffer=0))
    assert len(batches) == 5
    assert sum(b["skipped"] for b in batches) >= 1
    assert "broken" not in {k for b in batches for k in b["__key__"]}


def test_count_samples_counts_keys(tmp_path):
    urls = _write_shards(str(tmp_path), 1, 7, prefix="val")
    assert count_samples(urls[0]) == 7
    with tarfile.open(urls[0]) as tf:
        assert len(tf.getmembers()) == 7


def test_datamodule_loaders_for_every_modality(embedded):
    for modality, key, shape in [("image", "image", (4, 3, 32, 32)), ("audio", "audio", (4, 1, 8000)),
                                 ("mesh", "surface", (4, 256, 6))]:
        dm = ShardDataModule(modality=modality, train_urls=os.path.join(embedded, modality),
                             val_urls=os.path.join(embedded, modality), batch_size=4, batches_per_epoch=3,
                             num_workers=0, image={"size": 32}, audio={"sample_rate": 8000, "seconds": 1.0},
                             mesh={"num_surface": 256, "num_volume": 64, "num_near": 64})
        dm.setup("fit")
        batches = list(dm.train_dataloader())
        assert len(batches) == 3 and tuple(batches[0][key].shape) == shape
        val = list(dm.val_dataloader())
        n_val = dm.val_stream.num_samples
        assert sum(int((~b["pad"]).sum()) for b in val) == n_val


def test_pipe_urls_stream_like_local_ones(tmp_path, monkeypatch):
    local = _write_shards(str(tmp_path), 2, 4, prefix="val")
    piped = [f"pipe:cat {u}" for u in local]
    with pytest.raises(ValueError, match="set data.val_samples"):
        EvalStream(piped, _decoder(), batch_size=3)
    a = [k for b in EvalStream(local, _decoder(), batch_size=3) for k in b["__key__"]]
    b = [k for b in EvalStream(piped, _decoder(), batch_size=3, num_samples=8) for k in b["__key__"]]
    assert a == b == [f"s{i:04d}" for i in range(8)]
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    batches = list(TrainStream(piped, _decoder(), batch_size=2, batches_per_epoch=5, shuffle_buffer=0))
    assert len(batches) == 5 and all(u.startswith("pipe:cat ") for b in batches for u in b["__url__"])
