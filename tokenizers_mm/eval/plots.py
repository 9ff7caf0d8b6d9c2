"""Rate-distortion plots: a tokenizer's operating points against classical codec curves."""

from __future__ import annotations

import os

from ..io import atomic_path

#: Axis labels of the supported metrics.
METRIC_LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM"}


def rate_distortion_plot(ours: list[dict], baselines: dict[str, list[dict]], out_png: str,
                         metric: str = "psnr", title: str = "") -> str:
    """Plot quality versus bytes per image (log x axis) and write a PNG atomically.

    Args:
        ours: our operating points, each with ``bytes`` (per image), ``psnr``, optionally ``ssim`` and
            ``k`` (a label, e.g. tokens per image or codebook size, annotated next to the point).
        baselines: codec name -> curve from :func:`tokenizers_mm.eval.baselines.codec_rd_curve`
            (points with ``bytes_per_image`` and the metric; ``bytes`` is accepted too).
        out_png: output path; parent folders are created. Written atomically (:func:`save_figure`).
        metric: ``"psnr"`` or ``"ssim"``; points without it are skipped.
        title: figure title.
    Returns:
        ``out_png``.
    """
    # Agg canvas attached explicitly: no pyplot, no global backend switch, works headless.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def xy(points: list[dict]) -> tuple[list[float], list[float], list[dict]]:
        pts = [p for p in points if metric in p and ("bytes" in p or "bytes_per_image" in p)]
        pts.sort(key=lambda p: p.get("bytes", p.get("bytes_per_image")))
        return [float(p.get("bytes", p.get("bytes_per_image"))) for p in pts], [float(p[metric]) for p in pts], pts

    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, curve in baselines.items():
        x, y, _ = xy(curve)
        if x:
            ax.plot(x, y, marker=".", linewidth=1.2, label=name)
    x, y, pts = xy(ours)
    if x:
        ax.plot(x, y, marker="o", linewidth=2.0, color="black", label="ours")
        for xi, yi, p in zip(x, y, pts):
            if "k" in p:
                ax.annotate(f"k={p['k']}", (xi, yi), textcoords="offset points", xytext=(4, 6), fontsize=8)
    if ax.has_data():
        ax.set_xscale("log")
    ax.set_xlabel("bytes per image")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()

    return save_figure(fig, out_png)


def save_figure(fig, out_png: str | os.PathLike) -> str:
    """Write a matplotlib figure as PNG atomically (:func:`tokenizers_mm.io.atomic_path`); creates the parent
    folders; returns the path."""
    out_png = os.fspath(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    return out_png


def quality_vs_steps_plot(rows: list[dict], out_png: str) -> str:
    """PSNR (left) and SSIM (right) against the number of sampling steps, one line per token count k."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for k in sorted({r["k"] for r in rows}):
        pts = sorted((r["steps"], r["psnr"], r["ssim"]) for r in rows if r["k"] == k)
        for ax, i in zip(axes, (1, 2)):
            ax.plot([p[0] for p in pts], [p[i] for p in pts], marker="o", label=f"k={k}")
    for ax, name in zip(axes, ("psnr", "ssim")):
        ax.set_xscale("log")
        ax.set_xlabel("Euler steps")
        ax.set_ylabel(METRIC_LABELS[name])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out_png)
