"""3D shape tokenizer: labels, Fourier features, multi-scale residual quantization, meshes out, training,
evaluation against decimation, export and pipelines."""

import json
import math
import os

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import trimesh

import pipelines
from tokenizers_mm.data.mesh import normalize_mesh, precompute_mesh_sample
from tokenizers_mm.eval.shape import decimation_baseline, mesh_bytes
from tokenizers_mm.eval.shape_metrics import surface_metrics, volume_iou
from tokenizers_mm.export import export_checkpoint
from tokenizers_mm.quantize import QuantizerConfig, bytes_for
from tokenizers_mm.shape.codec import (
    FourierEmbedding,
    MultiScaleResidualQuantizer,
    ShapeCodec,
    farthest_point_sample,
    kd_order,
    resample_tokens,
)
from tokenizers_mm.shape.mesh_out import marching_cubes_mesh, occupancy_grid, save_mesh
from tokenizers_mm.shape.tokenizer import ShapeModule

TINY = {"num_latents": 16, "latent_dim": 16, "encoder": {"width": 64, "depth": 1, "heads": 2, "num_freqs": 4},
        "decoder": {"width": 64, "depth": 1, "heads": 2}, "scales": [1, 4, 16],
        "quantizer": {"kind": "fsq", "levels": [8, 5, 5, 5], "batch_norm": True}}


def test_occupancy_labels_of_a_sphere_are_exact():
    mesh, _, _ = normalize_mesh(trimesh.creation.icosphere(subdivisions=4, radius=1.0), padding=0.05)
    arrays = precompute_mesh_sample(mesh, num_surface=256, num_volume=1500, num_near=200, seed=0)
    r = 0.95
    dist = np.linalg.norm(arrays["volume_points"], axis=1)
    clear = np.abs(dist - r) > 0.01  # the icosphere deviates from the sphere by < 0.01 at this subdivision
    assert np.array_equal(arrays["volume_labels"][clear], (dist < r)[clear])
    assert np.allclose(np.linalg.norm(arrays["surface"][:, :3], axis=1), r, atol=0.01)


def test_fourier_embedding():
    emb = FourierEmbedding(num_freqs=3)
    x = torch.tensor([[0.25, -0.5, 1.0]])
    out = emb(x)
    assert out.shape == (1, 3 + 18) and emb.out_dim == 21
    assert torch.allclose(out[0, :3], x[0])
    # sin(2^i * pi * x) for x = 0.25, i = 0, 1, 2: sin(pi/4), sin(pi/2), sin(pi)
    sin_x0 = out[0, 3:12].view(3, 3)[0]
    assert torch.allclose(sin_x0, torch.tensor([math.sin(math.pi / 4), 1.0, 0.0]), atol=1e-6)


def test_fourier_frequency_scale():
    x = torch.tensor([[0.5, 0.0, 0.0]])
    half = FourierEmbedding(num_freqs=2, freq_scale=0.5)(x)
    # sin(0.5 * 2^i * pi * 0.5) for i = 0, 1: sin(pi/4), sin(pi/2)
    assert torch.allclose(half[0, 3:9].view(3, 2)[0], torch.tensor([math.sin(math.pi / 4), 1.0]), atol=1e-6)
    normals = torch.tensor([[0.0, 0.0, 1.0]])
    out = FourierEmbedding(num_freqs=2)(x, normals)
    assert out.shape == (1, 3 + 12 + 3) and torch.equal(out[:, -3:], normals)
    assert torch.equal(out[:, :-3], FourierEmbedding(num_freqs=2)(x))
    with pytest.raises(ValueError, match="freq_scale"):
        FourierEmbedding(num_freqs=2, freq_scale=0.0)


def test_farthest_point_sample_matches_the_definition():
    torch.manual_seed(0)
    pts = torch.rand(3, 200, 3)
    idx = farthest_point_sample(pts, 20)
    for b in range(3):
        chosen = [0]
        for _ in range(19):  # each pick is the point farthest from all picked so far
            d = torch.cdist(pts[b], pts[b, chosen]).min(1).values
            chosen.append(int(d.argmax()))
        assert idx[b].tolist() == chosen


def test_kd_order_makes_every_block_a_cell_split_at_the_median():
    torch.manual_seed(0)
    pts = torch.rand(3, 32, 3) * torch.tensor([1.0, 3.0, 0.5])  # y is the longest side
    perm = kd_order(pts)
    assert all(sorted(p.tolist()) == list(range(32)) for p in perm)
    ordered = torch.gather(pts, 1, perm[..., None].expand(-1, -1, 3))
    for b in range(3):
        lo, hi = ordered[b, :16], ordered[b, 16:]
        assert lo[:, 1].max() <= hi[:, 1].min()  # the first split is along y, at the median
        for size in (16, 8, 4, 2):  # every block of every level is split along its own longest side
            for block in ordered[b].split(size):
                axis = int((block.amax(0) - block.amin(0)).argmax())
                assert block[: size // 2, axis].max() <= block[size // 2:, axis].min()
    # not a power of two: splits stop where the group size turns odd, still a permutation
    assert sorted(kd_order(torch.rand(1, 12, 3))[0].tolist()) == list(range(12))


def test_anchored_probe_reads_the_latents_around_each_query():
    torch.manual_seed(0)
    codec = ShapeCodec(**{**TINY, "encoder": {**TINY["encoder"], "queries": "fps", "order": "kd"}},
                       probe={"anchors": True, "sigma_min": 0.01, "sigma_max": 0.01}).eval()
    assert torch.allclose(codec.anchor_log_inv_var, torch.full((2,), -2 * math.log(0.01)))
    # anchors = tanh of the first three state channels: 16 points on a 0.4-spaced grid
    with torch.no_grad():
        codec.anchor.weight.zero_()
        codec.anchor.weight[:, :3] = torch.eye(3)
        codec.anchor.bias.zero_()
    where = torch.stack(torch.meshgrid(*[torch.tensor([-0.6, -0.2, 0.2, 0.6])] * 2, indexing="ij"), -1).reshape(16, 2)
    where = torch.cat([where, torch.zeros(16, 1)], -1)
    states = torch.randn(1, 16, 64)
    states[0, :, :3] = torch.atanh(where)
    assert torch.allclose(codec.anchors(states)[0], where, atol=1e-5)
    # with a 0.01 width, a query on anchor 3 reads latent 3 only: other latents' features do not move its logit
    q = where[None, 3:4]
    base = codec.occupancy(states, q)
    others = states.clone()
    others[:, [i for i in range(16) if i != 3], 3:] = torch.randn(1, 15, 61)
    assert torch.allclose(codec.occupancy(others, q), base, atol=1e-5)
    own = states.clone()
    own[:, 3, 3:] = torch.randn(61)
    assert not torch.allclose(codec.occupancy(own, q), base, atol=1e-3)
    with pytest.raises(ValueError, match="sigma_min"):
        ShapeCodec(**TINY, probe={"anchors": True, "sigma_min": 0.0})
    with pytest.raises(ValueError, match="planes needs probe.anchors"):
        ShapeCodec(**TINY, probe={"planes": True})
    with pytest.raises(ValueError, match="encoder.order"):
        ShapeCodec(**{**TINY, "encoder": {**TINY["encoder"], "order": "morton"}})
    with pytest.raises(ValueError, match="anchor_weight needs probe.anchors"):
        ShapeModule(**TINY, loss={"anchor_weight": 1.0})


def test_tangent_planes_give_the_signed_distance_to_the_nearest_anchor():
    torch.manual_seed(0)
    codec = ShapeCodec(**TINY, probe={"anchors": True, "planes": True, "plane_sigma": 0.2, "plane_gain": 5.0}).eval()
    with torch.no_grad():  # anchors = tanh(state[:3]), normals = state[3:6]; the probe's own logit is 0
        codec.anchor.weight.zero_()
        codec.anchor.weight[:, :3] = torch.eye(3)
        codec.anchor.bias.zero_()
        codec.normal.weight.zero_()
        codec.normal.weight[:, 3:6] = torch.eye(3)
        codec.normal.bias.zero_()
        codec.head[1].weight.zero_()
        codec.head[1].bias.zero_()
    # two oriented points: (0.5, 0, 0) facing +x and (-0.5, 0, 0) facing -x (the two sides of a slab)
    states = torch.zeros(1, 16, 64)
    where = torch.tensor([[0.5, 0, 0], [-0.5, 0, 0]]).repeat(8, 1)
    states[0, :, :3] = torch.atanh(where)
    states[0, :, 3:6] = torch.sign(where[:, :1]) * torch.tensor([1.0, 0, 0])
    q = torch.tensor([[[0.45, 0.0, 0.01], [0.55, 0.01, 0.0], [-0.4, 0.0, 0.0], [-0.6, 0.0, 0.0]]])
    d = torch.tensor([[0.05, -0.05, 0.1, -0.1]])  # (anchor - query) . normal
    expected = 5.0 * 0.2 * torch.tanh(d / 0.2)  # gain x the distance soft-clipped at plane_sigma
    assert torch.allclose(codec.occupancy(states, q), expected, atol=1e-3)


def test_probe_options_and_old_checkpoints_load():
    torch.manual_seed(0)
    surface = torch.cat([torch.rand(2, 128, 3) * 2 - 1, torch.nn.functional.normalize(torch.randn(2, 128, 3), dim=-1)],
                        dim=-1)
    pts = torch.rand(2, 30, 3) * 2 - 1
    deep = ShapeCodec(**TINY, probe={"depth": 2, "mlp_ratio": 1.0, "num_freqs": 2, "freq_scale": 0.5}).eval()
    assert len(deep.probe) == 2 and deep.query_fourier.out_dim == 3 + 12 and deep.arch["probe"]["depth"] == 2
    assert deep.occupancy(deep.decode(deep.encode(surface)), pts).shape == (2, 30)
    # a state dict from before the probe was a list of blocks (probe.q.weight) loads into probe.0
    codec = ShapeCodec(**TINY).eval()
    old = {k.replace("probe.0.", "probe."): v for k, v in codec.state_dict().items()}
    assert "probe.q.weight" in old
    fresh = ShapeCodec(**TINY).eval()
    fresh.load_state_dict(old)
    ids = codec.encode(surface)
    assert torch.equal(fresh.occupancy(fresh.decode(ids), pts), codec.occupancy(codec.decode(ids), pts))
    zero = ShapeCodec(**{**TINY, "encoder": {**TINY["encoder"], "zero_init": True}})
    assert not zero.gather.proj.weight.any() and not zero.encoder.blocks[0].mlp[-1].weight.any()


def test_loss_options_pos_weight_and_posterior_mean():
    torch.manual_seed(0)
    model = ShapeModule(**TINY, loss={"volume_pos_weight": 3.0, "sample_posterior": False, "scale_dropout": 0.0})
    logits, labels = torch.tensor([[2.0, -1.0]]), torch.tensor([[1.0, 0.0]])
    manual = (3.0 * torch.nn.functional.softplus(-logits[0, 0]) + torch.nn.functional.softplus(logits[0, 1])) / 2
    assert torch.allclose(model._bce(logits, labels, 3.0), manual)
    batch = {"surface": torch.cat([torch.rand(2, 64, 3) * 2 - 1,
                                   torch.nn.functional.normalize(torch.randn(2, 64, 3), dim=-1)], dim=-1),
             "volume_points": torch.rand(2, 20, 3) * 2 - 1, "volume_labels": (torch.rand(2, 20) > 0.7).float(),
             "near_points": torch.rand(2, 10, 3) * 2 - 1, "near_labels": (torch.rand(2, 10) > 0.5).float()}
    model.train()
    first, second = model.compute_losses(batch)[0], model.compute_losses(batch)[0]
    assert torch.equal(first["loss"], second["loss"])  # the posterior mean: no sampling noise
    model.loss_cfg.sample_posterior = True
    model.codec.to_gaussian.bias.data[TINY["latent_dim"]:] = 0.0  # std 1: samples differ visibly
    assert not torch.equal(model.compute_losses(batch)[0]["loss"], model.compute_losses(batch)[0]["loss"])


def test_multiscale_quantizer_shapes_and_prefix_decoding():
    torch.manual_seed(0)
    # latent width = number of FSQ levels: no projections, so the quantizer is plain rounding
    msq = MultiScaleResidualQuantizer(4, [1, 4, 16], QuantizerConfig(kind="fsq", levels=[8, 8, 8, 8])).eval()
    z = 0.4 * torch.randn(3, 16, 4)
    for s, n in enumerate([1, 5, 21], start=1):
        zq, ids, _ = msq(z, num_scales=s)
        assert zq.shape == (3, 16, 4) and ids.shape == (3, n) and ids.dtype == torch.int64
        assert torch.allclose(msq.ids_to_latents(ids, 16), zq, atol=1e-5)
    # one count per sample: each sample's latent is what its own count gives, all ids come back
    zq, ids, _ = msq(z, num_scales=torch.tensor([1, 3, 2]))
    assert ids.shape == (3, 21)
    for b, s in enumerate([1, 3, 2]):
        assert torch.allclose(zq[b], msq(z[b:b + 1], num_scales=s)[0][0], atol=1e-6)
    # more scales leave a smaller residual
    errs = [float((msq(z, num_scales=s)[0] - z).pow(2).mean()) for s in (1, 2, 3)]
    assert errs[0] > errs[1] > errs[2]
    assert resample_tokens(torch.arange(4.0).view(1, 4, 1), 2).flatten().tolist() == [0.5, 2.5]
    with pytest.raises(ValueError, match="strictly increasing"):
        MultiScaleResidualQuantizer(8, [4, 1], QuantizerConfig())


def test_codec_decodes_from_every_number_of_scales_and_rvq_baseline():
    torch.manual_seed(0)
    surface = torch.cat([torch.rand(2, 256, 3) * 2 - 1, torch.nn.functional.normalize(torch.randn(2, 256, 3), dim=-1)],
                        dim=-1)
    pts = torch.rand(2, 50, 3) * 2 - 1
    for bottleneck in ("multiscale", "rvq"):
        codec = ShapeCodec(**{**TINY, "encoder": {**TINY["encoder"], "queries": "fps"}}, bottleneck=bottleneck,
                           num_quantizers=3).eval()
        ids = codec.encode(surface)
        assert ids.shape == (2, codec.num_tokens)
        for n in codec.prefix_lengths:
            logits = codec.occupancy(codec.decode(ids[:, :n]), pts)
            assert logits.shape == (2, 50) and torch.isfinite(logits).all()
        with pytest.raises(ValueError, match="whole scales"):
            codec.decode(ids[:, :2])
        z = codec.encode_latents(surface)[0]
        per_sample = codec.bottleneck(z, torch.tensor([1, 3]))[0]
        assert torch.allclose(per_sample[0], codec.bottleneck(z, 1)[0][0], atol=1e-5)
        assert torch.allclose(per_sample[1], codec.bottleneck(z)[0][1], atol=1e-5)
    assert codec.prefix_lengths == [16, 32, 48]  # rvq: M tokens per quantizer
    with pytest.raises(ValueError, match=r"surface points \[B, N, 6\]"):
        codec.encode(surface[..., :3])
    idx = farthest_point_sample(torch.tensor([[[0.0, 0, 0], [0.1, 0, 0], [1, 0, 0], [0, 1, 0]]]), 3)
    assert idx.tolist() == [[0, 2, 3]]


def test_marching_cubes_of_an_analytic_sphere_is_watertight_and_exact(tmp_path):
    sphere = lambda p: 0.5 - p.norm(dim=-1)  # noqa: E731  (logit > 0 inside radius 0.5)
    full = occupancy_grid(sphere, resolution=48, chunk=10**9)
    chunked = occupancy_grid(sphere, resolution=48, chunk=1000)
    assert np.array_equal(full, chunked)
    mesh = marching_cubes_mesh(chunked)
    assert mesh.is_watertight and mesh.volume == pytest.approx(4 / 3 * math.pi * 0.125, rel=0.02)
    m = surface_metrics(mesh, trimesh.creation.icosphere(subdivisions=5, radius=0.5), n=20000)
    assert m["chamfer_l1"] < 0.02 and m["fscore"] > 0.99 and m["normal_consistency"] > 0.99
    for fmt in ("ply", "obj", "glb"):
        path = save_mesh(mesh, str(tmp_path / f"s.{fmt}"))
        assert len(trimesh.load(path, force="mesh").faces) == len(mesh.faces)
    assert len(marching_cubes_mesh(np.full((8, 8, 8), -1.0, dtype=np.float32)).faces) == 0
    assert volume_iou(torch.tensor([[1.0, -1, 1, -1]]), torch.tensor([[1, 1, 0, 0]])).item() == pytest.approx(1 / 3)


def test_chamfer_of_concentric_spheres_matches_its_closed_form():
    """A sphere of radius 0.3 inside one of 0.5: every nearest neighbour lies 0.2 away along the radius, so each
    direction's mean L1 distance is 0.2 * E[|x| + |y| + |z|] = 0.2 * 1.5 over unit vectors; no point is within tau."""
    inner = trimesh.creation.icosphere(subdivisions=5, radius=0.3)
    outer = trimesh.creation.icosphere(subdivisions=5, radius=0.5)
    sub = surface_metrics(inner, outer, n=30000)  # means over 10k of the 30k samples
    full = surface_metrics(inner, outer, n=30000, mean_points=30000)
    assert sub["chamfer_l1"] == pytest.approx(0.6, rel=0.03) and full["chamfer_l1"] == pytest.approx(0.6, rel=0.03)
    assert sub["fscore"] == full["fscore"] == 0.0 and sub["normal_consistency"] > 0.99


def test_decimation_baseline_fits_the_byte_budget():
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    assert mesh_bytes(10, 16, 10) == math.ceil((3 * 10 * 10 + 3 * 4 * 16) / 8)
    dec, size = decimation_baseline(mesh, 200, bits=10)
    assert size <= 200 and size == mesh_bytes(len(dec.vertices), len(dec.faces), 10)
    assert decimation_baseline(mesh, 5) is None


def _mesh_dm(embedded, steps):
    from tokenizers_mm.data import ShardDataModule

    return ShardDataModule(modality="mesh", train_urls=os.path.join(embedded, "mesh"),
                           val_urls=os.path.join(embedded, "mesh"), batch_size=8, val_batch_size=10,
                           batches_per_epoch=steps, num_workers=0,
                           mesh={"num_surface": 512, "num_volume": 512, "num_near": 256})


@pytest.fixture(scope="module")
def trained_shape(embedded, tmp_path_factory):
    root = tmp_path_factory.mktemp("shape")
    pl.seed_everything(0)
    # the settings that make vat_tiny learn at a CPU budget: zero-initialized encoder branches, latents in k-d
    # order, a probe MLP whose attention is biased towards each latent's anchor point
    model = ShapeModule(**{**TINY, "encoder": {**TINY["encoder"], "queries": "fps", "zero_init": True,
                                                  "order": "kd"}},
                           probe={"mlp_ratio": 2.0, "anchors": True}, loss={"scale_dropout": 0.0, "anchor_weight": 1.0},
                           val_mesh_resolution=24, optimizer={"lr": 2e-3, "warmup_steps": 5})
    dm = _mesh_dm(embedded, 250)
    trainer = pl.Trainer(max_steps=250, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root))
    before = trainer.validate(model, datamodule=dm, verbose=False)[0]
    trainer.fit(model, datamodule=dm)
    after = trainer.validate(model, datamodule=dm, verbose=False)[0]
    trainer.save_checkpoint(root / "shape.ckpt")
    return model.eval(), str(root / "shape.ckpt"), before, after, root


def test_short_training_on_the_embedded_meshes_lowers_bce_and_raises_iou(trained_shape):
    _, _, before, after, root = trained_shape
    assert after["val/bce_volume"] < 0.8 * before["val/bce_volume"], (before, after)
    assert after["val/iou"] > before["val/iou"] + 0.15, (before, after)
    # every added scale decodes better, by margins that a codec decoding one mean shape from any prefix cannot meet
    assert after["val/iou_s2"] > after["val/iou_s1"], after
    assert after["val/iou_s3"] > after["val/iou_s2"] + 0.02, after
    assert after["val/iou_s3"] > after["val/iou_s1"] + 0.04, after
    assert os.listdir(root / "samples")  # rendered views of reconstructed meshes


def test_after_training_the_tokens_carry_the_shape(trained_shape, embedded):
    # a codec that learned only the mean shape also lowers BCE and raises IoU; its own tokens must decode its
    # shape better than another shape's tokens do
    model = trained_shape[0]
    codec = model.inference_codec()
    dm = _mesh_dm(embedded, 1)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        ids = codec.encode(batch["surface"])

        def iou(tokens):
            logits = codec.occupancy(codec.decode(tokens), batch["volume_points"])
            return float(volume_iou(logits, batch["volume_labels"]).mean())

        own, other = iou(ids), iou(ids.roll(1, 0))
    assert own > other + 0.05, (own, other)


def test_evaluate_shapes_beside_decimation(trained_shape, embedded, tmp_path, capsys):
    from tokenizers_mm.cli import main

    _, ckpt, *_ = trained_shape
    out = tmp_path / "report"
    assert main(["evaluate", "--ckpt", ckpt, "--data", os.path.join(embedded, "mesh"), "--out", str(out),
                 "--max-samples", "2", "--resolution", "24", "--chamfer-points", "2000"]) == 0
    report = json.load(open(out / "report.json"))
    rows = report["rows"]
    assert report["samples"]["count"] == 2 and [r["tokens"] for r in rows] == [1, 5, 21]
    assert [r["nominal_bytes"] for r in rows] == [2, 7, 27]
    last = rows[-1]["metrics"]
    assert 0 <= last["iou"] <= 1 and last["chamfer_l1"] > 0 and 0 <= last["fscore"] <= 1
    assert rows[0]["baselines"][0]["shapes"] == 0  # 2 bytes hold no mesh
    (dec,) = rows[-1]["baselines"]
    assert dec["codec"] == "decimation" and dec["shapes"] == 2 and dec["bytes"] <= 27
    assert set(report["timing"]["seconds_per_shape"]) == {"encode_s", "decode_s", "mesh_s"}
    assert len(os.listdir(out / "renders")) == 2 and os.path.getsize(out / "rate_quality.png") > 1000
    assert "| ours | 3 | 21 | 27 |" in capsys.readouterr().out


def test_export_and_pipelines_round_trip_meshes(trained_shape, mesh_dir, tmp_path, capsys):
    from tokenizers_mm.cli import main

    model, ckpt, *_ = trained_shape
    export = str(tmp_path / "export")
    cfg = export_checkpoint(ckpt, export)
    assert cfg["modality"] == "shape" and cfg["tokens"]["prefix_lengths"] == [1, 5, 21]
    tok = pipelines.load(export)
    surface = torch.cat([torch.rand(2, 512, 3) * 2 - 1, torch.nn.functional.normalize(torch.randn(2, 512, 3), dim=-1)],
                        dim=-1)
    assert torch.equal(tok.encode(surface), model.encode(surface).ids)
    meshes = tok.decode(tok.encode(surface, num_tokens=5), resolution=24)
    assert len(meshes) == 2 and all(isinstance(m, trimesh.Trimesh) for m in meshes)
    with pytest.raises(ValueError, match=r"whole scales: \[1, 5, 21\] tokens, got 3"):
        tok.decode(torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="is not a mesh file"):
        tok.encode(["photo.png"])
    # CLI: mesh files in, meshes out
    # the open airplane: data build labels it by its winding number, so encode takes it too
    ply = [os.path.join(mesh_dir, n) for n in ("airplane.ply", "ant.ply", "sphere.ply")]
    npz = str(tmp_path / "t.npz")
    assert main(["encode", "--model", export, *ply, "--out", npz]) == 0
    assert np.load(npz)["ids"].shape == (3, 21)
    assert main(["decode", "--model", export, npz, "--out", str(tmp_path / "decoded"), "--resolution", "24",
                 "--mesh-format", "obj"]) == 0
    assert sorted(os.listdir(tmp_path / "decoded")) == ["airplane.obj", "ant.obj", "made_by.json", "sphere.obj"]
    assert "decoded 3 mesh(es) from 21 tokens" in capsys.readouterr().out
    with pytest.raises(Exception, match="image tokenizer|mesh tokenizer"):
        pipelines.load(export, modality="image")


@pytest.mark.parametrize("name", ["vat_tiny", "vat_b"])
def test_shape_configs_parse_and_build(name):
    """Every shape YAML is a valid CLI config, and its codec builds with the settings that let it learn
    (zero-initialized encoder branches, k-d ordered latents, a probe MLP, anchors) and the byte budgets its header
    states."""
    from tokenizers_mm import recipes

    args = recipes.resolve(recipes.files(name))["model"]["init_args"]
    codec = ShapeCodec(args["num_latents"], args["latent_dim"], args["encoder"], args["decoder"], args["bottleneck"],
                       args["scales"], args["num_quantizers"], args["quantizer"], args["probe"])
    assert codec.enc_cfg.zero_init and all(block.mlp is not None for block in codec.probe)
    assert codec.enc_cfg.order == "kd" and codec.anchor is not None and args["loss"]["anchor_weight"] > 0
    assert float(codec.gather.proj.weight.abs().sum()) == 0.0
    budgets = [bytes_for(n, codec.codebook_size) for n in codec.prefix_lengths]
    assert budgets == {"vat_tiny": [2, 9, 36, 145], "vat_b": [2, 9, 35, 139, 555, 1387]}[name], budgets
