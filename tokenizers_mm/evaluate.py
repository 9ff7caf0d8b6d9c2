"""``tokenizers-mm evaluate``: rate-distortion evaluation of an image tokenizer checkpoint.

For each number of kept tokens k (1, 2, 4, ..., K for 1D tokenizers; all tokens for grid tokenizers):
PSNR, SSIM, LPIPS (with a local network), rFID (with local InceptionV3 weights), codebook usage and token
entropy, and bytes per image ``ceil(k * log2(codebook_size) / 8)``. JPEG and WebP (Pillow) run on the same
images at qualities that bracket those byte sizes. Writes into the report folder: ``report.json``,
``rate_distortion.png`` (PSNR and SSIM against bytes, ours beside JPEG and WebP), ``reconstructions.png``
(top row originals, then one row per k) and, given the run's ``metrics.csv``, ``loss_curves.png``.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpointing import build_tokenizer, read_checkpoint
from .data.samples import ImageOptions, make_decoder
from .data.stream import EvalStream
from .data.urls import expand_urls
from .eval.image_metrics import FIDAccumulator, InceptionFeatures, psnr, ssim, to_uint8_hwc
from .io import atomic_path, write_json_atomic
from .quantize import bytes_for, stats_from_counts
from .visual import image_grid, save_png


def plot_loss_curves(csv_path: str, out_png: str) -> str | None:
    """Plot every ``train/*`` and ``val/*`` loss and PSNR column of a Lightning ``metrics.csv`` against step."""
    import csv

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    cols = [c for c in rows[0] if "/" in c and (c.endswith(("loss", "pixel")) or "psnr" in c)]
    fig = Figure(figsize=(11, 4))
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
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return out_png


class _PerK:
    """Running metrics of one token budget."""

    def __init__(self, fid: FIDAccumulator | None) -> None:
        self.psnr: list[torch.Tensor] = []
        self.ssim: list[torch.Tensor] = []
        self.lpips: list[torch.Tensor] = []
        self.fid = fid


@torch.inference_mode()
def evaluate_checkpoint(ckpt: str, data: str | list[str], out: str, batch_size: int = 16,
                        max_samples: int | None = None, size: int | None = None, csv_log: str | None = None,
                        device: str | None = None, lpips_path: str | None = None,
                        inception_path: str | None = None, baselines: bool = True,
                        baseline_samples: int = 256, ks: list[int] | None = None, steps: list[int] | None = None,
                        cfg_scale: float | None = None, prior: str | None = None) -> dict[str, Any]:
    """Evaluate an image tokenizer checkpoint on evaluation shards; returns the report dict.

    For a rectified-flow decoder every k is decoded with each number of Euler ``steps`` (default: the model's
    default), from per-image seeds (image i of the evaluation set uses seed i), with guidance ``cfg_scale``.
    ``prior``: a token prior export; every per-k row then gains the real compressed file bytes (header included)
    and the prior's bits per token, drawn on the rate-distortion plot as a curve of its own.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    raw = read_checkpoint(ckpt)
    dm_hp = raw.get("datamodule_hyper_parameters", {})
    modality = dm_hp.get("modality", "image")
    if modality != "image":
        raise ValueError(f"{ckpt} is a {modality} tokenizer; `evaluate` handles image tokenizers so far")
    model = build_tokenizer(raw, ckpt, map_location=device)
    img_opts = ImageOptions(**dm_hp["image"]) if "image" in dm_hp else ImageOptions()
    if size is not None:
        img_opts.size = size
    stream = EvalStream(expand_urls(data, split="val"), make_decoder("image", False, image=img_opts),
                        batch_size, max_samples=max_samples)
    prefix_decoding = hasattr(model, "num_tokens")
    ks = ks or (list(model.val_ks) if prefix_decoding else [0])  # 0: all tokens of a grid tokenizer
    from .export import decode_options

    codec = model.inference_codec() if hasattr(model, "inference_codec") else model
    flow = "steps" in decode_options(codec)
    step_list = sorted(set(steps or [codec.flow.default_steps])) if flow else [0]  # 0: a one-pass decoder
    show_steps = max(step_list)
    points = [(k, st) for k in ks for st in step_list]
    lpips_net = None
    if lpips_path:
        from .image.losses import PerceptualLoss

        lpips_net = PerceptualLoss(lpips_path).to(device)
    inception = InceptionFeatures.from_local(inception_path).to(device) if inception_path else None
    acc = {pt: _PerK(FIDAccumulator(inception) if inception is not None else None) for pt in points}
    decode_seconds = {pt: 0.0 for pt in points}
    counts: dict[int, torch.Tensor] = {}
    n_total_tokens = 0
    show_idx = set(torch.linspace(0, stream.num_samples - 1, min(8, stream.num_samples)).round().long().tolist())
    shown: list[tuple[torch.Tensor, dict[int, torch.Tensor]]] = []
    originals: list[np.ndarray] = []
    seen = 0
    all_ids: list[torch.Tensor] = []
    for batch in tqdm(stream, desc="evaluate", unit="batch", total=math.ceil(stream.num_samples / batch_size)):
        x = batch["image"][~batch["pad"]].to(device)
        ids = model.encode(x).ids
        n_total_tokens = ids.shape[1]
        if prior:
            all_ids.append(ids.cpu())
        pick = [i for i in range(len(x)) if seen + i in show_idx]
        recons_shown: dict[tuple[int, int], torch.Tensor] = {}
        for k, st in points:
            kk = k or n_total_tokens
            opts: dict[str, Any] = {}
            if flow:
                opts = {"steps": st, "seed": list(range(seen, seen + len(x))), "cfg_scale": cfg_scale}
            t0 = time.perf_counter()
            recon = model.decode(ids[:, :kk], **opts) if prefix_decoding else model.decode(ids, **opts)
            decode_seconds[(k, st)] += time.perf_counter() - t0
            a = acc[(k, st)]
            a.psnr.append(psnr(recon, x).cpu())
            a.ssim.append(ssim(recon, x).cpu())
            if lpips_net is not None:
                a.lpips.append(lpips_net(recon, x).cpu())
            if a.fid is not None:
                a.fid.update(x, recon)
            if st == show_steps:
                hist = torch.bincount(ids[:, :kk].reshape(-1).cpu(), minlength=model.codebook_size)
                counts[k] = counts.get(k, 0) + hist
            if pick and (st == show_steps or k == ks[-1]):
                recons_shown[(k, st)] = recon[pick].cpu()
        if pick:
            shown.append((x[pick].cpu(), recons_shown))
        if len(originals) < baseline_samples:
            originals.extend(list(to_uint8_hwc(x[: baseline_samples - len(originals)].cpu())))
        seen += len(x)

    per_point = []
    for k, st in points:
        kk = k or n_total_tokens
        a = acc[(k, st)]
        stats = stats_from_counts(counts[k].double())
        row = {"k": kk, "bytes": bytes_for(kk, model.codebook_size),
               "psnr": round(float(torch.cat(a.psnr).mean()), 3), "ssim": round(float(torch.cat(a.ssim).mean()), 4),
               "codebook_usage": round(stats["usage"], 4), "token_entropy_bits": round(stats["entropy_bits"], 3),
               "decode_ms_per_image": round(1000 * decode_seconds[(k, st)] / max(seen, 1), 3)}
        if flow:
            row["steps"] = st
        if a.lpips:
            row["lpips"] = round(float(torch.cat(a.lpips).mean()), 4)
        if a.fid is not None:
            row["rfid"] = round(a.fid.compute(), 3)
        per_point.append(row)
    # the rate-distortion view: one row per k at the largest number of steps
    per_k = [r for r in per_point if r.get("steps", 0) == show_steps]
    if prior:
        from .prior.evaluate import real_bytes_per_budget

        real = real_bytes_per_budget(prior, torch.cat(all_ids), [r["k"] for r in per_k], model.codebook_size)
        for r, rr in zip(per_k, real):
            r.update({k: rr[k] for k in ("file_bytes", "payload_bytes", "prior_bits_per_token", "raw_files")})

    os.makedirs(out, exist_ok=True)
    files = {"report": os.path.join(out, "report.json")}
    report: dict[str, Any] = {
        "checkpoint": os.path.abspath(ckpt), "model": type(model).__name__, "images": seen,
        "image_size": img_opts.size, "tokens_per_image": n_total_tokens, "codebook_size": model.codebook_size,
        "bits_per_token": round(math.log2(model.codebook_size), 3), "per_k": per_k,
    }
    if flow:
        report["sampling"] = {"steps": step_list, "cfg_scale": cfg_scale if cfg_scale is not None
                              else codec.flow.default_cfg_scale, "seeds": "image i uses seed i",
                              "per_k_uses_steps": show_steps}
        report["per_k_and_steps"] = per_point
    if baselines and originals:
        from .eval.baselines import at_bytes, codec_rd_curve
        from .eval.plots import rate_distortion_plot

        report["baselines"] = {}
        curves = {}
        for fmt in ("JPEG", "WEBP"):
            curve = codec_rd_curve(originals, fmt)
            curves[fmt] = curve
            report["baselines"][fmt] = {"images": len(originals), "curve": curve,
                                        "at_our_bytes": [{"k": r["k"], **at_bytes(curve, r["bytes"])} for r in per_k]}
        ours = [{"bytes": r["bytes"], "psnr": r["psnr"], "ssim": r["ssim"], "label": f"k={r['k']}"} for r in per_k]
        if prior:
            curves = {**curves, "ours, real file bytes (prior)": [
                {"bytes": r["file_bytes"], "psnr": r["psnr"], "ssim": r["ssim"]} for r in per_k]}
        files["rate_distortion"] = rate_distortion_plot(ours, curves, os.path.join(out, "rate_distortion.png"),
                                                        metric="psnr", title=f"{type(model).__name__}, "
                                                        f"{img_opts.size}px, {seen} images")
        files["rate_distortion_ssim"] = rate_distortion_plot(ours, curves, os.path.join(out, "rate_distortion_ssim.png"),
                                                             metric="ssim")
    originals_shown = torch.cat([s[0] for s in shown])
    rows = [originals_shown] + [torch.cat([s[1][(k, show_steps)] for s in shown]) for k in ks]
    files["reconstructions"] = save_png(image_grid(rows), os.path.join(out, "reconstructions.png"))
    if flow and len(step_list) > 1:
        from .eval.plots import quality_vs_steps_plot

        rows = [originals_shown] + [torch.cat([s[1][(ks[-1], st)] for s in shown]) for st in step_list]
        files["reconstructions_by_steps"] = save_png(image_grid(rows), os.path.join(out, "reconstructions_by_steps.png"))
        files["quality_vs_steps"] = quality_vs_steps_plot(per_point, os.path.join(out, "quality_vs_steps.png"))
    if csv_log and os.path.exists(csv_log):
        curves_png = plot_loss_curves(csv_log, os.path.join(out, "loss_curves.png"))
        if curves_png:
            files["loss_curves"] = curves_png
    report["files"] = files
    write_json_atomic(files["report"], report)
    return report


def format_steps_table(report: dict[str, Any]) -> str:
    """Markdown table of a flow decoder: PSNR / SSIM and decode time per image at each (k, steps)."""
    rows = report.get("per_k_and_steps") or []
    steps = sorted({r["steps"] for r in rows})
    ks = sorted({r["k"] for r in rows})
    by = {(r["k"], r["steps"]): r for r in rows}
    lines = ["| k | bytes | " + " | ".join(f"PSNR / SSIM @{s} steps" for s in steps) + " |",
             "|" + "---|" * (2 + len(steps))]
    for k in ks:
        cells = [str(k), str(by[(k, steps[0])]["bytes"])]
        cells += [f"{by[(k, s)]['psnr']:.2f} / {by[(k, s)]['ssim']:.3f}" for s in steps]
        lines.append("| " + " | ".join(cells) + " |")
    times = ", ".join(f"{s} steps {by[(ks[-1], s)]['decode_ms_per_image']:.1f} ms" for s in steps)
    lines.append(f"decode time per image at k={ks[-1]}: {times}")
    return "\n".join(lines)


def format_table(report: dict[str, Any]) -> str:
    """Markdown table: per k, bytes, our PSNR / SSIM beside JPEG and WebP at the same bytes."""
    base = report.get("baselines", {})
    head = "| k | bytes | PSNR | SSIM | JPEG PSNR | JPEG SSIM | WebP PSNR | WebP SSIM |"
    lines = [head, "|" + "---|" * 8]
    for i, r in enumerate(report["per_k"]):
        cells = [str(r["k"]), str(r["bytes"]), f"{r['psnr']:.2f}", f"{r['ssim']:.3f}"]
        for fmt in ("JPEG", "WEBP"):
            if fmt in base:
                m = base[fmt]["at_our_bytes"][i]
                star = "*" if m.get("extrapolated") else ""
                cells += [f"{m['psnr']:.2f}{star}", f"{m['ssim']:.3f}{star}"]
            else:
                cells += ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("(* the codec cannot reach that byte budget: its nearest quality setting is shown)")
    return "\n".join(lines)
