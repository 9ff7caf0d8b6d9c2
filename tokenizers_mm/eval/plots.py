"""Figures of an evaluation report: quality against size beside classical codecs, quality against sampling steps."""

from __future__ import annotations

import math
import os

from ..io import atomic_path

#: Axis labels of the image metrics (the steps plot).
METRIC_LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM"}


def rate_quality_plot(report: dict, metrics: list[str], out_png: str, title: str = "") -> str:
    """Quality against size for a report of :mod:`tokenizers_mm.eval.report`, one panel per metric key.

    Each panel: our rows (black, each point labelled with its budget), the real file sizes under a token prior
    when the rows have them (dashed), and every baseline codec: its ``curves`` when the report has them, else the
    baseline entries of the rows. The x axis (log) is the report's ``rate`` (bytes per sample or kbps).
    Written atomically (:func:`save_figure`); returns ``out_png``.
    """
    # Agg canvas attached explicitly: no pyplot, no global backend switch, works headless.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rate, rows = report["rate"], report["rows"]
    labels = {m["key"]: m["label"] for m in report["metrics"]}
    base = report.get("baselines") or {}
    curves = dict(base.get("curves") or {})
    if not curves:
        for r in rows:
            for b in r.get("baselines", []):
                curves.setdefault(b["codec"], []).append(b)
    x_label = "kbps" if rate["unit"] == "kbps" else f"bytes per {rate.get('per', 'sample')}"

    def finite(v: object) -> bool:
        return isinstance(v, (int, float)) and math.isfinite(v)

    single = len(metrics) == 1
    fig = Figure(figsize=(6.4, 4.8) if single else (3.5 * len(metrics), 3.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, key in zip(axes, metrics):
        for codec, points in curves.items():
            pts = sorted((p[rate["baseline_key"]], p["metrics"].get(key)) for p in points
                         if finite(p.get(rate["baseline_key"])) and finite(p.get("metrics", {}).get(key)))
            if pts:
                ax.plot(*zip(*pts), marker=".", linewidth=1.2, label=codec)
        ours = [(r[rate["row_key"]], r["metrics"].get(key), r["value"]) for r in rows
                if finite(r.get(rate["row_key"])) and finite(r["metrics"].get(key))]
        if ours:
            ax.plot([p[0] for p in ours], [p[1] for p in ours], marker="o", linewidth=2.0, color="black", label="ours")
            # every point labelled when few, else the first and the last (the labels would overlap)
            for x, y, v in ours if len(ours) <= 5 else [ours[0], ours[-1]]:
                ax.annotate(f"{report['budget']['name']}={v}", (x, y), textcoords="offset points", xytext=(4, 6),
                            fontsize=7)
        real = [(r["prior"][rate["prior_key"]], r["metrics"][key]) for r in rows
                if "prior" in r and finite(r["metrics"].get(key))]
        if real:
            ax.plot(*zip(*real), marker="o", color="black", linestyle="--", markerfacecolor="none",
                    label="ours, real file bytes (prior)")
        if ax.has_data():
            ax.set_xscale("log")
        ax.set_xlabel(x_label)
        if single:  # one panel: the metric on the y axis, the figure's title above
            ax.set_ylabel(labels.get(key, key))
            ax.set_title(title)
        else:
            ax.set_title(labels.get(key, key), fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right" if single else "best")
    if title and not single:
        fig.suptitle(title, fontsize=10)
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
    """PSNR (left) and SSIM (right) against the number of sampling steps, one line per token count k (report rows
    of a flow decoder, one per ``(k, steps)``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for k in sorted({r["value"] for r in rows}):
        pts = sorted((r["steps"], r["metrics"]["psnr"], r["metrics"]["ssim"]) for r in rows if r["value"] == k)
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
