"""Write ``reports/index.html``: one static page with every table, plot, grid, render and audio clip of the reports.

    python scripts/write_index.py --reports reports --times reports/demo_times.tsv --out reports/index.html

Tables come from the same reader as ``docs/results.md`` (:func:`write_results.read_reports`), rendered from
markdown by markdown-it-py. Every PNG and WAV under ``<reports>/<model>/`` (sub-folders too; hidden and staging
folders skipped) is shown: PNGs as images, WAVs as ``<audio controls>`` players. Links are relative to the page,
so the folder can be copied or served as it is.
"""

from __future__ import annotations

import argparse
import html
import os
import re
import sys
import time
from urllib.parse import quote

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from markdown_it import MarkdownIt  # noqa: E402
from write_results import read_reports, read_times, times_table  # noqa: E402

from tokenizers_mm.io import STAGING_MARK, write_text_atomic  # noqa: E402

#: Files shown on the page, by extension.
MEDIA = {".png": "image", ".wav": "audio"}
#: A folder with more images than this is shown as small thumbnails (e.g. one PNG per decoded image), except the
#: images whose name says they are a grid, which stay full size.
THUMBNAILS_FROM = 12

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 1200px; color: #222; padding: 0 1rem; }
h1 { font-size: 1.5rem; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2rem; margin-top: 2.5rem; }
h3 { font-size: 1rem; color: #555; margin-top: 1.5rem; }
table { border-collapse: collapse; margin: .5rem 0; font-size: .85rem; }
th, td { border: 1px solid #ccc; padding: .2rem .5rem; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
p.note, p.meta { font-size: .8rem; color: #555; margin: .2rem 0; }
nav a { margin-right: 1rem; }
figure { display: inline-block; margin: .3rem; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figure.thumb img { width: 64px; height: 64px; image-rendering: pixelated; }
figcaption { font-size: .7rem; color: #555; word-break: break-all; max-width: 24rem; }
figure.audio figcaption { max-width: 20rem; }
"""


def natural_key(name: str) -> list:
    """Sort key that orders ``q2`` before ``q10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def media_files(folder: str) -> dict[str, list[str]]:
    """``{relative sub-folder ('' for the folder itself): [relative file paths]}`` of the PNGs and WAVs under
    ``folder``, hidden and staging folders skipped, in natural order."""
    found: dict[str, list[str]] = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted((d for d in dirs if not d.startswith(".") and STAGING_MARK not in d), key=natural_key)
        rel = os.path.relpath(root, folder)
        rel = "" if rel == "." else rel
        names = sorted((f for f in files if os.path.splitext(f)[1].lower() in MEDIA and not f.startswith(".")),
                       key=natural_key)
        if names:
            found[rel] = [os.path.join(rel, f) if rel else f for f in names]
    return found


def link(path: str, page_dir: str) -> str:
    """URL of ``path`` relative to the folder of the page (percent-encoded, forward slashes)."""
    return quote(os.path.relpath(path, page_dir).replace(os.sep, "/"))


def figure(path: str, page_dir: str, thumb: bool) -> str:
    name = html.escape(os.path.basename(path))
    url = link(path, page_dir)
    if MEDIA[os.path.splitext(path)[1].lower()] == "audio":
        return (f'<figure class="audio"><figcaption>{name}</figcaption>'
                f'<audio controls preload="metadata" src="{url}"></audio></figure>')
    cls = ' class="thumb"' if thumb else ""
    caption = "" if thumb else f"<figcaption>{name}</figcaption>"
    return f'<figure{cls}><a href="{url}"><img src="{url}" alt="{name}" title="{name}" loading="lazy"></a>{caption}</figure>'


def render(reports_dir: str, times: list[tuple[str, float]], page_dir: str) -> str:
    """The HTML text of the index page; links are relative to ``page_dir`` (the folder the page is written to)."""
    md = MarkdownIt("commonmark").enable("table")
    entries = {e["model"]: e for e in read_reports(reports_dir)}
    models = [m for m in sorted(os.listdir(reports_dir)) if not m.startswith(".") and STAGING_MARK not in m
              and os.path.isdir(os.path.join(reports_dir, m))] if os.path.isdir(reports_dir) else []
    sections = []
    for model in models:
        folder = os.path.join(reports_dir, model)
        media = media_files(folder)
        entry = entries.get(model)
        if entry is None and not media:
            continue
        title = f"{entry['title']}: {model}" if entry else model
        parts = [f'<h2 id="{html.escape(model)}">{html.escape(title)}</h2>']
        if entry:
            parts.append(md.render(entry["table"]))
            parts += [f'<p class="note">{html.escape(line)}</p>' for line in entry["notes"]]
        first = entry["pictures"] if entry else []
        for sub, files in media.items():
            if sub:
                parts.append(f"<h3>{html.escape(sub)}/</h3>")
            files = [f for f in first if f in files] + [f for f in files if f not in first]
            many = sum(MEDIA[os.path.splitext(f)[1].lower()] == "image" for f in files) > THUMBNAILS_FROM
            small = [f for f in files if many and f.lower().endswith(".png") and "grid" not in os.path.basename(f)]
            full = [f for f in files if f not in small]
            parts.append("<div>" + "".join(figure(os.path.join(folder, f), page_dir, False) for f in full)
                         + "".join(figure(os.path.join(folder, f), page_dir, True) for f in small) + "</div>")
        sections.append((model, "\n".join(parts)))
    head = [f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>tokenizers-mm reports</title>"
            f"<style>{STYLE}</style></head><body>",
            "<h1>tokenizers-mm: reports of <code>make demo</code></h1>",
            f'<p class="meta">Written by <code>scripts/write_index.py</code> on {time.strftime("%Y-%m-%d %H:%M")} '
            f"from <code>{html.escape(reports_dir)}/*/</code>. Tables: report.json of each model; every PNG and WAV "
            "below its folder follows.</p>"]
    if sections:
        head.append("<nav>" + "".join(f'<a href="#{html.escape(m)}">{html.escape(m)}</a>' for m, _ in sections)
                    + "</nav>")
    if times:
        head.append("<h2>Phase times</h2>" + md.render(times_table(times)))
    if not sections:
        head.append(f"<p>No reports under <code>{html.escape(reports_dir)}/</code>: run <code>make demo</code>.</p>")
    return "\n".join(head + [s for _, s in sections] + ["</body></html>\n"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reports", default="reports")
    ap.add_argument("--times", default=None)
    ap.add_argument("--out", default=None, help="default: <reports>/index.html")
    args = ap.parse_args(argv)
    if not os.path.isdir(args.reports):
        print(f"write_index: error: reports folder {args.reports!r} does not exist (run make demo first)",
              file=sys.stderr)
        return 2
    out = args.out or os.path.join(args.reports, "index.html")
    text = render(args.reports, read_times(args.times), os.path.dirname(os.path.abspath(out)))
    write_text_atomic(out, text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
