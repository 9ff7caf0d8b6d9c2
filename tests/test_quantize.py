import math

import pytest
import torch

from tokenizers_mm.quantize import Quantizer, QuantizerConfig, codebook_stats


@pytest.mark.parametrize("cfg", [QuantizerConfig(kind="fsq", levels=[8, 5, 5, 5]),
                                 QuantizerConfig(kind="vq", codebook_size=64, codebook_dim=8, kmeans_init=False)])
def test_one_return_convention(cfg):
    torch.manual_seed(0)
    q = Quantizer(16, cfg)
    x = torch.randn(3, 10, 16)
    out = q(x)
    assert out.quantized.shape == x.shape and out.ids.shape == (3, 10) and out.ids.dtype == torch.int64
    assert out.aux_loss.ndim == 0
    assert 0 <= int(out.ids.min()) and int(out.ids.max()) < q.codebook_size
    q.eval()
    again = q(x)
    assert torch.allclose(q.ids_to_codes(again.ids), again.quantized, atol=1e-5)
    if cfg.kind == "fsq":
        assert q.codebook_size == 1000 and math.isclose(q.bits_per_token, math.log2(1000))


def test_vq_has_commitment_loss_when_training():
    q = Quantizer(8, QuantizerConfig(kind="vq", codebook_size=32, codebook_dim=8, kmeans_init=False))
    q.train()
    assert float(q(torch.randn(2, 5, 8)).aux_loss) > 0


def test_bad_ids_and_kind_raise():
    q = Quantizer(8, QuantizerConfig(kind="fsq", levels=[4, 4]))
    with pytest.raises(ValueError, match=r"lie in \[0, 16\)"):
        q.ids_to_codes(torch.tensor([[0, 16]]))
    with pytest.raises(ValueError, match="must be integers"):
        q.ids_to_codes(torch.tensor([[0.5]]))
    with pytest.raises(ValueError, match="kind must be"):
        Quantizer(8, QuantizerConfig(kind="pq"))


def test_codebook_stats():
    s = codebook_stats(torch.tensor([0, 1, 2, 3]), 8)
    assert s["usage"] == 0.5 and math.isclose(s["perplexity"], 4.0) and math.isclose(s["entropy_bits"], 2.0)
    assert codebook_stats(torch.zeros(10, dtype=torch.long), 4)["perplexity"] == 1.0


def test_fsq_noise_dropout_needs_symmetric_levels_and_acts_only_in_training():
    with pytest.raises(ValueError, match="preserve_symmetry"):
        Quantizer(8, QuantizerConfig(kind="fsq", levels=[5, 5], noise_dropout=0.5))
    torch.manual_seed(0)
    q = Quantizer(8, QuantizerConfig(kind="fsq", levels=[5, 5], preserve_symmetry=True, noise_dropout=1.0))
    x = torch.randn(2, 6, 8)
    q.train()
    noisy = q(x).quantized
    q.eval()
    clean = q(x)
    assert not torch.allclose(noisy, clean.quantized)
    assert torch.allclose(q.ids_to_codes(clean.ids), clean.quantized, atol=1e-5)


def test_fsq_batch_norm_spreads_similar_inputs_over_codes():
    torch.manual_seed(0)
    base = torch.randn(1, 1, 16)
    x = base + 0.01 * torch.randn(8, 4, 16)  # nearly identical vectors, as a fresh transformer emits
    plain = Quantizer(16, QuantizerConfig(kind="fsq", levels=[8, 5, 5, 5]))
    normed = Quantizer(16, QuantizerConfig(kind="fsq", levels=[8, 5, 5, 5], batch_norm=True))
    plain.train()
    normed.train()
    assert plain(x).ids.unique().numel() <= 2
    assert normed(x).ids.unique().numel() >= 10
    normed.eval()
    out = normed(x)
    assert torch.allclose(normed.ids_to_codes(out.ids), out.quantized, atol=1e-5)
    assert torch.equal(normed(x).ids, out.ids)
