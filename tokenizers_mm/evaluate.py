"""``tokenizers-mm evaluate``: reconstruction quality, codebook statistics and samples of a checkpoint.

Writes into the report folder: ``report.json`` (metrics), ``reconstructions.png`` (originals above
reconstructions) and, when the training run's ``metrics.csv`` is given, ``loss_curves.png``.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from tqdm.auto import tqdm

from .checkpointing import load_tokenizer, read_checkpoint
from .data.samples import ImageOptions, make_decoder
from .data.shards import write_json_atomic
from .data.stream import EvalStream
from .data.urls import expand_urls
from .quantize import stats_from_counts
from .visual import image_grid, save_png


def psnr_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of images in ``[-1, 1]`` (``[B, 3, H, W]`` each) -> ``[B]``; 255-level equivalent."""
    mse = (x.clamp(-1, 1) - y.clamp(-1, 1)).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-10))


def plot_loss_curves(csv_path: str, out_png: str) -> str | None:
    """Plot every ``train/*`` and ``val/*`` loss column of a Lightning ``metrics.csv`` against step."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    cols = [c for c in rows[0] if c.endswith(("loss", "pixel", "psnr")) and "/" in c]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for c in cols:
        pts = [(int(r["step"]), float(r[c])) for r in rows if r.get(c) not in (None, "")]
        if not pts:
            continue
        ax = axes[1] if c.endswith("psnr") else axes[0]
        ax.plot(*zip(*pts), label=c, marker="o" if c.startswith("val") else None, markersize=3)
    axes[0].set_yscale("log")
    axes[0].set_title("losses")
    axes[1].set_title("PSNR (dB)")
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


@torch.inference_mode()
def evaluate_checkpoint(ckpt: str, data: str | list[str], out: str, batch_size: int = 16,
                        max_samples: int | None = None, size: int | None = None,
                        csv_log: str | None = None, device: str | None = None) -> dict[str, Any]:
    """Evaluate an image tokenizer checkpoint on evaluation shards; returns the report dict."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    raw = read_checkpoint(ckpt)
    dm_hp = raw.get("datamodule_hyper_parameters", {})
    modality = dm_hp.get("modality", "image")
    if modality != "image":
        raise ValueError(f"{ckpt} is a {modality} tokenizer; `evaluate` handles image tokenizers so far")
    model = load_tokenizer(ckpt, map_location=device)
    img_opts = ImageOptions(**dm_hp["image"]) if "image" in dm_hp else ImageOptions()
    if size is not None:
        img_opts.size = size
    stream = EvalStream(expand_urls(data, split="val"), make_decoder("image", False, image=img_opts),
                        batch_size, max_samples=max_samples)
    counts = torch.zeros(model.codebook_size, dtype=torch.long)
    psnrs, mses, shown, n_tokens, seen = [], [], [], None, 0
    # show 8 images spread over the whole set, not the first 8 (often one source in a row)
    show_idx = set(torch.linspace(0, stream.num_samples - 1, min(8, stream.num_samples)).round().long().tolist())
    for batch in tqdm(stream, desc="evaluate", unit="batch",
                      total=math.ceil(stream.num_samples / batch_size)):
        keep = ~batch["pad"]
        x = batch["image"][keep].to(device)
        tokens = model.encode(x)
        recon = model.decode(tokens)
        n_tokens = tokens.ids[0].numel()
        counts += torch.bincount(tokens.ids.reshape(-1).cpu(), minlength=model.codebook_size)
        psnrs.append(psnr_per_image(recon, x).cpu())
        mses.append((recon - x).pow(2).flatten(1).mean(1).cpu())
        pick = [i for i in range(len(x)) if seen + i in show_idx]
        if pick:
            shown.append((x[pick].cpu(), recon[pick].cpu()))
        seen += len(x)
    psnr = torch.cat(psnrs)
    stats = stats_from_counts(counts.double())
    bits = n_tokens * math.log2(model.codebook_size)
    os.makedirs(out, exist_ok=True)
    files = {"report": os.path.join(out, "report.json")}
    originals = torch.cat([s[0] for s in shown])[:8]
    recons = torch.cat([s[1] for s in shown])[:8]
    files["reconstructions"] = save_png(image_grid([originals, recons]), os.path.join(out, "reconstructions.png"))
    if csv_log and os.path.exists(csv_log):
        curves = plot_loss_curves(csv_log, os.path.join(out, "loss_curves.png"))
        if curves:
            files["loss_curves"] = curves
    report = {
        "checkpoint": os.path.abspath(ckpt),
        "model": type(model).__name__,
        "images": int(psnr.numel()),
        "image_size": img_opts.size,
        "tokens_per_image": n_tokens,
        "codebook_size": model.codebook_size,
        "bytes_per_image": math.ceil(bits / 8),
        "psnr_db": round(float(psnr.mean()), 3),
        "psnr_db_std": round(float(psnr.std()), 3) if psnr.numel() > 1 else 0.0,
        "mse": float(torch.cat(mses).mean()),
        "codebook_usage": round(stats["usage"], 4),
        "codebook_perplexity": round(stats["perplexity"], 2),
        "token_entropy_bits": round(stats["entropy_bits"], 3),
        "files": files,
    }
    write_json_atomic(files["report"], report)
    return report
