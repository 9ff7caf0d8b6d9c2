"""1D image tokenizers: ordering regularizers, encode/decode contract, GAN stepping, learning."""

from collections import Counter

import pytest
import pytorch_lightning as pl
import torch

from tokenizers_mm.image.ordering import NestedDropout, TailTokenDrop, build_ordering, sample_keep_lengths
from tokenizers_mm.image.tokenizer1d import OneDImageModule, eval_token_counts

TINY = {"image_size": 32, "patch_size": 8, "num_tokens": 8, "encoder": {"width": 64, "depth": 2, "heads": 2},
        "decoder": {"width": 64, "depth": 2, "heads": 2}, "stem_channels": 16,
        "quantizer": {"kind": "fsq", "levels": [8, 5, 5, 5]}}


def test_sample_keep_lengths_distributions():
    g = torch.Generator().manual_seed(0)
    n = 20000
    uni = Counter(sample_keep_lengths(n, 8, "uniform", g).tolist())
    assert set(uni) == set(range(1, 9)) and all(abs(c / n - 1 / 8) < 0.015 for c in uni.values())
    p2 = Counter(sample_keep_lengths(n, 8, "pow2", g).tolist())
    assert set(p2) == {1, 2, 4, 8} and all(abs(c / n - 1 / 4) < 0.02 for c in p2.values())
    up = Counter(sample_keep_lengths(n, 8, "uniform_pow2", g).tolist())
    # buckets {1}, {2}, {3,4}, {5..8} each 1/4; uniform inside a bucket
    assert set(up) == set(range(1, 9))
    assert abs(up[1] / n - 0.25) < 0.02 and abs(up[2] / n - 0.25) < 0.02
    assert abs((up[3] + up[4]) / n - 0.25) < 0.02 and abs(up[3] / n - 0.125) < 0.015
    assert abs(up[5] / n - 1 / 16) < 0.01 and abs(up[8] / n - 1 / 16) < 0.01
    assert set(sample_keep_lengths(1000, 6, "pow2", g).tolist()) == {1, 2, 4, 6}
    with pytest.raises(ValueError, match="nested dropout mode"):
        sample_keep_lengths(4, 8, "geometric")


def test_nested_dropout_replaces_the_tail_with_the_mask_token():
    nd = NestedDropout(dim=4, mode="uniform").train()
    tokens = torch.randn(3, 6, 4)
    out, keep = nd(tokens, torch.tensor([1, 3, 6]))
    assert keep.tolist() == [[True] + [False] * 5, [True] * 3 + [False] * 3, [True] * 6]
    assert torch.equal(out[keep], tokens[keep])
    assert torch.allclose(out[~keep], nd.mask_token.expand(int((~keep).sum()), 4))
    out, keep = nd(tokens)  # training: random k per sample, always a prefix
    lengths = keep.sum(1)
    assert torch.equal(keep, torch.arange(6)[None] < lengths[:, None]) and int(lengths.min()) >= 1
    nd.eval()
    out, keep = nd(tokens)
    assert keep.all() and torch.equal(out, tokens)
    with pytest.raises(ValueError, match="in 1..6"):
        nd(tokens, 7)


def test_tail_drop_per_batch_and_per_sample():
    tokens = torch.randn(64, 8, 4)
    per_batch = TailTokenDrop(per_sample=False).train()
    _, keep = per_batch(tokens)
    assert len(set(keep.sum(1).tolist())) == 1
    per_sample = TailTokenDrop(per_sample=True).train()
    out, keep = per_sample(tokens)
    assert len(set(keep.sum(1).tolist())) > 1 and torch.equal(out, tokens)  # tokens untouched, tail masked
    assert per_sample.hides_tail and not NestedDropout(4).hides_tail
    with pytest.raises(ValueError, match="ordering must be"):
        build_ordering("random", 4)


def test_eval_token_counts():
    assert eval_token_counts(32) == [1, 2, 4, 8, 16, 32]
    assert eval_token_counts(12) == [1, 2, 4, 8, 12]


@pytest.mark.parametrize("ordering", ["none", "tail_drop", "nested_dropout"])
def test_encode_decode_contract(ordering):
    torch.manual_seed(0)
    model = OneDImageModule(**TINY, ordering={"kind": ordering}, causal_registers=ordering == "nested_dropout").eval()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    tokens = model.encode(x)
    assert tokens.ids.shape == (3, 8) and tokens.ids.dtype == torch.int64
    assert 0 <= int(tokens.ids.min()) and int(tokens.ids.max()) < model.codebook_size
    assert torch.equal(model.encode(x, num_tokens=3).ids, tokens.ids[:, :3])
    for k in (1, 3, 8):
        y = model.decode(tokens.ids[:, :k])
        assert y.shape == x.shape and y.dtype == torch.float32 and -1 <= y.min() and y.max() <= 1
        assert torch.equal(y, model.decode(tokens.ids[:, :k]))  # deterministic in eval
    with pytest.raises(ValueError, match="lie in"):
        model.decode(torch.full((1, 4), model.codebook_size))
    with pytest.raises(ValueError, match=r"1 <= k <= 8"):
        model.decode(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match=r"expected images \[B, 3, 32, 32\]"):
        model.encode(torch.zeros(1, 3, 64, 64))


def test_pyramid_registers_and_token_mix_queries():
    torch.manual_seed(0)
    model = OneDImageModule(**TINY, register_init="pyramid", query_init="token_mix",
                          ordering={"kind": "tail_drop"}).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    feats = model.encoder.embed(x)
    cells = model.encoder._pyramid_cells(feats)  # 4x4 grid: 1 + 4 + 16 = 21 cells, first 8 used
    assert cells.shape == (2, 8, 64)
    assert torch.allclose(cells[:, 0], feats.mean(1), atol=1e-5)  # the first register sees the global mean
    grid = feats.transpose(1, 2).reshape(2, 64, 4, 4)
    assert torch.allclose(cells[:, 1], grid[..., :2, :2].mean((-1, -2)), atol=1e-5)  # then the 2x2 cells
    # token_mix: with tail drop, a hidden token cannot reach the queries through the mix either
    ids = model.encode(x).ids
    y = model.decode(ids[:, :3])
    ids2 = ids.clone()
    ids2[:, 3:] = (ids2[:, 3:] + 1) % model.codebook_size
    assert torch.equal(model.decode(ids2[:, :3]), y)
    with pytest.raises(ValueError, match="register_init"):
        OneDImageModule(**TINY, register_init="random")


def test_pyramid_cover_and_pyramid_query_init():
    from tokenizers_mm.image.tokenizer1d import pyramid_cells_of_tokens

    cover = pyramid_cells_of_tokens(4, 8)  # cells: 1x1, then 2x2 (4), then the first 3 of 4x4
    assert cover.shape == (16, 8) and cover[:, 0].all()
    assert cover[:, 1].nonzero().flatten().tolist() == [0, 1, 4, 5]  # top-left quarter
    assert cover[:, 5].nonzero().flatten().tolist() == [0] and cover[:, 7].nonzero().flatten().tolist() == [2]
    model = OneDImageModule(**TINY, register_init="pyramid", query_init="pyramid")
    mix = model.decoder.mix.detach()
    assert torch.allclose(mix.sum(1), torch.ones(16))
    assert mix[0, 0] == mix[0, 1] == mix[0, 5] and mix[0, 2] == 0  # patch 0: global, its quarter, its cell


def test_causal_registers_do_not_see_later_tokens():
    torch.manual_seed(0)
    model = OneDImageModule(**TINY, causal_registers=True).eval()
    x = torch.rand(1, 3, 32, 32)
    regs = model.encoder(x)
    # perturbing the learned register 5 changes registers >= 5 only
    with torch.no_grad():
        model.encoder.registers[5] += 1.0
    regs2 = model.encoder(x)
    assert torch.allclose(regs[:, :5], regs2[:, :5], atol=1e-6) and not torch.allclose(regs[:, 5:], regs2[:, 5:])


def test_gan_steps_count_generator_steps_and_start_when_configured(tmp_path):
    torch.manual_seed(0)
    model = OneDImageModule(**TINY, ordering={"kind": "tail_drop"},
                          adversarial={"weight": 0.5, "start_step": 3, "discriminator": {"channels": 16, "num_layers": 2}},
                          optimizer={"lr": 1e-3, "grad_clip": 1.0}, ema_decay=0.9)
    d_before = [p.detach().clone() for p in model.discriminator.parameters()]
    d_snapshots = {}

    class Watch(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            d_snapshots[trainer.global_step] = [p.detach().clone() for p in pl_module.discriminator.parameters()]

    batches = [{"image": torch.rand(2, 3, 32, 32) * 2 - 1, "skipped": 0} for _ in range(6)]
    trainer = pl.Trainer(max_steps=5, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, limit_val_batches=0, callbacks=[Watch()])
    trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    assert trainer.global_step == 5  # two optimizers, but max_steps counts generator steps
    # the discriminator is frozen before adversarial.start_step and trains from it on
    assert all(torch.equal(a, b) for a, b in zip(d_before, d_snapshots[3]))
    assert not all(torch.equal(a, b) for a, b in zip(d_snapshots[3], d_snapshots[5]))
    ema_p = next(model.ema.module.parameters())
    assert not torch.equal(ema_p, next(model.generator.parameters()))


@pytest.mark.parametrize("ordering", ["tail_drop", "nested_dropout", "latent_nested_dropout"])
def test_short_training_quality_rises_with_k(embedded, ordering, tmp_path):
    import os

    from tokenizers_mm.data import ShardDataModule

    pl.seed_everything(0)
    steps = 160
    dm = ShardDataModule(modality="image", train_urls=os.path.join(embedded, "image"),
                         val_urls=os.path.join(embedded, "image"), batch_size=16, batches_per_epoch=steps,
                         num_workers=1, max_val_samples=48, image={"size": 32, "resize": [32, 64], "val_resize": 48})
    setup = {"patch_embed": "conv", "patch_head": "conv"}
    if ordering.startswith("latent_"):
        # the first stage (f = 4: an 8 x 8 x 4 latent) trains alone for 60 steps, then the tokenizer for 100
        setup = {"patch_size": 1, "first_stage": {"base_channels": 16, "channel_mults": [1, 2], "latent_channels": 4,
                                                  "train_steps": 60}}
    model = OneDImageModule(**{**TINY, "encoder": {"width": 96, "depth": 2, "heads": 4},
                             "decoder": {"width": 96, "depth": 2, "heads": 4},
                             "quantizer": {"kind": "fsq", "levels": [8, 5, 5, 5], "batch_norm": True}, **setup},
                          causal_registers=ordering != "tail_drop", register_init="pyramid", query_init="pyramid",
                          ordering={"kind": ordering.removeprefix("latent_"), "nested_mode": "uniform"},
                          optimizer={"lr": 6e-4, "warmup_steps": 20, "grad_clip": 1.0, "min_lr_ratio": 0.1})
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, default_root_dir=str(tmp_path))
    untrained = trainer.validate(model, datamodule=dm, verbose=False)[0]
    trainer.fit(model, datamodule=dm)
    m = trainer.validate(model, datamodule=dm, verbose=False)[0]
    assert m["val/psnr_k8"] > untrained["val/psnr_k8"] + 3, (untrained, m)
    assert m["val/psnr_k8"] > m["val/psnr_k1"] + 0.4, m
    assert m["val/psnr_k8"] >= m["val/psnr_k2"] >= m["val/psnr_k1"] - 0.05, m


LATENT = {**TINY, "patch_size": 1, "first_stage": {"base_channels": 8, "channel_mults": [1, 2], "latent_channels": 4,
                                                   "train_steps": 3}}


def test_first_stage_trains_alone_then_freezes_while_the_tokenizer_trains(tmp_path):
    torch.manual_seed(0)
    model = OneDImageModule(**LATENT, optimizer={"lr": 1e-3, "warmup_steps": 1})
    assert model.codec.encoder.embed.net.in_channels == 4  # the registers read the 8 x 8 x 4 latent grid
    snaps = {}

    def snapshot(m):
        return ([p.detach().clone() for p in m.codec.first_stage.parameters()],
                [p.detach().clone() for n, p in m.codec.named_parameters() if not n.startswith("first_stage.")])

    class Watch(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            snaps[trainer.global_step] = snapshot(pl_module)

    snaps[0] = snapshot(model)
    batches = [{"image": torch.rand(2, 3, 32, 32) * 2 - 1, "skipped": 0} for _ in range(6)]
    trainer = pl.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, limit_val_batches=0, callbacks=[Watch()])
    trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a, b))

    # steps 1-3: only the first stage moves; steps 4-6: only the tokenizer moves
    assert not same(snaps[0][0], snaps[3][0]) and same(snaps[0][1], snaps[3][1])
    assert same(snaps[3][0], snaps[6][0]) and not same(snaps[3][1], snaps[6][1])
    # the learning rate warms up again when the tokenizer starts
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert [sched.lr_lambdas[0](s) for s in (0, 3)] == [1.0, 1.0]
    assert sched.lr_lambdas[0](2) < 1.0 and sched.lr_lambdas[0](5) < 1.0

    # the codec alone (what an export holds) rebuilds from its arch and decodes any prefix the same way
    from tokenizers_mm.image.codec1d import OneDImageCodec

    codec = model.inference_codec().eval()
    copy = OneDImageCodec(**codec.arch)
    copy.load_state_dict(codec.state_dict())
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    ids = codec.encode(x)
    assert ids.shape == (3, 8) and torch.equal(copy.encode(x), ids)
    for k in (1, 3, 8):
        out = copy.decode(ids[:, :k])
        assert out.shape == (3, 3, 32, 32) and torch.equal(out, codec.decode(ids[:, :k]))

    # init_from copies a checkpoint's first stage; a file without one is refused by name
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    warm = OneDImageModule(**{**LATENT, "first_stage": {**LATENT["first_stage"], "train_steps": 0,
                                                     "init_from": str(ckpt)}})
    assert same(list(warm.codec.first_stage.parameters()), list(codec.first_stage.parameters()))
    torch.save({"state_dict": {}}, tmp_path / "empty.ckpt")
    with pytest.raises(ValueError, match="empty.ckpt holds no first stage"):
        OneDImageModule(**{**LATENT, "first_stage": {**LATENT["first_stage"], "init_from": str(tmp_path / "empty.ckpt")}})
    with pytest.raises(ValueError, match="patch_embed and patch_head must be 'linear'"):
        OneDImageModule(**LATENT, patch_embed="conv")


def test_first_stage_stem_folds_pixels_before_the_convolutions():
    """stem = 2 with one conv level: f = 4, so 32 px -> an 8 x 8 latent; no conv runs at full resolution."""
    from tokenizers_mm.image.codec1d import OneDImageCodec
    from tokenizers_mm.image.first_stage import FirstStageConfig, LatentAutoencoder

    torch.manual_seed(0)
    fs = {"base_channels": 8, "channel_mults": [2], "latent_channels": 4, "stem": 2, "train_steps": 3}
    model = OneDImageModule(**{**LATENT, "first_stage": fs})
    first = model.codec.first_stage
    assert first.downsample == 4 and model.codec.encoder.embed.net.in_channels == 4
    convs = [m for m in first.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].in_channels == 12 and first.decoder.net[-2].out_channels == 12
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert first.encode(x).shape == (2, 4, 8, 8) and first(x).shape == (2, 3, 32, 32)
    codec = model.inference_codec().eval()
    copy = OneDImageCodec(**codec.arch)
    copy.load_state_dict(codec.state_dict())
    assert torch.equal(copy.decode(codec.encode(x)[:, :3]), codec.decode(codec.encode(x)[:, :3]))
    # stem-less first stages keep the arguments (and state_dict keys) that their old exports hold
    assert "stem" not in FirstStageConfig(channel_mults=[1, 2]).arch()
    assert list(LatentAutoencoder(8, [1, 2], 4).state_dict())[0] == "encoder.net.0.weight"
    with pytest.raises(ValueError, match="stem must be >= 1"):
        LatentAutoencoder(8, [2], 4, stem=0)
