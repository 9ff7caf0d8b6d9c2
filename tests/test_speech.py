"""Speech codec: frame rates and bitrates, quantizer dropout, chunked causal encoding, losses, a short training on
the embedded speech, the GAN and the distillation steps, export + pipelines + CLI, evaluation."""

import json
import math
import os

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from tokenizers_mm.speech.codec import SpeechCodec
from tokenizers_mm.speech.losses import (
    LossBalancer,
    MultiScaleMelLoss,
    distillation_loss,
    feature_matching_loss,
)
from tokenizers_mm.speech.seanet import Snake, _SnakeFunction, receptive_field
from tokenizers_mm.speech.tokenizer import SpeechModule

TINY = dict(sample_rate=16000,
            seanet={"channels": 8, "dim": 32, "ratios": [8, 5, 4, 2], "causal": True, "decoder": "istft",
                    "istft_channels": 64, "istft_layers": 4},
            # codebooks of 2 codes: what 300 CPU steps learn fills a few bits per frame (see the learning test)
            rvq={"num_quantizers": 4, "codebook_size": 2, "decay": 0.9, "quantizer_dropout": 1.0},
            loss={"mel_windows": [64, 128, 256, 512], "mel_bins": [10, 20, 40, 64]},
            val_quantizers=[1, 2, 4])


def speech(seconds: float = 1.0, n: int = 2) -> torch.Tensor:
    """Real speech from the vendored clips, resampled to 16 kHz: ``[n, 1, T]``."""
    from tokenizers_mm.data.embedded import embedded_dir
    from tokenizers_mm.speech.audio_io import read_audio

    folder = embedded_dir("speech")
    names = sorted(f for f in os.listdir(folder) if f.endswith(".flac"))[:n]
    t = int(seconds * 16000)
    clips = []
    for name in names:
        w = read_audio(os.path.join(folder, name), 16000)[..., :t]
        clips.append(torch.nn.functional.pad(w, (0, t - w.shape[-1])))
    return torch.stack(clips)


@pytest.mark.parametrize("sr,ratios,n_q,size,hz,kbps", [
    (16000, [8, 5, 4, 2], 8, 16, 50.0, 1.6),       # the tiny demo config
    (24000, [8, 5, 4, 2], 32, 1024, 75.0, 24.0),   # EnCodec 24 kHz
    (16000, [8, 5, 4, 2], 12, 1024, 50.0, 6.0),    # DAC-style 16 kHz
])
@pytest.mark.parametrize("decoder", ["seanet", "istft"])
def test_frame_rate_shapes_and_bitrate(sr, ratios, n_q, size, hz, kbps, decoder):
    codec = SpeechCodec(sr, {"channels": 4, "dim": 16, "ratios": ratios, "decoder": decoder, "istft_channels": 16},
                        {"num_quantizers": n_q, "codebook_size": size, "kmeans_init": False})
    assert codec.frame_rate == hz and codec.hop_length == sr // hz
    assert codec.bitrate_kbps() == pytest.approx(kbps) and codec.bitrate_kbps(1) == pytest.approx(kbps / n_q)
    x = torch.randn(2, 1, sr // 2 + 13) * 0.1  # not a whole number of frames
    out = codec(x)
    frames = -(-x.shape[-1] // codec.hop_length)
    assert out["recon"].shape == x.shape and out["ids"].shape == (2, n_q, frames)
    spec = codec.token_spec()
    assert spec["tokens_per_sample"] == hz * n_q and spec["bitrates_kbps"][-1] == pytest.approx(kbps)


def test_every_number_of_codebooks_decodes_and_bad_ids_are_refused():
    torch.manual_seed(0)
    codec = SpeechCodec(**{k: TINY[k] for k in ("sample_rate", "seanet", "rvq")}).eval()
    x = speech(0.5)
    ids = codec.encode(x)
    assert ids.shape == (2, 4, 25) and ids.dtype == torch.int64
    outs = [codec.decode(ids[:, :n]) for n in range(1, 5)]
    for y in outs:
        assert y.shape == (2, 1, 25 * 320) and torch.isfinite(y).all() and y.abs().max() <= 1
    assert not torch.allclose(outs[0], outs[-1])  # each codebook adds something
    assert torch.equal(codec.encode(x, num_tokens=2), ids[:, :2])
    with pytest.raises(ValueError, match=r"\[0, 2\), got min 2 max 3"):
        codec.decode(ids + 2)
    with pytest.raises(ValueError, match="1 <= n <= 4"):
        codec.decode(torch.zeros(1, 5, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="integers"):
        codec.decode(ids.float())
    with pytest.raises(ValueError, match="mono audio"):
        codec.encode(torch.zeros(1, 2, 100))


@pytest.mark.parametrize("residual_gradient,scale", [(1.0, 1.0), (0.0, 4.0)])
def test_the_decoder_gradient_reaches_the_encoder_once_whatever_the_number_of_codebooks(residual_gradient, scale):
    """EnCodec / DAC: the quantized latent is a straight-through copy of the encoder's latent, so its gradient
    reaches the encoder once; vector-quantize-pytorch's default sends it once per codebook (4x with 4 here).
    (The rotation trick, the library's other default, would rotate and rescale it per codebook.)"""
    torch.manual_seed(0)
    codec = SpeechCodec(16000, {"channels": 4, "dim": 16, "ratios": [4, 4]},
                        {"num_quantizers": 4, "codebook_size": 8, "kmeans_init": False, "commitment_weight": 0.0,
                         "residual_gradient": residual_gradient}).train()
    z = torch.randn(2, 16, 10, requires_grad=True)
    w = torch.randn(2, 16, 10)
    for n in (4, 1):
        z.grad = None
        (codec.quantize(z, num_quantizers=n)["quantized"] * w).sum().backward()
        expected = scale if n == 4 else 1.0  # a lower bitrate is a straight-through copy of the latent already
        torch.testing.assert_close(z.grad, expected * w)


def test_istft_decoder_bins_are_the_frequencies_it_plays():
    """Head bin ``k`` of the inverse-STFT decoder is ``k * sample_rate / n_fft`` Hz in the waveform, at any length."""
    from tokenizers_mm.speech.istft_decoder import ISTFTDecoder
    from tokenizers_mm.speech.seanet import SEANetConfig

    cfg = SEANetConfig(dim=8, ratios=[4, 5, 4, 4], decoder="istft", istft_channels=16, istft_layers=2)
    dec = ISTFTDecoder(cfg)
    assert (dec.hop, dec.n_fft) == (320, 1280)
    bins = dec.n_fft // 2 + 1
    with torch.no_grad():  # silence everywhere but bin 40 (500 Hz at 16 kHz), zero phase in every frame
        dec.head.weight.zero_()
        dec.head.bias.zero_()
        dec.head.bias[:bins] = -30.0
        dec.head.bias[40] = 3.0
        wave = dec(torch.randn(2, 8, 25))
    assert wave.shape == (2, 1, 25 * 320)
    inner = wave[0, 0, 1280:-1280]
    spectrum = torch.fft.rfft(inner * torch.hann_window(inner.numel()))
    hz = int(spectrum.abs().argmax()) * 16000 / inner.numel()
    assert abs(hz - 500.0) < 16000 / inner.numel(), hz
    # a cosine of amplitude 2 e^3 / n_fft, times 4/3 (Hann overlap-add at 4x: sum w / sum w^2)
    assert float(inner.abs().max()) == pytest.approx(2 * math.exp(3.0) / 1280 * 4 / 3, rel=0.02)
    assert torch.allclose(wave[0], wave[1])  # the zeroed head ignores the latent
    with pytest.raises(ValueError, match="istft_n_fft must be even"):
        ISTFTDecoder(SEANetConfig(ratios=[4, 4], decoder="istft", istft_n_fft=8))
    with pytest.raises(ValueError, match="decoder must be 'seanet' or 'istft'"):
        SEANetConfig(decoder="vocoder")


@pytest.mark.parametrize("bottleneck", ["lstm", "none"])
def test_chunked_causal_encoding_gives_the_tokens_of_one_pass(bottleneck):
    torch.manual_seed(0)
    cfg = {"channels": 4, "dim": 16, "ratios": [4, 4, 2], "causal": True, "bottleneck": bottleneck}
    codec = SpeechCodec(16000, cfg, {"num_quantizers": 3, "codebook_size": 32, "kmeans_init": False}).eval()
    x = speech(1.3, n=1)[..., :20_000]
    whole = codec.encode(x)
    assert torch.equal(codec.encode_chunked(x, chunk_seconds=0.1), whole)
    assert codec.context_samples() >= receptive_field(codec.seanet_cfg)
    # the same chunking without left context changes tokens: the test can tell
    noncausal = SpeechCodec(16000, {**cfg, "causal": False}, {"num_quantizers": 3, "codebook_size": 32,
                                                              "kmeans_init": False}).eval()
    assert not torch.equal(noncausal.encode_chunked(x, chunk_seconds=0.1), noncausal.encode(x))


@pytest.mark.parametrize("bottleneck", ["lstm", "none"])
def test_spectral_encoder_is_causal_and_chunked_encoding_gives_the_tokens_of_one_pass(bottleneck):
    torch.manual_seed(0)
    codec = SpeechCodec(16000, {"encoder": "spectral", "dim": 16, "ratios": [8, 5, 4, 2], "spectral_n_fft": 640,
                                "spectral_mels": 40, "spectral_channels": 32, "spectral_layers": 2,
                                "bottleneck": bottleneck},
                        {"num_quantizers": 3, "codebook_size": 32, "kmeans_init": False}).eval()
    assert codec.causal and codec.context_samples() >= receptive_field(codec.seanet_cfg)
    x = speech(2.0, n=1)[..., :30_000]
    whole = codec.encode(x)
    assert whole.shape == (1, 3, 94)
    assert torch.equal(codec.encode_chunked(x, chunk_seconds=0.3), whole)
    # frame f sees samples before (f + 1) * hop only: silencing everything from sample 16_000 on keeps frames < 50
    cut = x.clone()
    cut[..., 16_000:] = 0
    z, z_cut = codec.encoder(codec.pad_to_hop(x)), codec.encoder(codec.pad_to_hop(cut))
    assert torch.equal(z[..., :50], z_cut[..., :50]) and not torch.allclose(z[..., 50:], z_cut[..., 50:])
    with pytest.raises(ValueError, match="encoder must be 'seanet' or 'spectral'"):
        SpeechCodec(16000, {"encoder": "mel"})
    with pytest.raises(ValueError, match="spectral_n_fft must be even and at least the hop"):
        SpeechCodec(16000, {"encoder": "spectral", "ratios": [8, 5, 4, 2], "spectral_n_fft": 100})


def test_griffin_lim_decoder_trains_on_the_input_phase_and_decodes_deterministically():
    """``istft_phase: griffin_lim``: the head predicts magnitudes only. Given the true magnitudes, the training
    reconstruction (input's phase) is the input itself, and Griffin-Lim decoding recovers a waveform with the
    same magnitudes (not the same samples); the head's bias starts at the first batch's mean log magnitude."""
    from tokenizers_mm.speech.istft_decoder import ISTFTDecoder
    from tokenizers_mm.speech.seanet import SEANetConfig

    cfg = SEANetConfig(dim=8, ratios=[8, 5, 4, 2], decoder="istft", istft_channels=16, istft_layers=1,
                       istft_upsample=2, istft_phase="griffin_lim", griffin_lim_iters=32)
    dec = ISTFTDecoder(cfg)
    assert (dec.hop, dec.n_fft, dec.head.out_features) == (160, 640, 321)
    x = speech(1.0, n=2)
    z = torch.randn(2, 8, 50)
    dec.train()
    dec(z, reference=x)
    true_log = dec.reference_spectrum(x, 100).abs().clamp_min(1e-5).log()
    torch.testing.assert_close(dec.head.bias.detach(), true_log.mean(dim=(0, 2)))
    assert bool(dec.head_initialized)
    true_mag = true_log.exp()
    dec.head_outputs = lambda _z: (true_mag, None, None)  # an oracle head: the decoder's own grid, exact magnitudes
    own_phase = dec(z, reference=x)
    torch.testing.assert_close(own_phase[..., 400:-400], x[..., 400:-400], atol=2e-3, rtol=0)
    dec.eval()
    y = dec(z)
    assert y.shape == (2, 1, 16000) and torch.equal(y, dec(z))  # zero-phase start: deterministic
    got = dec.reference_spectrum(y, 100).abs()
    convergence = float((got - true_mag).norm() / true_mag.norm())  # spectral convergence of Griffin-Lim
    assert convergence < 0.25, convergence
    assert float(((y - x) ** 2).mean() / (x ** 2).mean()) > 0.5  # another phase: not the input's samples
    with pytest.raises(ValueError, match="istft_phase must be 'learned' or 'griffin_lim'"):
        ISTFTDecoder(SEANetConfig(ratios=[4, 4], decoder="istft", istft_phase="zero"))
    with pytest.raises(ValueError, match="istft_upsample must be a positive divisor of the hop"):
        ISTFTDecoder(SEANetConfig(ratios=[4, 4], decoder="istft", istft_upsample=3))


def nn_one_hot(index: torch.Tensor, classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(index, classes).float()


def test_harmonic_head_plays_the_pitch_it_picks():
    """``istft_harmonics: K``: a head that picks one of the K pitches, fully voiced, decodes (Griffin-Lim) to a
    waveform whose spectrum peaks at that pitch's harmonics; unvoiced, to the flat envelope alone."""
    from tokenizers_mm.speech.istft_decoder import ISTFTDecoder, harmonic_combs
    from tokenizers_mm.speech.seanet import SEANetConfig

    combs = harmonic_combs(torch.tensor([100.0, 250.0]), 640, 16000)
    assert combs.shape == (2, 321)
    torch.testing.assert_close(combs.mean(1), torch.ones(2))
    assert combs[1].argmax() % 10 == 0 and float(combs[1, 5]) == 0.0  # 250 Hz = every 10 bins of 25 Hz
    cfg = SEANetConfig(dim=8, ratios=[8, 5, 4, 2], decoder="istft", istft_channels=16, istft_layers=1,
                       istft_upsample=2, istft_n_fft=640, istft_phase="griffin_lim", istft_harmonics=24,
                       istft_f0_range=[80.0, 320.0])
    dec = ISTFTDecoder(cfg, 16000).eval()
    assert dec.head.out_features == 321 + 321 + 24  # envelope, voicing, pitch logits
    pick = 17
    f0 = float(torch.logspace(math.log10(80.0), math.log10(320.0), 24)[pick])
    with torch.no_grad():
        dec.head.weight.zero_()
        dec.head.bias.zero_()
        dec.head.bias[:321] = -4.0  # flat envelope
        dec.head.bias[321:642] = 12.0  # voiced in every bin
        dec.head.bias[642 + pick] = 30.0
        mag, _ = dec.head_output(torch.randn(1, 8, 25))
        wave = dec(torch.randn(1, 8, 25))[0, 0, 1280:-1280]
        dec.head.bias[321:642] = -12.0  # unvoiced
        flat, _ = dec.head_output(torch.randn(1, 8, 25))
    torch.testing.assert_close(flat, torch.full_like(flat, math.exp(-4.0)), rtol=1e-3, atol=0)
    frame = mag[0, :, 10]
    peaks = [round(h * f0 / 25) for h in range(1, 9)]  # the first 8 harmonics' bins
    valleys = [round((h + 0.5) * f0 / 25) for h in range(1, 8)]
    assert float(frame[peaks].min()) > 100 * float(frame[valleys].max())
    spectrum = torch.fft.rfft(wave * torch.hann_window(wave.numel())).abs()
    hz = torch.arange(spectrum.numel()) * 16000 / wave.numel()
    band = (hz > 0.5 * f0) & (hz < 1.5 * f0)
    assert abs(float(hz[band][spectrum[band].argmax()]) - f0) < 10.0  # the fundamental sounds at the chosen pitch
    # training terms: the pitch target is the input's cepstral pitch, on voiced frames only
    from tokenizers_mm.speech.istft_decoder import cepstral_pitch

    t = torch.arange(16000) / 16000
    tone = sum(torch.cos(2 * math.pi * 180.0 * h * t) / h for h in range(1, 20))[None, None] * 0.05
    f0_hat, strength = cepstral_pitch(dec.reference_spectrum(tone, 100).abs(), 16000, (80.0, 320.0))
    assert torch.allclose(f0_hat[0, 5:-5], torch.full((90,), 180.0), rtol=0.02) and bool((strength[0, 5:-5] > 0.1).all())
    x = speech(1.0, n=2)
    _, strength = cepstral_pitch(dec.reference_spectrum(x, 100).abs(), 16000, (80.0, 320.0))
    assert 0.1 < float((strength > dec.voicing_threshold).float().mean()) < 0.9  # speech: voiced and unvoiced frames
    dec.train()
    dec(torch.randn(2, 8, 50), reference=x)
    assert set(dec.training_terms) == {"pitch"} and dec.training_terms["pitch"].requires_grad
    f0, _ = cepstral_pitch(dec.reference_spectrum(x, 100).abs(), 16000, (80.0, 320.0))
    target = (f0.log()[..., None] - dec.pitches.log()).abs().argmin(-1)
    mag = dec.reference_spectrum(x, 100).abs()
    right = dec.training_losses(10.0 * nn_one_hot(target, 24), mag)["pitch"]
    wrong = dec.training_losses(10.0 * nn_one_hot((target + 12) % 24, 24), mag)["pitch"]
    assert float(right) < 0.01 < 5.0 < float(wrong)
    dec.eval()
    dec(torch.randn(2, 8, 50), reference=x)
    assert dec.training_terms == {}
    with pytest.raises(ValueError, match="istft_harmonics must be >= 0"):
        ISTFTDecoder(SEANetConfig(ratios=[8, 5, 4, 2], decoder="istft", istft_harmonics=-1))
    with pytest.raises(ValueError, match=r"istft_f0_range must be \[low, high\] Hz"):
        ISTFTDecoder(SEANetConfig(ratios=[8, 5, 4, 2], decoder="istft", istft_harmonics=8,
                                  istft_f0_range=[300.0, 100.0]))


def test_memory_efficient_snake_matches_the_composed_ops():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 11, dtype=torch.double, requires_grad=True)
    alpha = (torch.rand(1, 3, 1, dtype=torch.double) + 0.3).requires_grad_()
    assert torch.autograd.gradcheck(_SnakeFunction.apply, (x, alpha))
    snake = Snake(3).double()
    with torch.no_grad():
        snake.alpha.copy_(alpha)
    outs, grads = [], []
    for efficient in (True, False):
        Snake.memory_efficient = efficient
        try:
            y = snake(x)
            g = torch.randn_like(y, generator=torch.Generator().manual_seed(1))
            gx, ga = torch.autograd.grad(y, (x, snake.alpha), g)
        finally:
            Snake.memory_efficient = True
        outs.append(y.detach())
        grads.append((gx, ga))
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


def test_losses():
    x = speech(0.5)
    mel = MultiScaleMelLoss(16000, [64, 256], [10, 40])
    assert float(mel(x, x)) == 0.0
    noisy = [float(mel(x + s * torch.randn_like(x), x)) for s in (0.001, 0.01, 0.1)]
    assert noisy[0] < noisy[1] < noisy[2]
    a, b = torch.randn(2, 10, 8), torch.randn(2, 10, 8)
    assert float(distillation_loss(a, a)) < 0.32 < float(distillation_loss(a, -a))  # -log sigmoid(1) = 0.313
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[:, :5] = True
    b[:, :5] = a[:, :5]
    assert float(distillation_loss(a, b, mask)) == pytest.approx(float(distillation_loss(a[:, :5], a[:, :5])))
    feats = [[torch.ones(2, 3)]]
    assert float(feature_matching_loss(feats, feats)) == 0.0
    # the balancer gives each loss its share of the gradient whatever the loss's own scale
    out = torch.randn(4, 1, 100, requires_grad=True)
    target = torch.randn(4, 1, 100)
    losses = {"mel": 1000 * (out - target).abs().mean(), "waveform": 1e-3 * (out - target).pow(2).mean()}
    bal = LossBalancer({"mel": 3.0, "waveform": 1.0}, total_norm=1.0, decay=0.0)
    g = bal.gradient(losses, out)
    g_mel = torch.autograd.grad(losses["mel"], out, retain_graph=True)[0]
    g_wav = torch.autograd.grad(losses["waveform"], out)[0]
    share = lambda gi: float(gi.norm()) / 2  # noqa: E731  (per-sample norm of the EMA = norm / sqrt(B))
    expected = 0.75 * g_mel / share(g_mel) + 0.25 * g_wav / share(g_wav)
    assert torch.allclose(g, expected, rtol=1e-4, atol=1e-6)


def _audio_dm(embedded, steps, seconds=0.5):
    from tokenizers_mm.data import ShardDataModule

    return ShardDataModule(modality="audio", train_urls=os.path.join(embedded, "audio"),
                           val_urls=os.path.join(embedded, "audio"), batch_size=8, val_batch_size=15,
                           batches_per_epoch=steps, num_workers=0,
                           audio={"sample_rate": 16000, "seconds": seconds, "val_seconds": 1.0, "loudness_lufs": -23.0})


@pytest.fixture(scope="module")
def trained_speech(embedded, tmp_path_factory):
    root = tmp_path_factory.mktemp("speech")
    pl.seed_everything(0)
    model = SpeechModule(**TINY, optimizer={"lr": 3e-3, "warmup_steps": 5, "betas": [0.8, 0.99]})
    dm = _audio_dm(embedded, 300)
    trainer = pl.Trainer(max_steps=300, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root))
    before = trainer.validate(model, datamodule=dm, verbose=False)[0]
    trainer.fit(model, datamodule=dm)
    after = trainer.validate(model, datamodule=dm, verbose=False)[0]
    trainer.save_checkpoint(root / "speech.ckpt")
    return model.eval(), str(root / "speech.ckpt"), before, after, root


def test_short_training_on_embedded_speech_lowers_mel_and_more_codebooks_help(trained_speech):
    model, _, before, after, root = trained_speech
    assert after["val/mel"] < 0.8 * before["val/mel"], (before, after)
    # what a short CPU training learns fits in a few bits per 20 ms frame (a codec trained without any quantizer
    # decodes no better from its latent than from one 64-code codebook: README, "Speech"), so the tests' codebooks
    # hold 1 bit each and every one added must show: measured val mel 1.82 / 1.63 / 1.56 at 1 / 2 / 4 codebooks
    # (seed 0; seeds 1 and 2 within 0.06)
    assert after["val/mel_q2"] < after["val/mel_q1"] - 0.05, after
    assert after["val/mel_q4"] < after["val/mel_q2"] + 0.02 and after["val/mel_q4"] < after["val/mel_q1"] - 0.1, after
    codec = model.inference_codec()
    x = speech(1.0, n=4)
    with torch.no_grad():
        z = codec.encoder(codec.pad_to_hop(x))
        ids = codec.encode(x)
        errors = [float((codec._ids_to_latent(ids[:, :n]).transpose(1, 2) - z).norm()) for n in range(1, 5)]
        assert all(a > b for a, b in zip(errors, errors[1:])), errors
        # the tokens carry the clip: its own tokens decode closer to it than another clip's
        own = float(model.mel_loss(codec.decode(ids)[..., :16000], x))
        other = float(model.mel_loss(codec.decode(ids.roll(1, 0))[..., :16000], x))
    assert own < other - 0.1, (own, other)
    wavs = [f for _, _, fs in os.walk(root / "samples") for f in fs if f.endswith(".wav")]
    assert any(f.endswith("_original.wav") for f in wavs) and any(f.endswith("_q4.wav") for f in wavs)


def test_the_pitch_term_teaches_the_harmonic_head_the_inputs_pitch():
    """Trained on the pitch term alone (fixed latent frames, 20 Adam steps), the decoder picks the input's cepstral
    pitch within a semitone on its voiced frames; a head with a wrong target or no gradient stays near chance."""
    from tokenizers_mm.speech.istft_decoder import ISTFTDecoder, cepstral_pitch
    from tokenizers_mm.speech.seanet import SEANetConfig

    torch.manual_seed(0)
    cfg = SEANetConfig(dim=8, ratios=[8, 5, 4, 2], decoder="istft", istft_channels=32, istft_layers=1,
                       istft_upsample=2, istft_n_fft=640, istft_phase="griffin_lim", istft_harmonics=48,
                       istft_f0_range=[80.0, 320.0])
    dec = ISTFTDecoder(cfg, 16000).train()
    x, z = speech(1.0, n=2), torch.randn(2, 8, 50)
    f0, strength = cepstral_pitch(dec.reference_spectrum(x, 100).abs(), 16000, dec.f0_range)
    voiced = strength > dec.voicing_threshold

    def within_a_semitone() -> float:
        with torch.no_grad():
            _, _, logits = dec.head_outputs(z)
        semitones = 12 * (dec.pitches[logits.argmax(-1)] / f0).log2().abs()
        return float((semitones[voiced] < 1.0).float().mean())

    before = within_a_semitone()
    opt = torch.optim.Adam(dec.parameters(), lr=1e-2)
    for _ in range(20):
        dec(z, reference=x)
        opt.zero_grad()
        dec.training_terms["pitch"].backward()
        opt.step()
    assert before < 0.3 and within_a_semitone() > 0.95, before


def test_generator_and_discriminator_both_step_with_and_without_the_balancer(embedded, tmp_path):
    for balancer in (False, True):
        pl.seed_everything(0)
        loss = {**TINY["loss"], "balancer": balancer}
        adversarial = {"weight": 1.0, "start_step": 0, "discriminator": {"periods": [2, 3], "mpd_channels": [4, 8],
                                                                       "stft_windows": [256], "stft_channels": 4}}
        model = SpeechModule(**{**TINY, "loss": loss}, adversarial=adversarial, optimizer={"lr": 1e-3})
        enc0 = [p.detach().clone() for p in model.codec.encoder.parameters()]
        disc0 = [p.detach().clone() for p in model.discriminator.parameters()]
        trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                             default_root_dir=str(tmp_path))
        trainer.fit(model, datamodule=_audio_dm(embedded, 3))
        assert trainer.global_step == 3  # generator steps only
        assert any(not torch.equal(a, b) for a, b in zip(enc0, model.codec.encoder.parameters()))
        assert any(not torch.equal(a, b) for a, b in zip(disc0, model.discriminator.parameters()))
        logged = trainer.logged_metrics
        assert {"train/disc", "train/adv", "train/feat"} <= set(logged) and torch.isfinite(logged["train/disc"])
        if balancer:
            assert model.balancer.steps == 3


def test_distillation_loss_falls_with_a_tiny_speech_teacher(embedded, tmp_path):
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    torch.manual_seed(0)
    teacher = tmp_path / "hubert"
    HubertModel(HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
                ).save_pretrained(teacher)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True).save_pretrained(teacher)
    pl.seed_everything(0)
    model = SpeechModule(**TINY, distill={"speech_teacher": str(teacher), "rvq_layer": 1, "speech_weight": 10.0},
                            optimizer={"lr": 2e-3})
    assert "speech" in model.distill_heads and not any("hubert" in k for k in model.state_dict())
    batch = {"audio": speech(0.5, n=4), "audio_mask": torch.ones(4, 1, 8000, dtype=torch.bool)}

    def distill_now() -> float:
        model.eval()
        with torch.no_grad():
            out = model.codec(batch["audio"], distill_layer=1)
            return float(model.distill_losses(batch, out["distill"])["distill_speech"])

    first = distill_now()
    trainer = pl.Trainer(max_steps=40, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=_audio_dm(embedded, 40))
    assert "train/distill_speech" in trainer.logged_metrics
    assert distill_now() < first - 0.05, first


def test_export_pipelines_and_cli_round_trip(trained_speech, embedded, tmp_path, capsys):
    import pipelines
    from pipelines.files import load_tokens
    from tokenizers_mm.cli import main
    from tokenizers_mm.data.embedded import embedded_dir
    from tokenizers_mm.export import ExportError, export_checkpoint

    model, ckpt, *_ = trained_speech
    out = tmp_path / "export"
    cfg = export_checkpoint(ckpt, str(out))
    assert cfg["modality"] == "speech" and cfg["tokens"]["kbps"] == pytest.approx(0.2)  # 4 x 1 bit x 50 Hz
    tok = pipelines.load(str(out))
    x = speech(0.7)
    ids = tok.encode(x)
    codec = model.inference_codec()
    assert torch.equal(ids, codec.encode(x))
    assert torch.allclose(tok.decode(ids[:, :2]), codec.decode(ids[:, :2]), atol=1e-6)
    with pytest.raises(ExportError, match="speech tokenizer; expected a image"):
        pipelines.load(str(out), modality="image")
    with pytest.raises(ValueError, match="1 <= n <= 4"):
        tok.decode(np.zeros((5, 10), dtype=np.int64))
    with pytest.raises(ValueError, match="not an audio file"):
        tok.encode(os.path.join(embedded, "audio", "dataset.json"))
    files = sorted(os.path.join(embedded_dir("speech"), f) for f in os.listdir(embedded_dir("speech"))
                   if f.endswith(".flac"))[:3]
    assert main(["encode", "--model", str(out), *files, "--out", str(tmp_path / "t.npz"), "--num-tokens", "3"]) == 0
    got, keys, meta = load_tokens(str(tmp_path / "t.npz"))
    assert len(got) == 3 and all(g.shape[0] == 3 for g in got) and meta["kbps"] == pytest.approx(tok.bitrate_kbps(3))
    assert np.array_equal(got[0], tok.encode(files[0], num_tokens=3)[0].numpy())
    assert main(["decode", "--model", str(out), str(tmp_path / "t.npz"), "--out", str(tmp_path / "wav")]) == 0
    import soundfile as sf

    for key, n in zip(keys, meta["num_samples"]):
        data, sr = sf.read(tmp_path / "wav" / f"{key}.wav")
        assert sr == 16000 and len(data) == n


def test_evaluate_speech_beside_opus_and_mp3(trained_speech, embedded, tmp_path, capsys):
    from tokenizers_mm.cli import main

    _, ckpt, *_ = trained_speech
    out = tmp_path / "report"
    assert main(["evaluate", "--ckpt", ckpt, "--data", os.path.join(embedded, "audio"), "--out", str(out),
                 "--max-samples", "2"]) == 0
    report = json.load(open(out / "report.json"))
    rows = report["rows"]
    assert [r["value"] for r in rows] == [1, 2, 3, 4] and report["samples"]["count"] == 2
    assert all(np.isfinite(r["metrics"]["mel_distance"]) for r in rows) and rows[0]["kbps"] < rows[-1]["kbps"]
    assert all(np.isfinite(r["metrics"]["si_sdr"]) and 0 <= r["metrics"]["stoi"] <= 1 for r in rows)
    measured = [p for curve in report["baselines"]["curves"].values() for p in curve]
    assert {p["codec"] for p in measured} == {"opus", "mp3"} and all(p["kbps"] > 0 for p in measured)
    assert len(report["details"]["codebook_usage"]) == 4 and report["timing"]["real_time_factor"]["encode"] > 0
    assert os.path.isfile(out / "rate_quality.png") and any(f.endswith("_q4_0.20kbps.wav") for f in os.listdir(out / "wav"))
    assert "| opus |" in capsys.readouterr().out
    # the report goes into the export's config and model card
    assert main(["export", "--ckpt", ckpt, "--out", str(tmp_path / "export"), "--report", str(out / "report.json")]) == 0
    cfg = json.load(open(tmp_path / "export" / "config.json"))
    assert cfg["evaluation"]["rows"] == rows and cfg["evaluation"]["baselines"]["curves"]
    assert "| ours | 4 | 200 | 0.20 |" in open(tmp_path / "export" / "README.md").read()


@pytest.mark.parametrize("name", ["codec_tiny", "codec_16k", "codec_24k", "dmcodec_16k"])
def test_speech_configs_parse_and_build(name, capsys):
    """Every speech YAML is a valid CLI config, and its codec builds with the anchors' sizes."""
    import yaml

    from tokenizers_mm.cli import main

    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "speech", f"{name}.yaml")
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", path, "--print_config"])
    assert exc.value.code in (0, None)
    args = yaml.safe_load(open(path))["model"]["init_args"]
    codec = SpeechCodec(args["sample_rate"], args["seanet"], args["rvq"])
    expected = {"codec_tiny": (50.0, 1.6), "codec_16k": (50.0, 6.0), "codec_24k": (75.0, 24.0),
                "dmcodec_16k": (50.0, 6.0)}[name]
    assert (codec.frame_rate, round(codec.bitrate_kbps(), 3)) == expected
