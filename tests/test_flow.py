"""The rectified-flow decoder family: conventions, sampling, the image flow codec, VAE latents, REPA."""

import os

import pytest
import pytorch_lightning as pl
import torch

import pipelines
from tokenizers_mm.export import export_checkpoint
from tokenizers_mm.flow import (
    DenoiserConfig,
    FlowConfig,
    FlowDenoiser,
    flow_matching_loss,
    interpolate,
    sample_flow,
    sample_sigmas,
    seeded_noise,
)
from tokenizers_mm.image.flow_codec import FlowImageCodec, patchify, unpatchify
from tokenizers_mm.image.flow_tokenizer import FlowImageModule

TINY = {"image_size": 32, "patch_size": 8, "num_tokens": 8, "encoder": {"width": 64, "depth": 2, "heads": 2},
        "denoiser": {"width": 64, "depth": 2, "heads": 2}, "decoder_patch_size": 8, "stem_channels": 16,
        "quantizer": {"kind": "fsq", "levels": [8, 5, 5, 5], "batch_norm": True}}


def test_sampler_with_the_exact_velocity_lands_on_the_data():
    """The scheduler integrates dx/dsigma = noise - x0 from sigma=1 to 0: with the exact velocity of the
    straight path (x - x0) / sigma every step count and shift returns x0."""
    x0 = torch.randn(3, 5, 7)
    oracle = lambda x, s: (x - x0) / s.view(-1, 1, 1)  # noqa: E731
    for steps, shift in [(1, 1.0), (2, 1.0), (25, 1.0), (4, 3.0)]:
        out = sample_flow(oracle, x0.shape, steps, shift=shift, noise=seeded_noise(x0.shape, [0, 1, 2]))
        assert torch.allclose(out, x0, atol=1e-5), (steps, shift)
    # and the interpolation is the path that velocity describes
    noise, sigma = torch.randn(3, 5, 7), torch.tensor([0.0, 0.5, 1.0])
    xt = interpolate(x0, noise, sigma)
    assert torch.allclose(xt[0], x0[0]) and torch.allclose(xt[2], noise[2])
    assert torch.allclose(xt[1], 0.5 * (x0[1] + noise[1]))


def test_training_sigmas_are_logit_normal_and_shifted():
    s = sample_sigmas(20000, FlowConfig(), generator=torch.Generator().manual_seed(0))
    assert 0 < float(s.min()) and float(s.max()) < 1 and abs(float(s.median()) - 0.5) < 0.02
    shifted = sample_sigmas(20000, FlowConfig(shift=3.0), generator=torch.Generator().manual_seed(0))
    assert float(shifted.median()) == pytest.approx(0.75, abs=0.02)  # 3 * 0.5 / (1 + 2 * 0.5)


def test_tiny_denoiser_overfits_one_batch_and_samples_it_back():
    """Loss convention (target noise - x0 at x_sigma) and the sampler agree: after overfitting two targets
    given two token sets, Euler sampling from fresh noise returns each target for its tokens."""
    torch.manual_seed(0)
    x0 = torch.randn(2, 4, 6)
    tokens = torch.randn(2, 3, 8)
    keep = torch.ones(2, 3, dtype=torch.bool)
    net = FlowDenoiser(6, 4, 8, 3, DenoiserConfig(width=64, depth=2, heads=2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(1000):
        sigma = torch.rand(2)
        loss = flow_matching_loss(lambda x, s: net(x, s, tokens, keep), x0, sigma)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = sample_flow(lambda x, s: net(x, s, tokens, keep), x0.shape, 25, generator=torch.Generator().manual_seed(5))
    err = (out - x0).pow(2).mean() / x0.pow(2).mean()
    assert err < 0.05, float(err)
    swapped = (out.flip(0) - x0).pow(2).mean() / x0.pow(2).mean()
    assert swapped > 0.5  # each sample follows its own tokens


def test_patchify_round_trip():
    x = torch.randn(2, 3, 16, 24)
    p = patchify(x, 4)
    assert p.shape == (2, 24, 48)
    assert torch.equal(unpatchify(p, 4, 3, 16, 24), x)


def test_flow_codec_sampling_shapes_seeds_and_guidance():
    torch.manual_seed(0)
    codec = FlowImageCodec(**TINY).eval()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    ids = codec.encode(x)
    assert ids.shape == (3, 8) and ids.dtype == torch.int64
    for steps in (1, 4):
        for k in (1, 8):
            out = codec.decode(ids[:, :k], steps=steps, seed=7)
            assert out.shape == (3, 3, 32, 32) and out.min() >= -1 and out.max() <= 1
    a = codec.decode(ids, steps=4, seed=7)
    assert torch.equal(a, codec.decode(ids, steps=4, seed=7))  # reproducible
    assert not torch.equal(a, codec.decode(ids, steps=4, seed=8))
    # a sample does not depend on the batch it is decoded in: sample 2 alone with its own seed
    assert torch.allclose(codec.decode(ids[2:], steps=4, seed=[9]), a[2:], atol=1e-5)
    guided = codec.decode(ids, steps=2, cfg_scale=3.0, seed=7)
    assert guided.shape == a.shape and torch.isfinite(guided).all()
    with pytest.raises(ValueError, match="sampling steps must be >= 1"):
        codec.decode(ids, steps=0)
    with pytest.raises(ValueError, match=r"1 <= k <= 8"):
        codec.decode(torch.zeros(1, 9, dtype=torch.long))


def _datamodule(embedded, steps=4, val=False):
    from tokenizers_mm.data import ShardDataModule

    return ShardDataModule(modality="image", train_urls=os.path.join(embedded, "image"),
                           val_urls=os.path.join(embedded, "image") if val else None, batch_size=4,
                           val_batch_size=8, max_val_samples=8, batches_per_epoch=steps, num_workers=0,
                           image={"size": 32})


def _fit(model, dm, steps, root, trace: str | None = None, values: list | None = None):
    """Train ``steps`` steps without validation; with ``trace``, append that logged metric after every step
    to ``values``."""
    callbacks = []
    if trace:
        class Trace(pl.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                values.append(float(trainer.callback_metrics[trace]))

        callbacks.append(Trace())
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root),
                         limit_val_batches=0, callbacks=callbacks)
    trainer.fit(model, datamodule=dm)
    return trainer


def _tiny_vae(path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16),
                        layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=32)
    vae.save_pretrained(path)
    return vae


def test_vae_latents_train_export_and_decode(embedded, tmp_path):
    vae = _tiny_vae(str(tmp_path / "vae"))
    model = FlowImageModule(**{**TINY, "decoder_patch_size": 2}, vae_path=str(tmp_path / "vae"))
    assert model.codec.target_side == 16 and model.codec.target_channels == 4
    assert torch.equal(model.codec.vae.decoder.conv_out.weight, vae.decoder.conv_out.weight)
    before = {k: v.clone() for k, v in model.codec.vae.state_dict().items()}
    trainer = _fit(model, _datamodule(embedded, 3), 3, tmp_path)
    assert all(torch.equal(before[k], v) for k, v in model.codec.vae.state_dict().items())  # frozen
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    export_checkpoint(str(tmp_path / "m.ckpt"), str(tmp_path / "export"))
    os.rename(tmp_path / "vae", tmp_path / "vae_moved")  # the export does not need the VAE folder any more
    tok = pipelines.load(str(tmp_path / "export"))
    model.eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    ids = tok.encode(x)
    assert torch.equal(ids, model.encode(x).ids)
    out = tok.decode(ids[:, :4], steps=2, seed=3)
    assert out.shape == (2, 3, 32, 32)
    assert torch.allclose(out, model.decode(ids[:, :4], steps=2, seed=[3, 4]), atol=1e-5)


def test_repa_alignment_with_a_local_teacher_falls_and_stays_out_of_exports(embedded, tmp_path):
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    teacher = torchvision.models.resnet18(weights=None)
    save_file(teacher.state_dict(), str(tmp_path / "teacher.safetensors"))
    model = FlowImageModule(**TINY, repa={"weight": 0.5, "teacher_path": str(tmp_path / "teacher.safetensors"),
                                        "teacher_arch": "resnet18", "teacher_layer": "layer2", "teacher_size": 64,
                                        "block": 1}, optimizer={"lr": 2e-3})
    seen = []
    trainer = _fit(model, _datamodule(embedded, 25), 25, tmp_path, trace="train/repa", values=seen)
    assert sum(seen[-5:]) / 5 < 0.8 * sum(seen[:5]) / 5, seen
    assert not any(k.startswith("_teacher") for k in model.state_dict())
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    cfg = export_checkpoint(str(tmp_path / "m.ckpt"), str(tmp_path / "export"))
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "export" / "model.safetensors"))
    assert not any(k.startswith(("repa", "_teacher")) for k in keys) and cfg["architecture"] == "image/flow"
    with pytest.raises(FileNotFoundError, match="REPA teacher weights file not found"):
        FlowImageModule(**TINY, repa={"weight": 0.5, "teacher_path": str(tmp_path / "missing.pt")})


def test_flow_export_decode_options_through_pipelines(embedded, tmp_path):
    torch.manual_seed(0)
    model = FlowImageModule(**TINY)
    trainer = _fit(model, _datamodule(embedded, 2), 2, tmp_path)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    cfg = export_checkpoint(str(tmp_path / "m.ckpt"), str(tmp_path / "export"))
    assert cfg["tokens"]["decoder"] == "rectified_flow" and cfg["tokens"]["default_steps"] == 25
    tok = pipelines.load(str(tmp_path / "export"))
    assert tok.decode_options == {"steps", "cfg_scale", "seed"}
    ids = tok.encode(torch.rand(5, 3, 32, 32) * 2 - 1)
    full = tok.decode(ids, steps=3, seed=11)
    assert torch.allclose(tok.decode(ids, steps=3, seed=11, batch_size=2), full, atol=1e-5)  # batching-independent
    with pytest.raises(TypeError, match="unknown decode option"):
        tok.decode(ids, temperature=0.5)
    # the CLI passes the sampling options through
    from pipelines.files import save_tokens, token_meta
    from tokenizers_mm.cli import main

    save_tokens(str(tmp_path / "t.npz"), ids, [f"s{i}" for i in range(5)], token_meta(tok, 8))
    assert main(["decode", "--model", str(tmp_path / "export"), str(tmp_path / "t.npz"), "--out",
                 str(tmp_path / "png"), "--steps", "3", "--seed", "11"]) == 0
    import numpy as np
    from PIL import Image

    written = np.asarray(Image.open(tmp_path / "png" / "s4.png"))
    assert np.array_equal(written, np.asarray(tok.to_pil(full[4:5])[0]))


def test_reflow_student_keeps_the_tokens_and_straightens_the_teacher(embedded, tmp_path):
    from tokenizers_mm.flow import sample_flow
    from tokenizers_mm.image.flow_reflow import FlowReflowModule

    torch.manual_seed(0)
    teacher = FlowImageModule(**TINY, token_mix="pyramid", flow={"prediction": "x0"}, optimizer={"lr": 1e-3})
    _fit(teacher, _datamodule(embedded, 30), 30, tmp_path / "t").save_checkpoint(tmp_path / "teacher.ckpt")
    student = FlowReflowModule(teacher=str(tmp_path / "teacher.ckpt"), teacher_steps=12, student_steps=1,
                         optimizer={"lr": 1e-3})
    assert student.codec.flow.default_steps == 1 and student.hparams["codec"]["flow"]["default_steps"] == 1
    # the reflow loss on fixed pairs and fixed noise levels (per-batch training losses of 4 images are too noisy)
    probe = next(iter(_datamodule(embedded, 1).train_dataloader()))["image"]
    torch.manual_seed(1)
    probe_pairs = student.make_pairs(probe, seeded_noise((probe.shape[0], 16, 192), [5, 6, 7, 8]))

    def probe_loss() -> float:
        torch.manual_seed(2)
        with torch.no_grad():
            return float(sum(student.reflow_loss(probe_pairs) for _ in range(4)) / 4)

    before = probe_loss()
    trainer = _fit(student, _datamodule(embedded, 40), 40, tmp_path)
    assert probe_loss() < 0.85 * before, (probe_loss(), before)
    teacher.eval()
    student.eval()
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    ids = teacher.encode(x).ids
    assert torch.equal(student.encode(x).ids, ids)  # the frozen token side: token shards stay valid

    trainer.save_checkpoint(tmp_path / "student.ckpt")
    cfg = export_checkpoint(str(tmp_path / "student.ckpt"), str(tmp_path / "export"))
    assert cfg["tokens"]["default_steps"] == 1 and cfg["architecture"] == "image/flow"
    assert torch.equal(pipelines.load(str(tmp_path / "export")).encode(x), ids)

    # the objective straightens: trained on fixed pairs, one student step lands on the teacher's 12-step
    # endpoint, which one teacher step misses
    student.train()
    z = seeded_noise((4, 16, 192), [1, 2, 3, 4])
    pairs = student.make_pairs(x, z)
    one_teacher = sample_flow(lambda a, s: student.teacher().velocity(a, s, pairs["tokens"], pairs["seen"], 1.0),
                              z.shape, 1, noise=z)
    opt = torch.optim.Adam(student.codec.denoiser.parameters(), lr=1e-3)
    for _ in range(150):
        loss = student.reflow_loss(pairs)
        opt.zero_grad()
        loss.backward()
        opt.step()
    one_student = sample_flow(lambda a, s: student.codec.velocity(a, s, pairs["tokens"], pairs["seen"], 1.0),
                              z.shape, 1, noise=z)
    d_teacher = (one_teacher - pairs["x_hat"]).pow(2).mean()
    d_student = (one_student - pairs["x_hat"]).pow(2).mean()
    assert d_student < 0.3 * d_teacher, (float(d_student), float(d_teacher))


def test_evaluate_reports_quality_against_sampling_steps(embedded, tmp_path, capsys):
    import json

    from tokenizers_mm.cli import main

    torch.manual_seed(0)
    model = FlowImageModule(**TINY, token_mix="pyramid")
    _fit(model, _datamodule(embedded, 2), 2, tmp_path).save_checkpoint(tmp_path / "m.ckpt")
    out = tmp_path / "report"
    assert main(["evaluate", "--ckpt", str(tmp_path / "m.ckpt"), "--data", os.path.join(embedded, "image"),
                 "--out", str(out), "--max-samples", "6", "--size", "32", "--no-baselines",
                 "--steps", "2", "1"]) == 0
    report = json.load(open(out / "report.json"))
    rows = report["details"]["per_k_and_steps"]
    assert sorted((r["value"], r["steps"]) for r in rows) == [(k, s) for k in (1, 2, 4, 8) for s in (1, 2)]
    assert all(r["timing"]["decode_ms_per_sample"] > 0 for r in rows)
    assert [r["steps"] for r in report["rows"]] == [2, 2, 2, 2] and report["details"]["sampling"]["steps"] == [1, 2]
    printed = capsys.readouterr().out
    assert "PSNR / SSIM @1 steps" in printed and "decode time per image at k=8" in printed
    for name in ("quality_vs_steps.png", "reconstructions_by_steps.png", "reconstructions.png"):
        assert os.path.getsize(out / name) > 1000
    # the same seeds give the same numbers
    again = tmp_path / "again"
    main(["evaluate", "--ckpt", str(tmp_path / "m.ckpt"), "--data", os.path.join(embedded, "image"), "--out",
          str(again), "--max-samples", "6", "--size", "32", "--no-baselines", "--steps", "1", "2"])
    again_rows = json.load(open(again / "report.json"))["details"]["per_k_and_steps"]
    assert [r["metrics"]["psnr"] for r in again_rows] == [r["metrics"]["psnr"] for r in rows]


def _tiny_flow_config(tmp_path, embedded, **model):
    """The flextok_flow_tiny recipe shrunk to 32 px and K = 8 for the default suite."""
    from tokenizers_mm import recipes

    cfg = recipes.resolve(recipes.files("flextok_flow_tiny"))
    cfg["model"]["init_args"].update({"image_size": 32, "num_tokens": 8, "val_steps": 8, **model})
    cfg["data"].update({"train_urls": os.path.join(embedded, "image"), "val_urls": os.path.join(embedded, "image"),
                        "max_val_samples": 48, "val_batch_size": 48})
    cfg["data"]["image"].update({"size": 32, "resize": [32, 64], "val_resize": 48})
    return cfg


def _train_from_config(cfg, steps, tmp_path):
    from tokenizers_mm.data import ShardDataModule

    pl.seed_everything(0)
    model = FlowImageModule(**cfg["model"]["init_args"])
    dm = ShardDataModule(**{**cfg["data"], "batches_per_epoch": steps})
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    untrained = trainer.validate(model, datamodule=dm, verbose=False)[0]
    trainer.fit(model, datamodule=dm)
    trained = trainer.validate(model, datamodule=dm, verbose=False)[0]
    # tokens carry image-specific content: decoding each image's own tokens beats another image's tokens
    from tokenizers_mm.eval.image_metrics import psnr

    x = next(iter(dm.val_dataloader()))["image"]
    model.eval()
    with torch.no_grad():
        ids = model.encode(x).ids
        own = psnr(model.decode(ids, steps=8, seed=0), x).mean()
        other = psnr(model.decode(ids.roll(1, 0), steps=8, seed=0), x).mean()
    trained["own_tokens_psnr"], trained["other_tokens_psnr"] = float(own), float(other)
    return untrained, trained


def test_short_training_of_the_tiny_config_quality_rises_with_k(embedded, tmp_path):
    """The tiny flow config's recipe (x0-parameterized denoiser, pyramid token mix, shift 3), shrunk: after a short
    CPU training, samples decoded from all K tokens are closer to the images than from the first token."""
    untrained, trained = _train_from_config(_tiny_flow_config(tmp_path, embedded), 150, tmp_path)
    assert trained["val/flow"] < 0.7 * untrained["val/flow"]
    assert trained["val/psnr_k8"] > trained["val/psnr_k1"] + 0.5, trained
    assert trained["own_tokens_psnr"] > trained["other_tokens_psnr"] + 1.0, trained


@pytest.mark.slow
def test_tiny_flow_config_full_length(embedded, tmp_path):
    """The flextok_flow_tiny recipe at its own size (64 px, K = 32) for 700 steps (~5 min on 2 cores)."""
    cfg = _tiny_flow_config(tmp_path, embedded, image_size=64, num_tokens=32)
    cfg["data"]["image"].update({"size": 64, "resize": [64, 128], "val_resize": 96})
    _, trained = _train_from_config(cfg, 700, tmp_path)
    assert trained["val/psnr_k32"] > trained["val/psnr_k1"] + 0.8, trained
    assert trained["own_tokens_psnr"] > trained["other_tokens_psnr"] + 1.0, trained
