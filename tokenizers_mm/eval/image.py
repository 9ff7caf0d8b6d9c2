"""Image evaluation: quality at every number of kept tokens beside JPEG and WebP at the same bytes.

For each number of kept tokens k (1, 2, 4, ..., K for 1D tokenizers; all tokens for grid tokenizers): PSNR,
SSIM, LPIPS (with a local network), rFID (with local InceptionV3 weights), codebook usage and token entropy, and
bytes per image ``ceil(k * log2(codebook_size) / 8)``. JPEG and WebP (Pillow) run on the same images at
qualities that bracket those byte sizes. A rectified-flow decoder is decoded at each number of Euler ``steps``
from per-image seeds (image i of the evaluation set uses seed i); its rows use the largest. Figures:
``rate_distortion.png`` / ``rate_distortion_ssim.png`` (PSNR / SSIM against bytes beside JPEG and WebP),
``reconstructions.png`` (top row originals, then one row per k) and, given the run's ``metrics.csv``,
``loss_curves.png``.
"""

from __future__ import annotations

import math
import os
import random
import time
from typing import Any

import numpy as np
import torch

from ..quantize import bytes_for, stats_from_counts
from . import report as rep
from .evaluator import Evaluator
from .image_metrics import FIDAccumulator, InceptionFeatures, psnr, ssim, to_uint8_hwc

IMAGE_METRICS = [rep.metric("psnr", "PSNR (dB)", ".2f", plot=True), rep.metric("ssim", "SSIM", ".3f", plot=True),
                 rep.metric("lpips", "LPIPS", ".4f"), rep.metric("rfid", "rFID", ".3f"),
                 rep.metric("codebook_usage", "codebook usage", ".4f", table=False),
                 rep.metric("token_entropy_bits", "token entropy (bits)", ".3f", table=False)]


def image_baseline(fmt: str, point: dict[str, Any]) -> dict[str, Any]:
    """A baseline entry from a point of :func:`~tokenizers_mm.eval.baselines.codec_rd_curve` or
    :func:`~tokenizers_mm.eval.baselines.at_bytes` (``bytes_per_image``, ``psnr``, ``ssim``, codec facts)."""
    facts = {k: v for k, v in point.items() if k not in ("bytes_per_image", "psnr", "ssim", "k")}
    return {"codec": fmt, "bytes": point["bytes_per_image"],
            "metrics": {"psnr": point["psnr"], "ssim": point["ssim"]}, **facts}


def plot_loss_curves(csv_path: str, out_png: str) -> str | None:
    """Plot every ``train/*`` and ``val/*`` loss and PSNR column of a Lightning ``metrics.csv`` against step."""
    import csv

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .plots import save_figure

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    cols = [c for c in rows[0] if "/" in c and (c.endswith(("loss", "pixel")) or "psnr" in c)]
    fig = Figure(figsize=(11, 4), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for c in cols:
        pts = [(int(r["step"]), float(r[c])) for r in rows if r.get(c) not in (None, "")]
        if pts:
            ax = axes[1] if "psnr" in c else axes[0]
            ax.plot(*zip(*pts), label=c, marker="o" if c.startswith("val") else None, markersize=3)
    axes[0].set_yscale("log")
    axes[0].set_title("losses")
    axes[1].set_title("PSNR (dB)")
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out_png)


class _Running:
    """Running metrics of one (k, steps) point."""

    def __init__(self, fid: FIDAccumulator | None) -> None:
        self.psnr: list[torch.Tensor] = []
        self.ssim: list[torch.Tensor] = []
        self.lpips: list[torch.Tensor] = []
        self.fid = fid
        self.decode_seconds = 0.0


class ImageEvaluator(Evaluator):
    """Image tokenizers (1D prefix tokenizers, grid tokenizers, rectified-flow decoders).

    Options: ``batch_size`` (16), ``size`` (image side; default the training config's), ``csv_log`` (the run's
    ``metrics.csv``, for loss curves), ``lpips_path`` / ``inception_path`` (local weights: LPIPS and rFID
    columns), ``baselines`` (True: JPEG and WebP), ``baseline_samples`` (256), ``ks`` (token counts; default the
    model's), ``steps`` / ``cfg_scale`` (flow decoders).
    """

    modality = "image"
    title = "Image"
    budget = ("k", "k")
    kind = "images"
    rate = {"per": "image", **rep.RATE_PER_SAMPLE}
    metrics = IMAGE_METRICS

    def __init__(self, model: Any, checkpoint: dict[str, Any], out: str, device: str, batch_size: int = 16,
                 size: int | None = None, csv_log: str | None = None, lpips_path: str | None = None,
                 inception_path: str | None = None, baselines: bool = True, baseline_samples: int = 256,
                 ks: list[int] | None = None, steps: list[int] | None = None, cfg_scale: float | None = None,
                 **_: Any) -> None:
        from ..data.samples import ImageOptions, make_decoder
        from ..export import decode_options

        super().__init__(model, checkpoint, out, device)
        dm_hp = self.data_hparams
        self.img_opts = ImageOptions(**dm_hp["image"]) if "image" in dm_hp else ImageOptions()
        if size is not None:
            self.img_opts.size = size
        self.decoder = make_decoder("image", False, image=self.img_opts)
        self.rng = random.Random(0)
        self.batch_size = batch_size
        self.csv_log, self.baselines, self.baseline_samples = csv_log, baselines, baseline_samples
        self.prefix_decoding = hasattr(model, "num_tokens")
        self.ks = ks or (list(model.val_ks) if self.prefix_decoding else [0])  # 0: all tokens of a grid tokenizer
        self.codec = model.inference_codec() if hasattr(model, "inference_codec") else model
        self.flow = "steps" in decode_options(self.codec)
        self.step_list = sorted(set(steps or [self.codec.flow.default_steps])) if self.flow else [0]
        self.show_steps = max(self.step_list)
        self.cfg_scale = cfg_scale
        self.points = [(k, st) for k in self.ks for st in self.step_list]
        self.lpips_net = None
        if lpips_path:
            from ..image.losses import PerceptualLoss

            self.lpips_net = PerceptualLoss(lpips_path).to(device)
        inception = InceptionFeatures.from_local(inception_path).to(device) if inception_path else None
        self.acc = {pt: _Running(FIDAccumulator(inception) if inception is not None else None) for pt in self.points}
        self.counts: dict[int, torch.Tensor] = {}
        self.n_total_tokens = 0
        self.shown: list[tuple[torch.Tensor, dict[tuple[int, int], torch.Tensor]]] = []
        self.originals: list[np.ndarray] = []
        self.all_ids: list[torch.Tensor] = []

    @property
    def codebook_size(self) -> int:
        return int(self.model.codebook_size)

    def read(self, raw: dict[str, Any]) -> torch.Tensor:
        return self.decoder(raw, self.rng)["image"]

    def _show_index(self) -> set[int]:
        n = self.expected or 8
        return set(torch.linspace(0, n - 1, min(8, n)).round().long().tolist())

    def update(self, batch: list[tuple[str, Any]]) -> None:
        model, seen = self.model, self.count
        x = torch.stack([item for _, item in batch]).to(self.device)
        ids = model.encode(x).ids
        self.n_total_tokens = ids.shape[1]
        self.all_ids.append(ids.cpu())
        show = self._show_index()
        pick = [i for i in range(len(x)) if seen + i in show]
        recons_shown: dict[tuple[int, int], torch.Tensor] = {}
        for k, st in self.points:
            kk = k or self.n_total_tokens
            opts: dict[str, Any] = {}
            if self.flow:
                opts = {"steps": st, "seed": list(range(seen, seen + len(x))), "cfg_scale": self.cfg_scale}
            t0 = time.perf_counter()
            recon = model.decode(ids[:, :kk], **opts) if self.prefix_decoding else model.decode(ids, **opts)
            a = self.acc[(k, st)]
            a.decode_seconds += time.perf_counter() - t0
            a.psnr.append(psnr(recon, x).cpu())
            a.ssim.append(ssim(recon, x).cpu())
            if self.lpips_net is not None:
                a.lpips.append(self.lpips_net(recon, x).cpu())
            if a.fid is not None:
                a.fid.update(x, recon)
            if st == self.show_steps:
                hist = torch.bincount(ids[:, :kk].reshape(-1).cpu(), minlength=model.codebook_size)
                self.counts[k] = self.counts.get(k, 0) + hist
            if pick and (st == self.show_steps or k == self.ks[-1]):
                recons_shown[(k, st)] = recon[pick].cpu()
        if pick:
            self.shown.append((x[pick].cpu(), recons_shown))
        if len(self.originals) < self.baseline_samples:
            self.originals.extend(list(to_uint8_hwc(x[: self.baseline_samples - len(self.originals)].cpu())))

    def _point_row(self, k: int, st: int) -> dict[str, Any]:
        kk = k or self.n_total_tokens
        a = self.acc[(k, st)]
        stats = stats_from_counts(self.counts[k].double())
        metrics = {"psnr": round(float(torch.cat(a.psnr).mean()), 3), "ssim": round(float(torch.cat(a.ssim).mean()), 4),
                   "codebook_usage": round(stats["usage"], 4), "token_entropy_bits": round(stats["entropy_bits"], 3)}
        if a.lpips:
            metrics["lpips"] = round(float(torch.cat(a.lpips).mean()), 4)
        if a.fid is not None:
            metrics["rfid"] = round(a.fid.compute(), 3)
        extra = {"steps": st} if self.flow else {}
        return rep.budget_row("k", kk, kk, bytes_for(kk, self.codebook_size), metrics, **extra,
                              timing={"decode_ms_per_sample": round(1000 * a.decode_seconds / max(self.count, 1), 3)})

    def compute(self) -> list[dict[str, Any]]:
        self.per_point = [self._point_row(k, st) for k, st in self.points]
        # the rate-distortion view: one row per k at the largest number of steps
        return [r for r in self.per_point if r.get("steps", 0) == self.show_steps]

    def prior_ids(self) -> tuple[list[torch.Tensor], list[int], str]:
        return list(torch.cat(self.all_ids)), [k or self.n_total_tokens for k in self.ks], self.modality

    def finish(self, report: dict[str, Any]) -> None:
        bits = round(math.log2(self.codebook_size), 3)
        report["summary"] = (f"{report['model']}: {self.count} images at {self.img_opts.size} px, "
                             f"{self.n_total_tokens} tokens of {bits} bits")
        report["tokens"] = {"codebook_size": self.codebook_size, "bits_per_token": bits,
                            "per_sample": self.n_total_tokens}
        report["setup"] = {"image_size": self.img_opts.size}
        report["conventions"] = {"psnr": "per image on [-1, 1] (peak-to-peak 2), averaged over images",
                                 "ssim": "per image on uint8 RGB, window min(7, image side)",
                                 "bytes": "ceil(k * log2(codebook_size) / 8) per image"}
        report["pictures"] = ["reconstructions.png", "rate_distortion.png"]
        if self.flow:
            report["details"]["sampling"] = {
                "steps": self.step_list, "seeds": "image i uses seed i", "rows_use_steps": self.show_steps,
                "cfg_scale": self.cfg_scale if self.cfg_scale is not None else self.codec.flow.default_cfg_scale}
            report["details"]["per_k_and_steps"] = self.per_point
            report["notes"] += steps_table(self.per_point).splitlines()
        if self.baselines and self.originals:
            from .baselines import at_bytes, codec_rd_curve

            report["baselines"]["samples"] = len(self.originals)
            report["conventions"]["baselines"] = ("Pillow JPEG and WebP on the same images (uint8), interpolated "
                                                  "along each codec's quality sweep to our bytes per image")
            for fmt in ("JPEG", "WEBP"):
                curve = codec_rd_curve(self.originals, fmt)
                report["baselines"]["curves"][fmt] = [image_baseline(fmt, p) for p in curve]
                for row in report["rows"]:
                    row["baselines"].append(image_baseline(fmt, at_bytes(curve, row["nominal_bytes"])))

    def plots(self, report: dict[str, Any]) -> dict[str, str]:
        from ..visual import image_grid, save_png
        from .plots import quality_vs_steps_plot, rate_quality_plot

        out, files = self.out, {}
        title = f"{report['model']}, {self.img_opts.size}px, {self.count} images"
        files["rate_distortion"] = rate_quality_plot(report, ["psnr"], os.path.join(out, "rate_distortion.png"), title)
        files["rate_distortion_ssim"] = rate_quality_plot(report, ["ssim"], os.path.join(out, "rate_distortion_ssim.png"))
        originals = torch.cat([s[0] for s in self.shown])
        grid = [originals] + [torch.cat([s[1][(k, self.show_steps)] for s in self.shown]) for k in self.ks]
        files["reconstructions"] = save_png(image_grid(grid), os.path.join(out, "reconstructions.png"))
        if self.flow and len(self.step_list) > 1:
            grid = [originals] + [torch.cat([s[1][(self.ks[-1], st)] for s in self.shown]) for st in self.step_list]
            files["reconstructions_by_steps"] = save_png(image_grid(grid), os.path.join(out, "reconstructions_by_steps.png"))
            files["quality_vs_steps"] = quality_vs_steps_plot(self.per_point, os.path.join(out, "quality_vs_steps.png"))
        if self.csv_log and os.path.exists(self.csv_log):
            curves_png = plot_loss_curves(self.csv_log, os.path.join(out, "loss_curves.png"))
            if curves_png:
                files["loss_curves"] = curves_png
        return files


def steps_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of a flow decoder: PSNR / SSIM at each (k, steps), then the decode time per image."""
    steps = sorted({r["steps"] for r in rows})
    ks = sorted({r["value"] for r in rows})
    by = {(r["value"], r["steps"]): r for r in rows}
    lines = ["| k | bytes | " + " | ".join(f"PSNR / SSIM @{s} steps" for s in steps) + " |",
             "|" + "---|" * (2 + len(steps))]
    for k in ks:
        cells = [str(k), str(by[(k, steps[0])]["nominal_bytes"])]
        cells += [f"{by[(k, s)]['metrics']['psnr']:.2f} / {by[(k, s)]['metrics']['ssim']:.3f}" for s in steps]
        lines.append("| " + " | ".join(cells) + " |")
    times = ", ".join(f"{s} steps {by[(ks[-1], s)]['timing']['decode_ms_per_sample']:.1f} ms" for s in steps)
    lines.append(f"decode time per image at k={ks[-1]}: {times}")
    return "\n".join(lines)
