"""The one report schema of ``tokenizers-mm evaluate``, for every modality, and what reads it.

A report (``report.json``) is a JSON object:

- ``format`` / ``format_version``: :data:`FORMAT` / :data:`VERSION`;
- ``modality``, ``title`` (a heading: Image / 3D shape / Speech), ``model`` (class name), ``checkpoint``,
  ``summary`` (one line: what was evaluated);
- ``budget``: ``{"name": "k" | "scales" | "codebooks", "label": column heading}``;
- ``rate``: how a row's size is counted: ``{"per": "image" | "shape" | "second", "unit": "bytes" | "kbps",
  "row_key": the row entry holding it, "baseline_key": the baseline entry, "prior_key": the prior entry}``;
- ``samples``: ``{"count": evaluated inputs, "kind": "images" | "shapes" | "clips"}``;
- ``tokens``: ``{"codebook_size", "bits_per_token", ...}``; ``setup``: the modality's facts (image size,
  sample rate, grid resolution, ...); ``conventions``: how each metric and baseline is computed;
- ``metrics``: one spec per metric, ``{"key", "label", "format", "table", "plot"}`` (what the table and plots
  show, in order);
- ``rows``: one per token budget: ``budget`` (its name), ``value``, ``tokens`` (per sample, or per second for
  streams), ``nominal_bytes`` (``ceil(tokens log2 V / 8)``; per second for streams), ``kbps`` (streams),
  ``metrics`` (key -> number or null), ``baselines`` (classical codecs at this budget: ``codec``, their size under
  ``rate.baseline_key``, ``metrics``, and the codec's own facts), optionally ``prior`` (real compressed file
  bytes with a token prior: ``file_bytes``, ``payload_bytes``, ``nominal_bytes``, ``prior_bits_per_token``,
  ``raw_files``, ``file_kbps`` for streams) and ``timing``;
- ``baselines``: ``{"curves": codec -> points for plots, "rows": classical measurements tied to no budget
  (listed under the table), ...}``;
- ``skipped``: inputs left out, each ``{"key", "shard", "reason"}``;
- ``timing``: seconds per sample / real-time factors; ``details``: what only one modality has (codebook usage
  per codebook, rows per sampling step); ``notes``: lines printed under the table; ``pictures``: the report's
  main PNGs (relative to its folder); ``files``: name -> path of everything written.

Reports of version 1 (one layout per modality: ``per_k`` / ``per_scale`` / ``per_quantizers`` rows) are
converted on reading by :func:`upgrade`.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

FORMAT = "tokenizers-mm-report"
VERSION = 2


class ReportError(ValueError):
    """A file is not a report of ``tokenizers-mm evaluate`` (or one this version cannot read)."""


# ---- building --------------------------------------------------------------------------------------
def metric(key: str, label: str, fmt: str, table: bool = True, plot: bool = False) -> dict[str, Any]:
    """The spec of one metric column (see the module docstring)."""
    return {"key": key, "label": label, "format": fmt, "table": table, "plot": plot}


def budget_row(budget: str, value: int, tokens: float, nominal_bytes: float, metrics: dict[str, Any],
               **extra: Any) -> dict[str, Any]:
    """One row of ``rows``: a token budget, its size, its metrics; ``extra``: ``kbps``, ``baselines``,
    ``prior``, ``timing``, ``steps``."""
    row = {"budget": budget, "value": value, "tokens": tokens, "nominal_bytes": nominal_bytes, "metrics": metrics,
           "baselines": []}
    row.update(extra)
    return row


def new_report(modality: str, title: str, budget: tuple[str, str], rate: dict[str, Any], **fields: Any
               ) -> dict[str, Any]:
    """A report with the schema's fixed entries; ``fields`` fills the rest (see the module docstring)."""
    report = {"format": FORMAT, "format_version": VERSION, "modality": modality, "title": title,
              "budget": {"name": budget[0], "label": budget[1]}, "rate": rate, "rows": [],
              "baselines": {"curves": {}, "rows": []}, "skipped": [], "timing": {}, "details": {}, "notes": [],
              "pictures": [], "files": {}}
    report.update(fields)
    return report


RATE_PER_SAMPLE = {"unit": "bytes", "row_key": "nominal_bytes", "baseline_key": "bytes", "prior_key": "file_bytes"}
RATE_PER_SECOND = {"per": "second", "unit": "kbps", "row_key": "kbps", "baseline_key": "kbps",
                   "prior_key": "file_kbps"}


# ---- reading ---------------------------------------------------------------------------------------
def read_report(path: str, flag: str = "report") -> dict[str, Any]:
    """The report in ``path`` in this version's schema (version 1 converted); one-line ``ReportError`` /
    ``FileNotFoundError`` naming ``flag`` and the file otherwise."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag} {path!r} does not exist; expected the report.json of `tokenizers-mm evaluate`")
    try:
        with open(path) as f:
            report = json.load(f)
    except ValueError as exc:
        raise ReportError(f"{flag} {path!r} is not valid JSON ({exc}); expected the report.json of "
                          "`tokenizers-mm evaluate`") from exc
    try:
        return upgrade(report)
    except ReportError as exc:
        raise ReportError(f"{flag} {path!r}: {exc}") from exc


def upgrade(report: Any) -> dict[str, Any]:
    """``report`` in this version's schema: returned as is when it already is, converted from version 1 (image,
    shape and speech layouts), else ``ReportError``."""
    if not isinstance(report, dict):
        raise ReportError(f"not a report of `tokenizers-mm evaluate` (a JSON {type(report).__name__}, expected an "
                          "object)")
    if report.get("format") == FORMAT:
        version = report.get("format_version")
        if not isinstance(version, int) or not 1 <= version <= VERSION:
            raise ReportError(f"report format version {version!r}; this tokenizers-mm reads versions 1..{VERSION}")
        for key in ("modality", "budget", "rate", "metrics", "rows"):
            if key not in report:
                raise ReportError(f"lacks the required entry {key!r}")
        return report
    for key, convert in (("per_k", _image_v1), ("per_scale", _shape_v1), ("per_quantizers", _speech_v1)):
        if isinstance(report.get(key), list):
            try:
                return convert(report)
            except (KeyError, TypeError, IndexError, AttributeError) as exc:
                raise ReportError(f"a version-1 report ({key} rows) that cannot be read: missing or malformed "
                                  f"{exc}") from exc
    raise ReportError("not a report of `tokenizers-mm evaluate`: no format entry and no per_k / per_scale / "
                      "per_quantizers rows")


PRIOR_KEYS = ("file_bytes", "payload_bytes", "nominal_bytes", "prior_bits_per_token", "raw_files", "file_kbps")


def _prior_of(row: dict[str, Any]) -> dict[str, Any]:
    return {"prior": {k: row[k] for k in PRIOR_KEYS if k in row}} if "file_bytes" in row else {}


def _image_v1(old: dict[str, Any]) -> dict[str, Any]:
    from .image import IMAGE_METRICS, image_baseline

    base = old.get("baselines") or {}
    rows = []
    for i, r in enumerate(old["per_k"]):
        metrics = {k: r[k] for k in ("psnr", "ssim", "lpips", "rfid", "codebook_usage", "token_entropy_bits")
                   if k in r}
        extra = {"steps": r["steps"]} if "steps" in r else {}
        if "decode_ms_per_image" in r:
            extra["timing"] = {"decode_ms_per_sample": r["decode_ms_per_image"]}
        rows.append(budget_row("k", r["k"], r["k"], r["bytes"], metrics, **extra, **_prior_of(r),
                               baselines=[image_baseline(fmt, b["at_our_bytes"][i]) for fmt, b in base.items()]))
    keys = {k for r in rows for k in r["metrics"]}
    details = {}
    if "per_k_and_steps" in old:
        details = {"sampling": old.get("sampling"), "per_k_and_steps": old["per_k_and_steps"]}
    report = new_report(
        "image", "Image", ("k", "k"), {"per": "image", **RATE_PER_SAMPLE}, model=old.get("model"),
        checkpoint=old.get("checkpoint"),
        summary=f"{old.get('model')}: {old.get('images')} images at {old.get('image_size')} px, "
                f"{old.get('tokens_per_image')} tokens of {old.get('bits_per_token')} bits",
        samples={"count": old.get("images"), "kind": "images"},
        tokens={"codebook_size": old.get("codebook_size"), "bits_per_token": old.get("bits_per_token"),
                "per_sample": old.get("tokens_per_image")},
        setup={"image_size": old.get("image_size")}, conventions=old.get("conventions", {}),
        metrics=[m for m in IMAGE_METRICS if m["key"] in keys], rows=rows,
        baselines={"curves": {fmt: [image_baseline(fmt, p) for p in b.get("curve", [])] for fmt, b in base.items()},
                   "rows": [], **({"samples": next(iter(base.values())).get("images")} if base else {})},
        details=details, files=old.get("files", {}), converted_from="version 1",
        pictures=["reconstructions.png", "rate_distortion.png"])
    if details:
        from .image import steps_table

        report["notes"] += steps_table([_image_point(r) for r in old["per_k_and_steps"]]).splitlines()
    report["notes"] += prior_note(report)
    return report


def _image_point(r: dict[str, Any]) -> dict[str, Any]:
    return budget_row("k", r["k"], r["k"], r["bytes"], {"psnr": r["psnr"], "ssim": r["ssim"]}, steps=r["steps"],
                      timing={"decode_ms_per_sample": r["decode_ms_per_image"]})


def _shape_v1(old: dict[str, Any]) -> dict[str, Any]:
    from .shape import SHAPE_METRICS, decimation_row

    rows = [budget_row("scales", r["scales"], r["tokens"], r["bytes"],
                       {k: r.get(k) for k in ("iou", "chamfer_l1", "fscore", "normal_consistency")},
                       baselines=[decimation_row(r["decimation"])], **_prior_of(r))
            for r in old["per_scale"]]
    t = old.get("seconds_per_shape", {})
    report = new_report(
        "shape", "3D shape", ("scales", "scales"), {"per": "shape", **RATE_PER_SAMPLE}, model=old.get("model"),
        checkpoint=old.get("checkpoint"),
        summary=f"{old.get('model')}: {old.get('shapes')} shapes, {old.get('bits_per_token')} bits per token",
        samples={"count": old.get("shapes"), "kind": "shapes"},
        tokens={"codebook_size": old.get("codebook_size"), "bits_per_token": old.get("bits_per_token")},
        setup={"grid_resolution": old.get("grid_resolution")}, conventions=old.get("conventions", {}),
        metrics=SHAPE_METRICS, rows=rows, timing={"seconds_per_shape": old.get("seconds_per_shape", {})},
        skipped=[_skip(e) for e in old.get("errors", [])], files=old.get("files", {}), converted_from="version 1",
        pictures=["rate_quality.png"])
    report["notes"] += prior_note(report)
    if t:
        report["notes"].append(f"per shape on {old.get('grid_resolution')}^3: encode {t.get('encode_s', 0) * 1000:.1f} "
                               f"ms, decode {t.get('decode_s', 0) * 1000:.1f} ms, mesh extraction "
                               f"{t.get('mesh_s', 0):.2f} s")
    return report


def _speech_v1(old: dict[str, Any]) -> dict[str, Any]:
    from .speech import SPEECH_METRICS, speech_row

    rows = [speech_row(r["num_quantizers"], r["kbps"], old.get("frame_rate"),
                       {k: v for k, v in r.items() if k not in ("num_quantizers", "kbps", *PRIOR_KEYS)},
                       **_prior_of(r)) for r in old["per_quantizers"]]
    base = dict(old.get("baselines") or {})
    from .speech import attach_baselines

    baselines = attach_baselines(rows, base) if base else {"curves": {}, "rows": []}
    t = old.get("real_time_factor")
    report = new_report(
        "speech", "Speech", ("codebooks", "codebooks"), RATE_PER_SECOND, model=old.get("model"),
        checkpoint=old.get("checkpoint"),
        summary=f"{old.get('model')}: {old.get('clips')} clips ({old.get('seconds')} s) at {old.get('sample_rate')} "
                f"Hz, {old.get('num_quantizers')} codebooks x {old.get('codebook_size')} codes at "
                f"{old.get('frame_rate')} Hz",
        samples={"count": old.get("clips"), "kind": "clips", "seconds": old.get("seconds")},
        tokens={"codebook_size": old.get("codebook_size"), "num_quantizers": old.get("num_quantizers"),
                "bits_per_token": round(math.log2(old["codebook_size"]), 3) if old.get("codebook_size") else None},
        setup={"sample_rate": old.get("sample_rate"), "frame_rate": old.get("frame_rate")},
        conventions=old.get("conventions", {}), metrics=SPEECH_METRICS, rows=rows, baselines=baselines,
        timing={"real_time_factor": old.get("real_time_factor", {})},
        details={"codebook_usage": old.get("codebook_usage", [])},
        skipped=[_skip(e) for e in old.get("errors", [])], files=old.get("files", {}), converted_from="version 1",
        pictures=["rate_quality.png"])
    report["notes"] += prior_note(report)
    if t:
        report["notes"].append(f"real-time factor on {t.get('device')}: encode {t.get('encode', 0):.4f}, decode "
                               f"{t.get('decode', 0):.4f} ({old.get('clips')} clips, {old.get('seconds')} s)")
    return report


def _skip(error: dict[str, Any]) -> dict[str, str]:
    return {"key": error.get("key", ""), "shard": error.get("shard", ""),
            "reason": error.get("reason", error.get("error", ""))}


# ---- reading it out ----------------------------------------------------------------------------------
def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, fmt) if isinstance(value, (int, float)) else str(value)


def table_metrics(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The metric specs a table shows, in order."""
    return [m for m in report["metrics"] if m.get("table", True)]


def format_table(report: dict[str, Any], notes: bool = True) -> str:
    """Markdown table of a report: our rows, each budget's baselines, then the baselines tied to no budget;
    ``notes``: the report's notes as lines under it."""
    rate, budget = report["rate"], report["budget"]
    cols = table_metrics(report)
    size = "kbps" if rate["unit"] == "kbps" else "bytes"
    lines = [f"| codec | {budget['label']} | tokens | {size} | " + " | ".join(m["label"] for m in cols) + " |",
             "|" + "---|" * (4 + len(cols))]

    def line(codec: str, where: str, tokens: Any, size_value: Any, metrics: dict[str, Any], star: str = "") -> str:
        numeric = isinstance(size_value, (int, float))
        size_fmt = ".2f" if size == "kbps" or (numeric and not float(size_value).is_integer()) else ".0f"
        cells = [codec, where, _cell(tokens, "g"), _cell(size_value, size_fmt) + star]
        cells += [_cell(metrics.get(m["key"]), m["format"]) + (star if metrics.get(m["key"]) is not None else "")
                  for m in cols]
        return "| " + " | ".join(cells) + " |"

    for r in report["rows"]:
        lines.append(line("ours", str(r["value"]), r["tokens"], r.get(rate["row_key"]), r["metrics"]))
    # each codec's entries at our budgets, in budget order; a run of budgets where the codec gives the same result
    # (it cannot go that small, say) is one line "at first..last"
    runs: dict[str, list[list[Any]]] = {}
    for r in report["rows"]:
        for b in r.get("baselines", []):
            key = (b.get(rate["baseline_key"]), json.dumps(b.get("metrics", {}), sort_keys=True), b.get("extrapolated"))
            codec_runs = runs.setdefault(b["codec"], [])
            if codec_runs and codec_runs[-1][0] == key:
                codec_runs[-1][2] = r["value"]
            else:
                codec_runs.append([key, r["value"], r["value"], b])
    baseline_lines, starred = [], False
    for codec, codec_runs in runs.items():
        for _, first, last, b in codec_runs:
            star = "*" if b.get("extrapolated") else ""
            starred |= bool(star)
            where = f"at {first}" if first == last else f"at {first}..{last}"
            size_value = b.get(rate["baseline_key"])
            baseline_lines.append(line(codec, where, "-", "none fits" if size_value is None and b.get("note") else
                                       size_value, b.get("metrics", {}), star))
    for b in (report.get("baselines") or {}).get("rows", []):
        where = f"target {b['target']:g}" if "target" in b else "-"
        baseline_lines.append(line(b["codec"], where, "-", b.get(rate["baseline_key"]), b.get("metrics", {})))
    lines += baseline_lines
    if starred:
        lines.append("(* the codec cannot reach that size: its nearest setting is shown)")
    if notes:
        lines += report.get("notes", [])
    return "\n".join(lines)


def model_card_section(ev: dict[str, Any]) -> list[str]:
    """Markdown lines of the model card's evaluation section from a report (or its ``evaluation`` copy in an
    export's config.json)."""
    s = ev.get("samples") or {}
    lines = [f"{s.get('count')} held-out {s.get('kind', 'samples')} (`tokenizers-mm evaluate`; "
             f"{ev.get('source', ev.get('checkpoint'))}).", ""]
    lines += format_table(ev, notes=False).splitlines()
    return lines


def evaluation_for_export(report: dict[str, Any], source: str) -> dict[str, Any]:
    """What an export's config.json keeps of a report: everything but the file paths, plus ``source``."""
    keep = {k: v for k, v in report.items() if k not in ("files", "pictures", "checkpoint")}
    keep["source"] = os.path.abspath(source)
    return keep


def prior_note(report: dict[str, Any]) -> list[str]:
    """One line on the real files with a token prior, when the rows have them."""
    rate = report["rate"]
    real = [r for r in report["rows"] if "prior" in r]
    if not real:
        return []
    unit = "kbps" if rate["unit"] == "kbps" else "B"

    def one(r: dict[str, Any]) -> str:
        p = r["prior"]
        size = f"{p[rate['prior_key']]:.2f} kbps, " if unit == "kbps" else ""
        return (f"{report['budget']['name']}={r['value']}: {p['file_bytes']:.1f} B file "
                f"({p.get('nominal_bytes', r['nominal_bytes']):.1f} B nominal, {size}{p['prior_bits_per_token']:.2f} "
                "bits/token)")

    return ["real files with the prior, per sample: " + "; ".join(one(r) for r in real)]
