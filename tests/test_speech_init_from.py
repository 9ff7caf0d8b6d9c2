"""``init_from``: speech training starts from an export (an imported random-init EnCodec here)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tokenizers_mm.cli import main  # noqa: E402
from tokenizers_mm.export import load_codec  # noqa: E402
from tokenizers_mm.speech.tokenizer import SpeechModule  # noqa: E402


@pytest.fixture(scope="module")
def encodec_export(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("init_from")
    cfg = transformers.EncodecConfig(sampling_rate=16000, num_filters=4, hidden_size=16, upsampling_ratios=[4, 2],
                                     codebook_size=32, num_lstm_layers=1, target_bandwidths=[10.0, 20.0])
    torch.manual_seed(0)
    model = transformers.EncodecModel(cfg)
    with torch.no_grad():
        for layer in model.quantizer.layers:
            layer.codebook.embed.normal_()
    model.save_pretrained(tmp / "ref")
    out = tmp / "export"
    assert main(["import", "--from", "encodec", "--weights", str(tmp / "ref"), "--out", str(out)]) == 0
    return str(out)


LOSS = {"mel_windows": [64, 128], "mel_bins": [10, 20]}
ADVERSARIAL = {"weight": 1.0, "discriminator": {"periods": [2], "mpd_channels": [4], "stft_windows": [128],
                                                "stft_channels": 4}}


def test_starts_from_export_weights(encodec_export):
    codec, cfg = load_codec(encodec_export, modality="audio")
    module = SpeechModule(init_from=encodec_export, loss=LOSS, adversarial=ADVERSARIAL)
    assert module.codec.arch == codec.arch
    ours, theirs = module.codec.state_dict(), codec.state_dict()
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert module.discriminator is not None  # fresh, not in the export
    assert module.codec.training
    # training settings of rvq may change; the codebooks stay the export's
    rvq = dict(cfg["arch"]["rvq"], quantizer_dropout=0.0, decay=0.9)
    tuned = SpeechModule(init_from=encodec_export, rvq=rvq, loss=LOSS, adversarial=ADVERSARIAL)
    assert tuned.codec.rvq_cfg.decay == 0.9
    assert torch.equal(tuned.codec.rvq.layers[0]._codebook.embed, codec.rvq.layers[0]._codebook.embed)


def test_refuses_a_different_architecture(encodec_export, tmp_path):
    _, cfg = load_codec(encodec_export, modality="audio")
    with pytest.raises(ValueError, match="codebook_size"):
        SpeechModule(init_from=encodec_export, rvq=dict(cfg["arch"]["rvq"], codebook_size=64), loss=LOSS)
    with pytest.raises(ValueError, match="seanet differs.*channels"):
        SpeechModule(init_from=encodec_export, seanet=dict(cfg["arch"]["seanet"], channels=8), loss=LOSS)
    with pytest.raises(ValueError, match="sample_rate"):
        SpeechModule(init_from=encodec_export, sample_rate=24000, loss=LOSS)
    with pytest.raises(ValueError, match="init_from"):
        SpeechModule(init_from=str(tmp_path / "missing"), loss=LOSS)


@pytest.mark.parametrize("name", ["finetune_encodec_24k", "finetune_dac_16k", "finetune_mimi_24k", "mimi_24k"])
def test_finetune_configs_parse(name, encodec_export, capsys):
    """The fine-tuning YAMLs are valid CLI configs; the EnCodec one builds from an EnCodec export."""
    import os

    import yaml

    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "speech", f"{name}.yaml")
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", path, "--print_config"])
    assert exc.value.code in (0, None)
    args = yaml.safe_load(open(path))["model"]["init_args"]
    if name == "mimi_24k":  # Mimi's sizes: 12.5 token frames/s, 1.1 kbps with the first 8 of 32 codebooks
        from tokenizers_mm.speech.codec import SpeechCodec

        codec = SpeechCodec(args["sample_rate"], args["seanet"], args["rvq"], args["latent"])
        assert codec.frame_rate == 12.5 and round(codec.bitrate_kbps(8), 3) == 1.1
        return
    assert args["init_from"].startswith("exports/")
    if name == "finetune_encodec_24k":
        module = SpeechModule(**{**args, "init_from": encodec_export})
        assert module.discriminator is not None and module.balancer is not None


def _tiny_reference(name: str):
    if name == "mimi":
        cfg = transformers.MimiConfig(
            sampling_rate=8000, num_filters=4, hidden_size=16, upsampling_ratios=[4, 2], codebook_size=16,
            codebook_dim=8, vector_quantization_hidden_dimension=8, num_quantizers=3, upsample_groups=16,
            num_hidden_layers=1, intermediate_size=32, num_attention_heads=2, num_key_value_heads=2)
        return transformers.MimiModel(cfg), 16
    cfg = transformers.DacConfig(encoder_hidden_size=4, downsampling_ratios=[2, 4], decoder_hidden_size=32,
                                 n_codebooks=3, codebook_size=16, codebook_dim=4, sampling_rate=8000)
    return transformers.DacModel(cfg), 8


@pytest.mark.parametrize("name", ["mimi", "dac"])
def test_imported_codec_trains(tmp_path, name):
    """An imported Mimi / DAC fine-tunes: the split / per-codebook quantizer's training path (codebook dropout, EMA,
    straight-through) passes the gradient to the encoder (and Mimi's transformers) and the decoder."""
    torch.manual_seed(0)
    model, hop = _tiny_reference(name)
    with torch.no_grad():
        for buf_name, buf in model.named_buffers():
            if buf_name.endswith("embed_sum"):
                buf.normal_()
    model.save_pretrained(tmp_path / "ref")
    assert main(["import", "--from", name, "--weights", str(tmp_path / "ref"), "--out", str(tmp_path / "x")]) == 0
    module = SpeechModule(init_from=str(tmp_path / "x"), loss=LOSS)
    codec = module.codec.train()
    x = torch.randn(2, 1, hop * 20) * 0.1
    for dropout in (0.0, 1.0):
        codec.zero_grad()
        out = codec(x, dropout=dropout)
        assert out["recon"].shape == x.shape and out["ids"].shape == (2, 3, 20)
        assert (out["ids"][:, 0] >= 0).all()  # the first codebook is never dropped
        (torch.nn.functional.l1_loss(out["recon"], x) + out["commit"]).backward()
        parts = [codec.encoder, codec.decoder] + ([codec.latent.encoder_transformer] if name == "mimi" else [])
        for part in parts:
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
