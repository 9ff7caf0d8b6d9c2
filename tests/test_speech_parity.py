"""Parity of imported codecs with the ``transformers`` references (tiny random configs, CPU).

Each test builds the reference model from a small config, gives it random weights at a scale where signals reach
the output (the references' own inits leave codebooks at zero or outputs near zero, which would make equality
trivial), saves it with ``save_pretrained``, imports the folder through ``tokenizers-mm import`` and compares, on
the same waveform: the codes at every bitrate the reference offers, the decoded waveform, and (causal models) chunked
encoding against one pass.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tokenizers_mm.cli import main  # noqa: E402
from tokenizers_mm.export import load_codec  # noqa: E402
from tokenizers_mm.speech.convert import encodec as encodec_conv  # noqa: E402

ATOL = 1e-4


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights ``N(0, 1 / fan_in)`` (signals keep their scale through the stack), biases ``N(0, 0.01)``, Snake
    alphas in [0.5, 1.5], codebooks ``N(0, 1)``; weight-normalized convolutions go through their parametrization."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
                w = m.weight
                fan_in = w.shape[1] * w.shape[2] if isinstance(m, torch.nn.Conv1d) else w.shape[0] * w.shape[2] // m.stride[0]
                new = torch.randn(w.shape, generator=g) * fan_in ** -0.5
                if hasattr(m, "parametrizations"):
                    m.weight = new  # through weight norm's right_inverse: g and v
                else:
                    m.weight.copy_(new)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.01)
            if hasattr(m, "alpha") and isinstance(m.alpha, torch.nn.Parameter):
                m.alpha.copy_(0.5 + torch.rand(m.alpha.shape, generator=g))
            if isinstance(m, torch.nn.Embedding):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g))
            if isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * m.weight.shape[1] ** -0.5)
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            if hasattr(m, "scale") and isinstance(m.scale, torch.nn.Parameter):
                m.scale.copy_(0.2 + 0.4 * torch.rand(m.scale.shape, generator=g))
        for name, buf in model.named_buffers():
            if name.endswith("codebook.embed"):
                buf.copy_(torch.randn(buf.shape, generator=g))
            elif name.endswith("codebook.embed_avg"):
                buf.copy_(torch.randn(buf.shape, generator=g))
            elif name.endswith("codebook.cluster_size"):
                buf.fill_(1.0)
            elif name.endswith("codebook.embed_sum"):
                buf.copy_(torch.randn(buf.shape, generator=g))
            elif name.endswith("codebook.cluster_usage"):
                buf.copy_(0.5 + torch.rand(buf.shape, generator=g))


def _wave(n: int, seed: int = 0, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 800.0
    tone = 0.3 * torch.sin(2 * torch.pi * (3 + torch.rand(batch, 1, 1, generator=g) * 5) * t)
    return (tone + 0.05 * torch.randn(batch, 1, n, generator=g)).float()


def _import(tmp_path, name: str, ref_dir) -> torch.nn.Module:
    out = tmp_path / f"export_{name}"
    assert main(["import", "--from", name, "--weights", str(ref_dir), "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert f"--from {name}" in card and str(ref_dir) in card
    codec, _ = load_codec(str(out), modality="audio")
    return codec


def _check_signal(codes: torch.Tensor, wave: torch.Tensor) -> None:
    """The comparison can fail: the codes vary and the waveform is not near zero."""
    assert codes.unique().numel() > 3
    assert wave.std() > 1e-2


# ---- EnCodec --------------------------------------------------------------------------------------
def _encodec(tmp_path, causal: bool, pad_mode: str = "reflect"):
    cfg = transformers.EncodecConfig(
        sampling_rate=8000, num_filters=4, hidden_size=16, upsampling_ratios=[4, 2], codebook_size=64,
        num_lstm_layers=2, use_causal_conv=causal, pad_mode=pad_mode, target_bandwidths=[6.0, 12.0, 24.0])
    model = transformers.EncodecModel(cfg)
    _randomize(model, 1)
    ref_dir = tmp_path / f"encodec_{'causal' if causal else 'noncausal'}"
    model.save_pretrained(ref_dir)
    return model.eval(), ref_dir


@pytest.mark.parametrize("causal", [True, False])
def test_encodec_parity(tmp_path, causal):
    ref, ref_dir = _encodec(tmp_path, causal)
    codec = _import(tmp_path, "encodec", ref_dir)
    wave = _wave(8 * 50 + 3)  # not a whole number of frames: the reflection padding of the last window counts
    cfg = ref.config.to_dict()
    with torch.no_grad():
        for bw in ref.config.target_bandwidths:
            n = encodec_conv.codebooks_at(cfg, bw)
            want = ref.encode(wave, bandwidth=bw).audio_codes[0]
            got = codec.encode(wave, num_tokens=n)
            assert got.shape == want.shape, bw
            assert torch.equal(got, want), f"codes differ at {bw} kbps ({n} codebooks)"
            ref_wave = ref.decode(want[None], [None]).audio_values
            ours = codec.synthesize(got)
            assert ours.shape == ref_wave.shape
            _check_signal(want, ref_wave)
            err = (ours - ref_wave).abs().max().item()
            assert err < ATOL, f"waveform differs by {err} at {bw} kbps"
        assert codec.num_quantizers == ref.quantizer.num_quantizers
        if causal:
            full = codec.encode(wave)
            chunked = codec.encode_chunked(wave, chunk_seconds=80 / 8000)  # 10 frames a chunk
            assert torch.equal(chunked, full)


# ---- DAC ------------------------------------------------------------------------------------------
def _dac(tmp_path):
    # an odd ratio as in the 16 kHz model: DAC's decoder then ends a few samples early
    cfg = transformers.DacConfig(encoder_hidden_size=4, downsampling_ratios=[2, 5], decoder_hidden_size=32,
                                 n_codebooks=4, codebook_size=32, codebook_dim=4, sampling_rate=16000)
    model = transformers.DacModel(cfg)
    _randomize(model, 2)
    ref_dir = tmp_path / "dac"
    model.save_pretrained(ref_dir)
    return model.eval(), ref_dir


def test_dac_parity(tmp_path):
    ref, ref_dir = _dac(tmp_path)
    codec = _import(tmp_path, "dac", ref_dir)
    hop = ref.config.hop_length
    for n_samples in (hop * 40, hop * 40 + 5):
        wave = _wave(n_samples, seed=n_samples)
        padded = torch.nn.functional.pad(wave, (0, -n_samples % hop))  # DacFeatureExtractor pads to whole frames
        with torch.no_grad():
            for n in range(1, ref.config.n_codebooks + 1):
                want = ref.encode(padded, n_quantizers=n).audio_codes
                got = codec.encode(wave, num_tokens=n)
                assert torch.equal(got, want), f"codes differ with {n} codebooks"
                ref_wave = ref.decode(audio_codes=want).audio_values
                ours = codec.synthesize(got)[:, 0]
                _check_signal(want, ref_wave)
                n_ref = ref_wave.shape[-1]
                assert ours.shape[-1] == got.shape[-1] * hop and 0 < ours.shape[-1] - n_ref < hop
                assert torch.all(ours[..., n_ref:] == 0)
                err = (ours[..., :n_ref] - ref_wave).abs().max().item()
                assert err < ATOL, f"waveform differs by {err} with {n} codebooks"


# ---- Mimi -----------------------------------------------------------------------------------------
def _mimi(tmp_path):
    cfg = transformers.MimiConfig(
        sampling_rate=8000, num_filters=4, hidden_size=16, upsampling_ratios=[4, 2], codebook_size=32, codebook_dim=8,
        vector_quantization_hidden_dimension=8, num_quantizers=4, num_semantic_quantizers=1, upsample_groups=16,
        num_hidden_layers=2, intermediate_size=32, num_attention_heads=2, num_key_value_heads=2, sliding_window=6)
    model = transformers.MimiModel(cfg)
    _randomize(model, 3)
    ref_dir = tmp_path / "mimi"
    model.save_pretrained(ref_dir)
    return model.eval(), ref_dir


def test_mimi_parity(tmp_path):
    ref, ref_dir = _mimi(tmp_path)
    codec = _import(tmp_path, "mimi", ref_dir)
    assert codec.hop_length == 16 and codec.latent is not None  # 8 samples per SEANet frame, 2 frames per token
    wave = _wave(16 * 30 + 5)  # 61 SEANet frames: the sliding window (6) and the last incomplete window count
    with torch.no_grad():
        for n in range(1, ref.config.num_quantizers + 1):
            want = ref.encode(wave, num_quantizers=n).audio_codes
            got = codec.encode(wave, num_tokens=n)
            assert got.shape == want.shape
            assert torch.equal(got, want), f"codes differ with {n} codebooks"
            ref_wave = ref.decode(want).audio_values
            ours = codec.synthesize(got)
            assert ours.shape == ref_wave.shape
            _check_signal(want, ref_wave)
            err = (ours - ref_wave).abs().max().item()
            assert err < ATOL, f"waveform differs by {err} with {n} codebooks"
        # streamed in chunks of 4 token frames (8 transformer frames, more than the sliding window of 6): the
        # key / value caches and the downsampling's carried frames give the tokens of one pass
        full = codec.encode(wave)
        for seconds in (64 / 8000, 48 / 8000):
            assert torch.equal(codec.encode_chunked(wave, chunk_seconds=seconds), full)


# ---- errors ---------------------------------------------------------------------------------------
def test_import_errors(tmp_path, capsys):
    _, dac_dir = _dac(tmp_path)
    out = str(tmp_path / "out")
    capsys.readouterr()  # save_pretrained's progress bar

    def error(*args: str) -> str:
        assert main(["import", *args, "--out", out]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("tokenizers-mm: error:") and "\n" not in err
        assert not os.path.exists(out)
        return err

    assert "is not a folder" in error("--from", "dac", "--weights", str(tmp_path / "missing"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("x")
    assert "has no config.json" in error("--from", "dac", "--weights", str(foreign))
    assert "model_type" in error("--from", "encodec", "--weights", str(dac_dir))
    cfg = json.loads((dac_dir / "config.json").read_text())
    cfg["codebook_size"] = 16
    (dac_dir / "config.json").write_text(json.dumps(cfg))
    msg = error("--from", "dac", "--weights", str(dac_dir))
    assert "code_norm" in msg or "codebook" in msg
    assert "model_type 'xcodec2'" in error("--from", "xcodec2", "--weights", str(dac_dir))


# ---- export --format transformers -> from_pretrained ------------------------------------------------
@pytest.mark.parametrize("name", ["encodec", "dac", "mimi"])
def test_transformers_round_trip(tmp_path, name):
    """import -> our export -> ``export --format transformers`` -> ``from_pretrained``: same codes and waveform as
    our codec, and as the original reference."""
    ref, ref_dir = {"encodec": lambda: _encodec(tmp_path, causal=True), "dac": lambda: _dac(tmp_path),
                    "mimi": lambda: _mimi(tmp_path)}[name]()
    export_dir = tmp_path / f"export_{name}"
    codec = _import(tmp_path, name, ref_dir)
    back_dir = tmp_path / f"back_{name}"
    assert main(["export", "--ckpt", str(export_dir), "--out", str(back_dir), "--format", "transformers"]) == 0
    cls = {"encodec": transformers.EncodecModel, "dac": transformers.DacModel, "mimi": transformers.MimiModel}[name]
    back = cls.from_pretrained(back_dir).eval()
    hop = codec.hop_length
    wave = _wave(hop * 40, seed=5)
    with torch.no_grad():
        if name == "encodec":
            bw = ref.config.target_bandwidths[-1]
            want = back.encode(wave, bandwidth=bw).audio_codes[0]
            orig = ref.encode(wave, bandwidth=bw).audio_codes[0]
            ref_wave = back.decode(want[None], [None]).audio_values
        elif name == "dac":
            want = back.encode(wave).audio_codes
            orig = ref.encode(wave).audio_codes
            ref_wave = back.decode(audio_codes=want).audio_values[:, None]
        else:
            want = back.encode(wave).audio_codes
            orig = ref.encode(wave).audio_codes
            ref_wave = back.decode(want).audio_values
        got = codec.encode(wave)
        assert torch.equal(got, want) and torch.equal(orig, want)
        _check_signal(want, ref_wave)
        ours = codec.synthesize(got)[..., :ref_wave.shape[-1]]
        assert (ours - ref_wave).abs().max().item() < ATOL
    # a codec that no reference can express is refused in one line, before anything is written
    other = tmp_path / "other"
    assert main(["export", "--ckpt", str(export_dir), "--out", str(other), "--format", "transformers",
                 "--architecture", "dac" if name != "dac" else "encodec"]) == 2
    assert not other.exists()


# ---- X-Codec 2 ------------------------------------------------------------------------------------
def _xcodec2(tmp_path):
    """Tiny X-Codec 2 at the published 16 kHz / 320-sample hop (the semantic features fix both), with a two-layer
    w2v-BERT semantic encoder whose relative distances clip at -4 / +2 frames; FSQ levels [4, 4, 4, 4] (256 codes)."""
    sem = transformers.Wav2Vec2BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                          intermediate_size=64, output_hidden_size=32, conv_depthwise_kernel_size=3,
                                          left_max_position_embeddings=4, right_max_position_embeddings=2)
    cfg = transformers.Xcodec2Config(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        head_dim=16, encoder_hidden_size=4, downsampling_ratios=[4, 8, 10], semantic_model_config=sem,
        quantization_dim=64, quantization_levels=[4, 4, 4, 4])
    model = transformers.Xcodec2Model(cfg)
    _randomize(model, 7)
    ref_dir = tmp_path / "xcodec2"
    model.save_pretrained(ref_dir)
    return model.eval(), ref_dir


def _xcodec2_inputs(ref, wave: torch.Tensor) -> dict[str, torch.Tensor]:
    """The reference feature extractor's padded waveform and stacked log-mel features."""
    fe = transformers.Xcodec2FeatureExtractor(hop_length=ref.config.hop_length)
    return fe([w[0] for w in wave], sampling_rate=16000, return_tensors="pt")


def _xcodec2_reference_codes(ref, wave: torch.Tensor) -> torch.Tensor:
    """The reference's codes through its own feature extractor (padding, log-mel features) and ``encode``."""
    inp = _xcodec2_inputs(ref, wave)
    return ref.encode(inp["input_values"], inp["input_features"],
                      input_features_mask=inp["input_features_mask"]).audio_codes


def test_xcodec2_parity(tmp_path):
    """Every part runs as this project's modules: log-mel features, w2v-BERT Conformer, semantic adapter,
    anti-aliased acoustic encoder, FSQ and Vocos decoder."""
    ref, ref_dir = _xcodec2(tmp_path)
    codec = _import(tmp_path, "xcodec2", ref_dir)
    assert codec.architecture == "speech/xcodec2" and codec.hop_length == 320 and codec.codebook_size == 256
    wave = _wave(320 * 12 + 37)  # an incomplete last frame: the padding decides the frame count
    with torch.no_grad():
        inp = _xcodec2_inputs(ref, wave)
        padded = codec.pad(wave)
        assert torch.equal(padded, inp["input_values"])
        feats = codec.semantic_features(padded)
        assert (feats - inp["input_features"]).abs().max().item() < ATOL
        sem_ref = ref.semantic_encoder(inp["input_features"]).last_hidden_state
        assert sem_ref.std() > 0.1 and (codec.semantic_encoder(feats) - sem_ref).abs().max().item() < ATOL
        want = _xcodec2_reference_codes(ref, wave)
        got = codec.encode(wave)
        assert got.shape == want.shape == (2, 1, 13)
        assert torch.equal(got, want.long())
        ref_wave = ref.decode(want).audio_values
        ours = codec.synthesize(got)
        assert ours.shape == ref_wave.shape
        _check_signal(want, ref_wave)
        err = (ours - ref_wave).abs().max().item()
        assert err < ATOL, f"waveform differs by {err}"
        # a changed mapped weight changes the decoded waveform (the comparison can fail)
        codec.decoder.head.linear.bias.add_(0.5)
        assert (codec.synthesize(got) - ref_wave).abs().max().item() > 10 * ATOL


def test_xcodec2_transformers_round_trip(tmp_path):
    """import -> export -> ``export --format transformers`` -> ``Xcodec2Model.from_pretrained``: the same codes and
    waveform as our codec and as the original reference."""
    ref, ref_dir = _xcodec2(tmp_path)
    export_dir = tmp_path / "export_xcodec2"
    codec = _import(tmp_path, "xcodec2", ref_dir)
    back_dir = tmp_path / "back_xcodec2"
    assert main(["export", "--ckpt", str(export_dir), "--out", str(back_dir), "--format", "transformers"]) == 0
    back = transformers.Xcodec2Model.from_pretrained(back_dir).eval()
    wave = _wave(320 * 9, seed=5)
    with torch.no_grad():
        want = _xcodec2_reference_codes(back, wave)
        assert torch.equal(want, _xcodec2_reference_codes(ref, wave))
        got = codec.encode(wave)
        assert torch.equal(got, want.long())
        ref_wave = back.decode(want).audio_values
        _check_signal(want, ref_wave)
        assert (codec.synthesize(got) - ref_wave).abs().max().item() < ATOL
    other = tmp_path / "other"
    assert main(["export", "--ckpt", str(export_dir), "--out", str(other), "--format", "transformers",
                 "--architecture", "dac"]) == 2
    assert not other.exists()


def test_xcodec2_chunks_and_errors(tmp_path, capsys):
    """Chunked encoding keeps the frame count of one pass (equal tokens away from chunk edges); unsupported
    X-Codec 2 configs and bad inputs are refused in one line."""
    _, ref_dir = _xcodec2(tmp_path)
    codec = _import(tmp_path, "xcodec2", ref_dir)
    wave = _wave(320 * 20 + 11, seed=2)
    full = codec.encode(wave)
    chunked = codec.encode_chunked(wave, chunk_seconds=320 * 8 / 16000)
    assert chunked.shape == full.shape == (2, 1, 21)
    assert torch.equal(codec.encode_chunked(wave, chunk_seconds=1.0), full)
    with pytest.raises(ValueError, match="one FSQ codebook"):
        codec.encode(wave, num_tokens=2)
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        codec.decode(torch.full((1, 1, 3), 256))
    capsys.readouterr()
    cfg = json.loads((ref_dir / "config.json").read_text())
    cfg["num_key_value_heads"] = 1
    (ref_dir / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "refused"
    assert main(["import", "--from", "xcodec2", "--weights", str(ref_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "grouped-query attention" in err and "\n" not in err and not out.exists()


def test_xcodec2_finetunes(tmp_path, capsys):
    """``init_from`` an imported X-Codec 2: the export's weights; the gradient reaches the acoustic encoder, the
    adapter, FSQ's projections and the decoder (straight-through rounding) but not the frozen semantic encoder;
    a few steps on one clip lower the mel loss; a checkpoint's hyperparameters rebuild the codec; the fine-tuning
    YAML parses."""
    from tokenizers_mm.speech.tokenizer import SpeechModule

    _, ref_dir = _xcodec2(tmp_path)
    codec = _import(tmp_path, "xcodec2", ref_dir)
    export = str(tmp_path / "export_xcodec2")
    loss = {"mel_windows": [64, 256], "mel_bins": [10, 40]}
    module = SpeechModule(init_from=export, loss=loss)
    tuned = module.codec
    assert tuned.training and not tuned.semantic_encoder.training
    assert all(torch.equal(v, codec.state_dict()[k]) for k, v in tuned.state_dict().items())
    rebuilt = SpeechModule(**dict(module.hparams))
    assert rebuilt.codec.arch == tuned.arch
    x = _wave(320 * 6, seed=9, batch=1)

    def eval_mel() -> float:
        with torch.no_grad():
            value = module.mel_loss(tuned.eval()(x)["recon"], x).item()
        tuned.train()
        return value

    before = eval_mel()
    torch.manual_seed(0)  # the decoder's dropout
    opt = torch.optim.Adam([p for p in tuned.parameters() if p.requires_grad], lr=1e-3)
    for step in range(12):
        opt.zero_grad()
        out = tuned(x)
        assert out["recon"].shape == x.shape and out["ids"].shape == (1, 1, 7)
        module.mel_loss(out["recon"], x).backward()
        if step == 0:
            for part in (tuned.acoustic_encoder, tuned.semantic_adapter, tuned.fsq.project_in, tuned.decoder):
                assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
            assert all(p.grad is None for p in tuned.semantic_encoder.parameters())
        opt.step()
    after = eval_mel()
    assert after < 0.9 * before, f"mel loss {before:.3f} -> {after:.3f}"
    with pytest.raises(ValueError, match="leave seanet out"):
        SpeechModule(init_from=export, seanet={"channels": 8}, loss=loss)
    with pytest.raises(ValueError, match="own semantic branch"):
        SpeechModule(init_from=export, loss=loss, distill={"speech_teacher": "teachers/wavlm"})
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "speech", "finetune_xcodec2_16k.yaml")
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", path, "--print_config"])
    assert exc.value.code in (0, None)
