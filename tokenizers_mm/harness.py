"""``TokenizerModule``: the LightningModule every tokenizer of tokenizers-mm extends.

A subclass provides the model, usually as ``self.codec`` (an ``nn.Module`` without training code that an
export holds: ``codec.encode(x, num_tokens) -> ids``, ``codec.decode(ids, **options) -> x``), optionally an EMA
copy of it (:meth:`setup_ema`), and

- ``compute_losses(batch) -> (losses, outputs)`` with ``losses["loss"]`` the total to minimize,

and may override ``encode`` / ``decode`` (defaults: through :meth:`inference_codec`) and
``log_reconstructions``. The base class owns the optimizer and schedule (from YAML), per-loss logging, codebook usage and perplexity over each validation pass, samples/s, and the count
of corrupt samples that the data layer skipped.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch import nn

from . import quiet
from .checkpointing import CLASS_KEY
from .config import as_config
from .quantize import stats_from_counts

quiet.install()  # before any Trainer exists: its construction prints the first of the filtered lines


class TokenBatch(NamedTuple):
    """Discrete tokens of a batch: ``ids`` int64 ``[B, ...]``; ``mask`` bool of the same shape or None."""

    ids: torch.Tensor
    mask: torch.Tensor | None = None


@dataclass
class OptimizerConfig:
    """AdamW with linear warmup then cosine (or constant) decay, stepped per optimizer step.

    Args:
        lr: peak learning rate.
        betas: AdamW betas.
        weight_decay: decoupled weight decay (not applied to biases, norms and embeddings).
        warmup_steps: linear warmup from 0 to ``lr``.
        schedule: ``cosine`` (decay to ``min_lr_ratio * lr`` at ``trainer.max_steps``) or ``constant``.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        grad_clip: clip the gradient norm to this value (``None``: no clipping). Used by modules with
            manual optimization (GAN training); with automatic optimization it is the default when
            ``trainer.gradient_clip_val`` is not set.
        fused: use AdamW's fused kernel (one kernel updates every parameter of a group; needs the parameters on a
            device it supports, such as CUDA). ``False`` keeps torch's default implementation.
        compile: ``torch.compile`` the module's trainable parts (each child module with parameters that require
            gradients) when fit, validation or prediction sets the model up; weights, checkpoints and exports do
            not change.
    """

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    grad_clip: float | None = None
    fused: bool = False
    compile: bool = False


def lr_factor(step: int, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def compile_targets(module: nn.Module) -> list[nn.Module]:
    """The children of ``module`` that hold parameters requiring gradients (what ``optimizer.compile`` compiles)."""
    return [part for part in module.children() if any(p.requires_grad for p in part.parameters())]


NO_DECAY_NAMES = ("registers", "queries", "token_pos", "mask_token", "pos_embed")


def adamw(params: Any, c: OptimizerConfig, lr: float | None = None, betas: Sequence[float] | None = None,
          weight_decay: float | None = None) -> torch.optim.AdamW:
    """AdamW over ``params`` (parameters or groups) with ``c``'s settings; ``lr`` / ``betas`` / ``weight_decay``
    replace ``c``'s when given (a group's own ``weight_decay`` wins over both)."""
    return torch.optim.AdamW(params, lr=c.lr if lr is None else lr, betas=tuple(c.betas if betas is None else betas),
                             weight_decay=c.weight_decay if weight_decay is None else weight_decay,
                             fused=c.fused or None)


def step_schedule(opt: torch.optim.Optimizer, factor: Callable[[int], float]) -> dict[str, Any]:
    """Lightning's scheduler entry for a per-step ``LambdaLR`` multiplying ``opt``'s learning rate by ``factor``."""
    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, factor), "interval": "step"}


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split parameters into decayed (weight matrices, conv kernels) and non-decayed (biases, norms,
    learned tokens and positions: names in ``NO_DECAY_NAMES``)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class TokenizerModule(pl.LightningModule):
    """Base class of the tokenizers (see the module docstring for the contract).

    Args:
        optimizer: optimizer and schedule settings.
        input_key: the batch entry the model reconstructs (``image``, ``audio``, ...).
        codebook_size: number of codes, for usage and perplexity statistics.
        log_samples_every_val: write reconstructions at every validation pass (first batch).
    """

    def __init__(self, optimizer: OptimizerConfig | None = None, input_key: str = "image",
                 codebook_size: int = 0, log_samples_every_val: bool = True) -> None:
        super().__init__()
        self.optim_config = as_config(OptimizerConfig, optimizer)
        self.input_key = input_key
        self.codebook_size = codebook_size
        self.log_samples_every_val = log_samples_every_val
        self._t_last: float | None = None
        self._val_counts: torch.Tensor | None = None
        self.skipped_samples = 0

    def configure_model(self) -> None:
        """Lightning's setup hook: compiles the trainable parts in place once when ``optimizer.compile`` is set."""
        if self.optim_config.compile:
            for part in compile_targets(self):
                if getattr(part, "_compiled_call_impl", None) is None:
                    part.compile()

    # ---- contract -------------------------------------------------------------------------------
    def setup_ema(self, decay: float | None) -> None:
        """Keep an exponential moving average of ``self.codec`` (updated after every training batch) when
        ``decay`` is set; validation, evaluation and export then use it."""
        self.ema = None
        if decay:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(self.codec, multi_avg_fn=get_ema_multi_avg_fn(decay))
            self.ema.requires_grad_(False)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if getattr(self, "ema", None) is not None:
            self.ema.update_parameters(self.codec)

    def inference_codec(self, use_ema: bool = True) -> nn.Module:
        """The codec used for validation, evaluation and export: the EMA copy when there is one and ``use_ema``."""
        ema = getattr(self, "ema", None)
        if use_ema and ema is not None:
            return ema.module
        codec = getattr(self, "codec", None)
        if codec is None:
            raise NotImplementedError(f"{type(self).__name__} has no codec: override encode / decode")
        return codec

    def encode(self, x: torch.Tensor, num_tokens: int | None = None, use_ema: bool = True) -> TokenBatch:
        """Samples -> int64 ids (the first ``num_tokens`` of a prefix-decodable tokenizer)."""
        return TokenBatch(self.inference_codec(use_ema).encode(x, num_tokens))

    def decode(self, tokens: TokenBatch | torch.Tensor, use_ema: bool = True, **options: Any) -> torch.Tensor:
        """ids -> samples; ``options`` go to the codec (e.g. ``steps``, ``cfg_scale``, ``seed`` of flow decoders)."""
        ids = tokens.ids if isinstance(tokens, TokenBatch) else tokens
        return self.inference_codec(use_ema).decode(ids, **options)

    def compute_losses(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        raise NotImplementedError

    def log_reconstructions(self, batch: dict[str, Any], outputs: dict[str, Any]) -> None:
        """Write reconstructions of the first validation batch where a person can look at them."""

    def write_image_grid(self, rows: list[torch.Tensor], tag: str) -> str:
        """Save rows of images (``[N, 3, H, W]`` in ``[-1, 1]``) as ``samples/val_stepXXXXXXX.png`` and to
        TensorBoard under ``tag``; returns the PNG path."""
        from .visual import image_grid, save_png

        grid = image_grid(rows)
        path = save_png(grid, os.path.join(self.samples_dir(), f"val_step{self.global_step:07d}.png"))
        for logger in self.loggers:
            exp = getattr(logger, "experiment", None)
            if hasattr(exp, "add_image"):
                exp.add_image(tag, grid, self.global_step, dataformats="HWC")
        return path

    def write_images_by_k(self, batch: dict[str, Any], recons: dict[int, torch.Tensor], tag: str) -> str:
        """Grid of up to 8 images: the originals on top, then one row per number of tokens k (ascending)."""
        n = min(8, batch["image"].shape[0])
        rows = [batch["image"][:n].cpu()] + [recons[k][:n].cpu() for k in sorted(recons)]
        return self.write_image_grid(rows, tag)

    def samples_dir(self) -> str:
        """``<log dir>/samples``. Runs on rank 0 only, so it must not use ``trainer.log_dir``, which
        broadcasts (a collective call that would hang the other ranks)."""
        root = next((lg.log_dir for lg in self.loggers if getattr(lg, "log_dir", None)), None)
        return os.path.join(root or self.trainer.default_root_dir, "samples")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CLASS_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"

    # ---- optimization ---------------------------------------------------------------------------
    def schedule_total_steps(self) -> int:
        """Optimizer steps the schedule decays over: ``trainer.max_steps``, else (cosine only) Lightning's estimate
        from ``max_epochs``; 0 without a trainer (then the schedule stays at its peak after warmup)."""
        trainer = self._trainer
        if trainer is None:
            return 0
        if trainer.max_steps > 0:
            return trainer.max_steps
        return int(trainer.estimated_stepping_batches) if self.optim_config.schedule == "cosine" else 0

    def lr_lambda(self) -> Callable[[int], float]:
        """Learning-rate multiplier per optimizer step (warmup then decay over :meth:`schedule_total_steps`)."""
        c, total = self.optim_config, self.schedule_total_steps()
        return lambda s: lr_factor(s, c.warmup_steps, total, c.schedule, c.min_lr_ratio)

    def configure_optimizers(self) -> dict[str, Any]:
        opt = adamw(param_groups(self, self.optim_config.weight_decay), self.optim_config)
        return {"optimizer": opt, "lr_scheduler": step_schedule(opt, self.lr_lambda())}

    # ---- training -------------------------------------------------------------------------------
    def _count_skipped(self, batch: dict[str, Any], stage: str) -> None:
        skipped = int(batch.get("skipped", 0))
        self.skipped_samples += skipped
        self.log(f"{stage}/skipped_samples", float(skipped), reduce_fx="sum", on_step=False, on_epoch=True,
                 sync_dist=True, batch_size=1)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses, _ = self.compute_losses(batch)
        self.log_training(batch, losses)
        return losses["loss"]

    def log_training(self, batch: dict[str, Any], losses: dict[str, torch.Tensor], lr: float | None = None,
                     prog_bar: tuple[str, ...] = ("loss",)) -> None:
        """Log a training batch: every loss under ``train/<name>``, the skipped samples, ``lr`` and samples/s."""
        bs = batch[self.input_key].shape[0]
        self._count_skipped(batch, "train")
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach(), prog_bar=name in prog_bar, batch_size=bs)
        if lr is not None:
            self.log("train/lr", lr, batch_size=bs)
        self._log_throughput(bs)

    def _log_throughput(self, batch_size: int) -> None:
        now = time.perf_counter()
        if self._t_last is not None:
            self.log("train/samples_per_s", batch_size / max(now - self._t_last, 1e-9), batch_size=batch_size)
        self._t_last = now

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        val = gradient_clip_val or self.optim_config.grad_clip
        if val:
            self.clip_gradients(optimizer, gradient_clip_val=val, gradient_clip_algorithm=gradient_clip_algorithm or "norm")

    def on_train_epoch_start(self) -> None:
        self._t_last = None

    # ---- validation -----------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        if self.codebook_size:
            self._val_counts = torch.zeros(self.codebook_size, dtype=torch.long, device=self.device)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        losses, outputs = self.compute_losses(batch)
        keep = ~batch["pad"] if "pad" in batch else None
        bs = int(keep.sum()) if keep is not None else batch[self.input_key].shape[0]
        self._count_skipped(batch, "val")
        for name, value in losses.items():
            self.log(f"val/{name}", value.detach(), sync_dist=True, batch_size=max(bs, 1))
        ids = outputs.get("ids")
        if self._val_counts is not None and ids is not None:
            real = ids[keep] if keep is not None else ids
            self._val_counts += torch.bincount(real.reshape(-1), minlength=self.codebook_size)
        if batch_idx == 0 and self.log_samples_every_val and self.trainer.is_global_zero:
            self.log_reconstructions(batch, outputs)

    def on_validation_epoch_end(self) -> None:
        if self._val_counts is None:
            return
        counts = self._val_counts
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
        stats = stats_from_counts(counts.double().cpu())
        # counts are already summed over ranks: every rank logs the same value
        self.log("val/codebook_usage", stats["usage"])
        self.log("val/codebook_perplexity", stats["perplexity"])
        self._val_counts = None


def resolve_class(path: str) -> type | None:
    """The class a dotted ``tokenizers_mm.module.Class`` path names (an old name kept as an alias gives the class
    itself); None when it does not import or lies outside the package (nothing else is imported)."""
    import importlib

    module_name, _, name = path.rpartition(".")
    if not module_name.startswith("tokenizers_mm."):
        return None
    try:
        return getattr(importlib.import_module(module_name), name, None)
    except ImportError:
        return None


def check_resume(ckpt_path: str, module: pl.LightningModule) -> None:
    """Refuse, before anything is written, a checkpoint that ``module`` cannot resume from.

    Raises ``FileNotFoundError`` / ``ValueError`` naming the checkpoint and the first difference: another module
    class, a tensor missing on either side, or a tensor of another shape (a changed architecture).
    """
    from .checkpointing import read_checkpoint

    raw = read_checkpoint(ckpt_path)
    if not isinstance(raw.get("state_dict"), dict):
        raise ValueError(f"checkpoint {ckpt_path!r} holds no 'state_dict'; expected a Lightning checkpoint of a "
                         "tokenizers-mm run")
    want = f"{type(module).__module__}.{type(module).__qualname__}"
    have = raw.get(CLASS_KEY)
    if have and have != want and resolve_class(have) is not type(module):  # an old name of the class is the class
        raise ValueError(f"checkpoint {ckpt_path!r} holds a {have}; the config builds a {want}")
    state, own = raw["state_dict"], module.state_dict()
    for name in sorted(set(own) | set(state)):
        if name not in state:
            raise ValueError(f"checkpoint {ckpt_path!r} has no tensor {name!r} that the configured model has "
                             "(a changed architecture cannot resume: use a new trainer.default_root_dir)")
        if name not in own:
            raise ValueError(f"checkpoint {ckpt_path!r} has a tensor {name!r} that the configured model lacks "
                             "(a changed architecture cannot resume: use a new trainer.default_root_dir)")
        if tuple(state[name].shape) != tuple(own[name].shape):
            raise ValueError(f"checkpoint {ckpt_path!r}: {name} is {list(state[name].shape)} there, "
                             f"{list(own[name].shape)} in the configured model (a changed architecture cannot "
                             "resume: use a new trainer.default_root_dir)")
