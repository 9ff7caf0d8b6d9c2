"""Callbacks and loggers of tokenizers-mm: data trace, last checkpoint, run history kept across resumes."""

from __future__ import annotations

import csv
import os
import warnings
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.loggers.logger import rank_zero_experiment
from lightning_fabric.utilities.cloud_io import get_filesystem
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import SaveConfigCallback
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter


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
        from .io import write_json_atomic

        record = {"rank": trainer.global_rank, "world_size": trainer.world_size,
                  "train_shards": self.shards, "train_batches": self.train_batches,
                  "val_batches": self.val_batches, "start_step": self.start_step,
                  "end_step": trainer.global_step, "optimizer_step_state": self.optimizer_step_state}
        write_json_atomic(os.path.join(self.out_dir, f"data_trace_rank{trainer.global_rank}.json"), record)


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


def archive_previous(path: str) -> str | None:
    """Move an existing ``name.ext`` to ``name-<i>.ext`` (``i`` = 1, 2, ... the first free index); returns the new
    path, or ``None`` when there was nothing to keep. Each attempt of a run keeps its file beside the earlier ones."""
    if not os.path.isfile(path):
        return None
    stem, ext = os.path.splitext(path)
    i = 1
    while os.path.exists(f"{stem}-{i}{ext}"):
        i += 1
    os.replace(path, f"{stem}-{i}{ext}")
    return f"{stem}-{i}{ext}"


class _HistoryWriter(ExperimentWriter):
    """CSV writer that appends to an existing ``metrics.csv`` (Lightning's deletes it) and keeps earlier
    ``hparams.yaml`` files as ``hparams-<i>.yaml``."""

    def __init__(self, log_dir: str) -> None:
        self.metrics: list[dict[str, float]] = []
        self.metrics_keys: list[str] = []
        self.hparams: dict[str, Any] = {}
        self._fs = get_filesystem(log_dir)
        self.log_dir = log_dir
        self.metrics_file_path = os.path.join(log_dir, self.NAME_METRICS_FILE)
        self._fs.makedirs(log_dir, exist_ok=True)
        if os.path.isfile(self.metrics_file_path):  # earlier attempts: their header is the starting key set
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = sorted(csv.DictReader(f).fieldnames or [])
        archive_previous(os.path.join(log_dir, self.NAME_HPARAMS_FILE))


class HistoryCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` grows across resumes instead of starting over (rows of every attempt
    stay, in order; a new metric rewrites the header with the union of the columns)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _HistoryWriter(self.log_dir)
        return self._experiment


class KeepConfigs(SaveConfigCallback):
    """LightningCLI's ``SaveConfigCallback`` that keeps the resolved config of every attempt of a run:
    ``config.yaml`` is the latest, earlier ones become ``config-1.yaml``, ``config-2.yaml`` ..."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.already_saved and self.save_to_log_dir:
            log_dir = trainer.log_dir  # a collective call: every rank makes it
            if trainer.is_global_zero and log_dir is not None:
                archive_previous(os.path.join(log_dir, self.config_filename))
        super().setup(trainer, pl_module, stage)
