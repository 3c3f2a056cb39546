"""The cohort report: one HTML page, one row per slide, that opens in a browser from disk.

Each row shows the slide's overview picture (``NAME.overview.png``, linked relatively, so the
folder can be copied or zipped as a whole), its nucleus counts per class, density per mm² of
tissue, processing time, status and error. No server and no external resource: a small
inline script marks an overview that fails to load, so a broken row is visible at a glance
(and a headless browser can check the page).
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path

from wsi_stnuc.inference.overview import overview_path
from wsi_stnuc.io_utils import atomic_path

__all__ = ["REPORT", "write_cohort_report"]

REPORT = "report.html"

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
th, td { border-bottom: 1px solid #ddd; padding: 6px 10px; text-align: right; vertical-align: top; }
th { background: #f4f4f4; position: sticky; top: 0; }
td.name, td.error, th.name { text-align: left; }
td.error { color: #a00; max-width: 30em; white-space: pre-wrap; font-family: monospace; }
tr.failed { background: #fff3f3; }
img.overview { width: 600px; height: auto; display: block; }
img.broken { outline: 3px solid #d00; }
.status-ok { color: #070; font-weight: bold; }
.status-failed { color: #a00; font-weight: bold; }
"""

# Marks every overview that did not load; the body's data-images attribute sums it up.
_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.querySelectorAll("img.overview"), broken = 0;
  imgs.forEach(function (im) {
    var ok = im.complete && im.naturalWidth > 0;
    im.dataset.loaded = ok ? "1" : "0";
    if (!ok) { broken += 1; im.classList.add("broken"); im.alt = "overview missing"; }
  });
  document.body.dataset.images = broken ? "broken " + broken : "ok " + imgs.length;
});
"""


def _cell(value, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<td{attr}>{html.escape(str(value))}</td>"


def _overview_cell(row: dict, out_dir: Path) -> str:
    parquet = row.get("parquet")
    if row.get("status") != "ok" or not parquet:
        return "<td>–</td>"
    png = overview_path(parquet)
    rel = Path(os.path.relpath(png, out_dir)).as_posix()
    alt = html.escape(f"overview of {row['name']}")
    return f'<td><a href="{html.escape(rel)}"><img class="overview" src="{html.escape(rel)}" alt="{alt}"></a></td>'


def _row(row: dict, classes: Sequence[str], out_dir: Path) -> str:
    ok = row.get("status") == "ok"
    counts = row.get("class_counts") or {}
    area = row.get("tissue_area_mm2") or 0.0
    n = row.get("n_nuclei", "")
    density = f"{n / area:,.0f}" if ok and area else "–"
    seconds = row.get("seconds")
    cells = [
        _cell(row["name"], "name"),
        _overview_cell(row, out_dir),
        _cell(f"{n:,}" if isinstance(n, int) else "–"),
        *[_cell(f"{counts.get(c, 0):,}" if ok else "–") for c in classes],
        _cell(density),
        _cell(f"{area:.2f}" if ok else "–"),
        _cell(f"{seconds:.1f}" if isinstance(seconds, (int, float)) else "–"),
        f'<td class="status-{"ok" if ok else "failed"}">{html.escape(str(row["status"]))}</td>',
        _cell(row.get("error", ""), "error"),
    ]
    return f'<tr class="{"ok" if ok else "failed"}">' + "".join(cells) + "</tr>"


def write_cohort_report(rows: Sequence[dict], out_dir: str | Path, *, title: str = "") -> Path:
    """Write ``out_dir/report.html`` from the cohort's manifest rows (``run_cohort``'s)."""
    out_dir = Path(out_dir)
    rows = sorted(rows, key=lambda r: str(r["name"]))
    classes = sorted({c for r in rows if r.get("status") == "ok" for c in r.get("class_counts") or {}})
    n_failed = sum(r.get("status") != "ok" for r in rows)
    head = ["slide", "overview", "nuclei", *classes, "nuclei / mm²", "tissue mm²", "time s",
            "status", "error"]  # fmt: skip
    header = "".join(f'<th class="name">{h}</th>' if h == "slide" else f"<th>{html.escape(h)}</th>"
                     for h in head)  # fmt: skip
    body = "\n".join(_row(r, classes, out_dir) for r in rows)
    title = title or f"wsi-stnuc cohort: {len(rows)} slides, {n_failed} failed"
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style>"
        f"<script>{_SCRIPT}</script></head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
        "<p>Counts per class and density come from each slide's NucleusTable; "
        "density is per mm² of detected tissue. Click an overview for full size.</p>\n"
        f"<table>\n<thead><tr>{header}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>\n"
        "</body></html>\n"
    )
    path = out_dir / REPORT
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
