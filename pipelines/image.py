"""``ImagePipeline``: encode images to token ids and decode ids to images from an export folder."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from tokenizers_mm.data.image import (
    IMAGE_EXTENSIONS,
    crop,
    pil_to_tensor,
    resize_shorter_side,
    tensor_to_uint8,
)

from .base import LOAD_LINE, TokenizerPipeline, file_stems

ImageInput = Any  # a tensor, numpy array, PIL image, file path, or a sequence of the last three


class ImagePipeline(TokenizerPipeline):
    """Image tokenizer of an export folder (built by :func:`pipelines.load`).

    ``encode`` accepts:

    - a float tensor ``[B, 3, S, S]`` (or ``[3, S, S]``) in ``[-1, 1]``, or a uint8 tensor in ``[0, 255]``;
    - a numpy uint8 array ``[H, W, 3]`` / ``[B, H, W, 3]``, a PIL image, or an image file path (png, jpg,
      jpeg, webp), or a list of those: these are resized to the export's shorter side and center-cropped
      to ``S`` (greyscale and RGBA files and PIL images are converted to RGB).
    """

    modality = "image"
    extensions = IMAGE_EXTENSIONS

    @property
    def image_size(self) -> int:
        return int(self.config["inputs"]["image_size"])

    # ---- inputs -------------------------------------------------------------------------------------
    def preprocess_pil(self, img: Image.Image) -> torch.Tensor:
        """PIL image -> ``[3, S, S]`` in ``[-1, 1]`` (resize shorter side, center crop)."""
        pre = self.config["inputs"]["preprocess"]
        img = img.convert("RGB") if img.mode != "RGB" else img
        img = resize_shorter_side(img, max(int(pre["resize_shorter_side"]), self.image_size))
        return pil_to_tensor(crop(img, self.image_size, "center", random.Random(0)))

    def _one(self, item: Any) -> torch.Tensor:
        if isinstance(item, (str, os.PathLike)):
            path = self.input_file(item, IMAGE_EXTENSIONS, "an image")
            try:
                with Image.open(path) as im:
                    im.load()
                    return self.preprocess_pil(im)
            except OSError as exc:
                raise ValueError(f"{path!r} is not a readable image: {exc}") from exc
        if isinstance(item, Image.Image):
            return self.preprocess_pil(item)
        if isinstance(item, np.ndarray):
            if item.ndim != 3 or item.shape[-1] != 3:
                raise ValueError(f"numpy images must be [H, W, 3] uint8 RGB, got shape {item.shape} "
                                 f"({item.shape[-1] if item.ndim == 3 else '?'} channels)")
            if item.dtype != np.uint8:
                raise ValueError(f"numpy images must be uint8 in [0, 255], got {item.dtype}")
            return self.preprocess_pil(Image.fromarray(item))
        raise TypeError(f"cannot read an image from {type(item).__name__}")

    def to_model_input(self, x: ImageInput) -> torch.Tensor:
        """Any accepted input -> float ``[B, 3, S, S]`` in ``[-1, 1]`` on CPU; clear errors otherwise."""
        s = self.image_size
        if isinstance(x, np.ndarray) and x.ndim == 4:
            x = list(x)
        if isinstance(x, torch.Tensor):
            t = x.detach()
            if t.ndim == 3:
                t = t[None]
            if t.ndim != 4:
                raise ValueError(f"image tensors must be [B, 3, H, W] or [3, H, W], got shape {tuple(x.shape)}")
            if t.shape[1] != 3:
                raise ValueError(f"image tensors must have 3 channels (RGB) in dim 1, got {t.shape[1]} "
                                 f"(shape {tuple(t.shape)}); convert greyscale / RGBA to RGB first")
            if tuple(t.shape[-2:]) != (s, s):
                raise ValueError(f"image tensors must be {s}x{s} for this tokenizer, got {tuple(t.shape[-2:])}; "
                                 "pass PIL images or files to have them resized and cropped")
            if t.dtype == torch.uint8:
                return t.float().div(127.5).sub(1.0).cpu()
            if not t.dtype.is_floating_point:
                raise ValueError(f"image tensors must be float in [-1, 1] or uint8, got {t.dtype}")
            lo, hi = float(t.min()), float(t.max())
            if lo < -1.001 or hi > 1.001:
                raise ValueError(f"float image tensors must lie in [-1, 1], got [{lo:.3f}, {hi:.3f}]")
            return t.float().cpu()
        if isinstance(x, (str, os.PathLike, Image.Image, np.ndarray)):
            x = [x]
        if isinstance(x, Sequence) and len(x) > 0:
            return torch.stack([self._one(item) for item in x])
        raise TypeError(f"cannot read images from {type(x).__name__}")

    # ---- encode / decode ----------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, x: ImageInput, num_tokens: int | None = None, batch_size: int = 64) -> torch.Tensor:
        """Images -> int64 ids ``[B, num_tokens or K]`` on CPU (the first ``num_tokens`` of a 1D tokenizer)."""
        images = self.to_model_input(x)
        if num_tokens is not None and not 1 <= num_tokens <= self.num_tokens:
            raise ValueError(f"num_tokens must be in 1..{self.num_tokens}, got {num_tokens}")
        out = []
        for sl in self.batches(len(images), batch_size):
            with self.autocast():
                out.append(self.codec.encode(images[sl].to(self.device), num_tokens).cpu())
        return torch.cat(out)

    @property
    def decode_options(self) -> set[str]:
        """Keyword options ``decode`` takes for this export (``steps``, ``cfg_scale``, ``seed`` for flow decoders)."""
        from tokenizers_mm.export import decode_options

        return decode_options(self.codec) - {"noise"}

    @torch.inference_mode()
    def decode(self, ids: Any, batch_size: int = 64, **options: Any) -> torch.Tensor:
        """ids ``[B, k]`` -> float32 images ``[B, 3, S, S]`` in ``[-1, 1]`` on CPU.

        A 1D tokenizer decodes any prefix ``1 <= k <= K``; a grid tokenizer needs all K ids. A rectified-flow
        decoder takes ``steps`` (Euler steps), ``cfg_scale`` (guidance) and ``seed`` (sample ``i`` uses
        ``seed + i``, whatever the batching), with the export's defaults when omitted.
        """
        unknown = set(options) - self.decode_options
        if unknown:
            raise TypeError(f"unknown decode option(s) {sorted(unknown)} for {self.config['architecture']}; "
                            f"it takes {sorted(self.decode_options) or 'none'}")
        t = self.check_ids(ids)
        seed = options.pop("seed", 0)
        out = []
        for sl in self.batches(len(t), batch_size):
            if "seed" in self.decode_options:
                options["seed"] = [int(seed) + i for i in range(sl.start, sl.stop)]
            with self.autocast():
                out.append(self.codec.decode(t[sl].to(self.device), **options).float().cpu())
        return torch.cat(out)

    # ---- outputs ------------------------------------------------------------------------------------
    @staticmethod
    def to_pil(images: torch.Tensor) -> list[Image.Image]:
        """``[B, 3, H, W]`` in ``[-1, 1]`` -> RGB PIL images."""
        return [Image.fromarray(tensor_to_uint8(img)) for img in images]

    def save(self, images: torch.Tensor, out_dir: str, names: Sequence[str]) -> list[str]:
        """Write ``images`` as ``out_dir/<name>.png`` (names are made safe for file names); returns the paths."""
        from tokenizers_mm.visual import save_png

        os.makedirs(out_dir, exist_ok=True)
        paths = []
        for img, safe in zip(images, file_stems(names, "image"), strict=True):
            paths.append(save_png(tensor_to_uint8(img), os.path.join(out_dir, f"{safe}.png")))
        return paths

    def join(self, decoded: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(decoded)

    def write_decoded(self, ids: Any, keys: list[str], meta: dict[str, Any], out: str, shown: str | None = None,
                      num_tokens: int | None = None, batch_size: int = 64, file_format: str | None = None,
                      **options: Any) -> str:
        """PNG files, plus ``_grid.png`` (:meth:`save_overview`)."""
        samples, each = self.decode_rows(ids, num_tokens, batch_size, **options)
        paths = self.save(samples, out, keys)
        self.save_overview(samples, os.path.join(out, "_grid.png"))
        grid = os.path.join(shown or out, "_grid.png")
        return f"decoded {len(paths)} image(s) from {each} tokens each into {shown or out}/ (overview: {grid})"

    shard_input_key = "image"

    def shard_decoder(self) -> Any:
        """Images center-cropped as in evaluation, at the export's size and resize."""
        from tokenizers_mm.data.samples import ImageOptions, make_decoder

        pre = self.config["inputs"]["preprocess"]
        return make_decoder("image", train=False, image=ImageOptions(
            size=self.image_size, val_resize=int(pre["resize_shorter_side"]), flip=False))

    @staticmethod
    def save_overview(images: torch.Tensor, path: str) -> str:
        """The first 64 images as one PNG grid, up to 8 per row (a short last row padded with white)."""
        from tokenizers_mm.visual import image_grid, save_png

        n = min(len(images), 64)
        cols = min(8, n)
        rows = [images[i:i + cols] for i in range(0, n, cols)]
        if len(rows) > 1 and rows[-1].shape[0] < cols:
            rows[-1] = torch.cat([rows[-1], torch.ones(cols - rows[-1].shape[0], *rows[-1].shape[1:])])
        return save_png(image_grid(rows), path)

    def save_decoded(self, ids: list[Any], out: str, names: Sequence[str], lengths: Sequence[int | None] | None = None,
                     overview: str | None = None, **options: Any) -> list[str]:
        images = self.decode(np.stack([np.asarray(i) for i in ids]), **options)
        paths = self.save(images, out, names)
        if overview:
            self.save_overview(images, os.path.join(out, overview))
        return paths

    # ---- export -------------------------------------------------------------------------------------------
    @staticmethod
    def input_spec(codec: torch.nn.Module, data_hparams: dict[str, Any]) -> dict[str, Any]:
        img = data_hparams.get("image") or {}
        size = int(codec.image_size)
        return {"kind": "image", "channels": 3, "image_size": size, "layout": "[B, 3, H, W]",
                "range": [-1.0, 1.0], "from_uint8": "x / 127.5 - 1",
                "preprocess": {"resize_shorter_side": int(img.get("val_resize") or size), "crop": "center"}}

    @classmethod
    def card_tokens(cls, cfg: dict[str, Any]) -> list[str]:
        inp = cfg["inputs"]
        pre = inp["preprocess"]
        return [*super().card_tokens(cfg),
                f"- Input: RGB images `[B, 3, {inp['image_size']}, {inp['image_size']}]` in [-1, 1] (uint8 "
                f"`x / 127.5 - 1`). Files are resized to a shorter side of {pre['resize_shorter_side']} and "
                f"center-cropped to {inp['image_size']}."]

    @classmethod
    def card_use(cls, cfg: dict[str, Any]) -> list[str]:
        return ["```python", "import pipelines", "", LOAD_LINE,
                "ids = tok.encode(images)            # int64 [B, K]; num_tokens=k keeps a prefix",
                "recon = tok.decode(ids)             # [B, 3, S, S] in [-1, 1]", "```", "",
                "```bash", "tokenizers-mm encode --model THIS_FOLDER a.png b.jpg --out tokens.npz",
                "tokenizers-mm decode --model THIS_FOLDER tokens.npz --out recon/",
                "tokenizers-mm tokenize --model THIS_FOLDER --data shards/ --out token_shards/", "```"]


ImageTokenizer = ImagePipeline  # the old name, still importable
