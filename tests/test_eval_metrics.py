"""Tests of tokenizers_mm.eval: PSNR/SSIM, Fréchet distance, FID accumulation, Inception loading,
JPEG/WebP rate-distortion baselines and the rate-distortion plot."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from tokenizers_mm.eval.baselines import at_bytes, codec_rd_curve, psnr_uint8
from tokenizers_mm.eval.image_metrics import (
    FIDAccumulator,
    InceptionFeatures,
    frechet_distance,
    psnr,
    ssim,
)
from tokenizers_mm.eval.plots import rate_quality_plot


@pytest.fixture(scope="module")
def astronaut64() -> np.ndarray:
    """A real photo, ``[64, 64, 3]`` uint8."""
    import skimage.data
    from PIL import Image

    return np.asarray(Image.fromarray(skimage.data.astronaut()).resize((64, 64), Image.BICUBIC))


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """``[H, W, 3]`` uint8 -> ``[1, 3, H, W]`` float in ``[-1, 1]``."""
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 127.5 - 1


# ----------------------------------------------------------------------------------------------- PSNR / SSIM


def test_psnr_identical_and_constant_offset():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 16, 16, generator=g) * 1.6 - 0.8
    same = psnr(x, x)
    assert same.shape == (3,)
    assert (same > 90).all()
    # Offset 0.1 everywhere in [-1, 1] -> mse 0.01 -> 10 log10(4 / 0.01) = 26.02 dB.
    off = psnr(x, x + 0.1)
    assert torch.allclose(off, torch.full((3,), 10 * math.log10(400.0)), atol=1e-3)
    # Per image: a bigger offset on image 1 only lowers image 1.
    y = x.clone()
    y[1] += 0.2
    per = psnr(x, y)
    assert per[0] > 90 and per[2] > 90
    assert per[1] == pytest.approx(10 * math.log10(4 / 0.04), abs=1e-3)


def test_psnr_clamps_inputs():
    x = torch.ones(1, 3, 8, 8)
    # Values beyond 1 are clamped to 1, so this is identical to x.
    assert psnr(x, x * 3)[0] > 90
    # Full-range error: -1 vs 1 -> mse 4 -> 0 dB.
    assert psnr(x, -x)[0].item() == pytest.approx(0.0, abs=1e-5)


def test_psnr_matches_uint8_definition(astronaut64):
    rng = np.random.default_rng(0)
    noisy = np.clip(astronaut64.astype(int) + rng.integers(-20, 21, astronaut64.shape), 0, 255).astype(np.uint8)
    expected = psnr_uint8(astronaut64, noisy)
    got = psnr(to_tensor(astronaut64), to_tensor(noisy))[0].item()
    assert got == pytest.approx(expected, abs=1e-3)
    assert 20 < expected < 35


def test_ssim_identical_noisy_and_small(astronaut64):
    x = to_tensor(astronaut64)
    assert ssim(x, x)[0].item() == pytest.approx(1.0, abs=1e-6)
    g = torch.Generator().manual_seed(1)
    light = ssim(x, x + 0.05 * torch.randn(x.shape, generator=g))[0].item()
    heavy = ssim(x, x + 0.4 * torch.randn(x.shape, generator=g))[0].item()
    assert heavy < light < 0.999
    assert heavy < 0.6
    # Images smaller than the default 7x7 window still work (window shrinks to an odd size <= side).
    small = torch.rand(2, 3, 4, 6, generator=g) * 2 - 1
    s = ssim(small, small)
    assert s.shape == (2,) and torch.allclose(s, torch.ones(2))
    assert (ssim(small, -small) < 0.5).all()


# ------------------------------------------------------------------------------------------ Fréchet distance


def test_frechet_distance_identical_is_zero():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(200, 6, generator=g)
    assert abs(frechet_distance(f, f)) < 1e-6
    assert abs(frechet_distance(f.numpy(), f.numpy())) < 1e-6


def test_frechet_distance_mean_shift_equals_squared_norm():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 5, generator=g) @ torch.randn(5, 5, generator=g)
    d = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0])
    # Same samples shifted: identical covariance, so FID = |d|^2 = 14.25 exactly (up to round-off).
    assert frechet_distance(a, a + d) == pytest.approx(float(d @ d), rel=1e-6)


def whiten(x: torch.Tensor) -> torch.Tensor:
    """Samples with exactly zero mean and identity (unbiased) covariance."""
    x = x - x.mean(0)
    chol = torch.linalg.cholesky(torch.cov(x.T))
    return torch.linalg.solve_triangular(chol, x.T, upper=False).T


def test_frechet_distance_matches_hand_computation():
    # Two Gaussians with exact sample statistics: means mu_a = 0, mu_b, diagonal covariances sa^2, sb^2.
    # FID = |mu_b|^2 + sum (sa^2 + sb^2 - 2 sa sb) = |mu_b|^2 + sum (sa - sb)^2 = 1.25 + (0 + 1 + 1) = 3.25.
    g = torch.Generator().manual_seed(3)
    a = whiten(torch.randn(300, 3, generator=g, dtype=torch.float64))
    b = whiten(torch.randn(400, 3, generator=g, dtype=torch.float64))
    sa, sb = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64), torch.tensor([1.0, 1.0, 1.5], dtype=torch.float64)
    mu_b = torch.tensor([0.5, 0.0, -1.0], dtype=torch.float64)
    assert frechet_distance(a * sa, b * sb + mu_b) == pytest.approx(3.25, rel=1e-9)

    # Non-diagonal covariances against an independent hand computation of the formula.
    fa = a @ torch.tensor([[1.0, 0.3, 0.0], [0.0, 1.0, 0.5], [0.2, 0.0, 1.0]], dtype=torch.float64)
    fb = b * sb + mu_b
    ca, cb = np.cov(fa.numpy(), rowvar=False), np.cov(fb.numpy(), rowvar=False)
    from scipy.linalg import sqrtm

    dm = (fa.mean(0) - fb.mean(0)).numpy()
    hand = dm @ dm + np.trace(ca) + np.trace(cb) - 2 * np.trace(np.real(sqrtm(ca @ cb)))
    assert frechet_distance(fa, fb) == pytest.approx(hand, rel=1e-8)
    assert frechet_distance(fa, fb) == pytest.approx(frechet_distance(fb, fa), rel=1e-8)


def test_frechet_distance_singular_covariance():
    # 10 samples in 32 dims: rank-deficient covariances must still give a finite, ~0 value for equal sets.
    g = torch.Generator().manual_seed(0)
    f = torch.randn(10, 32, generator=g)
    v = frechet_distance(f, f)
    assert math.isfinite(v) and abs(v) < 1e-3
    w = frechet_distance(f, f + 1.0)
    assert w == pytest.approx(32.0, rel=1e-3)
    with pytest.raises(ValueError):
        frechet_distance(f, torch.randn(10, 31, generator=g))


# ----------------------------------------------------------------------------------------------- FID (accum)


class TinyFeatures(nn.Module):
    """Stand-in feature network: ``[B, 3, H, W]`` -> ``[B, 8]``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.AdaptiveAvgPool2d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # [B, 8, 1, 1]: the accumulator flattens it


def test_fid_accumulator_identical_and_different():
    g = torch.Generator().manual_seed(0)
    real = torch.rand(48, 3, 16, 16, generator=g) * 2 - 1
    acc = FIDAccumulator(TinyFeatures())
    for i in range(0, 48, 16):
        acc.update(real[i:i + 16], real[i:i + 16])
    assert acc.count == (48, 48)
    assert abs(acc.compute()) < 1e-6

    acc2 = FIDAccumulator(TinyFeatures())
    fake = (real * 0.3 + 0.5).clamp(-1, 1)
    for i in range(0, 48, 16):
        acc2.update(real[i:i + 16], fake[i:i + 16])
    far = acc2.compute()
    assert far > 1e-3

    # Slightly perturbed fakes are closer than strongly changed ones.
    acc3 = FIDAccumulator(TinyFeatures())
    acc3.update(real, (real + 0.02 * torch.randn(real.shape, generator=g)).clamp(-1, 1))
    assert 0 <= acc3.compute() < far

    with pytest.raises(RuntimeError):
        FIDAccumulator(TinyFeatures()).compute()


# ------------------------------------------------------------------------------------------------- Inception


@pytest.fixture(scope="module")
def inception() -> InceptionFeatures:
    torch.manual_seed(0)
    return InceptionFeatures()


def test_inception_from_local_round_trip(inception, tmp_path):
    from safetensors.torch import save_file

    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        ref = inception(x)
    assert ref.shape == (2, 2048) and torch.isfinite(ref).all()

    # Plain torchvision Inception3 keys, with AuxLogits.* present (as in the official weights) -> dropped.
    state = {k: v.clone() for k, v in inception.net.state_dict().items()}
    state["AuxLogits.fc.weight"] = torch.zeros(1000, 768)
    state["AuxLogits.fc.bias"] = torch.zeros(1000)
    pt = tmp_path / "inception.pt"
    torch.save(state, pt)
    st = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(st))

    # Inception at 299 px is slow on CPU: one forward for the .pt load, exact state equality for the other.
    from_pt = InceptionFeatures.from_local(pt)
    assert not from_pt.training
    with torch.inference_mode():
        out = from_pt(x)
    assert torch.allclose(out, ref, atol=1e-5)
    from_st = InceptionFeatures.from_local(st)
    expected = inception.state_dict()
    got = from_st.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_inception_from_local_errors(inception, tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        InceptionFeatures.from_local(missing)

    state = dict(inception.net.state_dict())
    state["Mixed_5b.branch1x1.conv.wieght"] = state.pop("Mixed_5b.branch1x1.conv.weight")
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(ValueError) as err:
        InceptionFeatures.from_local(bad)
    msg = str(err.value)
    assert "Mixed_5b.branch1x1.conv.weight" in msg and "Mixed_5b.branch1x1.conv.wieght" in msg


# -------------------------------------------------------------------------------------------------- Baselines


@pytest.mark.parametrize("fmt,qualities", [("JPEG", (5, 20, 50, 90)), ("WEBP", (0, 20, 50, 90))])
def test_codec_rd_curve(astronaut64, fmt, qualities):
    curve = codec_rd_curve([astronaut64, astronaut64[::-1].copy()], fmt, qualities)
    assert [p["quality"] for p in curve] == list(qualities)  # sorted by bytes == sorted by quality here
    sizes = [p["bytes_per_image"] for p in curve]
    assert all(a < b for a, b in zip(sizes, sizes[1:]))
    psnrs = [p["psnr"] for p in curve]
    assert psnrs[-1] > psnrs[0] + 5
    assert all(b > a - 0.5 for a, b in zip(psnrs, psnrs[1:]))
    assert 15 < psnrs[0] < psnrs[-1] < 60
    assert all(-1 <= p["ssim"] <= 1 for p in curve)
    assert curve[-1]["ssim"] > curve[0]["ssim"]
    assert set(curve[0]) == {"quality", "bytes_per_image", "psnr", "ssim"}


def test_codec_matches_manual_encode(astronaut64):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(astronaut64).save(buf, format="JPEG", quality=30, optimize=True)
    dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    (pt,) = codec_rd_curve([astronaut64], "jpeg", [30])
    assert pt["bytes_per_image"] == len(buf.getvalue())
    assert pt["psnr"] == pytest.approx(psnr(to_tensor(astronaut64), to_tensor(dec))[0].item(), abs=1e-3)
    assert pt["ssim"] == pytest.approx(ssim(to_tensor(astronaut64), to_tensor(dec))[0].item(), abs=1e-6)


def test_at_bytes_interpolates_and_flags_extrapolation():
    curve = [  # deliberately unsorted
        {"quality": 50, "bytes_per_image": 3000.0, "psnr": 30.0, "ssim": 0.9},
        {"quality": 10, "bytes_per_image": 1000.0, "psnr": 24.0, "ssim": 0.7},
        {"quality": 30, "bytes_per_image": 2000.0, "psnr": 28.0, "ssim": 0.8},
    ]
    r = at_bytes(curve, 1250.0)
    assert r["bracket"] == [10, 30] and r["extrapolated"] is False
    assert r["psnr"] == pytest.approx(25.0) and r["ssim"] == pytest.approx(0.725)
    r = at_bytes(curve, 2500.0)
    assert r["bracket"] == [30, 50] and r["psnr"] == pytest.approx(29.0)
    r = at_bytes(curve, 2000.0)
    assert r["psnr"] == pytest.approx(28.0) and not r["extrapolated"]

    low = at_bytes(curve, 10.0)
    assert low["extrapolated"] is True and low["psnr"] == 24.0 and low["bracket"] == [10, 10]
    high = at_bytes(curve, 1e6)
    assert high["extrapolated"] is True and high["psnr"] == 30.0 and high["quality"] == 50


def test_at_bytes_on_real_curve(astronaut64):
    curve = codec_rd_curve([astronaut64], "JPEG", (10, 50))
    mid = (curve[0]["bytes_per_image"] + curve[1]["bytes_per_image"]) / 2
    r = at_bytes(curve, mid)
    assert r["bracket"] == [10, 50]
    assert r["psnr"] == pytest.approx((curve[0]["psnr"] + curve[1]["psnr"]) / 2)


# ------------------------------------------------------------------------------------------------------ Plots


def test_rate_quality_plot_writes_png(tmp_path, astronaut64):
    from tokenizers_mm.eval.image import IMAGE_METRICS, image_baseline
    from tokenizers_mm.eval.report import RATE_PER_SAMPLE, budget_row, new_report

    curves = {fmt: [image_baseline(fmt, p) for p in codec_rd_curve([astronaut64], fmt, (10, 50, 90))]
              for fmt in ("JPEG", "WEBP")}
    rows = [budget_row("k", 256, 256, 256.0, {"psnr": 22.0, "ssim": 0.6}),
            budget_row("k", 1024, 1024, 1024.0, {"psnr": 26.0, "ssim": 0.8})]
    report = new_report("image", "Image", ("k", "k"), {"per": "image", **RATE_PER_SAMPLE}, metrics=IMAGE_METRICS,
                        rows=rows, baselines={"curves": curves, "rows": []})
    out = tmp_path / "sub" / "rd.png"
    for metrics in (["psnr"], ["psnr", "ssim"]):
        path = rate_quality_plot(report, metrics, str(out), title="astronaut 64px")
        assert path == str(out)
        data = out.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    assert [p.name for p in out.parent.iterdir()] == ["rd.png"]  # no temp file left behind
