"""The token prior: training on token shards, export, range coding (bit-exact across processes), rate control,
samples, the token report and the errors of bad inputs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

import pipelines
from tokenizers_mm.cli import main
from tokenizers_mm.data import ShardDataModule
from tokenizers_mm.export import export_checkpoint, export_codec, input_spec
from tokenizers_mm.image.tokenizer1d import OneDTokenizer
from tokenizers_mm.prior.coding import CompressedFileError, Header
from tokenizers_mm.prior.model import TokenPrior
from tokenizers_mm.prior.module import PriorModule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONED = {"image_size": 32, "patch_size": 8, "num_tokens": 8, "encoder": {"width": 64, "depth": 2, "heads": 2},
        "decoder": {"width": 64, "depth": 2, "heads": 2}, "stem_channels": 16, "patch_embed": "conv",
        "patch_head": "conv", "register_init": "pyramid", "query_init": "pyramid", "causal_registers": True,
        "quantizer": {"kind": "fsq", "levels": [8, 5, 5, 5], "batch_norm": True},
        "ordering": {"kind": "nested_dropout"}}
HEADER_BYTES = 25  # a [k] header: magic, version, modality, two sha prefixes, ndim, shape, count, crc


def _trainer(steps, root=None):
    return pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)


@pytest.fixture(scope="module")
def image_setup(embedded, tmp_path_factory):
    """A 1D image tokenizer (40 steps on the embedded photos, exported), its token shards, and a prior trained on
    them (checkpoint + export), with the prior's val loss before and after training."""
    from pipelines.tokenize import tokenize_shards

    root = tmp_path_factory.mktemp("prior")
    pl.seed_everything(0)
    tok_model = OneDTokenizer(**ONED, optimizer={"lr": 1e-3, "warmup_steps": 5})
    dm = ShardDataModule(modality="image", train_urls=os.path.join(embedded, "image"), val_urls=None, batch_size=8,
                         batches_per_epoch=40, num_workers=0, image={"size": 32, "val_resize": 48})
    trainer = _trainer(40)
    trainer.fit(tok_model, datamodule=dm)
    trainer.save_checkpoint(root / "tok.ckpt")
    tok_dir = str(root / "tok")
    export_checkpoint(str(root / "tok.ckpt"), tok_dir)
    shards = str(root / "tokens")
    tokenize_shards(tok_dir, os.path.join(embedded, "image"), shards, num_workers=0, batch_size=64, progress=False)

    # the shipped config through the CLI (`tokenizers-mm fit`), shrunk to a test budget
    arch = {"max_frames": 8, "width": 64, "layers": 2, "heads": 4}
    pdm = ShardDataModule(modality="tokens", train_urls=shards, val_urls=shards, batch_size=32, val_batch_size=64,
                          num_workers=0)
    pl.seed_everything(0)
    before = _trainer(1).validate(PriorModule(tokenizer=tok_dir, **arch), datamodule=pdm, verbose=False)[0]
    run = str(root / "prior_run")
    assert main(["fit", "--config", os.path.join(ROOT, "configs/prior/flextok_tiny_prior.yaml"),
                 "--model.init_args.tokenizer", tok_dir, *[f"--model.init_args.{k}={v}" for k, v in arch.items()],
                 "--model.init_args.optimizer.lr", "0.003", "--model.init_args.optimizer.warmup_steps", "10",
                 "--data.train_urls", shards, "--data.val_urls", shards, "--data.batches_per_epoch", "150",
                 "--trainer.max_steps", "150", "--trainer.val_check_interval", "150",
                 "--trainer.default_root_dir", run, "--trainer.enable_progress_bar", "false",
                 "--trainer.accelerator", "cpu"]) == 0
    ckpt = os.path.join(run, "checkpoints", "last.ckpt")
    from tokenizers_mm.checkpointing import build_tokenizer, read_checkpoint

    trained = build_tokenizer(read_checkpoint(ckpt), ckpt)
    after = _trainer(1).validate(trained, datamodule=pdm, verbose=False)[0]
    prior_dir = str(root / "prior")
    export_checkpoint(ckpt, prior_dir)
    return {"root": root, "tok": tok_dir, "shards": shards, "prior": prior_dir, "before": before, "after": after}


def _val_ids(shards):
    from pipelines.tokenize import read_token_ids
    from tokenizers_mm.data.urls import expand_urls

    return np.stack([v for _, v in read_token_ids(expand_urls(shards, split="val"))]).astype(np.int64)


def test_prior_loss_falls_on_token_shards_below_the_unigram_entropy(image_setup):
    before, after = image_setup["before"], image_setup["after"]
    ids = _val_ids(image_setup["shards"])
    counts = np.bincount(ids.reshape(-1), minlength=1000)
    p = counts[counts > 0] / counts.sum()
    unigram = float(-(p * np.log2(p)).sum())
    assert before["val/bits_per_token"] > np.log2(1000) - 0.5  # untrained: about uniform
    # a trained prior beats the unigram code of the very tokens it is measured on (a collapsed or untrained one
    # does not: the unigram entropy is the best any position-blind, context-blind model can do)
    assert after["val/bits_per_token"] < unigram - 0.2, (before, after, unigram)


def test_export_loads_through_pipelines_and_records_the_tokenizer(image_setup):
    prior = pipelines.load(image_setup["prior"], modality="prior")
    tok = pipelines.load(image_setup["tok"])
    assert prior.config["modality"] == "prior" and prior.prior.tokenizer["sha256"] == tok.model_id
    assert set(os.listdir(image_setup["prior"])) >= {"config.json", "model.safetensors", "README.md"}
    prior.check_tokenizer(tok)


def test_real_bytes_at_most_nominal_plus_header_and_round_trip(image_setup):
    tok = pipelines.load(image_setup["tok"])
    prior = pipelines.load(image_setup["prior"], modality="prior")
    ids = torch.from_numpy(_val_ids(image_setup["shards"]))
    nominal = int(np.ceil(8 * np.log2(1000) / 8))
    payload = 0
    bits = prior.bits(ids)
    for row, b in zip(ids, bits):
        blob, coded_bits = prior.compress_with_bits(tok, row)
        head = Header.unpack(blob, "x")[0]
        assert len(blob) <= nominal + HEADER_BYTES  # never above the nominal code: the raw code is the fallback
        # integer tables: next to no cost over the float model (0.0204 bits/token was seen in one fresh-clone run)
        assert abs(coded_bits - float(b)) < 0.05 * len(row)
        if not head.raw:  # a range code cut to its shortest decodable bytes: at most two bytes over the ideal size
            assert len(blob) - HEADER_BYTES <= np.ceil(coded_bits / 8) + 2
        payload += len(blob) - HEADER_BYTES
        back, head = prior.decompress(tok, blob)
        assert torch.equal(back, row) and head.shape == (8,)
    assert payload <= nominal * len(ids)  # in all, the prior's code is shorter than the nominal code
    # what `evaluate --prior` reports per budget: file bytes with the header, never above nominal + header + a word
    from tokenizers_mm.prior.evaluate import real_bytes_per_budget

    rows = real_bytes_per_budget(image_setup["prior"], ids, list(range(1, 9)), 1000)
    assert [r["k"] for r in rows] == list(range(1, 9)) and rows[-1]["header_bytes"] == HEADER_BYTES
    for r in rows:  # at every budget, k = 1 and 2 included (no 4-byte coder words)
        assert r["file_bytes"] <= r["nominal_bytes"] + HEADER_BYTES, r
    assert rows[-1]["file_bytes"] == pytest.approx(HEADER_BYTES + payload / len(ids), abs=0.01)


DECODE_SCRIPT = """
import json, sys, numpy as np, pipelines
for tok_dir, prior_dir, path, out in json.loads(sys.argv[1]):
    tok = pipelines.load(tok_dir); prior = pipelines.load(prior_dir, modality="prior")
    ids, _ = prior.decompress(tok, open(path, "rb").read(), path)
    np.save(out, ids.numpy())
"""


def _fresh_process_decode(jobs, tmp_path):
    """Decode ``jobs`` ``[(tokenizer dir, prior dir, compressed bytes)]`` in one new Python process."""
    args = []
    for i, (tok_dir, prior_dir, blob) in enumerate(jobs):
        path = tmp_path / f"job{i}.tmmc"
        path.write_bytes(blob)
        args.append([tok_dir, prior_dir, str(path), str(tmp_path / f"job{i}.npy")])
    env = {**os.environ, "OMP_NUM_THREADS": "2"}  # another thread count than the encoder's process
    subprocess.run([sys.executable, "-c", DECODE_SCRIPT, json.dumps(args)], check=True, cwd=ROOT, env=env)
    return [np.load(a[3]) for a in args]


def _export_prior(prior, out):
    export_codec(prior, out, input_spec(prior, {}))
    return out


def test_bit_exact_in_a_fresh_process_for_images(image_setup, tmp_path):
    tok = pipelines.load(image_setup["tok"])
    prior = pipelines.load(image_setup["prior"], modality="prior")
    row = torch.from_numpy(_val_ids(image_setup["shards"])[3])
    got = _fresh_process_decode([(image_setup["tok"], image_setup["prior"], prior.compress(tok, row))], tmp_path)
    assert np.array_equal(got[0], row.numpy())


def test_bit_exact_in_a_fresh_process_for_speech_and_shapes(mesh_dir, tmp_path):
    from tokenizers_mm.shape.tokenizer import ShapeModule
    from tokenizers_mm.speech.tokenizer import SpeechTokenizer

    torch.manual_seed(0)
    speech = SpeechTokenizer(sample_rate=16000, seanet={"channels": 8, "dim": 32, "ratios": [8, 5, 4, 2],
                                                        "causal": True, "decoder": "istft", "istft_channels": 64,
                                                        "istft_layers": 4},
                             rvq={"num_quantizers": 4, "codebook_size": 16}).eval()
    shape = ShapeModule(num_latents=16, latent_dim=16, encoder={"width": 64, "depth": 1, "heads": 2, "num_freqs": 4},
                           decoder={"width": 64, "depth": 1, "heads": 2}, scales=[1, 4, 16],
                           quantizer={"kind": "fsq", "levels": [8, 5, 5, 5], "batch_norm": True}).eval()
    jobs, want = [], []
    for name, model in (("speech", speech), ("shape", shape)):
        codec = model.inference_codec()
        tok_dir = str(tmp_path / f"{name}_tok")
        export_codec(codec, tok_dir, input_spec(codec, {}))
        tok = pipelines.load(tok_dir)
        if name == "speech":
            from tokenizers_mm.data.embedded import embedded_dir

            ids = tok.encode(tok.read(os.path.join(embedded_dir("speech"), "activated.flac")))[0]  # [4, F]
            assert ids.ndim == 2 and ids.shape[0] == 4
            prior = TokenPrior(16, 4, 16, "rvq", width=32, layers=1, heads=2, depth_layers=1,
                               tokenizer={"sha256": tok.model_id})
            cases = [ids, ids[:2]]  # every bitrate: all codebooks, and the first two
            from tokenizers_mm.prior.rate import TargetError, choose_audio

            wave = tok.read(os.path.join(embedded_dir("speech"), "activated.flac"))
            loose = choose_audio(tok, wave, 1e6, "mel", "activated.flac")
            assert loose.budget == 1 and loose.ids.shape == (1, ids.shape[1]) and loose.quality <= 1e6
            with pytest.raises(TargetError, match="activated.flac: no budget reaches mel distance"):
                choose_audio(tok, wave, 0.0, "mel", "activated.flac")
        else:
            ids = tok.encode([os.path.join(mesh_dir, "sphere.ply")])[0]  # [21]: scales 1 + 4 + 16, coarse first
            prior = TokenPrior(1000, 1, 21, "sequence", width=32, layers=1, heads=2, tokenizer={"sha256": tok.model_id})
            cases = [ids, ids[:5]]
        prior_dir = _export_prior(prior, str(tmp_path / f"{name}_prior"))
        pp = pipelines.load(prior_dir, modality="prior")
        jobs += [(tok_dir, prior_dir, pp.compress(tok, case)) for case in cases]
        want += [case.numpy() for case in cases]
    got = _fresh_process_decode(jobs, tmp_path)
    assert len(got) == 4 and all(np.array_equal(g, w) for g, w in zip(got, want))


def test_bad_files_give_one_line_errors_naming_the_file(image_setup, tmp_path, capsys):
    tok = pipelines.load(image_setup["tok"])
    prior = pipelines.load(image_setup["prior"], modality="prior")
    row = torch.from_numpy(_val_ids(image_setup["shards"])[0])
    blob = prior.compress(tok, row)
    other = TokenPrior(1000, 1, 8, "sequence", width=32, layers=1, heads=2, tokenizer={"sha256": tok.model_id})
    other_dir = _export_prior(other, str(tmp_path / "other_prior"))
    # (the corrupt byte is the first, most significant byte of the range code: the first ids change; a flipped low
    # bit may leave every id intact, and the CRC then rightly accepts the file)
    assert not Header.unpack(blob, "x")[0].raw
    bad = {"not_ours.tmmc": b"PK\x03\x04" + blob[4:], "truncated.tmmc": blob[:-3], "short.tmmc": blob[:20],
           "corrupt.tmmc": blob[:HEADER_BYTES] + bytes([blob[HEADER_BYTES] ^ 0x5A]) + blob[HEADER_BYTES + 1:],
           "other_prior.tmmc": _compress_with(other_dir, tok, row)}
    for name, data in bad.items():
        path = tmp_path / name
        path.write_bytes(data)
        code = main(["decompress", "--model", image_setup["tok"], "--prior", image_setup["prior"], str(path),
                     "--out", str(tmp_path / f"out_{name}")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and str(path) in err, (name, err)
        assert not (tmp_path / f"out_{name}").exists()
    with pytest.raises(CompressedFileError, match="another prior"):
        prior.decompress(tok, bad["other_prior.tmmc"], "x")
    # a version from the future is refused by name
    future = blob[:4] + bytes([9]) + blob[5:]
    with pytest.raises(CompressedFileError, match="version 9"):
        Header.unpack(future, "f.tmmc")


def _compress_with(prior_dir, tok, row):
    return pipelines.load(prior_dir, modality="prior").compress(tok, row)


def test_cli_compress_decompress_rate_control_and_sample(image_setup, photo_dir, tmp_path, capsys):
    tok_dir, prior_dir = image_setup["tok"], image_setup["prior"]
    out = tmp_path / "c"
    assert main(["compress", "--model", tok_dir, "--prior", prior_dir, photo_dir, "--out", str(out)]) == 0
    summary = json.load(open(out / "summary.json"))
    assert len(summary["files"]) == 6 and all(r["tokens"] == 8 for r in summary["files"])
    dec = tmp_path / "d"
    # decompress in a fresh process through the CLI: ids equal those of encode, PNGs written
    subprocess.run([sys.executable, "-m", "tokenizers_mm.cli", "decompress", "--model", tok_dir, "--prior", prior_dir,
                    str(out), "--out", str(dec)], check=True, cwd=ROOT)
    tok = pipelines.load(tok_dir)
    for r in summary["files"]:
        stem = r["out"][:-5]
        assert np.array_equal(np.load(dec / f"{stem}.ids.npy"), tok.encode([r["file"]])[0].numpy())
        assert (dec / f"{stem}.png").is_file()

    # rate control: a target between the qualities of the smallest and the full budget
    from tokenizers_mm.prior.rate import image_psnr

    files = [r["file"] for r in summary["files"]]
    x = tok.to_model_input(files)
    full = tok.encode(x)
    q1 = image_psnr(tok.decode(full[:, :1]), x)
    qk = image_psnr(tok.decode(full), x)
    target = float(((q1 + qk) / 2).min())
    rc = tmp_path / "rc"
    assert main(["compress", "--model", tok_dir, "--prior", prior_dir, *files, "--out", str(rc),
                 "--target-psnr", f"{target:.3f}"]) == 0
    rcs = json.load(open(rc / "summary.json"))
    assert len(rcs["files"]) == 6
    rcdec = tmp_path / "rcdec"
    assert main(["decompress", "--model", tok_dir, "--prior", prior_dir, str(rc), "--out", str(rcdec)]) == 0
    for r in rcs["files"]:  # every reported sample meets the target, measured again on what decompress gives
        assert r["quality"] >= target - 1e-3
        ids = torch.from_numpy(np.load(rcdec / (r["out"][:-5] + ".ids.npy")))
        assert ids.shape[0] == r["budget"]
        i = files.index(r["file"])
        assert float(image_psnr(tok.decode(ids[None]), x[i:i + 1])) >= target - 1e-3
    r = rcs["rate_control"]
    assert r["fixed_mean_quality"] >= r["mean_quality"] - 1e-6 or not r["fixed_reaches_mean_quality"]
    # encode --target-psnr chooses the same budgets and writes rows of those lengths, which decode
    npz = tmp_path / "rc.npz"
    assert main(["encode", "--model", tok_dir, *files, "--out", str(npz), "--target-psnr", f"{target:.3f}"]) == 0
    from pipelines.files import load_tokens

    rows, _, meta = load_tokens(str(npz))
    assert meta["budgets"] == [r["budget"] for r in rcs["files"]] == [len(i) for i in rows]
    assert main(["decode", "--model", tok_dir, str(npz), "--out", str(tmp_path / "rcpng")]) == 0
    capsys.readouterr()
    # a target no budget reaches: one line naming a file, nothing written
    assert main(["compress", "--model", tok_dir, "--prior", prior_dir, *files, "--out", str(tmp_path / "no"),
                 "--target-psnr", "99"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no budget reaches PSNR" in err and files[0] in err
    assert not (tmp_path / "no").exists()

    # samples: seeded and reproducible, decoded into a grid
    for name in ("s1", "s2"):
        assert main(["sample", "--model", tok_dir, "--prior", prior_dir, "--n", "4", "--seed", "3",
                     "--out", str(tmp_path / name)]) == 0
    assert (tmp_path / "s1" / "grid.png").is_file()
    assert json.load(open(tmp_path / "s1" / "ids.json")) == json.load(open(tmp_path / "s2" / "ids.json"))


def test_tokens_report(image_setup, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["tokens", "report", "--data", image_setup["shards"], "--prior", image_setup["prior"],
                 "--out", str(out)]) == 0
    rep = json.load(open(out / "report.json"))
    assert len(rep["per_position_entropy_bits"]) == 8 and rep["zipf_exponent"] > 0
    assert rep["prior_bits_per_token"] < rep["uniform_bits"]
    assert (out / "tokens.png").is_file()


def test_raw_fallback_keeps_files_at_most_nominal_and_round_trips(image_setup):
    """An untrained prior codes worse than log2 V bits per id: the file then stores the ids plainly (flagged)."""
    tok = pipelines.load(image_setup["tok"])
    torch.manual_seed(1)
    bad = TokenPrior(1000, 1, 8, "sequence", width=32, layers=1, heads=2, tokenizer={"sha256": tok.model_id})
    with torch.no_grad():
        bad.heads.bias[:] = torch.linspace(0, 12, 1000)  # very confident in the high ids: the data's ids cost more
    from pipelines.prior import TokenPriorPipeline

    pp = TokenPriorPipeline.from_module(bad)
    for k in (1, 2, 5, 8):
        row = torch.ones(k, dtype=torch.long)  # about the least likely id (id 0 would cost nothing: a zero-padded
        # range code decodes to the bottom of every interval)
        blob = pp.compress(tok, row)
        head = Header.unpack(blob, "x")[0]
        nominal = int(np.ceil(k * np.log2(1000) / 8))
        assert head.raw and len(blob) == HEADER_BYTES + nominal
        back, _ = pp.decompress(tok, blob)
        assert torch.equal(back, row)
    with pytest.raises(CompressedFileError, match="raw payload has"):
        pp.decompress(tok, blob[:-1], "cut.tmmc")


def test_padded_frames_do_not_count_in_the_loss():
    torch.manual_seed(0)
    prior = TokenPrior(16, 4, 12, "rvq", width=32, layers=1, heads=2, depth_layers=1).eval()
    frames = torch.randint(0, 16, (2, 12, 4))
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0, :7], mask[1, :12] = True, True
    padded = frames.clone()
    padded[0, 7:] = 0
    whole = prior.loss(frames[1:2])
    short = prior.loss(frames[:1, :7])
    both = prior.loss(padded, frame_mask=mask)
    assert torch.allclose(both, (short * 7 * 4 + whole * 12 * 4) / (19 * 4), atol=1e-5)
    # what the padding holds does not matter (causal context, masked loss)
    assert torch.allclose(prior.loss(frames, frame_mask=mask), both, atol=1e-6)


def _one_step_checkpoint(model, dm, path):
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(path)
    return str(path)


def _fit_prior(config, tok_dir, shards, run, steps, extra=()):
    assert main(["fit", "--config", os.path.join(ROOT, config), "--model.init_args.tokenizer", tok_dir,
                 "--data.train_urls", shards, "--data.val_urls", shards, "--data.batches_per_epoch", str(steps),
                 "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps),
                 "--trainer.default_root_dir", run, "--trainer.enable_progress_bar", "false",
                 "--trainer.accelerator", "cpu", *extra]) == 0
    return os.path.join(run, "checkpoints", "last.ckpt")


@pytest.fixture(scope="module")
def speech_shape_setup(embedded, tmp_path_factory):
    """Tiny speech and shape tokenizers (one training step: checkpoint + export), their token shards written by
    `tokenize`, and priors trained on them through `tokenizers-mm fit` with the shipped configs."""
    from pipelines.tokenize import tokenize_shards
    from tokenizers_mm.data import ShardDataModule
    from tokenizers_mm.shape.tokenizer import ShapeModule
    from tokenizers_mm.speech.tokenizer import SpeechTokenizer

    root = tmp_path_factory.mktemp("prior_mm")
    pl.seed_everything(0)
    speech = SpeechTokenizer(sample_rate=16000, seanet={"channels": 8, "dim": 32, "ratios": [8, 5, 4, 2],
                                                        "causal": True, "decoder": "istft", "istft_channels": 64,
                                                        "istft_layers": 4},
                             rvq={"num_quantizers": 4, "codebook_size": 16},
                             loss={"adv_weight": 0.0, "mel_windows": [64, 128, 256, 512], "mel_bins": [10, 20, 40, 64]},
                             val_quantizers=[1, 2, 4])
    adm = ShardDataModule(modality="audio", train_urls=os.path.join(embedded, "audio"), val_urls=None, batch_size=4,
                          num_workers=0, audio={"sample_rate": 16000, "seconds": 0.5, "loudness_lufs": -23.0})
    shape = ShapeModule(num_latents=16, latent_dim=16, encoder={"width": 64, "depth": 1, "heads": 2, "num_freqs": 4},
                           decoder={"width": 64, "depth": 1, "heads": 2}, scales=[1, 4, 16],
                           quantizer={"kind": "fsq", "levels": [8, 5, 5, 5], "batch_norm": True})
    mdm = ShardDataModule(modality="mesh", train_urls=os.path.join(embedded, "mesh"), val_urls=None, batch_size=4,
                          num_workers=0, mesh={"num_surface": 512, "num_volume": 256, "num_near": 128})
    out = {"root": root}
    for name, model, dm, data, config, steps in (
            ("speech", speech, adm, "audio", "configs/prior/codec_tiny_prior.yaml", 300),
            ("shape", shape, mdm, "mesh", "configs/prior/vat_tiny_prior.yaml", 10)):
        ckpt = _one_step_checkpoint(model, dm, root / f"{name}.ckpt")
        tok_dir = str(root / f"{name}_tok")
        export_checkpoint(ckpt, tok_dir)
        shards = str(root / f"{name}_tokens")
        manifest = tokenize_shards(tok_dir, os.path.join(embedded, data), shards, num_workers=0, progress=False)
        extra = ["--model.init_args.width=64", "--model.init_args.layers=2", "--model.init_args.optimizer.lr=0.003"]
        if name == "speech":
            extra += ["--data.tokens.frames=64", "--model.init_args.max_frames=64", "--data.batch_size=16"]
        run = str(root / f"{name}_prior_run")
        prior_ckpt = _fit_prior(config, tok_dir, shards, run, steps, extra)
        prior_dir = str(root / f"{name}_prior")
        export_checkpoint(prior_ckpt, prior_dir)
        out[name] = {"ckpt": ckpt, "tok": tok_dir, "shards": shards, "manifest": manifest, "prior": prior_dir,
                     "run": run, "data": os.path.join(embedded, data)}
    return out


def _history(run, key):
    import csv

    with open(os.path.join(run, "metrics.csv")) as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]


def test_tokenize_writes_speech_and_shape_token_shards(speech_shape_setup, embedded):
    from pipelines.tokenize import read_token_ids, tokenize_shards
    from tokenizers_mm.data.urls import expand_urls

    sp, sh = speech_shape_setup["speech"], speech_shape_setup["shape"]
    assert sp["manifest"]["counts"] == {"train": 131, "val": 15} and sp["manifest"]["source_modality"] == "speech"
    assert sh["manifest"]["counts"] == {"train": 59, "val": 10} and sh["manifest"]["source_modality"] == "shape"
    tok = pipelines.load(sp["tok"])
    clips = list(read_token_ids(expand_urls(sp["shards"], split="val")))
    assert all(ids.ndim == 2 and ids.shape[0] == 4 for _, ids in clips)
    assert len({ids.shape[1] for _, ids in clips}) > 1  # whole clips: their lengths differ
    # a clip's ids are what the codec gives the loudness-normalized whole clip
    from tokenizers_mm.eval.speech import load_clips

    key, clip = load_clips(sp["data"], 16000, max_clips=1, loudness_lufs=-23.0)[0]
    want = dict(clips)[key]
    assert np.array_equal(tok.encode(clip[None])[0].numpy(), want)
    shapes = list(read_token_ids(expand_urls(sh["shards"])))
    assert all(ids.shape == (21,) for _, ids in shapes)
    # the same rules as image token shards: a rerun finds the output done, another setting is refused by name
    again = tokenize_shards(sp["tok"], sp["data"], sp["shards"], num_workers=0, progress=False)
    assert again["counts"] == sp["manifest"]["counts"]
    with pytest.raises(ValueError, match="whole number of scales"):
        tokenize_shards(sh["tok"], sh["data"], str(speech_shape_setup["root"] / "x"), num_tokens=3, progress=False)
    # the loader windows whole clips and masks the padding
    from tokenizers_mm.data import ShardDataModule

    dm = ShardDataModule(modality="tokens", train_urls=sp["shards"], val_urls=sp["shards"], batch_size=15,
                         num_workers=0, tokens={"frames": 200})
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert batch["ids"].shape == (15, 4, 200) and batch["ids_mask"].shape == (15, 200)
    lengths = sorted(int(m.sum()) for m in batch["ids_mask"])
    assert lengths == sorted(min(200, ids.shape[1]) for _, ids in clips)


def test_speech_prior_trained_from_token_shards_beats_the_unigram_code(speech_shape_setup):
    from pipelines.tokenize import read_token_ids
    from tokenizers_mm.data.urls import expand_urls

    sp = speech_shape_setup["speech"]
    val = [ids.astype(np.int64) for _, ids in read_token_ids(expand_urls(sp["shards"], split="val"))]
    # per-codebook unigram entropy of the val tokens themselves: the best a context-blind code does
    unigram = 0.0
    for q in range(4):
        c = np.bincount(np.concatenate([v[q] for v in val]), minlength=16)
        p = c[c > 0] / c.sum()
        unigram += float(-(p * np.log2(p)).sum()) / 4
    bits = _history(sp["run"], "val/bits_per_token")
    assert bits[-1] < unigram - 0.1, (bits, unigram)
    # the token report pools clips of every length: one position per codebook
    out = speech_shape_setup["root"] / "speech_report"
    assert main(["tokens", "report", "--data", sp["shards"], "--split", "val", "--prior", sp["prior"],
                 "--out", str(out)]) == 0
    rep = json.load(open(out / "report.json"))
    assert len(rep["per_position_entropy_bits"]) == 4 and rep["id_shape"] == [4, "frames"]
    assert rep["prior_bits_per_token"] < rep["unigram_entropy_bits"]
    # and the exported prior codes whole clips of every bitrate, bit-exact
    tok = pipelines.load(sp["tok"])
    prior = pipelines.load(sp["prior"], modality="prior")
    for n in (1, 4):
        blob = prior.compress(tok, torch.from_numpy(val[0][:n]), extra=1234)
        ids, head = prior.decompress(tok, blob)
        assert np.array_equal(ids.numpy(), val[0][:n]) and head.extra == 1234 and len(blob) <= 31 + int(
            np.ceil(val[0][:n].size * 4 / 8))


def test_evaluate_prior_for_speech_and_shapes(speech_shape_setup, tmp_path, capsys):
    sp, sh = speech_shape_setup["speech"], speech_shape_setup["shape"]
    out = tmp_path / "speech"
    assert main(["evaluate", "--ckpt", sp["ckpt"], "--data", sp["data"], "--out", str(out), "--max-samples", "3",
                 "--no-baselines", "--no-pesq", "--prior", sp["prior"]]) == 0
    rep = json.load(open(out / "report.json"))
    for r in rep["rows"]:
        p = r["prior"]
        assert {"file_bytes", "payload_bytes", "nominal_bytes", "prior_bits_per_token", "file_kbps"} <= set(p)
        assert p["file_bytes"] <= p["nominal_bytes"] + 31 and p["payload_bytes"] <= p["nominal_bytes"]
        assert p["prior_bits_per_token"] > 0
    assert rep["rows"][-1]["prior"]["file_bytes"] > rep["rows"][0]["prior"]["file_bytes"]
    assert (out / "rate_quality.png").is_file()
    out = tmp_path / "shape"
    assert main(["evaluate", "--ckpt", sh["ckpt"], "--data", sh["data"], "--out", str(out), "--max-samples", "2",
                 "--resolution", "16", "--chamfer-points", "2000", "--prior", sh["prior"]]) == 0
    rep = json.load(open(out / "report.json"))
    assert [r["tokens"] for r in rep["rows"]] == [1, 5, 21]
    for r in rep["rows"]:
        assert r["prior"]["file_bytes"] <= r["nominal_bytes"] + HEADER_BYTES and r["prior"]["prior_bits_per_token"] > 0
    assert "real files with the prior" in capsys.readouterr().out
    # a prior of another modality's tokens is refused by name
    with pytest.raises(ValueError, match="models"):
        from tokenizers_mm.eval.evaluator import evaluate_checkpoint

        evaluate_checkpoint(sh["ckpt"], sh["data"], str(tmp_path / "x"), max_samples=1, resolution=16,
                            chamfer_points=100, prior=sp["prior"])


def test_target_iou_meets_its_target_on_every_reported_shape(speech_shape_setup, mesh_dir, tmp_path, capsys):
    from tokenizers_mm.prior.rate import TargetError, choose_shape

    sh = speech_shape_setup["shape"]
    tok = pipelines.load(sh["tok"])
    files = [os.path.join(mesh_dir, f) for f in ("ant.ply", "nut.ply", "sphere.ply")]
    loose = choose_shape(tok, files, 0.0, files)
    assert all(c.budget == 1 for c in loose)
    best = [max(c.qualities.values()) for c in loose]
    target = min(best) - 1e-4
    rc = tmp_path / "rc"
    assert main(["compress", "--model", sh["tok"], "--prior", sh["prior"], *files, "--out", str(rc),
                 "--target-iou", f"{target:.5f}"]) == 0
    summary = json.load(open(rc / "summary.json"))
    dec = tmp_path / "dec"
    assert main(["decompress", "--model", sh["tok"], "--prior", sh["prior"], str(rc), "--out", str(dec),
                 "--resolution", "16"]) == 0
    for r in summary["files"]:
        assert r["quality"] >= target and r["budget"] in (1, 5, 21)
        ids = torch.from_numpy(np.load(dec / (r["out"][:-5] + ".ids.npy")))
        mesh = tok.read_mesh(r["file"])
        assert len(ids) == r["budget"] and tok.iou(ids[None], *tok.labeled_points(mesh)) >= target
    assert summary["rate_control"]["budgets"] == [r["budget"] for r in summary["files"]]
    capsys.readouterr()
    with pytest.raises(TargetError, match="no budget reaches volume IoU 1.01"):
        choose_shape(tok, files[:1], 1.01, files[:1])
    assert main(["compress", "--model", sh["tok"], "--prior", sh["prior"], *files, "--out", str(tmp_path / "no"),
                 "--target-psnr", "20"]) == 2
    assert "--target-psnr applies to image tokenizers" in capsys.readouterr().err


def test_version_1_files_of_whole_coder_words_still_decode(image_setup):
    import constriction

    from tokenizers_mm.prior.coding import ids_crc, walk

    tok = pipelines.load(image_setup["tok"])
    prior = pipelines.load(image_setup["prior"], modality="prior")
    row = torch.from_numpy(_val_ids(image_setup["shards"])[1])
    enc = constriction.stream.queue.RangeEncoder()

    def step(t, q, freq):
        enc.encode(int(row[t]), constriction.stream.model.Categorical(freq, perfect=False))
        return int(row[t])

    walk(prior.prior, len(row), 1, step)
    head = Header("image", bytes.fromhex(tok.model_id), bytes.fromhex(prior.model_id), (len(row),), 0,
                  ids_crc(row.numpy()), version=1)
    blob = head.pack() + np.asarray(enc.get_compressed(), dtype="<u4").tobytes()
    back, got = prior.decompress(tok, blob)
    assert got.version == 1 and torch.equal(back, row)


def test_encode_with_a_target_writes_rows_of_chosen_lengths_that_decode(speech_shape_setup, mesh_dir, tmp_path, capsys):
    sh = speech_shape_setup["shape"]
    tok = pipelines.load(sh["tok"])
    files = [os.path.join(mesh_dir, f) for f in ("ant.ply", "sphere.ply")]
    from tokenizers_mm.prior.rate import choose_shape

    target = min(max(c.qualities.values()) for c in choose_shape(tok, files, 0.0, files)) - 1e-4
    out = tmp_path / "t.npz"
    assert main(["encode", "--model", sh["tok"], *files, "--out", str(out), "--target-iou", f"{target:.5f}"]) == 0
    from pipelines.files import load_tokens

    ids, keys, meta = load_tokens(str(out))
    assert keys == ["ant", "sphere"] and [len(i) for i in ids] == meta["budgets"]
    assert all(q >= target for q in meta["qualities"])
    for f, i in zip(files, ids):
        assert tok.iou(i[None], *tok.labeled_points(tok.read_mesh(f))) >= target
    dec = tmp_path / "dec"
    assert main(["decode", "--model", sh["tok"], str(out), "--out", str(dec), "--resolution", "16"]) == 0
    assert {"ant.ply", "sphere.ply"} <= set(os.listdir(dec))
    capsys.readouterr()
    assert main(["encode", "--model", sh["tok"], *files, "--out", str(tmp_path / "u.npz"), "--target-iou", "1.5"]) == 2
    assert "no budget reaches volume IoU 1.5" in capsys.readouterr().err
