"""Image quality metrics: PSNR, SSIM and Fréchet Inception Distance (FID).

Images are float tensors ``[B, 3, H, W]`` in ``[-1, 1]`` (values outside are clamped). No weights are
downloaded: :class:`InceptionFeatures` is either randomly initialised or loaded from a local file with
:meth:`InceptionFeatures.from_local`; any ``nn.Module`` mapping images to ``[B, D]`` features can stand in
for it in :class:`FIDAccumulator`.

PSNR is torchmetrics'. SSIM stays scikit-image's (uniform 7x7 window with the sample-covariance correction):
torchmetrics' SSIM, even with a uniform 7x7 window, leaves that correction out and moves the third decimal.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.image import peak_signal_noise_ratio

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_SIZE = 299


def psnr_db(preds: torch.Tensor, target: torch.Tensor, *, data_range: float = 2.0, per_image: bool = False,
            mse_floor: float = 1e-10) -> torch.Tensor:
    """PSNR in dB, ``10 log10(data_range^2 / max(mse, mse_floor))``: the project's one PSNR (torchmetrics').

    Args:
        preds, target: same shape; ``[B, ...]`` when ``per_image``. Half precision is computed in float32.
        data_range: peak-to-peak range of the values (2 for ``[-1, 1]``, 255 for 8-bit pixels); no clamping here.
        per_image: False: one scalar from the mean squared error of the whole batch; True: ``[B]``, each sample's
            own mean squared error over all but the first dimension.
        mse_floor: the mean squared error is floored here, so identical inputs give a finite value.
    """
    if preds.shape != target.shape:
        raise ValueError(f"PSNR needs equal shapes, got {tuple(preds.shape)} vs {tuple(target.shape)}")
    dtype = torch.promote_types(torch.promote_types(preds.dtype, target.dtype), torch.float32)
    dim = tuple(range(1, preds.ndim)) if per_image else None
    value = peak_signal_noise_ratio(preds.to(dtype), target.to(dtype), data_range=data_range, dim=dim,
                                    reduction="none" if per_image else "elementwise_mean")
    return value.clamp(max=10.0 * math.log10(data_range**2 / mse_floor))


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in ``[-1, 1]`` (the evaluator's).

    Args:
        x, y: ``[B, 3, H, W]`` float, clamped to ``[-1, 1]`` (peak-to-peak 2).
    Returns:
        ``[B]`` float32, ``10 * log10(4 / mse)``; identical images give a large finite value (mse floored
        at ``1e-10``, i.e. 106 dB).
    """
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch: {tuple(x.shape)} vs {tuple(y.shape)}")
    return psnr_db(x.detach().float().clamp(-1, 1), y.detach().float().clamp(-1, 1), per_image=True)


def to_uint8_hwc(x: torch.Tensor) -> np.ndarray:
    """``[B, 3, H, W]`` float in ``[-1, 1]`` -> ``[B, H, W, 3]`` uint8 in ``[0, 255]`` (rounded)."""
    x = x.detach().float().clamp(-1, 1).cpu()
    return ((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def ssim_win_size(h: int, w: int) -> int:
    """SSIM window size: ``min(7, largest odd <= min(h, w))`` (at least 1)."""
    side = min(h, w)
    odd = side if side % 2 == 1 else side - 1
    return max(1, min(7, odd))


def ssim_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two ``[H, W, 3]`` uint8 images (scikit-image, ``data_range=255``, small-image safe)."""
    from skimage.metrics import structural_similarity

    win = ssim_win_size(a.shape[0], a.shape[1])
    if win < 3:
        # scikit-image needs a window of at least 3; a 1-2 px image only matches if it is identical.
        return 1.0 if np.array_equal(a, b) else float("nan")
    return float(structural_similarity(a, b, channel_axis=-1, data_range=255, win_size=win))


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of images in ``[-1, 1]``, computed on uint8 ``HWC`` conversions.

    Args:
        x, y: ``[B, 3, H, W]`` float in ``[-1, 1]``.
    Returns:
        ``[B]`` float32 in ``[-1, 1]`` (1 for identical images). Window ``min(7, odd <= min(H, W))``.
    """
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch: {tuple(x.shape)} vs {tuple(y.shape)}")
    a, b = to_uint8_hwc(x), to_uint8_hwc(y)
    return torch.tensor([ssim_uint8(a[i], b[i]) for i in range(a.shape[0])], dtype=torch.float32)


class InceptionFeatures(nn.Module):
    """2048-d pool features of torchvision's Inception-v3 (``fc`` replaced by ``Identity``).

    ``forward``: ``[B, 3, H, W]`` float in ``[-1, 1]`` -> ``[B, 2048]`` float32. Inputs are resized
    (bilinear, antialiased) to 299x299 and ImageNet-normalised. Freshly built, the weights are random;
    load real ones with :meth:`from_local` (nothing is downloaded).
    """

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import inception_v3

        net = inception_v3(weights=None, aux_logits=False, init_weights=False)
        net.fc = nn.Identity()
        net.eval()
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.eval()

    def train(self, mode: bool = True) -> InceptionFeatures:
        """Feature extractor: stays in eval mode (batch-norm statistics frozen) whatever ``mode`` is."""
        return super().train(False)

    @classmethod
    def from_local(cls, path: str | os.PathLike) -> InceptionFeatures:
        """Build and load weights from a local ``.pth``/``.pt`` (torch) or ``.safetensors`` state dict.

        Keys may be those of torchvision's ``Inception3`` (``Conv2d_1a_3x3.conv.weight``...) or of this
        module (``net.`` prefix). ``AuxLogits.*`` and ``fc.*`` keys are dropped.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: unknown extension, or missing / unexpected keys (both listed in the message).
        """
        from ..checkpointing import load_weights_file

        path = os.fspath(path)
        state = load_weights_file(path, "Inception")
        model = cls()
        model.load_feature_state(state, source=path)
        return model

    def load_feature_state(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Load an ``Inception3`` state dict strictly, after dropping ``AuxLogits.*`` / ``fc.*`` keys."""
        cleaned: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            k = key[len("net."):] if key.startswith("net.") else key
            if k.startswith("module."):
                k = k[len("module."):]
            if k.startswith("AuxLogits.") or k.startswith("fc."):
                continue
            cleaned[k] = value
        expected = set(self.net.state_dict().keys())
        missing = sorted(expected - cleaned.keys())
        unexpected = sorted(cleaned.keys() - expected)
        if missing or unexpected:
            raise ValueError(
                f"{source}: state dict does not match Inception-v3 features; "
                f"missing keys ({len(missing)}): {_preview(missing)}; "
                f"unexpected keys ({len(unexpected)}): {_preview(unexpected)}"
            )
        try:
            self.net.load_state_dict(cleaned, strict=True)
        except RuntimeError as err:  # shape mismatches
            raise ValueError(f"{source}: {err}") from err

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` float in ``[-1, 1]`` -> ``[B, 2048]`` float32 pool features."""
        x = x.float().clamp(-1, 1)
        if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear",
                              align_corners=False, antialias=True)
        x = ((x + 1) * 0.5 - self.mean) / self.std
        return self.net(x).flatten(1)


def _preview(keys: list[str], n: int = 8) -> str:
    if not keys:
        return "none"
    more = f", ... (+{len(keys) - n})" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def frechet_distance(feats_a: torch.Tensor | np.ndarray, feats_b: torch.Tensor | np.ndarray,
                     eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (the FID formula).

    ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})`` in float64 with ``scipy.linalg.sqrtm``;
    tiny imaginary parts of the square root are discarded and ``eps * I`` is added to both covariances
    when their product is (near) singular.

    Args:
        feats_a: ``[N, D]`` features, ``N >= 2``.
        feats_b: ``[M, D]`` features, ``M >= 2``.
    Returns:
        The distance (>= 0 up to round-off), a Python float.
    """
    a = _as_float64(feats_a)
    b = _as_float64(feats_b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"want [N, D] and [M, D] features, got {a.shape} and {b.shape}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError(f"need at least 2 samples per set, got {a.shape[0]} and {b.shape[0]}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    sigma_a = np.atleast_2d(np.cov(a, rowvar=False))
    sigma_b = np.atleast_2d(np.cov(b, rowvar=False))
    diff = mu_a - mu_b

    covmean = _sqrtm(sigma_a @ sigma_b)
    if not np.isfinite(covmean).all() or _large_imag(covmean):
        # Singular (or numerically near-singular) covariances: regularise both with eps * I.
        offset = np.eye(sigma_a.shape[0]) * eps
        covmean = _sqrtm((sigma_a + offset) @ (sigma_b + offset))
    if np.iscomplexobj(covmean):
        if _large_imag(covmean):
            raise ValueError(f"sqrtm has a large imaginary component ({np.abs(covmean.imag).max():.3g})")
        covmean = covmean.real
    value = diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * np.trace(covmean)
    return float(value)


def _sqrtm(m: np.ndarray) -> np.ndarray:
    """Matrix square root (``scipy.linalg.sqrtm``) with its singularity warnings silenced."""
    from scipy import linalg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = linalg.sqrtm(m)
    return out[0] if isinstance(out, tuple) else out


def _large_imag(m: np.ndarray, tol: float = 1e-3) -> bool:
    """Whether a (possibly complex) matrix has an imaginary part above ``tol`` relative to its scale."""
    if not np.iscomplexobj(m):
        return False
    return bool(np.abs(m.imag).max() > tol * max(1.0, float(np.abs(m.real).max())))


def _as_float64(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


class FIDAccumulator:
    """Accumulates features of real and generated images batch by batch, then computes FID.

    Args:
        feature_net: any module mapping ``[B, 3, H, W]`` images in ``[-1, 1]`` to ``[B, D]`` (or
            ``[B, D, 1, 1]``) features, e.g. :class:`InceptionFeatures` or a small stand-in network.
            It is put in eval mode; its device is taken from its first parameter (CPU if none).
    """

    def __init__(self, feature_net: nn.Module) -> None:
        self.feature_net = feature_net.eval()
        self.real: list[torch.Tensor] = []
        self.fake: list[torch.Tensor] = []

    def _device(self) -> torch.device:
        p = next(self.feature_net.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @torch.inference_mode()
    def _features(self, x: torch.Tensor) -> torch.Tensor:
        f = self.feature_net(x.to(self._device(), torch.float32))
        return f.flatten(1).to("cpu", torch.float64)

    def update(self, real: torch.Tensor, fake: torch.Tensor) -> None:
        """Add a batch: ``real`` and ``fake`` ``[B, 3, H, W]`` in ``[-1, 1]`` (batch sizes may differ)."""
        self.real.append(self._features(real))
        self.fake.append(self._features(fake))

    def reset(self) -> None:
        """Forget all accumulated features."""
        self.real.clear()
        self.fake.clear()

    @property
    def count(self) -> tuple[int, int]:
        """Number of (real, fake) images accumulated so far."""
        return sum(t.shape[0] for t in self.real), sum(t.shape[0] for t in self.fake)

    def compute(self) -> float:
        """FID between all real and all fake features so far (needs >= 2 of each)."""
        if not self.real or not self.fake:
            raise RuntimeError("FIDAccumulator.compute() called before update()")
        return frechet_distance(torch.cat(self.real), torch.cat(self.fake))
