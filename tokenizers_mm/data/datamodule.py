"""``ShardDataModule``: the one LightningDataModule of tokenizers-mm, for every modality."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from ..config import as_config, plain
from .samples import MODALITIES, AudioOptions, ImageOptions, MeshOptions, TokenOptions, make_decoder
from .stream import EvalStream, TrainStream, check_first_sample, check_shard_modality, dist_info
from .urls import expand_urls

log = logging.getLogger("tokenizers_mm.data")


class ShardDataModule(pl.LightningDataModule):
    """Streams webdataset shards of one modality for training and validation, DDP-correct.

    Args:
        modality: ``image``, ``speech``, ``shape`` (``audio`` / ``mesh``: their older names, still read) or
            ``tokens`` (shards of ``tokenizers-mm tokenize``: batches
            hold ``ids`` int64 ``[B, k]``, for training a generator over the tokens).
        train_urls: training shards: brace pattern, directory (its ``train-*.tar``), ``@list.txt``,
            ``pipe:`` command or http(s) URL, or a list of these.
        val_urls: validation shards (a directory gives its ``val-*.tar``); ``None`` disables validation.
        batch_size: training batch size per rank.
        val_batch_size: validation batch size per rank (``None`` = ``batch_size``).
        batches_per_epoch: training batches per rank per epoch (shards are resampled, so this is exact).
        num_workers: dataloader worker processes per rank.
        val_num_workers: workers for validation (``None`` = ``min(num_workers, 1)``).
        val_samples: total validation samples; counted from local shards when ``None`` (required for
            remote validation shards).
        max_val_samples: validate on at most this many samples.
        shuffle_buffer: training sample shuffle buffer.
        seed: base seed of the training sample order.
        image / audio / mesh / tokens: the modality's decoding options.
    """

    def __init__(
        self,
        modality: str = "image",
        train_urls: str | list[str] = "data/embedded/image",
        val_urls: str | list[str] | None = None,
        batch_size: int = 16,
        val_batch_size: int | None = None,
        batches_per_epoch: int = 100,
        num_workers: int = 2,
        val_num_workers: int | None = None,
        val_samples: int | None = None,
        max_val_samples: int | None = None,
        shuffle_buffer: int = 256,
        seed: int = 0,
        image: ImageOptions | None = None,
        audio: AudioOptions | None = None,
        mesh: MeshOptions | None = None,
        tokens: TokenOptions | None = None,
    ) -> None:
        super().__init__()
        from ..registry import canonical

        if canonical(modality) not in MODALITIES:
            raise ValueError(f"data.modality must be one of {MODALITIES} (or audio / mesh, their older names), got "
                             f"{modality!r}")
        modality = canonical(modality)
        for key, value, low in (("batch_size", batch_size, 1), ("val_batch_size", val_batch_size, 1),
                                ("batches_per_epoch", batches_per_epoch, 1), ("num_workers", num_workers, 0),
                                ("val_num_workers", val_num_workers, 0), ("val_samples", val_samples, 1),
                                ("max_val_samples", max_val_samples, 1), ("shuffle_buffer", shuffle_buffer, 0)):
            if value is not None and (not isinstance(value, int) or value < low):
                raise ValueError(f"data.{key} must be an integer >= {low}, got {value!r}")
        self.modality = modality
        self.train_urls = train_urls
        self.val_urls = val_urls
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.batches_per_epoch = batches_per_epoch
        self.num_workers = num_workers
        self.val_num_workers = min(num_workers, 1) if val_num_workers is None else val_num_workers
        self.val_samples = val_samples
        self.max_val_samples = max_val_samples
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.image = as_config(ImageOptions, image)
        self.audio = as_config(AudioOptions, audio)
        self.mesh = as_config(MeshOptions, mesh)
        self.tokens = as_config(TokenOptions, tokens)
        self.save_hyperparameters(plain({
            "modality": modality, "train_urls": train_urls, "val_urls": val_urls, "batch_size": batch_size,
            "val_batch_size": val_batch_size, "batches_per_epoch": batches_per_epoch, "num_workers": num_workers,
            "val_num_workers": val_num_workers, "val_samples": val_samples, "max_val_samples": max_val_samples,
            "shuffle_buffer": shuffle_buffer, "seed": seed, "image": self.image, "audio": self.audio,
            "mesh": self.mesh, "tokens": self.tokens}))
        self.train_stream: TrainStream | None = None
        self.val_stream: EvalStream | None = None

    def _decoder(self, train: bool):
        return make_decoder(self.modality, train, image=self.image, audio=self.audio, mesh=self.mesh,
                            tokens=self.tokens)

    def check_shard_count(self, n_shards: int, world: int, workers: int) -> None:
        """Warn when shards cannot be split disjointly over ranks x workers."""
        need = world * max(1, workers)
        if n_shards < need:
            msg = (f"{n_shards} training shards for {world} ranks x {max(1, workers)} workers = {need} readers: "
                   "some readers will share shards (samples repeat more often within an epoch). "
                   "Write more, smaller shards (data build --shard-size) or use fewer workers.")
            warnings.warn(msg, stacklevel=2)
            log.warning(msg)

    def shard_urls(self, key: str, split: str) -> list[str]:
        """The expanded URLs of ``data.<key>``, checked: one-line errors name the key, the URL and what was expected."""
        spec = getattr(self, key)
        if spec is None or (isinstance(spec, (str, list, tuple)) and not [s for s in
                                                                          ([spec] if isinstance(spec, str) else spec)
                                                                          if str(s).strip()]):
            raise ValueError(f"data.{key} is empty; expected shards of {self.modality} samples (a folder of "
                             f"{split}-*.tar, a brace pattern, @list.txt or a URL)")
        try:
            urls = expand_urls(spec, split=split)
        except (FileNotFoundError, ValueError) as exc:
            raise type(exc)(f"data.{key}: {exc}") from exc
        check_shard_modality(urls, self.modality, f"data.{key}")
        check_first_sample(urls, self._decoder(train=split == "train"), f"data.{key}")
        return urls

    def setup(self, stage: str | None = None) -> None:
        _, world = dist_info()
        if stage in (None, "fit") and self.train_stream is None:
            urls = self.shard_urls("train_urls", "train")
            self.check_shard_count(len(urls), world, self.num_workers)
            self.train_stream = TrainStream(urls, self._decoder(train=True), self.batch_size,
                                            self.batches_per_epoch, seed=self.seed,
                                            shuffle_buffer=self.shuffle_buffer)
        if stage in (None, "fit", "validate", "test", "predict") and self.val_urls and self.val_stream is None:
            urls = self.shard_urls("val_urls", "val")
            self.val_stream = EvalStream(urls, self._decoder(train=False), self.val_batch_size,
                                         num_samples=self.val_samples, max_samples=self.max_val_samples,
                                         num_workers=self.val_num_workers)

    def _current_epoch(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.current_epoch) if trainer is not None else 0

    def train_dataloader(self) -> DataLoader:
        if self.train_stream is None:
            self.setup("fit")
        return _EpochLoader(self.train_stream, epoch_fn=self._current_epoch, batch_size=None,
                            num_workers=self.num_workers, persistent_workers=False,
                            pin_memory=False)

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_urls:
            return []
        if self.val_stream is None:
            self.setup("validate")
        return DataLoader(self.val_stream, batch_size=None, num_workers=self.val_num_workers)

    def test_dataloader(self) -> DataLoader | list:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader | list:
        return self.val_dataloader()


class _EpochLoader(DataLoader):
    """A DataLoader that tells its stream the trainer's epoch before workers are forked."""

    def __init__(self, dataset: TrainStream, epoch_fn: Any, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self._epoch_fn = epoch_fn

    def __iter__(self):
        self.dataset.epoch = self._epoch_fn()
        return super().__iter__()
