"""Write ``docs/results.md`` from the reports that ``make demo`` leaves (no number is typed by hand).

    python scripts/write_results.py --reports reports --times reports/demo_times.tsv --out docs/results.md

Reads ``reports/<model>/report.json`` of every model that has one (image, shape and speech evaluations are
told apart by their keys; :func:`read_reports`, which ``scripts/write_index.py`` shares) and the phase times that the Makefile's demo target appends, one ``phase<TAB>seconds``
line each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tokenizers_mm.evaluate import format_table  # noqa: E402
from tokenizers_mm.io import write_text_atomic  # noqa: E402
from tokenizers_mm.shape.evaluate import format_shape_table  # noqa: E402
from tokenizers_mm.speech.evaluate import format_speech_table  # noqa: E402

SECTIONS = (("per_k", "Image", format_table, ("reconstructions.png", "rate_distortion.png")),
            ("per_scale", "3D shape", format_shape_table, ("rate_quality.png",)),
            ("per_quantizers", "Speech", format_speech_table, ("rate_quality.png",)))


def read_times(path: str | None) -> list[tuple[str, float]]:
    """``phase<TAB>seconds`` lines -> [(phase, seconds)] (empty when the file is missing)."""
    if not path or not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            name, _, secs = line.rstrip("\n").partition("\t")
            if secs:
                rows.append((name, float(secs)))
    return rows


def times_table(times: list[tuple[str, float]]) -> str:
    """Markdown table of the phase times and their total (minutes and seconds)."""
    def mmss(s: float) -> str:
        return f"{int(s // 60)}m{int(s % 60):02d}s"

    rows = [f"| {name} | {mmss(s)} |" for name, s in times]
    return "\n".join(["| phase | wall time |", "|---|---|", *rows, f"| total | {mmss(sum(s for _, s in times))} |"])


def split_table(text: str) -> tuple[str, list[str]]:
    """A table formatter's markdown -> (the table's ``|`` rows, the note lines printed under it)."""
    lines = text.splitlines()
    n = next((i for i, line in enumerate(lines) if not line.startswith("|")), len(lines))
    return "\n".join(lines[:n]), lines[n:]


def read_reports(reports_dir: str) -> list[dict[str, Any]]:
    """Every ``<reports_dir>/<model>/report.json`` that an evaluator wrote, in model order.

    Each entry: ``model``, ``title`` (Image / 3D shape / Speech), ``report`` (the parsed JSON), ``table``
    (markdown rows), ``notes`` (lines under the table) and ``pictures`` (the section's main PNGs that exist,
    relative to the model folder). Folders without a report, or with one no section knows, are left out.
    """
    found = []
    for model in sorted(os.listdir(reports_dir)) if os.path.isdir(reports_dir) else []:
        path = os.path.join(reports_dir, model, "report.json")
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            report = json.load(f)
        for key, title, table, pictures in SECTIONS:
            if key in report:
                rows, notes = split_table(table(report))
                shown = [p for p in pictures if os.path.exists(os.path.join(reports_dir, model, p))]
                found.append({"model": model, "title": title, "report": report, "table": rows, "notes": notes,
                              "pictures": shown})
                break
    return found


def prior_section(reports_dir: str) -> list[str]:
    """Markdown for each ``<model>_prior`` folder the demo's prior phase wrote: bits per token of the val tokens
    (``tokens/report.json``) and the rate-controlled files (``rate_controlled/summary.json``); [] when absent."""
    out = []
    for model in sorted(os.listdir(reports_dir)) if os.path.isdir(reports_dir) else []:
        tokens = os.path.join(reports_dir, model, "tokens", "report.json")
        if not model.endswith("_prior") or not os.path.isfile(tokens):
            continue
        with open(tokens) as f:
            t = json.load(f)
        out += [f"## Token prior: `{model}`", "",
                f"Bits per token of the {t['samples']} {t['split']} token sequences (lower: more predictable):", "",
                "| uniform | unigram entropy | prior cross-entropy | Zipf exponent |", "|---|---|---|---|",
                f"| {t['uniform_bits']:.2f} | {t['unigram_entropy_bits']:.2f} | "
                f"{t.get('prior_bits_per_token', float('nan')):.2f} | {t['zipf_exponent']:.2f} |", ""]
        rc_path = os.path.join(reports_dir, model, "rate_controlled", "summary.json")
        if os.path.isfile(rc_path):
            with open(rc_path) as f:
                rc = json.load(f)
            r, target = rc["rate_control"], rc["target"]
            out += [f"Rate-controlled `compress` of {len(rc['files'])} held-out files at {target['metric']} >= "
                    f"{target['value']:g}: each file gets the fewest tokens that reach it.", "",
                    "| | mean tokens | mean quality | nominal bytes | file bytes (header included) |",
                    "|---|---|---|---|---|",
                    f"| rate-controlled | {r['mean_budget']:.2f} | {r['mean_quality']:.2f} | {r['nominal_bytes']} | "
                    f"{r['file_bytes']} |",
                    f"| fixed, smallest budget at that mean quality | {r['fixed_budget']} | "
                    f"{r['fixed_mean_quality']:.2f} | {r['fixed_nominal_bytes']} | {r['fixed_file_bytes']} |", ""]
        for pic in ("tokens/tokens.png", "samples/grid.png"):
            if os.path.exists(os.path.join(reports_dir, model, pic)):
                out.append(f"![{model} {pic}](../{reports_dir}/{model}/{pic})")
        out.append("")
    return out


def render(reports_dir: str, times: list[tuple[str, float]]) -> str:
    """The markdown text of ``docs/results.md``."""
    out = ["# Results of `make demo`", "",
           f"Generated by `scripts/write_results.py` on {time.strftime('%Y-%m-%d')} ({platform.machine()}, "
           f"{os.cpu_count()} CPU cores) from `{reports_dir}/*/report.json`; rerun `make demo` to refresh.", ""]
    if times:
        out += ["## Phase times", "", times_table(times), ""]
    for entry in read_reports(reports_dir):
        model = entry["model"]
        out += [f"## {entry['title']}: `{model}`", "", entry["table"], ""]
        if entry["notes"]:
            out += [*entry["notes"], ""]
        out += [f"![{model} {p}](../{reports_dir}/{model}/{p})" for p in entry["pictures"]] + [""]
    out += prior_section(reports_dir)
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reports", default="reports")
    ap.add_argument("--times", default=None)
    ap.add_argument("--out", default="docs/results.md")
    args = ap.parse_args(argv)
    text = render(args.reports, read_times(args.times))
    write_text_atomic(args.out, text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
