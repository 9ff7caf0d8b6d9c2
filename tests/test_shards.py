"""Shard build -> load round trips for every modality, the split, atomic writes, inspect."""

import json
import os
import random

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from tokenizers_mm.data.samples import make_decoder
from tokenizers_mm.data.shards import (
    MeshBuildOptions,
    build_shards,
    inspect_shards,
    iter_raw_samples,
    sample_key,
    split_files,
)
from tokenizers_mm.data.urls import expand_urls

SMALL_MESH = MeshBuildOptions(num_surface=600, num_volume=600, num_near=600)


def _raw(out, split):
    errors = []
    samples = list(iter_raw_samples(expand_urls(out, split=split), errors))
    assert errors == []
    return samples


def test_split_is_deterministic_and_exact():
    files = [f"d{i % 5}/f{i}.png" for i in range(40)]
    tr, va = split_files(files, 0.25, seed=3)
    assert len(va) == 10 and sorted(tr + va) == sorted(files)
    assert split_files(files, 0.25, seed=3) == (tr, va)
    assert split_files(files, 0.25, seed=4)[1] != va
    trd, vad = split_files(files, 0.2, seed=0, split_by="dir")
    assert len({os.path.dirname(p) for p in vad}) == 1
    assert not {os.path.dirname(p) for p in vad} & {os.path.dirname(p) for p in trd}
    assert len(split_files(files[:3], 0.01, seed=0)[1]) == 1  # at least one val sample
    with pytest.raises(ValueError):
        split_files(files, 1.0, seed=0)


def test_sample_key_has_no_dots():
    assert sample_key("a/b.c/d.e.png") == "a/b_c/d_e"


def test_image_round_trip(photo_dir, tmp_path):
    out = str(tmp_path / "shards")
    m = build_shards("image", photo_dir, out, shard_size=2, val_fraction=0.34, seed=0, progress=False)
    assert m["counts"] == {"train": 4, "val": 2} and m["modality"] == "image"
    assert len(m["shards"]["train"]) == 2 and len(m["shards"]["val"]) == 1
    assert json.load(open(os.path.join(out, "dataset.json")))["counts"] == m["counts"]
    assert sorted(os.listdir(out)) == ["dataset.json", "made_by.json", "train-000000.tar", "train-000001.tar",
                                       "val-000000.tar"]
    samples = _raw(out, "train") + _raw(out, "val")
    keys = sorted(s["__key__"] for s in samples)
    assert keys == ["a/coffee", "a/coins", "a/rocket", "b/astronaut", "b/camera", "b/chelsea"]
    decoder = make_decoder("image", train=False)
    for s in samples:
        meta = json.loads(s["json"])
        ext = os.path.splitext(meta["source"])[1][1:]
        with open(os.path.join(photo_dir, meta["source"]), "rb") as f:
            assert s[ext] == f.read()  # bytes stored unchanged
        x = decoder(s, random.Random(0))["image"]
        assert x.shape == (3, 64, 64) and -1 <= x.min() and x.max() <= 1
    # lossless formats decode to the exact pixels of the source
    png = next(s for s in samples if "png" in s)
    src = np.asarray(Image.open(os.path.join(photo_dir, json.loads(png["json"])["source"])).convert("RGB"))
    dec = make_decoder("image", False, image={"size": 80, "val_resize": 80})
    got = dec(png, random.Random(0))["image"]
    expect = torch.from_numpy(src[:, 8:88].copy()).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.allclose(got, expect)


def test_audio_round_trip(speech_dir, tmp_path):
    out = str(tmp_path / "shards")
    m = build_shards("audio", speech_dir, out, shard_size=3, val_fraction=0.25, seed=1, progress=False)
    assert m["counts"] == {"train": 6, "val": 2}
    samples = _raw(out, "train") + _raw(out, "val")
    dec = make_decoder("audio", False, audio={"sample_rate": 8000, "seconds": 1.0, "val_seconds": 10.0})
    for s in samples:
        src, sr = sf.read(os.path.join(speech_dir, s["__key__"] + ".flac"), dtype="float32")
        out_s = dec(s, random.Random(0))
        n = len(src)
        assert sr == 8000 and out_s["audio"].shape == (1, 80000)
        assert torch.allclose(out_s["audio"][0, :n], torch.from_numpy(src))  # same rate: exact samples
        assert out_s["audio_mask"][0, :n].all() and not out_s["audio_mask"][0, n:].any()
        assert json.loads(s["json"])["sample_rate"] == 8000


def test_mesh_round_trip_records_open_mesh(mesh_dir, tmp_path):
    out = str(tmp_path / "shards")
    m = build_shards("mesh", mesh_dir, out, shard_size=1, val_fraction=0.34, seed=0, mesh=SMALL_MESH,
                     progress=False)
    assert m["counts"]["train"] + m["counts"]["val"] == 4 and m["skipped"] == []
    status = {r["file"]: r["status"] for r in m["meshes"]}
    assert status == {"airplane.ply": "winding_number", "ant.ply": "watertight", "nut.ply": "watertight",
                      "sphere.ply": "watertight"}  # the open airplane is labeled by its winding number
    samples = _raw(out, "train") + _raw(out, "val")
    assert sorted(s["__key__"] for s in samples) == ["airplane", "ant", "nut", "sphere"]
    dec = make_decoder("mesh", False, mesh={"num_surface": 256, "num_volume": 128, "num_near": 64})
    for s in samples:
        assert "ply" in s and "npz" in s
        o = dec(s, random.Random(0))
        assert o["surface"].shape == (256, 6) and o["volume_points"].shape == (128, 3)
        assert o["surface"][:, :3].abs().max() <= 1.0
        assert 0 < float(o["near_labels"].mean()) < 1


def test_failed_build_leaves_no_partial_shard(photo_dir, tmp_path, monkeypatch):
    out = str(tmp_path / "shards")
    build_shards("image", photo_dir, out, shard_size=2, val_fraction=0.34, seed=0, progress=False)
    before = {n: open(os.path.join(out, n), "rb").read() for n in os.listdir(out)}
    import tokenizers_mm.data.shards as shards

    calls = {"n": 0}
    real = shards._make_sample

    def crash_on_third(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash")
        return real(*a, **k)

    monkeypatch.setattr(shards, "_make_sample", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        build_shards("image", photo_dir, out, shard_size=4, val_fraction=0.34, seed=0, progress=False,
                     overwrite=True)
    names = sorted(os.listdir(out))
    # the staging folder stays for a resume (complete shards only); no other leftovers beside --out
    assert names == sorted(before) and [n for n in os.listdir(tmp_path) if ".partial" in n] == [".shards.partial"]
    assert not [n for n in os.listdir(tmp_path / ".shards.partial") if ".tmp" in n]
    # the earlier complete build is untouched: nothing half-written sits under a final name
    for n in names:
        assert open(os.path.join(out, n), "rb").read() == before[n]
    monkeypatch.setattr(shards, "_make_sample", real)
    m = build_shards("image", photo_dir, out, shard_size=4, val_fraction=0.34, seed=0, progress=False, overwrite=True)
    assert m["counts"] == {"train": 4, "val": 2} and not [n for n in os.listdir(tmp_path) if ".partial" in n]


def test_rebuild_removes_stale_shards(photo_dir, tmp_path):
    from tokenizers_mm.io import OutputError

    out = str(tmp_path / "shards")
    build_shards("image", photo_dir, out, shard_size=1, val_fraction=0.0, seed=0, progress=False)
    assert len([n for n in os.listdir(out) if n.startswith("train-")]) == 6
    build_shards("image", photo_dir, out, shard_size=1, val_fraction=0.0, seed=0, progress=False)  # same settings
    with pytest.raises(OutputError, match="settings.shard_size was 1, now 4"):
        build_shards("image", photo_dir, out, shard_size=4, val_fraction=0.0, seed=0, progress=False)
    assert len([n for n in os.listdir(out) if n.startswith("train-")]) == 6
    build_shards("image", photo_dir, out, shard_size=4, val_fraction=0.0, seed=0, progress=False, overwrite=True)
    assert sorted(n for n in os.listdir(out) if n.endswith(".tar")) == ["train-000000.tar", "train-000001.tar"]


def test_same_inputs_give_identical_shards(photo_dir, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for out in (a, b):
        build_shards("image", photo_dir, out, shard_size=3, val_fraction=0.2, seed=5, progress=False)
    for name in os.listdir(a):
        if name.endswith(".tar"):
            assert open(os.path.join(a, name), "rb").read() == open(os.path.join(b, name), "rb").read()


def test_inspect_reports_counts_shapes_and_corrupt(photo_dir, tmp_path):
    out = str(tmp_path / "shards")
    build_shards("image", photo_dir, out, shard_size=10, val_fraction=0.0, seed=0, progress=False)
    import webdataset as wds

    with wds.TarWriter(str(tmp_path / "shards" / "train-000001.tar")) as w:
        w.write({"__key__": "broken", "png": b"not a png"})
    rep = inspect_shards(expand_urls(out, split="train"), progress=False)
    assert rep["samples"] == 7 and rep["modality"] == "image"
    assert rep["extensions"]["json"] == 6 and rep["extensions"]["png"] == 4
    assert rep["example"]["image"]["shape"] == [3, 64, 64]
    assert [c["key"] for c in rep["corrupt"]] == ["broken"]
    assert rep["corrupt"][0]["shard"].endswith("train-000001.tar")


def test_build_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_shards("image", str(tmp_path / "nope"), str(tmp_path / "o"), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        build_shards("image", str(tmp_path / "empty"), str(tmp_path / "o"), progress=False)
    (tmp_path / "dup").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "dup" / "x.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "dup" / "x.jpg")
    with pytest.raises(ValueError, match="same sample key"):
        build_shards("image", str(tmp_path / "dup"), str(tmp_path / "o"), progress=False)
