"""The harness end to end: learning, exact resume through the CLI, DDP on CPU, atomic checkpoints."""

import json
import os
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
import yaml

from tokenizers_mm.checkpointing import AtomicCheckpointIO, load_tokenizer
from tokenizers_mm.cli import main
from tokenizers_mm.data import ShardDataModule
from tokenizers_mm.harness import lr_factor
from tokenizers_mm.image.fsq_autoencoder import GridImageModule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(tmp_path, embedded, **trainer) -> str:
    """The shipped demo config, shrunk: small model, few steps, checkpoints every 3 steps."""
    with open(os.path.join(ROOT, "configs/image/fsq_ae_tiny.yaml")) as f:
        cfg = yaml.safe_load(f)
    cfg["trainer"].update({"default_root_dir": str(tmp_path / "run"), "max_steps": 6, "val_check_interval": 3,
                           "enable_progress_bar": False, "log_every_n_steps": 1, **trainer})
    cfg["trainer"]["callbacks"][0]["init_args"]["every_n_train_steps"] = 3
    cfg["trainer"]["callbacks"].append({"class_path": "tokenizers_mm.callbacks.DataTrace",
                                        "init_args": {"out_dir": str(tmp_path / "trace")}})
    cfg["model"]["init_args"].update({"base_channels": 8, "latent_dim": 16})
    cfg["data"].update({"train_urls": os.path.join(embedded, "image"), "val_urls": os.path.join(embedded, "image"),
                        "batch_size": 4, "val_batch_size": 8, "batches_per_epoch": 6, "max_val_samples": 16,
                        "num_workers": 1})
    cfg["data"]["image"]["size"] = 32
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _trace(tmp_path, rank=0):
    with open(tmp_path / "trace" / f"data_trace_rank{rank}.json") as f:
        return json.load(f)


def test_lr_schedule():
    assert lr_factor(0, 10, 100, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(55, 10, 100, "cosine", 0.0) == pytest.approx(0.5)
    assert lr_factor(50, 0, 100, "constant", 0.1) == 1.0


def test_encode_decode_contract():
    torch.manual_seed(0)
    model = GridImageModule(base_channels=8, latent_dim=16).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    tokens = model.encode(x)
    assert tokens.ids.shape == (2, 16) and tokens.ids.dtype == torch.int64
    assert 0 <= int(tokens.ids.min()) and int(tokens.ids.max()) < model.codebook_size == 1000
    y = model.decode(tokens)
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    assert torch.equal(model.encode(x).ids, tokens.ids) and torch.equal(model.decode(tokens), y)
    assert torch.allclose(model(x)["recon"].clamp(-1, 1), y, atol=1e-5)
    with pytest.raises(ValueError, match=r"expected images \[B, 3, H, W\]"):
        model.encode(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="lie in"):
        model.decode(torch.full((1, 16), 1000))


def test_fsq_autoencoder_learns_on_embedded_photos(embedded, tmp_path):
    pl.seed_everything(0)
    dm = ShardDataModule(modality="image", train_urls=os.path.join(embedded, "image"),
                         val_urls=os.path.join(embedded, "image"), batch_size=8, batches_per_epoch=90,
                         num_workers=1, max_val_samples=32, image={"size": 32, "resize": [32, 64], "val_resize": 48})
    model = GridImageModule(base_channels=16, channel_mults=[1, 2], latent_dim=32,
                           optimizer={"lr": 2e-3, "warmup_steps": 10, "min_lr_ratio": 0.1})
    trainer = pl.Trainer(max_steps=90, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, default_root_dir=str(tmp_path), log_every_n_steps=5)
    before = trainer.validate(model, datamodule=dm, verbose=False)[0]
    trainer.fit(model, datamodule=dm)
    after = trainer.validate(model, datamodule=dm, verbose=False)[0]
    assert trainer.global_step == 90
    assert after["val/pixel"] < 0.4 * before["val/pixel"], (before, after)
    assert after["val/psnr"] > before["val/psnr"] + 4
    assert after["val/codebook_usage"] > 0.02


def test_training_goes_on_over_corrupt_samples(embedded, tmp_path):
    import webdataset as wds

    from tokenizers_mm.data.urls import expand_urls

    shards = []
    for i, src in enumerate(expand_urls(os.path.join(embedded, "image"), split="train")[:2]):
        out = str(tmp_path / f"train-{i:06d}.tar")
        with wds.TarWriter(out) as w:
            w.write({"__key__": f"bad{i}", "jpg": b"\xff\xd8 not a jpeg"})
            for s in wds.WebDataset(src, shardshuffle=False):
                w.write({k: v for k, v in s.items() if k not in ("__url__", "__local_path__")})
        shards.append(out)
    dm = ShardDataModule(modality="image", train_urls=shards, batch_size=4, batches_per_epoch=12, num_workers=0,
                         shuffle_buffer=0, image={"size": 32})
    model = GridImageModule(base_channels=8, latent_dim=16)
    trainer = pl.Trainer(max_steps=12, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 12
    assert model.skipped_samples >= 1


def test_cli_fit_then_exact_resume_from_last(embedded, tmp_path):
    cfg = tiny_config(tmp_path, embedded)
    main(["fit", "--config", cfg])
    ckpts = tmp_path / "run" / "checkpoints"
    assert (ckpts / "last.ckpt").exists()
    first = _trace(tmp_path)
    assert first["start_step"] == 0 and first["end_step"] == 6 and first["optimizer_step_state"] is None
    saved = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 6
    main(["fit", "--config", cfg, "--trainer.max_steps", "12", "--ckpt_path", "last"])
    resumed = _trace(tmp_path)
    assert resumed["start_step"] == 6 and resumed["end_step"] == 12
    assert resumed["optimizer_step_state"] == 6  # AdamW state came back from the checkpoint
    final = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["global_step"] == 12
    assert os.path.exists(tmp_path / "run" / "metrics.csv")
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(tmp_path / "run"))
    assert os.listdir(tmp_path / "run" / "samples")
    model = load_tokenizer(str(ckpts / "last.ckpt"))
    assert isinstance(model, GridImageModule) and not model.training


def test_ddp_two_cpu_ranks_same_steps_disjoint_shards(embedded, tmp_path):
    cfg = tiny_config(tmp_path, embedded, devices=2, strategy="ddp", accelerator="cpu")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "tokenizers_mm.cli", "fit", "--config", cfg],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = _trace(tmp_path, 0), _trace(tmp_path, 1)
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["end_step"] == r1["end_step"] == 6
    assert r0["train_batches"] == r1["train_batches"] == 6
    assert r0["val_batches"] == r1["val_batches"] > 0
    s0, s1 = set(r0["train_shards"]), set(r1["train_shards"])
    assert s0 and s1 and not s0 & s1


def test_atomic_checkpoint_keeps_previous_file_on_crash(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "ck" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    good = path.read_bytes()

    def failing_save(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    assert path.read_bytes() == good
    assert os.listdir(path.parent) == ["last.ckpt"]


def test_load_tokenizer_rejects_foreign_files(tmp_path):
    bad = tmp_path / "x.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable tokenizers-mm checkpoint"):
        load_tokenizer(str(bad))
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    with pytest.raises(ValueError, match="was not written by a tokenizers-mm module"):
        load_tokenizer(str(tmp_path / "plain.ckpt"))
    torch.save({"tokenizers_mm_class": "os.system", "state_dict": {}}, tmp_path / "evil.ckpt")
    with pytest.raises(ValueError, match="outside the tokenizers_mm package"):
        load_tokenizer(str(tmp_path / "evil.ckpt"))
    with pytest.raises(FileNotFoundError):
        load_tokenizer(str(tmp_path / "missing.ckpt"))
