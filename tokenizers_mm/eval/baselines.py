"""Classical codec baselines (JPEG, WebP via Pillow): rate-distortion curves and quality at a byte budget.

PSNR here uses the same definition as :func:`tokenizers_mm.eval.image_metrics.psnr` (images mapped to
``[-1, 1]``, peak-to-peak 2, i.e. ``10 * log10(255^2 / mse_uint8)``) and SSIM the same scikit-image call,
so codec numbers are directly comparable with a tokenizer's reconstructions.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from .image_metrics import psnr_db, ssim_uint8

#: Default JPEG qualities (Pillow accepts 1..95 as meaningful, higher values disable some quantisation).
JPEG_QUALITIES: tuple[int, ...] = (1, 2, 3, 5, 7, 10, 15, 20, 25, 30, 40, 50, 60, 70, 80, 90, 95)
#: Default WebP (lossy) qualities, 0..100 in Pillow.
WEBP_QUALITIES: tuple[int, ...] = (0, 1, 2, 5, 10, 15, 20, 25, 30, 40, 50, 60, 70, 80, 90, 95)
DEFAULT_QUALITIES: dict[str, tuple[int, ...]] = {"JPEG": JPEG_QUALITIES, "WEBP": WEBP_QUALITIES}


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images of the same shape (``10 * log10(255^2 / mse)``, mse floored).

    Equal to :func:`~tokenizers_mm.eval.image_metrics.psnr` on the ``[-1, 1]`` versions of the images.
    """
    if a.shape != b.shape:
        raise ValueError(f"PSNR needs equal shapes, got {a.shape} vs {b.shape}")
    # Same floor as image_metrics.psnr: mse_[-1,1] >= 1e-10 <=> mse_uint8 >= 1e-10 * 127.5^2.
    value = psnr_db(torch.from_numpy(a.astype(np.float64)), torch.from_numpy(b.astype(np.float64)),
                    data_range=255.0, mse_floor=1e-10 * 127.5**2)
    return float(value)


def encode_decode(image: np.ndarray, fmt: str, quality: int) -> tuple[int, np.ndarray]:
    """Encode an ``[H, W, 3]`` uint8 image with Pillow and decode it again.

    Args:
        image: ``[H, W, 3]`` uint8 RGB.
        fmt: ``"JPEG"`` (``quality=q, optimize=True``) or ``"WEBP"`` (``quality=q, method=6``).
        quality: codec quality setting.
    Returns:
        ``(n_bytes, decoded)`` with ``decoded`` ``[H, W, 3]`` uint8 RGB.
    """
    fmt = fmt.upper()
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"want an [H, W, 3] uint8 image, got {image.shape} {image.dtype}")
    if fmt == "JPEG":
        kwargs: dict[str, Any] = {"quality": int(quality), "optimize": True}
    elif fmt == "WEBP":
        kwargs = {"quality": int(quality), "method": 6}
    else:
        raise ValueError(f"unsupported codec {fmt!r} (want 'JPEG' or 'WEBP')")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **kwargs)
    n_bytes = buf.tell()
    buf.seek(0)
    with Image.open(buf) as im:
        decoded = np.asarray(im.convert("RGB"))
    return n_bytes, decoded


def codec_rd_curve(images: list[np.ndarray], fmt: str, qualities: Sequence[int] | None = None) -> list[dict]:
    """Rate-distortion curve of a Pillow codec over a set of images.

    Args:
        images: ``[H, W, 3]`` uint8 RGB arrays (sizes may differ).
        fmt: ``"JPEG"`` or ``"WEBP"``.
        qualities: quality settings; defaults to :data:`JPEG_QUALITIES` / :data:`WEBP_QUALITIES`.
    Returns:
        One dict per quality, sorted by ``bytes_per_image`` (ties by quality): ``quality`` (int),
        ``bytes_per_image`` (mean encoded size in bytes), ``psnr`` (mean dB), ``ssim`` (mean, ``[-1, 1]``).
    """
    if not images:
        raise ValueError("codec_rd_curve needs at least one image")
    fmt = fmt.upper()
    if qualities is None:
        if fmt not in DEFAULT_QUALITIES:
            raise ValueError(f"unsupported codec {fmt!r} (want 'JPEG' or 'WEBP')")
        qualities = DEFAULT_QUALITIES[fmt]
    curve = []
    for q in qualities:
        sizes, psnrs, ssims = [], [], []
        for img in images:
            n_bytes, dec = encode_decode(img, fmt, q)
            sizes.append(n_bytes)
            psnrs.append(psnr_uint8(img, dec))
            ssims.append(ssim_uint8(img, dec))
        curve.append({"quality": int(q), "bytes_per_image": float(np.mean(sizes)),
                      "psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims))})
    curve.sort(key=lambda p: (p["bytes_per_image"], p["quality"]))
    return curve


def at_bytes(curve: list[dict], target_bytes: float) -> dict:
    """Codec quality at a byte budget, linearly interpolated along a curve from :func:`codec_rd_curve`.

    Args:
        curve: points with ``bytes_per_image``, ``psnr``, ``ssim`` and ``quality`` (any order).
        target_bytes: bytes per image.
    Returns:
        ``{"bytes_per_image": target, "psnr", "ssim", "bracket": [q_low, q_high], "extrapolated": False}``
        where ``q_low`` / ``q_high`` are the qualities of the two points whose sizes bracket the target;
        if the target lies outside the curve, the nearest end point's metrics with its own
        ``bytes_per_image``, ``quality``, ``bracket: [q, q]`` and ``extrapolated: True``.
    """
    if not curve:
        raise ValueError("empty rate-distortion curve")
    pts = sorted(curve, key=lambda p: (p["bytes_per_image"], p["quality"]))
    metrics = [k for k in ("psnr", "ssim") if all(k in p for p in pts)]
    lo, hi = pts[0], pts[-1]
    if target_bytes < lo["bytes_per_image"] or target_bytes > hi["bytes_per_image"]:
        end = lo if target_bytes < lo["bytes_per_image"] else hi
        out = {k: end[k] for k in metrics}
        out.update(bytes_per_image=end["bytes_per_image"], target_bytes=float(target_bytes),
                   quality=end["quality"], bracket=[end["quality"], end["quality"]], extrapolated=True)
        return out
    for a, b in zip(pts[:-1], pts[1:]):
        xa, xb = a["bytes_per_image"], b["bytes_per_image"]
        if xa <= target_bytes <= xb:
            t = 0.0 if xb == xa else (target_bytes - xa) / (xb - xa)
            out = {k: a[k] + t * (b[k] - a[k]) for k in metrics}
            out.update(bytes_per_image=float(target_bytes), target_bytes=float(target_bytes),
                       bracket=[a["quality"], b["quality"]], extrapolated=False)
            return out
    # Single-point curve hit exactly.
    out = {k: lo[k] for k in metrics}
    out.update(bytes_per_image=lo["bytes_per_image"], target_bytes=float(target_bytes),
               quality=lo["quality"], bracket=[lo["quality"], lo["quality"]], extrapolated=False)
    return out
