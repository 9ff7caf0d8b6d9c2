"""``Evaluator``: the interface every modality's evaluation implements, and the one driver that runs it.

:func:`evaluate_checkpoint` reads a checkpoint, picks the evaluator of its modality, feeds it the evaluation
shards sample by sample (in batches of ``Evaluator.batch_size``; unreadable samples are recorded in the report's
``skipped`` with their reason), asks it for one row per token budget, adds the real compressed bytes under a
token prior when one is given, lets it add its baselines and facts, draws its plots and writes ``report.json``
in the schema of :mod:`tokenizers_mm.eval.report`.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import torch
from tqdm.auto import tqdm

from ..io import EmptyOutputError, empty_output_message, write_json_atomic
from . import report as rep


class Evaluator:
    """One modality's evaluation of a tokenizer module.

    Subclasses set the class attributes and implement :meth:`read`, :meth:`update`, :meth:`compute`,
    :meth:`finish` and :meth:`plots`; the driver calls them in that order.

    Attributes:
        modality / title: the registry key and the report's heading.
        budget: ``(name, column label)`` of a token budget (``k``, ``scales``, ``codebooks``).
        kind: what a sample is called in the report (``images``, ``shapes``, ``clips``).
        rate: the report's ``rate`` entry (:data:`~tokenizers_mm.eval.report.RATE_PER_SAMPLE` with ``per``, or
            :data:`~tokenizers_mm.eval.report.RATE_PER_SECOND`).
        metrics: the metric specs (:func:`~tokenizers_mm.eval.report.metric`).
        batch_size: samples per :meth:`update` call.
    """

    modality = ""
    title = ""
    budget: tuple[str, str] = ("", "")
    kind = "samples"
    rate: dict[str, Any] = rep.RATE_PER_SAMPLE
    metrics: list[dict[str, Any]] = []
    batch_size = 1

    def __init__(self, model: Any, checkpoint: dict[str, Any], out: str, device: str, **options: Any) -> None:
        self.model = model
        self.checkpoint = checkpoint
        self.out = out
        self.device = device
        self.options = options
        self.count = 0  # samples given to update
        self.expected: int | None = None  # samples the driver will give, when it can count them up front

    @property
    def data_hparams(self) -> dict[str, Any]:
        """The training datamodule's hyperparameters stored in the checkpoint."""
        return self.checkpoint.get("datamodule_hyper_parameters") or {}

    # ---- the interface ----------------------------------------------------------------------------
    def read(self, raw: dict[str, Any]) -> Any:
        """One raw shard sample (webdataset dict) -> the evaluator's input; raises on a sample it cannot use."""
        raise NotImplementedError

    def update(self, batch: list[tuple[str, Any]]) -> None:
        """Encode, decode and score a batch of ``(key, input)`` pairs at every budget."""
        raise NotImplementedError

    def compute(self) -> list[dict[str, Any]]:
        """One row per budget (:func:`~tokenizers_mm.eval.report.budget_row`) from everything updated."""
        raise NotImplementedError

    def prior_ids(self) -> tuple[list[torch.Tensor], list[int], str]:
        """For ``--prior``: every sample's ids, the prefix length (along the ids' first axis) of each row, and the
        modality name the token prior was made for."""
        raise NotImplementedError

    def prior_entry(self, real: dict[str, Any]) -> dict[str, Any]:
        """A row's ``prior`` entry from one budget of :func:`~tokenizers_mm.prior.evaluate.real_bytes_per_budget`."""
        return {k: real[k] for k in ("file_bytes", "payload_bytes", "nominal_bytes", "prior_bits_per_token",
                                     "raw_files", "header_bytes")}

    def finish(self, report: dict[str, Any]) -> None:
        """Fill the report's modality facts (summary, tokens, setup, conventions, timing, details, notes) and its
        baselines."""
        raise NotImplementedError

    def plots(self, report: dict[str, Any]) -> dict[str, str]:
        """Write the report's figures into the output folder; returns name -> path."""
        raise NotImplementedError


def count_expected(urls: list[str], max_samples: int | None) -> int | None:
    """Samples in local shards ``urls`` (at most ``max_samples``); None when a shard is remote."""
    from ..data.stream import count_samples
    from ..data.urls import is_remote

    if any(is_remote(u) for u in urls):
        return max_samples
    total = sum(count_samples(u) for u in urls)
    return total if max_samples is None else min(total, max_samples)


def run(ev: Evaluator, urls: list[str], max_samples: int | None, skipped: list[dict[str, str]]) -> None:
    """Feed ``ev`` the samples of ``urls`` in order, up to ``max_samples`` evaluated ones; unreadable samples and
    shard errors go to ``skipped``. ``EmptyOutputError`` when none is readable."""
    from ..data.shards import iter_raw_samples

    tar_errors: list[dict[str, str]] = []
    batch: list[tuple[str, Any]] = []
    seen = 0
    ev.expected = count_expected(urls, max_samples)
    bar = tqdm(desc=f"evaluate {ev.kind}", unit=ev.kind.rstrip("s"), total=ev.expected)
    for raw in iter_raw_samples(urls, tar_errors):
        if max_samples is not None and ev.count + len(batch) >= max_samples:
            break
        seen += 1
        key = raw.get("__key__", "")
        try:
            item = ev.read(raw)
        except Exception as exc:  # a broken sample is reported, not fatal
            skipped.append({"key": key, "shard": raw.get("__url__", ""), "reason": f"{type(exc).__name__}: {exc}"})
            continue
        batch.append((key, item))
        if len(batch) == ev.batch_size:
            ev.update(batch)
            ev.count += len(batch)
            bar.update(len(batch))
            batch = []
    if batch:
        ev.update(batch)
        ev.count += len(batch)
        bar.update(len(batch))
    bar.close()
    skipped += [{"key": e.get("key", ""), "shard": e.get("shard", ""), "reason": e.get("error", "")}
                for e in tar_errors]
    if not ev.count:
        raise EmptyOutputError(empty_output_message(f"evaluation of {urls[:2]}", seen + len(tar_errors),
                                                    [(f"{s['key'] or 'shard data'} in {s['shard']}", s["reason"])
                                                     for s in skipped]))


def evaluate_checkpoint(ckpt: str, data: str | list[str], out: str, max_samples: int | None = None,
                        prior: str | None = None, device: str | None = None, **options: Any) -> dict[str, Any]:
    """Evaluate the tokenizer of checkpoint ``ckpt`` on the ``val`` shards of ``data``; write ``out/report.json``
    (and the evaluator's figures) and return the report.

    ``prior``: a token prior export; every row then gains the real compressed file bytes (header included) and
    the prior's bits per token. ``options``: the evaluator's own settings (e.g. ``resolution`` for shapes,
    ``steps`` for flow decoders); each evaluator documents its own.
    """
    from ..checkpointing import build_tokenizer, read_checkpoint
    from ..data.urls import expand_urls
    from ..registry import modality_of_checkpoint, spec

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    raw = read_checkpoint(ckpt)
    model = build_tokenizer(raw, ckpt, map_location=device)
    ev = spec(modality_of_checkpoint(raw)).evaluator_class()(model, raw, out, device, **options)
    urls = expand_urls(data, split="val")
    os.makedirs(out, exist_ok=True)
    skipped: list[dict[str, str]] = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        run(ev, urls, max_samples, skipped)
        rows = ev.compute()
    if prior:
        from ..prior.evaluate import real_bytes_per_budget

        ids, cuts, made_for = ev.prior_ids()
        for row, real in zip(rows, real_bytes_per_budget(prior, ids, cuts, ev.codebook_size, made_for)):
            row["prior"] = ev.prior_entry(real)
    report = rep.new_report(ev.modality, ev.title, ev.budget, dict(ev.rate), model=type(model).__name__,
                            checkpoint=os.path.abspath(ckpt), samples={"count": ev.count, "kind": ev.kind},
                            metrics=[m for m in ev.metrics if any(m["key"] in r["metrics"] for r in rows)],
                            rows=rows, skipped=skipped)
    with torch.inference_mode():
        ev.finish(report)
    report["notes"] += rep.prior_note(report)
    report["timing"]["evaluate_seconds"] = round(time.perf_counter() - t0, 3)
    report["files"] = {"report": os.path.join(out, "report.json"), **ev.plots(report)}
    write_json_atomic(report["files"]["report"], report)
    return report


def rounded(value: float, digits: int) -> float | None:
    """``round(value, digits)``; None for nan / inf (JSON has neither)."""
    return round(float(value), digits) if math.isfinite(value) else None
