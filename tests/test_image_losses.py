import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tokenizers_mm.image.losses import (
    PatchDiscriminator,
    PerceptualLoss,
    adaptive_gan_weight,
)


@pytest.fixture(scope="module")
def lpips() -> PerceptualLoss:
    return PerceptualLoss.untrained(seed=0)


@pytest.fixture(scope="module")
def weights_file(lpips, tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("lpips") / "lpips_vgg.safetensors")
    lpips.save(path)
    return path


def _images(seed: int, b: int = 2, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g) * 2 - 1


def test_perceptual_distance_properties(lpips):
    x, y = _images(1), _images(2)
    same = lpips(x, x.clone())
    d_xy, d_yx = lpips(x, y), lpips(y, x)
    assert same.shape == d_xy.shape == (2,)
    assert float(same.abs().max()) < 1e-6
    assert bool((d_xy > 1e-4).all())
    assert torch.allclose(d_xy, d_yx, rtol=1e-5, atol=1e-7)
    # per-image: changing only image 1 leaves image 0's distance unchanged
    y2 = y.clone()
    y2[1] = x[1]
    d2 = lpips(x, y2)
    assert torch.allclose(d2[0], d_xy[0], rtol=1e-5) and float(d2[1]) < 1e-6
    # a larger perturbation is further away than a smaller one
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    assert bool((lpips(x, x + 0.01 * noise) < lpips(x, x + 0.5 * noise)).all())


def test_perceptual_frozen_gradient_flows_to_input(lpips):
    assert all(not p.requires_grad for p in lpips.parameters())
    assert sum(p.numel() for p in lpips.parameters()) == 14_714_688 + 64 + 128 + 256 + 512 + 512
    assert all(bool((lin.weight >= 0).all()) for lin in lpips.lins)
    x = _images(4, size=32).requires_grad_(True)
    y = _images(5, size=32)
    lpips(x, y).sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all()) and float(x.grad.abs().sum()) > 0
    assert all(p.grad is None for p in lpips.parameters())


def test_perceptual_stays_in_eval(lpips):
    lpips.train()
    assert not lpips.training and not any(m.training for m in lpips.modules())
    lpips.train(True)
    assert not lpips.training
    assert set(lpips.state_dict()) == {f"backbone.{i}.{s}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
                                       for s in ("weight", "bias")} | {f"lins.{i}.weight" for i in range(5)}


def test_perceptual_save_load_round_trip(lpips, weights_file, tmp_path):
    loaded = PerceptualLoss(weights_file)
    x, y = _images(6), _images(7)
    ref = lpips(x, y)
    assert torch.equal(loaded(x, y), ref)
    assert not loaded.training and all(not p.requires_grad for p in loaded.parameters())
    # a different seed gives a different network, so the round trip is not trivially true
    assert not torch.allclose(PerceptualLoss.untrained(seed=1)(x, y), ref)
    # .pt files work too
    pt = tmp_path / "w.pt"
    torch.save(load_file(weights_file), pt)
    assert torch.equal(PerceptualLoss(str(pt))(x, y), ref)


def test_perceptual_bad_files(weights_file, tmp_path):
    missing = str(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        PerceptualLoss(missing)
    with pytest.raises(ValueError, match="weights file"):
        PerceptualLoss(None)

    state = load_file(weights_file)
    no_lin = {k: v for k, v in state.items() if k != "lins.4.weight"}
    save_file(no_lin, str(tmp_path / "no_lin.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys: lins\.4\.weight"):
        PerceptualLoss(str(tmp_path / "no_lin.safetensors"))

    extra = dict(state, **{"classifier.0.weight": torch.zeros(2, 2)})
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(ValueError, match=r"unexpected keys: classifier\.0\.weight"):
        PerceptualLoss(str(tmp_path / "extra.safetensors"))

    bad = dict(state, **{"lins.0.weight": torch.zeros(1, 32, 1, 1)})
    save_file(bad, str(tmp_path / "shape.safetensors"))
    with pytest.raises(ValueError, match=r"wrong shapes: lins\.0\.weight"):
        PerceptualLoss(str(tmp_path / "shape.safetensors"))

    neg = dict(state, **{"lins.2.weight": -state["lins.2.weight"] - 1})
    save_file(neg, str(tmp_path / "neg.safetensors"))
    with pytest.raises(ValueError, match=r"negative lin weights in: lins\.2\.weight"):
        PerceptualLoss(str(tmp_path / "neg.safetensors"))


@pytest.mark.parametrize("size,expected", [(32, 2), (64, 6)])
@pytest.mark.parametrize("norm", ["group", "none"])
def test_patch_discriminator_shapes(size, expected, norm):
    torch.manual_seed(0)
    d = PatchDiscriminator(in_channels=3, channels=16, num_layers=3, norm=norm)
    out = d(torch.rand(2, 3, size, size) * 2 - 1)
    assert out.shape == (2, 1, expected, expected) and bool(torch.isfinite(out).all())
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64, 128, 1]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1]
    assert sum(isinstance(m, nn.GroupNorm) for m in d.modules()) == (3 if norm == "group" else 0)


def test_patch_discriminator_width_cap_and_bad_args():
    d = PatchDiscriminator(channels=8, num_layers=5, norm="none")
    assert [m.out_channels for m in d.modules() if isinstance(m, nn.Conv2d)] == [8, 16, 32, 64, 64, 64, 1]
    assert d(torch.zeros(1, 3, 96, 96)).shape == (1, 1, 1, 1)
    with pytest.raises(ValueError, match="norm"):
        PatchDiscriminator(norm="batch")
    with pytest.raises(ValueError, match="num_layers"):
        PatchDiscriminator(num_layers=0)


def test_adaptive_gan_weight_matches_hand_computation():
    layer = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -1.0]]))
    x = torch.tensor([[1.0, 2.0]])
    y = layer(x)  # -1.5
    rec = ((y - 0.5) ** 2).sum()  # d/dW = 2 (y - 0.5) x = [-4, -8], norm sqrt(80)
    g = -3.0 * y.sum()  # d/dW = -3 x = [-3, -6], norm sqrt(45)
    w = adaptive_gan_weight(rec, g, layer.weight)
    assert w.ndim == 0 and not w.requires_grad and w.grad_fn is None
    assert math.isclose(float(w), math.sqrt(80) / (math.sqrt(45) + 1e-4), rel_tol=1e-6)
    assert layer.weight.grad is None  # autograd.grad does not accumulate
    # graph is retained: the usual backward still works afterwards, and w acts as a constant
    (rec + w * g).backward()
    assert torch.allclose(layer.weight.grad, torch.tensor([[-4.0, -8.0]]) + float(w) * torch.tensor([[-3.0, -6.0]]))


def test_adaptive_gan_weight_clamp_and_errors():
    layer = nn.Linear(2, 1, bias=False)
    nn.init.constant_(layer.weight, 0.5)
    y = layer(torch.ones(1, 2))
    rec = (y**2).sum() + 1.0
    flat = 0.0 * y.sum()  # zero adversarial gradient -> ratio huge -> clamped
    assert float(adaptive_gan_weight(rec, flat, layer.weight, max_weight=7.0)) == 7.0
    with pytest.raises(ValueError, match="does not require grad"):
        adaptive_gan_weight(rec.detach(), flat, layer.weight)
    other = nn.Parameter(torch.ones(1))
    with pytest.raises(ValueError, match="does not depend"):
        adaptive_gan_weight(rec, (other * 2).sum(), layer.weight)
