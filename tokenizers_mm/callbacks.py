"""Callbacks of tokenizers-mm."""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint


class DataTrace(pl.Callback):
    """Record, per rank, which shards fed training and how many steps and batches each rank ran.

    Writes ``{out_dir}/data_trace_rank{R}.json`` at the end of fit: ``train_shards`` (URL -> samples),
    ``train_batches``, ``val_batches``, ``start_step`` and ``end_step`` (``global_step``), and
    ``optimizer_step_state`` (AdamW's step count of the first parameter at train start: equal to
    ``start_step`` after an exact resume). Use it to check shard splits and resumes under DDP.
    """

    def __init__(self, out_dir: str = "data_trace") -> None:
        self.out_dir = out_dir
        self.shards: dict[str, int] = {}
        self.train_batches = 0
        self.val_batches = 0
        self.start_step = 0
        self.optimizer_step_state: int | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start_step = trainer.global_step
        opt = trainer.optimizers[0] if trainer.optimizers else None
        state = next(iter(opt.state.values()), None) if opt is not None else None
        self.optimizer_step_state = int(state["step"]) if state and "step" in state else None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.train_batches += 1
        for url in batch.get("__url__", []):
            self.shards[url] = self.shards.get(url, 0) + 1

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            self.val_batches += 1

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        os.makedirs(self.out_dir, exist_ok=True)
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size,
                  "train_shards": self.shards, "train_batches": self.train_batches,
                  "val_batches": self.val_batches, "start_step": self.start_step,
                  "end_step": trainer.global_step, "optimizer_step_state": self.optimizer_step_state}
        with open(os.path.join(self.out_dir, f"data_trace_rank{trainer.global_rank}.json"), "w") as f:
            json.dump(record, f, indent=2)


# Lightning 2.6 warns (with a 10-line example) that under manual optimization a step checkpoint holds the weights
# after that step's update. That is what these checkpoints mean: step N = N generator updates, which is where
# resuming continues (tests/test_training.py::test_cli_fit_then_exact_resume_from_last).
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")


class Checkpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that also writes ``last.ckpt`` when training stops between two intervals.

    Lightning's step-interval checkpoints skip the final step when ``max_steps`` is not a multiple of
    ``every_n_train_steps``; this one saves it, so ``last.ckpt`` is always the model that training ended with.
    """

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_last and trainer.global_step != self._last_global_step_saved:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
