"""Exports, the `pipelines` package, the encode / decode / tokenize commands and their errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

import pipelines
from tokenizers_mm.cli import main
from tokenizers_mm.data import ShardDataModule
from tokenizers_mm.data.samples import ImageOptions, make_decoder
from tokenizers_mm.data.stream import EvalStream
from tokenizers_mm.data.urls import expand_urls
from tokenizers_mm.export import EXPORT_FILES, ExportError, export_checkpoint
from tokenizers_mm.image.fsq_autoencoder import FSQAutoencoder
from tokenizers_mm.image.tokenizer1d import OneDTokenizer
from tokenizers_mm.io import MADE_BY_FILE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONED = {"image_size": 32, "patch_size": 8, "num_tokens": 8, "encoder": {"width": 64, "depth": 2, "heads": 2},
        "decoder": {"width": 64, "depth": 2, "heads": 2}, "stem_channels": 16, "patch_embed": "conv",
        "patch_head": "conv", "register_init": "pyramid", "query_init": "pyramid", "causal_registers": True,
        "quantizer": {"kind": "fsq", "levels": [8, 5, 5, 5], "batch_norm": True},
        "ordering": {"kind": "nested_dropout"}}


def _train(model, embedded, path, steps=4):
    """A few real optimizer steps on the embedded photos (moves weights, EMA and batch-norm statistics)."""
    dm = ShardDataModule(modality="image", train_urls=os.path.join(embedded, "image"), val_urls=None, batch_size=4,
                         batches_per_epoch=steps, num_workers=0, image={"size": 32, "val_resize": 48})
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(path)
    return model.eval()


@pytest.fixture(scope="module")
def trained(embedded, tmp_path_factory):
    """Checkpoints of a FlexTok-style 1D tokenizer (with EMA) and an FSQ grid autoencoder, a few steps in."""
    root = tmp_path_factory.mktemp("trained")
    torch.manual_seed(0)
    oned = _train(OneDTokenizer(**ONED, ema_decay=0.5), embedded, str(root / "oned.ckpt"))
    grid = _train(FSQAutoencoder(base_channels=8, channel_mults=[1, 2], latent_dim=16, image_size=32), embedded,
                  str(root / "grid.ckpt"))
    return {"oned": (oned, str(root / "oned.ckpt")), "grid": (grid, str(root / "grid.ckpt")), "root": root}


@pytest.fixture(scope="module")
def oned_export(trained):
    out = str(trained["root"] / "export_oned")
    export_checkpoint(trained["oned"][1], out)
    return out


def _images(n=6, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("kind", ["oned", "grid"])
def test_export_load_gives_identical_ids_and_outputs(trained, kind, tmp_path):
    model, ckpt = trained[kind]
    out = str(tmp_path / "export")
    cfg = export_checkpoint(ckpt, out)
    assert sorted(os.listdir(out)) == sorted([*EXPORT_FILES, MADE_BY_FILE])
    tok = pipelines.load(out, device="cpu")
    x = _images()
    with torch.inference_mode():
        ref_ids = model.encode(x).ids
        ids = tok.encode(x, batch_size=4)  # batching must not change anything
        assert ids.dtype == torch.int64 and torch.equal(ids, ref_ids)
        assert torch.allclose(tok.decode(ids, batch_size=4), model.decode(ref_ids), atol=1e-6, rtol=0)
        if kind == "oned":
            assert torch.equal(tok.encode(x, num_tokens=3), ref_ids[:, :3])
            for k in (1, 3):
                assert torch.allclose(tok.decode(ids[:, :k]), model.decode(ref_ids[:, :k]), atol=1e-6, rtol=0)
    assert cfg["tokens"]["tokens_per_sample"] == model.codec.num_tokens
    assert cfg["tokens"]["prefix_decodable"] == (kind == "oned")
    assert cfg["training"]["global_step"] == 4


def test_export_holds_ema_weights_no_training_parts_and_no_pickle(trained, oned_export):
    from safetensors.torch import load_file

    model, ckpt = trained["oned"]
    cfg = json.load(open(os.path.join(oned_export, "config.json")))
    assert cfg["training"]["weights"] == "ema" and cfg["format_version"] == 1 and cfg["modality"] == "image"
    assert cfg["tokens"]["codebook_sizes"] == [1000] and cfg["tokens"]["bytes_per_sample"] == 10
    state = load_file(os.path.join(oned_export, "model.safetensors"))
    ema_state = model.ema.module.state_dict()
    assert set(state) == set(ema_state)
    assert all(torch.equal(state[k], ema_state[k]) for k in state)
    assert not any(torch.equal(state[k], v) for k, v in model.codec.state_dict().items()
                   if k.endswith("weight") and v.ndim == 2)  # raw weights differ from the EMA
    assert not any(k.startswith(("discriminator", "ema.", "_perceptual")) for k in state)
    for name in EXPORT_FILES:  # no pickle protocol header, no zip (torch.save) archive anywhere
        head = open(os.path.join(oned_export, name), "rb").read(2)
        assert head not in (b"\x80\x02", b"\x80\x04", b"\x80\x05", b"PK")
    card = open(os.path.join(oned_export, "README.md")).read()
    assert "8 tokens per sample" in card and "ema weights" in card


def test_raw_weights_on_request(trained, tmp_path):
    model, ckpt = trained["oned"]
    out = str(tmp_path / "raw")
    assert main(["export", "--ckpt", ckpt, "--out", out, "--no-ema"]) == 0
    tok = pipelines.load(out)
    x = _images(3)
    assert torch.equal(tok.encode(x), model.encode(x, use_ema=False).ids)


def test_pipelines_load_without_lightning(oned_export):
    code = f"""
import sys
for name in ("pytorch_lightning", "lightning_fabric", "lightning"):
    sys.modules[name] = None  # any import of them now fails
import torch, pipelines
tok = pipelines.load({oned_export!r}, device="cpu")
ids = tok.encode(torch.zeros(2, 3, 32, 32))
out = tok.decode(ids[:, :4])
assert out.shape == (2, 3, 32, 32), out.shape
with torch.no_grad():
    bf = pipelines.load({oned_export!r}, device="cpu", dtype="bf16")
    assert bf.decode(ids).dtype == torch.float32
print("ok", [m for m in sys.modules if m.startswith(("pytorch_lightning", "lightning"))
             and sys.modules[m] is not None])
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok []"


def test_bf16_autocast_runs_and_stays_close(oned_export):
    fp = pipelines.load(oned_export, device="cpu")
    bf = pipelines.load(oned_export, device="cpu", dtype=torch.bfloat16)
    x = _images(4)
    ids = fp.encode(x)
    a, b = fp.decode(ids), bf.decode(ids)
    assert b.dtype == torch.float32 and (a - b).abs().mean() < 0.05
    assert bf.encode(x).shape == ids.shape


# ---- errors --------------------------------------------------------------------------------------------
def _copy_export(src, dst, **config_changes):
    import shutil

    shutil.copytree(src, dst)
    cfg = json.load(open(os.path.join(dst, "config.json")))
    cfg.update(config_changes)
    json.dump(cfg, open(os.path.join(dst, "config.json"), "w"))
    return str(dst)


def test_load_errors_name_the_problem(oned_export, tmp_path):
    with pytest.raises(ExportError, match="is not a folder"):
        pipelines.load(str(tmp_path / "missing"))
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(ExportError, match="not a tokenizers-mm export: it has no config.json.*training run"):
        pipelines.load(str(run))
    future = _copy_export(oned_export, tmp_path / "future", format_version=99)
    with pytest.raises(ExportError, match="format version 99; this tokenizers-mm reads versions 1..1"):
        pipelines.load(future)
    with pytest.raises(ExportError, match="export of a image tokenizer; expected a speech tokenizer"):
        pipelines.load(oned_export, modality="audio")
    audio = _copy_export(oned_export, tmp_path / "audio", modality="audio")
    with pytest.raises(ExportError, match="export of a speech tokenizer; expected a image tokenizer"):
        pipelines.load(audio, modality="image")
    alien = _copy_export(oned_export, tmp_path / "alien", architecture="image/unknown")
    with pytest.raises(ExportError, match="unknown architecture 'image/unknown'"):
        pipelines.load(alien)
    damaged = _copy_export(oned_export, tmp_path / "damaged")
    with open(os.path.join(damaged, "model.safetensors"), "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(ExportError, match="does not match the sha256"):
        pipelines.load(damaged)


def test_bad_ids_and_images_raise_documented_errors(oned_export, tmp_path):
    tok = pipelines.load(oned_export)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 1000\), got min 0 max 1000"):
        tok.decode(torch.tensor([[0, 1000]]))
    with pytest.raises(ValueError, match="ids must lie in"):
        tok.decode(np.array([[-1, 3]]))
    with pytest.raises(ValueError, match="decodes 1..8 tokens per sample, got 9"):
        tok.decode(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match=r"must be \[B, k\].*got shape \(1, 2, 3\)"):
        tok.decode(torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="must be integers"):
        tok.decode(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="3 channels \\(RGB\\) in dim 1, got 4"):
        tok.encode(torch.zeros(2, 4, 32, 32))
    with pytest.raises(ValueError, match=r"\[H, W, 3\] uint8 RGB, got shape \(32, 32, 1\) \(1 channels\)"):
        tok.encode(np.zeros((32, 32, 1), dtype=np.uint8))
    with pytest.raises(ValueError, match="must be 32x32 for this tokenizer"):
        tok.encode(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\]"):
        tok.encode(torch.full((1, 3, 32, 32), 255.0))
    with pytest.raises(ValueError, match="num_tokens must be in 1..8"):
        tok.encode(torch.zeros(1, 3, 32, 32), num_tokens=9)
    wav = tmp_path / "clip.wav"
    wav.write_bytes(b"RIFF")
    with pytest.raises(ValueError, match="is not an image file"):
        tok.encode([str(wav)])


def test_grid_export_needs_every_token(trained, tmp_path):
    out = str(tmp_path / "grid")
    export_checkpoint(trained["grid"][1], out)
    tok = pipelines.load(out)
    with pytest.raises(ValueError, match="decodes exactly 64 tokens per sample, got 8"):
        tok.decode(torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="encodes every 64 tokens"):
        tok.encode(_images(1), num_tokens=8)


def test_export_never_overwrites_foreign_folders_and_replaces_old_exports(trained, oned_export, tmp_path):
    mine = tmp_path / "my_results"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    with pytest.raises(ExportError, match="not written by `tokenizers-mm export` .it holds notes.txt.; choose another --out"):
        export_checkpoint(trained["oned"][1], str(mine))
    assert (mine / "notes.txt").read_text() == "precious" and os.listdir(mine) == ["notes.txt"]
    out = _copy_export(oned_export, tmp_path / "again")
    export_checkpoint(trained["grid"][1], out)  # an earlier export is replaced as a whole
    assert json.load(open(os.path.join(out, "config.json")))["architecture"] == "image/grid"
    assert sorted(os.listdir(out)) == sorted([*EXPORT_FILES, MADE_BY_FILE])
    assert not [n for n in os.listdir(tmp_path) if ".tmp" in n or ".old" in n or ".partial" in n]


# ---- CLI -------------------------------------------------------------------------------------------------
def test_cli_encode_decode_round_trip_on_png_files(oned_export, photo_dir, tmp_path, capsys):
    files = sorted(os.path.join(r, n) for r, _, ns in os.walk(photo_dir) for n in ns)
    pngs = [f for f in files if f.endswith(".png")]
    npz = str(tmp_path / "tokens.npz")
    assert main(["encode", "--model", oned_export, *pngs, "--out", npz, "--num-tokens", "5"]) == 0
    with np.load(npz, allow_pickle=False) as z:
        ids, keys, meta = z["ids"], list(z["keys"]), json.loads(str(z["meta"]))
    assert ids.shape == (len(pngs), 5) and ids.dtype == np.uint16
    assert keys == [os.path.splitext(os.path.basename(p))[0] for p in pngs]
    assert meta["modality"] == "image" and meta["num_tokens"] == 5 and meta["codebook_size"] == 1000
    tok = pipelines.load(oned_export)
    assert np.array_equal(ids, tok.encode(pngs, num_tokens=5).numpy())
    out = tmp_path / "recon"
    assert main(["decode", "--model", oned_export, npz, "--out", str(out)]) == 0
    expected = tok.decode(ids.astype(np.int64))
    for key, img in zip(keys, expected):
        written = np.asarray(Image.open(out / f"{key}.png"))
        assert written.shape == (32, 32, 3)
        assert np.array_equal(written, tok.to_pil(img[None])[0])
    assert (out / "_grid.png").exists()
    assert len(pngs) == 3 and "decoded 3 image(s) from 5 tokens" in capsys.readouterr().out
    # a whole folder encodes too (png, jpg and webp files)
    assert main(["encode", "--model", oned_export, photo_dir, "--out", npz]) == 0
    assert np.load(npz)["ids"].shape == (len(files), 8)


def test_cli_decode_refuses_tokens_of_another_codebook(oned_export, tmp_path, capsys):
    from pipelines.files import save_tokens

    npz = str(tmp_path / "other.npz")
    save_tokens(npz, torch.zeros(2, 4, dtype=torch.long), ["a", "b"],
                {"modality": "image", "codebook_size": 4096, "model_id": "x" * 64})
    assert main(["decode", "--model", oned_export, npz, "--out", str(tmp_path / "o")]) == 2
    assert "ids of a 4096-code codebook; the model has 1000 codes" in capsys.readouterr().err
    assert main(["encode", "--model", str(tmp_path), "x.png", "--out", npz]) == 2
    assert "is not a tokenizers-mm export" in capsys.readouterr().err


# ---- pre-tokenization --------------------------------------------------------------------------------------
def test_tokenize_writes_token_shards_the_data_layer_reads_back(oned_export, embedded, tmp_path):
    from pipelines.tokenize import tokenize_shards

    src = os.path.join(embedded, "image")
    n_val = json.load(open(os.path.join(src, "dataset.json")))["counts"]["val"]
    out = str(tmp_path / "tokens")
    # two "ranks" share the job: rank 0 takes shards 0 and 2, rank 1 shard 1
    m0 = tokenize_shards(oned_export, src, out, split="val", rank=0, world_size=2, num_workers=1, batch_size=16,
                         progress=False)
    assert not m0["complete"] and m0["shards"] == {"val": ["val-000000.tar", "val-000002.tar"]}
    m = tokenize_shards(oned_export, src, out, split="val", rank=1, world_size=2, num_workers=0, batch_size=16,
                        progress=False)
    assert m["complete"] and m["counts"] == {"val": n_val} and m["skipped_samples"] == 0
    assert m["tokens"]["num_tokens"] == 8 and m["modality"] == "tokens"
    assert json.load(open(os.path.join(out, "dataset.json"))) == m

    # read back through the data layer, exactly as a generator's training would
    dm = ShardDataModule(modality="tokens", train_urls=out, val_urls=out, batch_size=8, val_batch_size=16,
                         num_workers=0, tokens={"num_tokens": 6})
    dm.setup("validate")
    got = {}
    for batch in dm.val_dataloader():
        assert batch["ids"].dtype == torch.int64 and batch["ids"].shape[1] == 6
        for key, row, pad in zip(batch["__key__"], batch["ids"], batch["pad"]):
            if not pad:
                got[key] = row
    # reference: the same images through the same preprocessing and the pipeline
    tok = pipelines.load(oned_export)
    stream = EvalStream(expand_urls(src, split="val"), make_decoder("image", False, image=ImageOptions(
        size=32, val_resize=48)), batch_size=24)
    assert len(got) == n_val
    for batch in stream:
        ref = tok.encode(batch["image"], num_tokens=6)
        for key, row in zip(batch["__key__"], ref):
            assert torch.equal(got[key], row), key

    # resumable: after an interrupted run, the rerun does only the missing shards and leaves finished ones alone
    out2 = str(tmp_path / "tokens2")
    tokenize_shards(oned_export, src, out2, split="val", rank=0, world_size=2, num_workers=0, progress=False)
    assert not os.path.exists(out2)  # incomplete: nothing under the final name yet
    staged = os.path.join(str(tmp_path), ".tokens2.partial", "val-000000.tar")
    before = os.stat(staged).st_mtime_ns
    m = tokenize_shards(oned_export, src, out2, split="val", num_workers=0, progress=False)
    assert m["complete"] and m["counts"] == {"val": n_val}
    assert os.stat(os.path.join(out2, "val-000000.tar")).st_mtime_ns == before
    for name in ("val-000000.tar", "val-000001.tar", "val-000002.tar"):
        assert open(os.path.join(out, name), "rb").read() == open(os.path.join(out2, name), "rb").read()


def test_tokenize_skips_and_counts_corrupt_samples(oned_export, embedded, tmp_path, capsys):
    import webdataset as wds

    shard = str(tmp_path / "src" / "val-000000.tar")
    os.makedirs(os.path.dirname(shard))
    src = expand_urls(os.path.join(embedded, "image"), split="val")[0]
    with wds.TarWriter(shard) as w:
        w.write({"__key__": "broken", "jpg": b"\xff\xd8 not a jpeg"})
        for i, s in enumerate(wds.WebDataset(src, shardshuffle=False)):
            if i == 5:
                break
            w.write({k: v for k, v in s.items() if not k.startswith("__") or k == "__key__"})
    out = str(tmp_path / "tok")
    assert main(["tokenize", "--model", oned_export, "--data", shard, "--out", out, "--workers", "0",
                 "--num-tokens", "4"]) == 0
    m = json.load(open(os.path.join(out, "dataset.json")))
    assert m["counts"] == {"val": 5} and m["skipped_samples"] == 1 and m["tokens"]["num_tokens"] == 4
    assert "5} samples, 1 skipped, complete" in capsys.readouterr().out
    # decode straight from the token shards
    assert main(["decode", "--model", oned_export, out, "--out", str(tmp_path / "png")]) == 0
    assert len([n for n in os.listdir(tmp_path / "png") if n.endswith(".png") and not n.startswith("_")]) == 5


class _NotATensor:
    """Any object a checkpoint might pickle: weights-only loading must refuse it."""


def test_export_reads_checkpoints_weights_only(tmp_path, capsys):
    bad = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "payload": _NotATensor()}, bad)
    with pytest.raises(ValueError, match="weights-only load failed"):
        export_checkpoint(str(bad), str(tmp_path / "out"))
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, plain)
    assert main(["export", "--ckpt", str(plain), "--out", str(tmp_path / "out")]) == 2
    assert "not written by a tokenizers-mm module" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
