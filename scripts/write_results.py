"""Write ``docs/results.md`` from the reports that ``make demo`` leaves (no number is typed by hand).

    python scripts/write_results.py --reports reports --times reports/demo_times.tsv --out docs/results.md

Reads ``reports/<model>/report.json`` of every model that has one (the one report schema of
:mod:`tokenizers_mm.eval.report`, older reports converted; :func:`read_reports`, which ``scripts/write_index.py``
shares) and the phase times that the Makefile's demo target appends, one ``phase<TAB>seconds`` line each.
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

from tokenizers_mm.eval.report import ReportError, format_table, read_report  # noqa: E402
from tokenizers_mm.io import write_text_atomic  # noqa: E402


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
    """Every ``<reports_dir>/<model>/report.json`` that ``tokenizers-mm evaluate`` wrote, in model order.

    Each entry: ``model``, ``title`` (the report's: Image / 3D shape / Speech), ``report`` (in the current
    schema), ``table`` (markdown rows), ``notes`` (lines under the table) and ``pictures`` (the report's main PNGs
    that exist, relative to the model folder). Folders without a report, or with a JSON file that is no
    evaluation report (e.g. the prior's token report), are left out.
    """
    found = []
    for model in sorted(os.listdir(reports_dir)) if os.path.isdir(reports_dir) else []:
        path = os.path.join(reports_dir, model, "report.json")
        if not os.path.isfile(path):
            continue
        try:
            report = read_report(path)
        except ReportError:
            continue
        rows, notes = split_table(format_table(report))
        shown = [p for p in report.get("pictures", []) if os.path.exists(os.path.join(reports_dir, model, p))]
        found.append({"model": model, "title": report["title"], "report": report, "table": rows, "notes": notes,
                      "pictures": shown})
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
