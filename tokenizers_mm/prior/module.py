"""``PriorModule``: trains a :class:`~.model.TokenPrior` on token shards with the project's harness.

Batches come from ``ShardDataModule(modality="tokens")``: ``ids`` int64 ``[B, k]`` (image / shape tokens) or
``[B, n_q, F]`` (speech). The loss is the next-token cross-entropy; ``bits_per_token`` logs it in bits.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..config import plain
from ..harness import OptimizerConfig, TokenizerModule
from .model import TokenPrior
from .ordering import layout_for, to_frames


def tokenizer_info(path: str) -> dict[str, Any]:
    """What a prior records about the tokenizer export at ``path``: modality, architecture, weights sha256,
    codebook size and codebooks per frame."""
    from ..export import read_export_config

    cfg = read_export_config(path)
    tokens = cfg["tokens"]
    return {"modality": cfg["modality"], "architecture": cfg["architecture"],
            "sha256": (cfg.get("weights") or {}).get("sha256"), "codebook_size": int(tokens["codebook_sizes"][0]),
            "depth_codes": int(tokens.get("num_quantizers") or 1),
            "tokens_per_sample": tokens.get("tokens_per_sample"), "prefix_lengths": tokens.get("prefix_lengths")}


class PriorModule(TokenizerModule):
    """Lightning module of the token prior.

    Args:
        tokenizer: export folder of the tokenizer whose tokens the prior models; its codebook size, codebooks
            per frame, ordering and weights sha256 fill the settings left ``None`` and travel with the prior
            (the path itself is not needed after training starts).
        codebook_size / depth_codes / layout: the token layout when no ``tokenizer`` is given.
        max_frames: context length in frames (longer training samples are cropped at random); ``None``: the
            tokenizer's tokens per sample for 1D / multi-scale tokens, 256 frames for speech.
        width / layers / heads / depth_layers / dropout: see :class:`~.model.TokenPrior`.
        codebook_dropout: share of RVQ training streams that keep a random first ``n`` codebooks only, so the
            prior codes every bitrate of a speech codec.
        optimizer: AdamW + schedule.
    """

    def __init__(self, tokenizer: str | dict | None = None, codebook_size: int | None = None,
                 depth_codes: int | None = None, layout: str | None = None, max_frames: int | None = None,
                 width: int = 128,
                 layers: int = 4, heads: int = 4, depth_layers: int = 1, dropout: float = 0.0,
                 codebook_dropout: float = 0.5, optimizer: OptimizerConfig | None = None) -> None:
        info = tokenizer_info(tokenizer) if isinstance(tokenizer, str) else dict(tokenizer or {})
        codebook_size = codebook_size or info.get("codebook_size")
        if not codebook_size:
            raise ValueError("model.init_args.codebook_size is not set and no model.init_args.tokenizer export "
                             "gives it")
        layout = layout or (layout_for(info["modality"]) if info.get("modality") else "sequence")
        depth_codes = depth_codes or (info.get("depth_codes") if layout == "rvq" else 1) or 1
        if max_frames is None:
            per = info.get("tokens_per_sample") if layout == "sequence" else None
            max_frames = int(per) if per else 256
        super().__init__(optimizer=optimizer, input_key="ids", codebook_size=int(codebook_size),
                         log_samples_every_val=False)
        self.save_hyperparameters(plain({
            "tokenizer": info, "codebook_size": int(codebook_size), "depth_codes": int(depth_codes), "layout": layout,
            "max_frames": max_frames, "width": width, "layers": layers, "heads": heads, "depth_layers": depth_layers,
            "dropout": dropout, "codebook_dropout": codebook_dropout, "optimizer": self.optim_config}))
        self.layout, self.codebook_dropout = layout, codebook_dropout
        self.codec = TokenPrior(int(codebook_size), int(depth_codes), max_frames, layout, width, layers, heads,
                                depth_layers, dropout, tokenizer={k: info.get(k) for k in
                                                                  ("modality", "architecture", "sha256")})
        self.ema = None

    def frames_of(self, ids: torch.Tensor, train: bool, mask: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Batch ids -> frames ``[B, F, D]`` cropped to the context (a random window while training), and the
        frame mask ``[B, F]`` (``ids_mask`` of padded speech windows) cropped alike."""
        frames = to_frames(ids, self.layout)
        f, cap = frames.shape[1], self.codec.max_frames
        if f > cap:
            start = int(torch.randint(0, f - cap + 1, ()).item()) if train else 0
            frames = frames[:, start:start + cap]
            mask = mask[:, start:start + cap] if mask is not None else None
        if frames.shape[2] > self.codec.depth_codes:
            raise ValueError(f"token batch has {frames.shape[2]} codes per frame; the prior models "
                             f"{self.codec.depth_codes}")
        return frames, mask

    def compute_losses(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        frames, mask = self.frames_of(batch["ids"], self.training, batch.get("ids_mask"))
        num_codes = None
        d = frames.shape[2]
        if self.training and d > 1 and self.codebook_dropout > 0:
            drop = torch.rand(frames.shape[0], device=frames.device) < self.codebook_dropout
            random_n = torch.randint(1, d + 1, (frames.shape[0],), device=frames.device)
            num_codes = torch.where(drop, random_n, torch.full_like(random_n, d))
        loss = self.codec.loss(frames, num_codes, mask)
        return {"loss": loss, "bits_per_token": loss.detach() / math.log(2)}, {"ids": batch["ids"]}
