"""Bad and careless inputs, as a new user gives them: every one is refused with exit code 2 and one line naming the
file, URL or key at fault, and nothing that was in the input or output folders changes (checksums of every file
before and after). Then the positive side of the same rules: a resume keeps the run's history, ``--overwrite``
replaces an output whole, and Ctrl-C / SIGKILL in the middle of ``data build`` or ``tokenize`` followed by a
rerun gives exactly the output of an uninterrupted run.

Most cases call the CLI in-process; only the signal tests start a subprocess.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from tokenizers_mm.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_ONED = {"image_size": 32, "patch_size": 8, "num_tokens": 8, "encoder": {"width": 32, "depth": 1, "heads": 2},
             "decoder": {"width": 32, "depth": 1, "heads": 2}, "stem_channels": 8, "patch_embed": "conv",
             "patch_head": "conv", "quantizer": {"kind": "fsq", "levels": [8, 5, 5, 5]},
             "ordering": {"kind": "nested_dropout"}}


# ---- shared inputs (built once) -------------------------------------------------------------------------
def _photos(folder: str, n: int = 6, size: int = 48) -> str:
    import skimage.data
    from PIL import Image

    root = os.path.dirname(skimage.data.__file__)
    names = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "camera.png", "coins.png", "moon.png",
             "text.png"]
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        img = Image.open(os.path.join(root, names[i % len(names)])).convert("RGB").resize((size + i, size))
        img.save(os.path.join(folder, f"p{i:03d}.png"))
    return folder


@dataclass
class Shared:
    root: str
    photos: str
    shards: str        # an image build of the photos (train + val)
    audio: str         # a folder of audio shards
    ckpt: str          # Lightning checkpoint of a tiny 1D image tokenizer
    export: str        # its export
    npz: str           # tokens.npz of two photos
    tokens: str        # token shards of `shards`
    run: str = ""      # a training run folder (config fit)
    cfg: str = ""


@pytest.fixture(scope="module")
def R(tmp_path_factory, embedded) -> Shared:
    import pytorch_lightning as pl

    from pipelines.tokenize import tokenize_shards
    from tokenizers_mm.data import ShardDataModule
    from tokenizers_mm.data.shards import build_shards
    from tokenizers_mm.export import export_checkpoint
    from tokenizers_mm.image.tokenizer1d import OneDTokenizer

    root = str(tmp_path_factory.mktemp("bad_inputs"))
    photos = _photos(os.path.join(root, "photos"))
    shards = os.path.join(root, "shards")
    build_shards("image", photos, shards, shard_size=2, val_fraction=0.34, progress=False)
    audio = os.path.join(root, "audio")
    os.makedirs(audio)
    for name in ("train-000000.tar", "val-000000.tar"):
        shutil.copy(os.path.join(embedded, "audio", name), os.path.join(audio, name))
    torch.manual_seed(0)
    model = OneDTokenizer(**TINY_ONED)
    dm = ShardDataModule(modality="image", train_urls=shards, val_urls=None, batch_size=2, batches_per_epoch=1,
                         num_workers=0, image={"size": 32, "val_resize": 32})
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    ckpt = os.path.join(root, "oned.ckpt")
    trainer.save_checkpoint(ckpt)
    export = os.path.join(root, "export")
    export_checkpoint(ckpt, export)
    npz = os.path.join(root, "tokens.npz")
    assert main(["encode", "--model", export, os.path.join(photos, "p000.png"), os.path.join(photos, "p001.png"),
                 "--out", npz]) == 0
    tokens = os.path.join(root, "tokens")
    tokenize_shards(export, shards, tokens, num_workers=0, progress=False)
    return Shared(root, photos, shards, audio, ckpt, export, npz, tokens)


@pytest.fixture(scope="module")
def run(R, embedded, tmp_path_factory) -> Shared:
    """A two-step training run (``R.run``) of the test suite's tiny config (``R.cfg``)."""
    from test_training import tiny_config

    base = tmp_path_factory.mktemp("fitrun")
    R.cfg = tiny_config(base, embedded, max_steps=2, val_check_interval=2, num_sanity_val_steps=0)
    R.run = str(base / "run")
    assert main(["fit", "--config", R.cfg]) == 0
    return R


# ---- the case table -------------------------------------------------------------------------------------
@dataclass
class Case:
    argv: list[str]
    names: list[str]                      # strings the error line must contain (the file / URL / key at fault)
    watch: list[str] = field(default_factory=list)  # folders / files whose every byte must stay as it was
    code: int = 2


def _write(path: str, data: bytes | str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return path


def _user_folder(tmp, name="mine") -> str:
    """A folder of a user's own files, which no command may touch."""
    d = os.path.join(tmp, name)
    _write(os.path.join(d, "notes.txt"), "precious")
    _write(os.path.join(d, "sub", "draft.md"), "also precious")
    return d


def _broken_images(tmp, n=3) -> str:
    d = os.path.join(tmp, "broken")
    for i in range(n):
        _write(os.path.join(d, f"b{i}.jpg"), b"\xff\xd8 this is not a jpeg " + bytes([i]))
    return d


def _copy(src, dst) -> str:
    (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, dst)
    return dst


def _export_with(R, tmp, name, edit: Callable[[dict], None] | None = None, weights: bytes | None = None) -> str:
    d = _copy(R.export, os.path.join(tmp, name))
    if edit:
        p = os.path.join(d, "config.json")
        cfg = json.load(open(p))
        edit(cfg)
        _write(p, json.dumps(cfg))
    if weights is not None:
        _write(os.path.join(d, "model.safetensors"), weights)
    return d


def _corrupt_image_shard(tmp) -> str:
    import webdataset as wds

    d = os.path.join(tmp, "corrupt")
    os.makedirs(d)
    with wds.TarWriter(os.path.join(d, "val-000000.tar")) as w:
        for i in range(3):
            w.write({"__key__": f"bad{i}", "png": b"not a png " + bytes([i])})
    return d


def _npz(tmp, ids, keys, meta) -> str:
    path = os.path.join(tmp, "t.npz")
    np.savez(path, ids=np.asarray(ids), keys=np.array(keys), meta=np.array(json.dumps(meta)))
    return path


def _meta(R, **kw):
    import pipelines
    from pipelines.files import token_meta

    m = token_meta(pipelines.load(R.export), 8)
    m.update(kw)
    return m


def _build(modality, src, out, *extra):
    return ["data", "build", "--modality", modality, "--src", src, "--out", out, "--shard-size", "2", *extra]


def _earlier_build(R, tmp, name="prev", *extra) -> str:
    out = os.path.join(tmp, name)
    assert main(_build("image", R.photos, out, *extra)) == 0
    return out


def _partial_tokenize(R, tmp) -> str:
    from pipelines.tokenize import tokenize_shards

    out = os.path.join(tmp, "tok")
    tokenize_shards(R.export, R.shards, out, num_tokens=4, rank=0, world_size=3, num_workers=0, progress=False)
    return out


def _other_export(R, tmp) -> str:
    """An export of another model (other weights) of the same architecture."""
    from safetensors.torch import load_file, save_file

    d = _copy(R.export, os.path.join(tmp, "other_export"))
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in load_file(os.path.join(d, "model.safetensors")).items()}
    save_file(state, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg["weights"]["sha256"] = hashlib.sha256(open(os.path.join(d, "model.safetensors"), "rb").read()).hexdigest()
    _write(os.path.join(d, "config.json"), json.dumps(cfg))
    return d


def _fit(R, *extra) -> list[str]:
    return ["fit", "--config", R.cfg, "--trainer.enable_model_summary", "false", *extra]


C: dict[str, Callable[[Shared, str], Case]] = {}


def case(name: str):
    def register(fn):
        assert name not in C
        C[name] = fn
        return fn
    return register


# data build
case("build/src-missing")(lambda R, t: Case(_build("image", f"{t}/nope", f"{t}/o"), [f"{t}/nope"], [f"{t}/o"]))
case("build/src-is-a-file")(lambda R, t: Case(_build("image", f"{R.photos}/p000.png", f"{t}/o"),
                                              ["p000.png", "is a file"], [R.photos, f"{t}/o"]))
case("build/no-files-of-modality")(lambda R, t: Case(_build("audio", R.photos, f"{t}/o"),
                                                     [R.photos, "no speech files"], [R.photos, f"{t}/o"]))


@case("build/all-broken-over-earlier-shards")
def _(R, t):  # issue 22, case 1: a folder holding a copy of an earlier build
    out = _copy(R.shards, f"{t}/r1")
    return Case(_build("image", _broken_images(t), out, "--overwrite"), ["no sample", "b0.jpg", "all 3 input"],
                [out, f"{t}/broken"])


case("build/all-broken-fresh-out")(lambda R, t: Case(_build("image", _broken_images(t), f"{t}/o"),
                                                     ["no sample", "b0.jpg"], [f"{t}/o", f"{t}/broken"]))
case("build/out-holds-user-files")(lambda R, t: Case(_build("image", R.photos, _user_folder(t)),
                                                     ["notes.txt", "--overwrite"], [f"{t}/mine", R.photos]))
@case("build/overwrite-the-working-folder")
def _(R, t):
    d = _user_folder(t)
    os.chdir(d)  # the test restores the working folder
    return Case(_build("image", R.photos, ".", "--overwrite"), ["working folder"], [d])


case("build/out-is-a-file")(lambda R, t: Case(_build("image", R.photos, _write(f"{t}/o.txt", "x")),
                                              ["o.txt", "not a folder"], [f"{t}/o.txt"]))
case("build/out-is-src")(lambda R, t: Case(_build("image", _copy(R.photos, f"{t}/p"), f"{t}/p"),
                                           ["input"], [f"{t}/p"]))
case("build/out-is-parent-of-src")(lambda R, t: Case(_build("image", _copy(R.photos, f"{t}/a/p"), f"{t}/a"),
                                                     ["input", f"{t}/a/p"], [f"{t}/a"]))


@case("build/out-holds-other-modality-build")
def _(R, t):
    out = _copy(R.audio, f"{t}/speech")
    assert main(_build("audio", _copy(os.path.join(ROOT, "tokenizers_mm/embedded/speech"), f"{t}/wav"), out,
                       "--overwrite")) == 0
    return Case(_build("image", R.photos, out), ["data build", "modality"], [out])


case("build/out-holds-build-with-other-shard-size")(lambda R, t: Case(
    _build("image", R.photos, _earlier_build(R, t)) + ["--shard-size", "3"], ["shard_size was 2, now 3"],
    [f"{t}/prev"]))


@case("build/out-holds-build-plus-user-file")
def _(R, t):
    out = _earlier_build(R, t)
    _write(f"{out}/my_notes.txt", "mine")
    return Case(_build("image", R.photos, out), ["my_notes.txt", "did not write"], [out])


@case("build/out-holds-legacy-build-of-other-src")
def _(R, t):
    out = _copy(R.shards, f"{t}/legacy")
    os.remove(f"{out}/made_by.json")
    return Case(_build("image", _copy(R.photos, f"{t}/p2"), out), ["dataset.json", "not written by"], [out])


case("build/val-fraction-out-of-range")(lambda R, t: Case(_build("image", R.photos, f"{t}/o", "--val-fraction", "1.5"),
                                                          ["val_fraction", "1.5"], [f"{t}/o"]))
case("build/shard-size-zero")(lambda R, t: Case(_build("image", R.photos, f"{t}/o") + ["--shard-size", "0"],
                                                ["--shard-size", "0"], [f"{t}/o"]))


@case("build/clashing-keys")
def _(R, t):
    d = _copy(R.photos, f"{t}/p")
    shutil.copy(f"{d}/p000.png", f"{d}/p000.jpg")
    return Case(_build("image", d, f"{t}/o"), ["p000", "same sample key"], [d, f"{t}/o"])


case("build/broken-audio")(lambda R, t: Case(_build("audio", os.path.dirname(_write(f"{t}/a/x.flac", b"fLaC junk")),
                                                    f"{t}/o"), ["no sample", "x.flac"], [f"{t}/a", f"{t}/o"]))
case("build/broken-mesh")(lambda R, t: Case(_build("mesh", os.path.dirname(_write(f"{t}/m/x.ply", b"ply\nbroken")),
                                                   f"{t}/o"), ["no sample", "x.ply"], [f"{t}/m", f"{t}/o"]))

# data inspect
case("inspect/missing-pattern")(lambda R, t: Case(["data", "inspect", f"{t}/s-{{0..1}}.tar"], [f"{t}/s-0.tar"]))
case("inspect/folder-without-shards")(lambda R, t: Case(["data", "inspect", R.photos], [R.photos, "*.tar"],
                                                        [R.photos]))
case("inspect/list-file-missing")(lambda R, t: Case(["data", "inspect", f"@{t}/list.txt"], [f"{t}/list.txt"]))


@case("inspect/mixed-builds")
def _(R, t):
    out = _copy(R.shards, f"{t}/s")
    shutil.copy(f"{R.audio}/train-000000.tar", f"{out}/train-000009.tar")
    return Case(["data", "inspect", out], ["train-000009.tar", "not listed"], [out])


@case("inspect/lost-shard")
def _(R, t):
    out = _copy(R.shards, f"{t}/s")
    os.remove(f"{out}/train-000001.tar")
    return Case(["data", "inspect", out], ["train-000001.tar", "missing"], [out])


case("inspect/not-a-tar")(lambda R, t: Case(["data", "inspect", _copy(f"{R.photos}/p000.png", f"{t}/x.png")],
                                            ["x.png", "corrupt"], [f"{t}/x.png"]))


@case("inspect/empty-tar")
def _(R, t):
    import tarfile

    tarfile.open(f"{t}/e.tar", "w").close()
    return Case(["data", "inspect", f"{t}/e.tar"], ["no sample"], [f"{t}/e.tar"])


case("inspect/wrong-modality")(lambda R, t: Case(["data", "inspect", R.audio, "--modality", "image"],
                                                 ["--modality", "audio", "train-000000.tar"], [R.audio]))

# fit (config keys)
case("fit/train-urls-missing")(lambda R, t: Case(_fit(R, "--data.train_urls", f"{t}/none"),
                                                 ["data.train_urls", f"{t}/none"], [R.run]))
case("fit/train-urls-empty")(lambda R, t: Case(_fit(R, "--data.train_urls", ""), ["data.train_urls", "empty"],
                                               [R.run]))
case("fit/train-urls-other-modality")(lambda R, t: Case(_fit(R, "--data.train_urls", R.audio),
                                                        ["data.train_urls", "audio", "train-000000.tar"],
                                                        [R.run, R.audio]))
case("fit/val-urls-missing")(lambda R, t: Case(_fit(R, "--data.val_urls", f"{t}/v"), ["data.val_urls", f"{t}/v"],
                                               [R.run]))
case("fit/resume-changed-architecture")(lambda R, t: Case(
    _fit(R, "--ckpt_path", "last", "--trainer.max_steps", "4", "--model.init_args.latent_dim", "8"),
    ["last.ckpt", "in the configured model"], [R.run]))
case("fit/ckpt-path-missing")(lambda R, t: Case(_fit(R, "--ckpt_path", f"{t}/x.ckpt"), [f"{t}/x.ckpt"], [R.run]))
case("fit/ckpt-path-foreign-file")(lambda R, t: Case(_fit(R, "--ckpt_path", _write(f"{t}/x.ckpt", b"garbage")),
                                                     [f"{t}/x.ckpt", "not a readable"], [R.run, f"{t}/x.ckpt"]))
case("fit/ckpt-path-export-folder")(lambda R, t: Case(_fit(R, "--ckpt_path", R.export), [R.export, "folder"],
                                                      [R.run, R.export]))
case("fit/batch-size-zero")(lambda R, t: Case(_fit(R, "--data.batch_size", "0"), ["data.batch_size", ">= 1"],
                                               [R.run]))
case("fit/bad-modality")(lambda R, t: Case(_fit(R, "--data.modality", "video"), ["data.modality", "video"], [R.run]))

# evaluate
_ev = ["--max-samples", "4", "--no-baselines"]
case("evaluate/ckpt-is-export")(lambda R, t: Case(["evaluate", "--ckpt", R.export, "--data", R.shards, "--out",
                                                   f"{t}/o"], [R.export, "export folder"], [R.export, f"{t}/o"]))
case("evaluate/ckpt-missing")(lambda R, t: Case(["evaluate", "--ckpt", f"{t}/x.ckpt", "--data", R.shards, "--out",
                                                 f"{t}/o"], [f"{t}/x.ckpt", "does not exist"], [f"{t}/o"]))
case("evaluate/ckpt-is-run-folder")(lambda R, t: Case(["evaluate", "--ckpt", R.run, "--data", R.shards, "--out",
                                                       f"{t}/o"], [R.run, "last.ckpt"], [R.run, f"{t}/o"]))
case("evaluate/ckpt-foreign-file")(lambda R, t: Case(["evaluate", "--ckpt", _write(f"{t}/c.ckpt", b"PK junk"),
                                                      "--data", R.shards, "--out", f"{t}/o"],
                                                     [f"{t}/c.ckpt", "not a readable"], [f"{t}/o"]))
case("evaluate/data-missing")(lambda R, t: Case(["evaluate", "--ckpt", R.ckpt, "--data", f"{t}/d", "--out", f"{t}/o"],
                                                ["--data", f"{t}/d"], [f"{t}/o"]))
case("evaluate/data-other-modality")(lambda R, t: Case(["evaluate", "--ckpt", R.ckpt, "--data", R.audio, "--out",
                                                        f"{t}/o"], ["--data", "val-000000.tar", "audio"],
                                                       [R.audio, f"{t}/o"]))
case("evaluate/csv-log-missing")(lambda R, t: Case(["evaluate", "--ckpt", R.ckpt, "--data", R.shards, "--out",
                                                    f"{t}/o", "--csv-log", f"{t}/metrics.csv"],
                                                   ["--csv-log", f"{t}/metrics.csv"], [f"{t}/o"]))
case("evaluate/batch-size-zero")(lambda R, t: Case(["evaluate", "--ckpt", R.ckpt, "--data", R.shards, "--out",
                                                    f"{t}/o", "--batch-size", "0"], ["--batch-size", ">= 1"],
                                                   [f"{t}/o"]))
case("evaluate/out-holds-user-files")(lambda R, t: Case(["evaluate", "--ckpt", R.ckpt, "--data", R.shards, "--out",
                                                         _user_folder(t), *_ev], ["notes.txt"], [f"{t}/mine"]))
case("evaluate/out-is-data")(lambda R, t: Case(["evaluate", "--ckpt", R.ckpt, "--data", _copy(R.shards, f"{t}/s"),
                                                "--out", f"{t}/s", "--overwrite", *_ev], ["input", "val-000000.tar"],
                                               [f"{t}/s"]))
case("evaluate/all-samples-corrupt")(lambda R, t: Case(["evaluate", "--ckpt", R.ckpt, "--data", _corrupt_image_shard(t),
                                                        "--out", f"{t}/o", *_ev], ["no sample", "bad0"],
                                                       [f"{t}/corrupt", f"{t}/o"]))
case("evaluate/out-is-a-file")(lambda R, t: Case(["evaluate", "--ckpt", R.ckpt, "--data", R.shards, "--out",
                                                  _write(f"{t}/r.txt", "x"), *_ev], ["r.txt", "not a folder"],
                                                 [f"{t}/r.txt"]))


@case("evaluate/out-holds-export")
def _(R, t):
    out = _copy(R.export, f"{t}/e")
    return Case(["evaluate", "--ckpt", R.ckpt, "--data", R.shards, "--out", out, *_ev], ["`tokenizers-mm export`"],
                [out])


# export
@case("export/onto-export-with-user-files")
def _(R, t):  # issue 22, case 4
    out = _copy(R.export, f"{t}/e")
    _write(f"{out}/notes.txt", "my notes")
    _write(f"{out}/samples/a.png", b"\x89PNG mine")
    return Case(["export", "--ckpt", R.ckpt, "--out", out], ["notes.txt", "did not write"], [out])


case("export/out-holds-the-checkpoint-even-with-overwrite")(lambda R, t: Case(
    ["export", "--ckpt", _copy(R.ckpt, _user_folder(t) + "/oned.ckpt"), "--out", f"{t}/mine", "--overwrite"],
    ["input", "oned.ckpt"], [f"{t}/mine"]))
case("export/out-holds-user-files")(lambda R, t: Case(["export", "--ckpt", R.ckpt, "--out", _user_folder(t)],
                                                      ["notes.txt"], [f"{t}/mine"]))
case("export/out-is-a-file")(lambda R, t: Case(["export", "--ckpt", R.ckpt, "--out", _write(f"{t}/e.json", "{}")],
                                               ["e.json"], [f"{t}/e.json"]))
case("export/ckpt-is-export")(lambda R, t: Case(["export", "--ckpt", R.export, "--out", f"{t}/e"],
                                                [R.export, "export folder"], [R.export, f"{t}/e"]))
case("export/ckpt-missing")(lambda R, t: Case(["export", "--ckpt", f"{t}/x.ckpt", "--out", f"{t}/e"], [f"{t}/x.ckpt"],
                                              [f"{t}/e"]))
case("export/report-missing")(lambda R, t: Case(["export", "--ckpt", R.ckpt, "--out", f"{t}/e", "--report",
                                                 f"{t}/report.json"], [f"{t}/report.json"], [f"{t}/e"]))
case("export/report-not-json")(lambda R, t: Case(["export", "--ckpt", R.ckpt, "--out", f"{t}/e", "--report",
                                                  _write(f"{t}/report.json", "{not json")], ["report.json"],
                                                 [f"{t}/e", f"{t}/report.json"]))


def _edited_ckpt(R, t, edit: Callable[[dict], None]) -> str:
    raw = torch.load(R.ckpt, map_location="cpu", weights_only=True)
    edit(raw)
    torch.save(raw, f"{t}/edited.ckpt")
    return f"{t}/edited.ckpt"


def _shrink_first_weight(raw: dict) -> None:
    name = next(k for k, v in raw["state_dict"].items() if v.ndim == 2)
    raw["state_dict"][name] = raw["state_dict"][name][:, :1].clone()


case("export/checkpoint-weights-do-not-fit-its-model")(lambda R, t: Case(
    ["export", "--ckpt", _edited_ckpt(R, t, _shrink_first_weight), "--out", f"{t}/e"],
    ["edited.ckpt", "does not rebuild", "size mismatch"], [f"{t}/e", f"{t}/edited.ckpt"]))
case("evaluate/checkpoint-of-another-version")(lambda R, t: Case(
    ["evaluate", "--ckpt", _edited_ckpt(R, t, lambda raw: raw["hyper_parameters"].update(wings=2)), "--data",
     R.shards, "--out", f"{t}/o"], ["edited.ckpt", "does not rebuild", "wings"], [f"{t}/o", f"{t}/edited.ckpt"]))


@case("export/pickled-checkpoint")
def _(R, t):
    torch.save({"state_dict": {}, "payload": Case([], [])}, f"{t}/p.ckpt")
    return Case(["export", "--ckpt", f"{t}/p.ckpt", "--out", f"{t}/e"], [f"{t}/p.ckpt", "weights-only"],
                [f"{t}/e", f"{t}/p.ckpt"])


# pipelines.load through `encode --model`, and encode's own inputs
def _enc(model, *inputs, out):
    return ["encode", "--model", model, *inputs, "--out", out]


case("load/not-an-export")(lambda R, t: Case(_enc(_user_folder(t), f"{R.photos}/p000.png", out=f"{t}/t.npz"),
                                             [f"{t}/mine", "config.json"], [f"{t}/mine"]))
case("load/missing-folder")(lambda R, t: Case(_enc(f"{t}/x", f"{R.photos}/p000.png", out=f"{t}/t.npz"),
                                              [f"{t}/x", "not a folder"]))
case("load/run-folder")(lambda R, t: Case(_enc(R.run, f"{R.photos}/p000.png", out=f"{t}/t.npz"),
                                          [R.run, "training run"], [R.run]))
@case("load/config-not-json")
def _(R, t):
    d = _export_with(R, t, "x")
    _write(f"{d}/config.json", "{")
    return Case(_enc(d, f"{R.photos}/p000.png", out=f"{t}/t.npz"), ["config.json", "not valid JSON"], [d])


case("load/future-format")(lambda R, t: Case(_enc(_export_with(R, t, "x", lambda c: c.update(format_version=9)),
                                                  f"{R.photos}/p000.png", out=f"{t}/t.npz"), ["format version 9"],
                                             [f"{t}/x"]))
case("load/weights-damaged")(lambda R, t: Case(_enc(_export_with(R, t, "x", weights=b"\x00" * 64), f"{R.photos}/p000.png",
                                                    out=f"{t}/t.npz"), ["model.safetensors", "sha256"], [f"{t}/x"]))
case("load/no-weights-sha")(lambda R, t: Case(_enc(_export_with(R, t, "x", lambda c: c["weights"].pop("sha256")),
                                                   f"{R.photos}/p000.png", out=f"{t}/t.npz"),
                                              ["config.json", "weights.sha256"], [f"{t}/x"]))
case("load/arch-does-not-describe-weights")(lambda R, t: Case(
    _enc(_export_with(R, t, "x", lambda c: c["arch"]["encoder"].update(width=48)), f"{R.photos}/p000.png",
         out=f"{t}/t.npz"), ["model.safetensors", "config.json", "in the configured model"], [f"{t}/x"]))
case("load/arch-unknown-argument")(lambda R, t: Case(
    _enc(_export_with(R, t, "x", lambda c: c["arch"].update(wings=2)), f"{R.photos}/p000.png", out=f"{t}/t.npz"),
    ["config.json", "'arch'", "wings"], [f"{t}/x"]))
case("load/unknown-architecture")(lambda R, t: Case(
    _enc(_export_with(R, t, "x", lambda c: c.update(architecture="image/vae")), f"{R.photos}/p000.png",
         out=f"{t}/t.npz"), ["image/vae"], [f"{t}/x"]))
case("encode/input-missing")(lambda R, t: Case(_enc(R.export, f"{t}/nope.png", out=f"{t}/t.npz"), [f"{t}/nope.png"]))
case("encode/input-wrong-kind")(lambda R, t: Case(_enc(R.export, _write(f"{t}/a.wav", b"RIFF"), out=f"{t}/t.npz"),
                                                  ["a.wav", "not an image file"], [f"{t}/a.wav"]))
case("encode/folder-without-images")(lambda R, t: Case(_enc(R.export, R.audio, out=f"{t}/t.npz"), [R.audio],
                                                       [R.audio]))
case("encode/out-is-users-file")(lambda R, t: Case(_enc(R.export, f"{R.photos}/p000.png",
                                                        out=_copy(f"{R.photos}/p001.png", f"{t}/keep.npz")),
                                                   ["keep.npz", "--overwrite"], [f"{t}/keep.npz"]))
case("encode/out-is-an-input-even-with-overwrite")(lambda R, t: Case(
    _enc(R.export, _copy(f"{R.photos}/p000.png", f"{t}/p.png"), out=f"{t}/p.png") + ["--overwrite"],
    ["p.png", "input"], [f"{t}/p.png"]))
case("encode/out-is-a-folder")(lambda R, t: Case(_enc(R.export, f"{R.photos}/p000.png", out=_user_folder(t)),
                                                 [f"{t}/mine", "folder"], [f"{t}/mine"]))
case("encode/num-tokens-too-many")(lambda R, t: Case(_enc(R.export, f"{R.photos}/p000.png", out=f"{t}/t.npz")
                                                     + ["--num-tokens", "99"], ["num_tokens", "99"], [f"{t}/t.npz"]))


@case("encode/two-inputs-one-key")
def _(R, t):
    a = _write(f"{t}/a/x.png", open(f"{R.photos}/p000.png", "rb").read())
    b = _write(f"{t}/b/x.png", open(f"{R.photos}/p001.png", "rb").read())
    return Case(_enc(R.export, a, b, out=f"{t}/t.npz"), [f"{t}/a/x.png", f"{t}/b/x.png"], [f"{t}/a", f"{t}/b"])


# decode
def _dec(R, inp, out, *extra):
    return ["decode", "--model", R.export, inp, "--out", out, *extra]


case("decode/npz-missing")(lambda R, t: Case(_dec(R, f"{t}/x.npz", f"{t}/o"), [f"{t}/x.npz"], [f"{t}/o"]))
case("decode/npz-not-npz")(lambda R, t: Case(_dec(R, _write(f"{t}/x.npz", "hello"), f"{t}/o"), [f"{t}/x.npz"],
                                             [f"{t}/o", f"{t}/x.npz"]))
case("decode/npz-other-codebook")(lambda R, t: Case(_dec(R, _npz(t, [[1, 2]], ["a"], _meta(R, codebook_size=4096)),
                                                         f"{t}/o"), ["t.npz", "4096"], [f"{t}/o", f"{t}/t.npz"]))
case("decode/ids-out-of-range")(lambda R, t: Case(_dec(R, _npz(t, [[1, 5000]], ["a"], _meta(R)), f"{t}/o"),
                                                  ["t.npz", "must lie in"], [f"{t}/o", f"{t}/t.npz"]))
case("decode/ids-not-integers")(lambda R, t: Case(_dec(R, _npz(t, [[1.5, 2.0]], ["a"], _meta(R)), f"{t}/o"),
                                                  ["t.npz", "integers"], [f"{t}/o", f"{t}/t.npz"]))
case("decode/keys-collide")(lambda R, t: Case(_dec(R, _npz(t, [[1, 2], [3, 4]], ["a/b", "a_b"], _meta(R)), f"{t}/o"),
                                              ["t.npz", "'a/b'", "'a_b'"], [f"{t}/o", f"{t}/t.npz"]))
case("decode/out-holds-user-files")(lambda R, t: Case(_dec(R, R.npz, _user_folder(t)), ["notes.txt"],
                                                      [f"{t}/mine", R.npz]))
case("decode/out-holds-the-model-even-with-overwrite")(lambda R, t: Case(
    ["decode", "--model", _copy(R.export, f"{t}/m/export"), R.npz, "--out", f"{t}/m", "--overwrite"],
    ["input", f"{t}/m/export"], [f"{t}/m"]))
case("decode/out-is-the-npz")(lambda R, t: Case(_dec(R, _copy(R.npz, f"{t}/t.npz"), f"{t}/t.npz"), ["t.npz"],
                                                [f"{t}/t.npz"]))
case("decode/image-shards-not-tokens")(lambda R, t: Case(_dec(R, R.shards, f"{t}/o"), ["ids.npy", "train-000000.tar"],
                                                         [R.shards, f"{t}/o"]))
case("decode/not-a-tar-shard")(lambda R, t: Case(_dec(R, _write(f"{t}/x.tar", "hello"), f"{t}/o"),
                                                  ["x.tar", "not a readable tar"], [f"{t}/x.tar", f"{t}/o"]))
case("decode/limit-zero")(lambda R, t: Case(_dec(R, R.npz, f"{t}/o", "--limit", "0"), ["--limit"], [f"{t}/o"]))
case("decode/out-is-token-folder")(lambda R, t: Case(_dec(R, _copy(R.tokens, f"{t}/tk"), f"{t}/tk", "--overwrite"),
                                                     ["input"], [f"{t}/tk"]))


# tokenize
def _tok(R, data, out, *extra, model=None):
    return ["tokenize", "--model", model or R.export, "--data", data, "--out", out, "--workers", "0", *extra]


case("tokenize/out-is-data")(lambda R, t: Case(_tok(R, _copy(R.shards, f"{t}/s"), f"{t}/s"),  # issue 22, case 2
                                               ["input", f"{t}/s"], [f"{t}/s"]))
case("tokenize/out-is-data-even-with-overwrite")(lambda R, t: Case(
    _tok(R, _copy(R.shards, f"{t}/s"), f"{t}/s", "--overwrite"), ["input"], [f"{t}/s"]))
case("tokenize/out-from-another-model")(lambda R, t: Case(  # issue 22, case 2
    _tok(R, R.shards, _copy(R.tokens, f"{t}/tk"), model=_other_export(R, t)), ["model.sha256"], [f"{t}/tk", R.shards]))
case("tokenize/out-with-other-num-tokens")(lambda R, t: Case(_tok(R, R.shards, _copy(R.tokens, f"{t}/tk"),
                                                                  "--num-tokens", "4"),
                                                             ["settings.num_tokens was 8, now 4"], [f"{t}/tk"]))
case("tokenize/out-holds-the-model-even-with-overwrite")(lambda R, t: Case(
    _tok(R, R.shards, f"{t}/m", "--overwrite", model=_copy(R.export, f"{t}/m/export")), ["input", f"{t}/m/export"],
    [f"{t}/m"]))
case("tokenize/out-holds-user-files")(lambda R, t: Case(_tok(R, R.shards, _user_folder(t)), ["notes.txt"],
                                                        [f"{t}/mine"]))
case("tokenize/out-holds-image-build")(lambda R, t: Case(_tok(R, R.shards, _copy(R.shards, f"{t}/s2")),
                                                         ["`tokenizers-mm data build`"], [f"{t}/s2"]))
case("tokenize/data-other-modality")(lambda R, t: Case(_tok(R, R.audio, f"{t}/o"), ["--data", "train-000000.tar",
                                                                                   "audio"], [R.audio, f"{t}/o"]))
case("tokenize/data-missing")(lambda R, t: Case(_tok(R, f"{t}/none", f"{t}/o"), ["--data", f"{t}/none"], [f"{t}/o"]))
case("tokenize/num-tokens-too-many")(lambda R, t: Case(_tok(R, R.shards, f"{t}/o", "--num-tokens", "99"),
                                                   ["--num-tokens", "99"], [f"{t}/o"]))
case("tokenize/num-tokens-zero")(lambda R, t: Case(_tok(R, R.shards, f"{t}/o", "--num-tokens", "0"),
                                                   ["--num-tokens", ">= 1"], [f"{t}/o"]))
case("tokenize/rank-out-of-range")(lambda R, t: Case(_tok(R, R.shards, f"{t}/o", "--rank", "3", "--world-size", "2"),
                                                     ["--rank", "3"], [f"{t}/o"]))
case("tokenize/all-samples-corrupt")(lambda R, t: Case(_tok(R, _corrupt_image_shard(t), f"{t}/o"),
                                                       ["no sample", "bad0"], [f"{t}/corrupt", f"{t}/o"]))


@case("tokenize/resume-with-other-settings")
def _(R, t):
    out = _partial_tokenize(R, t)
    return Case(_tok(R, R.shards, out, "--num-tokens", "8"), [".tok.partial", "num_tokens was 4, now 8"],
                [f"{t}/.tok.partial", out])


# ---- the parametrized test -------------------------------------------------------------------------------
def _checksums(paths: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for p in paths:
        if os.path.isdir(p):
            for root, _, names in os.walk(p):
                for n in names:
                    f = os.path.join(root, n)
                    out[f] = hashlib.sha256(open(f, "rb").read()).hexdigest()
            out[p] = "dir"
        elif os.path.isfile(p):
            out[p] = hashlib.sha256(open(p, "rb").read()).hexdigest()
        else:
            out[p] = None  # absent, and must stay absent
    return out


NEEDS_RUN = {n for n in C if n.startswith("fit/") or n in ("evaluate/ckpt-is-run-folder", "load/run-folder")}


@pytest.mark.parametrize("name", sorted(C))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(name, R, request, tmp_path, capsys, record_property,
                                                         monkeypatch):
    if name in NEEDS_RUN:
        request.getfixturevalue("run")
    t = str(tmp_path)
    monkeypatch.chdir(ROOT)
    c = C[name](R, t)
    shared = [R.photos, R.shards, R.audio, R.ckpt, R.export, R.npz, R.tokens] + ([R.run] if R.run else [])
    watch = sorted(set(c.watch) | set(shared))
    before = _checksums(watch)
    present = set(os.listdir(t))
    capsys.readouterr()
    try:
        code = main(c.argv)
    except SystemExit as exc:  # argument parsers exit themselves
        code = exc.code
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1] if err else ""
    record_property("exit_code", code)  # the case table: pytest --junitxml=FILE
    record_property("message", last)
    assert code == c.code, f"{name}: exit {code}, stderr: {err[-2000:]}"
    assert "error:" in last and "Traceback" not in err, err[-2000:]
    for needle in c.names:
        assert needle in last, f"{name}: {needle!r} not in {last!r}"
    assert _checksums(watch) == before, f"{name} changed files it did not write"
    leftovers = [n for n in set(os.listdir(t)) - present if ".partial" in n or ".old-" in n or ".tmp" in n]
    assert not leftovers, leftovers


def test_case_count():
    assert len(C) >= 60, len(C)


def test_debug_shows_the_traceback(R, tmp_path, capsys, monkeypatch):
    argv = ["export", "--ckpt", str(tmp_path / "x.ckpt"), "--out", str(tmp_path / "e")]
    assert main(argv + ["--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("tokenizers-mm: error:")
    monkeypatch.setenv("TOKENIZERS_MM_DEBUG", "1")
    assert main(argv) == 2 and "Traceback" in capsys.readouterr().err
    monkeypatch.delenv("TOKENIZERS_MM_DEBUG")
    assert main(argv) == 2 and "Traceback" not in capsys.readouterr().err


# ---- what the same rules let through ----------------------------------------------------------------------
def test_overwrite_replaces_a_foreign_out_whole_and_a_rerun_replaces_its_own(R, tmp_path):
    mine = _user_folder(str(tmp_path))
    assert main(_build("image", R.photos, mine, "--overwrite")) == 0
    assert "notes.txt" not in os.listdir(mine) and json.load(open(f"{mine}/made_by.json"))["command"] == "data build"
    first = _checksums([mine])
    assert main(_build("image", R.photos, mine)) == 0  # same settings: its own earlier output is rebuilt
    again = _checksums([mine])
    assert {k for k in first if k.endswith(".tar")} == {k for k in again if k.endswith(".tar")}
    assert all(first[k] == again[k] for k in first if k.endswith(".tar"))
    assert not [n for n in os.listdir(tmp_path) if ".partial" in n or ".old-" in n]


def test_tokenize_rerun_of_a_complete_output_changes_nothing(R, tmp_path, capsys):
    out = _copy(R.tokens, str(tmp_path / "tk"))
    before = _checksums([out])
    assert main(_tok(R, R.shards, out)) == 0
    assert "complete" in capsys.readouterr().out and _checksums([out]) == before


def test_resume_keeps_metrics_history_and_every_attempts_config(run, tmp_path):
    R = run
    root = _copy(R.run, str(tmp_path / "run"))
    rows = list(csv.DictReader(open(f"{root}/metrics.csv")))
    config = open(f"{root}/config.yaml").read()
    assert rows and max(int(r["step"]) for r in rows) >= 1
    assert main(_fit(R, "--trainer.default_root_dir", root, "--trainer.max_steps", "4", "--ckpt_path", "last")) == 0
    after = list(csv.DictReader(open(f"{root}/metrics.csv")))
    assert len(after) > len(rows)
    for old, new in zip(rows, after):  # the earlier attempt's rows stay, in order, with their values
        assert all(new[k] == v for k, v in old.items() if v != "")
    assert max(int(r["step"]) for r in after) >= 3
    assert open(f"{root}/config-1.yaml").read() == config
    assert "max_steps: 4" in open(f"{root}/config.yaml").read() and os.path.isfile(f"{root}/hparams-1.yaml")


# ---- interrupted mid-way: Ctrl-C and SIGKILL --------------------------------------------------------------
@pytest.fixture(scope="module")
def many_photos(tmp_path_factory) -> str:
    """150 image files (6 photos at 384 px under 25 names each): enough work to stop a build in the middle."""
    src = _photos(str(tmp_path_factory.mktemp("many") / "src"), n=6, size=384)
    for name in sorted(os.listdir(src)):
        for i in range(1, 25):
            shutil.copy(os.path.join(src, name), os.path.join(src, f"{name[:-4]}_{i:02d}.png"))
    return src


def _same_output(a: str, b: str) -> None:
    """Folders ``a`` and ``b`` hold the same files with the same bytes (run records and timings aside)."""
    names = sorted(os.path.relpath(os.path.join(r, n), a) for r, _, ns in os.walk(a) for n in ns)
    assert names == sorted(os.path.relpath(os.path.join(r, n), b) for r, _, ns in os.walk(b) for n in ns)
    for n in names:
        if n == "made_by.json":
            continue
        x, y = open(os.path.join(a, n), "rb").read(), open(os.path.join(b, n), "rb").read()
        if n == "dataset.json":
            x, y = ({k: v for k, v in json.loads(z).items() if k != "build_seconds"} for z in (x, y))
        assert x == y, n


def _interrupt(argv: list[str], parent: str, sig: int) -> int:
    """Run the CLI in a subprocess, send ``sig`` once a first shard is complete in a staging folder under
    ``parent``, and return its exit code."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_MM_LOG": "ERROR"}
    # the child starts with SIGINT at its default, as from a terminal: an in-process Lightning run earlier in the
    # session can leave this process ignoring SIGINT (its KeyboardInterrupt path sets SIG_IGN), and ignored signals
    # are inherited across exec
    proc = subprocess.Popen([sys.executable, "-m", "tokenizers_mm.cli", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def staged_shard() -> bool:
        for d in os.listdir(parent):
            if ".partial" in d and os.path.isdir(os.path.join(parent, d)):
                if any(n.endswith(".tar") for n in os.listdir(os.path.join(parent, d))):
                    return True
        return False

    deadline = time.time() + 120
    while not staged_shard():
        assert proc.poll() is None, f"finished before it could be interrupted: {proc.stderr.read().decode()[-2000:]}"
        assert time.time() < deadline, "no shard was staged within 120 s"
        time.sleep(0.01)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    return proc.returncode


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_data_build_interrupted_then_rerun_equals_an_uninterrupted_build(sig, many_photos, tmp_path):
    ref, out = str(tmp_path / "ref"), str(tmp_path / "out")
    argv = ["data", "build", "--modality", "image", "--src", many_photos, "--shard-size", "4", "--val-fraction", "0.1"]
    assert main(argv + ["--out", ref]) == 0
    code = _interrupt(argv + ["--out", out], str(tmp_path), sig)
    assert code == (130 if sig == signal.SIGINT else -signal.SIGKILL)
    assert not os.path.exists(out)  # nothing under the final name until the build is complete
    assert main(argv + ["--out", out]) == 0
    _same_output(ref, out)
    assert not [n for n in os.listdir(tmp_path) if ".partial" in n or ".old-" in n]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_tokenize_interrupted_then_rerun_equals_an_uninterrupted_run(sig, R, many_photos, tmp_path_factory, tmp_path):
    shards = str(tmp_path_factory.getbasetemp() / "many_shards")
    if not os.path.isdir(shards):
        assert main(["data", "build", "--modality", "image", "--src", many_photos, "--out", shards,
                     "--shard-size", "3", "--val-fraction", "0"]) == 0
    ref, out = str(tmp_path / "ref"), str(tmp_path / "out")
    argv = ["tokenize", "--model", R.export, "--data", shards, "--workers", "0", "--batch-size", "3"]
    assert main(argv + ["--out", ref]) == 0
    code = _interrupt(argv + ["--out", out], str(tmp_path), sig)
    assert code == (130 if sig == signal.SIGINT else -signal.SIGKILL)
    assert not os.path.exists(out)
    assert main(argv + ["--out", out]) == 0
    _same_output(ref, out)
    assert not [n for n in os.listdir(tmp_path) if ".partial" in n]


def test_data_settings_that_fit_no_sample_fail_before_training(R):
    from tokenizers_mm.data import ShardDataModule

    dm = ShardDataModule(modality="tokens", train_urls=R.tokens, val_urls=None, num_workers=0,
                         tokens={"num_tokens": 99})
    with pytest.raises(ValueError, match=r"data.train_urls: none of the first \d samples of .*train-000000.tar "
                                         r"decodes.*fewer than data.tokens.num_tokens=99"):
        dm.setup("fit")


def test_files_a_command_does_not_read_are_named_not_silently_dropped(R, tmp_path, caplog):
    src = _copy(R.photos, str(tmp_path / "p"))
    _write(f"{src}/scan.tif", b"II*\x00")
    _write(f"{src}/notes.txt", "x")
    with caplog.at_level("WARNING"):
        assert main(_build("image", src, str(tmp_path / "o"))) == 0
        assert main(_enc(R.export, src, out=str(tmp_path / "t.npz"))) == 0
    assert "ignoring 2 file(s)" in caplog.text and ".tif x1" in caplog.text
    assert "encode: ignoring 2 file(s)" in caplog.text


def test_tokenize_rerun_over_a_damaged_output_redoes_it(R, tmp_path, capsys):
    out = _copy(R.tokens, str(tmp_path / "tk"))
    lost = sorted(n for n in os.listdir(out) if n.endswith(".tar"))[0]
    os.remove(f"{out}/{lost}")
    assert main(_tok(R, R.shards, out)) == 0
    assert "complete" in capsys.readouterr().out
    assert open(f"{out}/{lost}", "rb").read() == open(f"{R.tokens}/{lost}", "rb").read()
