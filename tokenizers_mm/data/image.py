"""Image decoding and transforms: encoded bytes -> float tensor ``[3, H, W]`` in ``[-1, 1]``."""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def decode_image(data: bytes) -> Image.Image:
    """Decode jpg / png / webp bytes into an RGB PIL image (greyscale and RGBA are converted).

    Raises ``ValueError`` when the bytes are not a readable image.
    """
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as exc:  # PIL raises several unrelated types for bad input
        raise ValueError(f"not a decodable image ({len(data)} bytes): {exc}") from exc
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float ``[3, H, W]`` in ``[-1, 1]``."""
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def tensor_to_uint8(x: torch.Tensor) -> np.ndarray:
    """Float ``[3, H, W]`` in ``[-1, 1]`` -> uint8 ``[H, W, 3]`` (values are clipped)."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def resize_shorter_side(img: Image.Image, shorter: int) -> Image.Image:
    """Resize so the shorter side is ``shorter`` pixels, keeping the aspect ratio (bicubic, antialiased)."""
    w, h = img.size
    scale = shorter / min(w, h)
    if scale == 1.0:
        return img
    new = (max(shorter, round(w * scale)), max(shorter, round(h * scale)))
    return img.resize(new, Image.BICUBIC, reducing_gap=3.0 if scale < 0.5 else None)


def crop(img: Image.Image, size: int, mode: str, rng: random.Random) -> Image.Image:
    """Crop a ``size`` x ``size`` square, ``mode`` = ``random`` or ``center``.

    The image must already be at least ``size`` on its shorter side.
    """
    w, h = img.size
    if min(w, h) < size:
        raise ValueError(f"image of {w}x{h} is smaller than the crop size {size}")
    if mode == "center":
        left, top = (w - size) // 2, (h - size) // 2
    elif mode == "random":
        left, top = rng.randint(0, w - size), rng.randint(0, h - size)
    else:
        raise ValueError(f"crop mode must be 'random' or 'center', got {mode!r}")
    return img.crop((left, top, left + size, top + size))


@dataclass
class ImageTransform:
    """Resize, crop and flip an image into a training or evaluation tensor.

    Args:
        size: output side in pixels; the result is ``[3, size, size]`` in ``[-1, 1]``.
        crop: ``random`` (training) or ``center`` (evaluation).
        resize: shorter side before cropping. ``None`` resizes to ``size`` (whole-image crop);
            a pair ``[lo, hi]`` draws the shorter side uniformly in that range per sample (scale
            augmentation, useful to cut many patches from few large photos).
        flip: random horizontal flip with probability 0.5.
    """

    size: int = 64
    crop: str = "center"
    resize: int | tuple[int, int] | list[int] | None = None
    flip: bool = False

    def __call__(self, img: Image.Image, rng: random.Random) -> torch.Tensor:
        if self.resize is None:
            shorter = self.size
        elif isinstance(self.resize, int):
            shorter = self.resize
        else:
            lo, hi = int(self.resize[0]), int(self.resize[1])
            shorter = rng.randint(lo, hi)
        shorter = max(shorter, self.size)
        img = resize_shorter_side(img, shorter)
        img = crop(img, self.size, self.crop, rng)
        if self.flip and rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return pil_to_tensor(img)
