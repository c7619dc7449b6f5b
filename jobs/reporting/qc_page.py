"""The QC report's page and charts: a static HTML page (inline CSS, no script, works offline)
and matplotlib histograms as PNG bytes (`matplotlib.figure.Figure` on the Agg canvas, no
pyplot, so nothing global is touched). `jobs.reporting.qc_report` gathers the figures and
writes the files; every string from data (file names, errors, URIs) is HTML-escaped here.
"""

from __future__ import annotations

import datetime as dt
import io
import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

import numpy as np

BAR = "#3b75af"
CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;
background:#f6f7f9}
header{background:#1f2d3d;color:#fff;padding:16px 28px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#c8d3df;font-size:13px;word-break:break-all}
main{padding:8px 28px 32px;max-width:1280px}
section{background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:12px 18px;margin:16px 0}
h2{font-size:16px;margin:4px 0 10px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:10px 16px;min-width:120px}
.card b{display:block;font-size:24px}.card span{color:#667;font-size:12px}
.card.failed b{color:#b42318}.card.ok b{color:#1a7f37}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:4px 8px;
border-bottom:1px solid #eceff3;vertical-align:top}th{color:#556;font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
code,.path{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
.err{color:#7a1d12;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;
white-space:pre-wrap;word-break:break-word}
img.thumb{width:160px;height:auto;image-rendering:pixelated;border:1px solid #dde2e8;
background:#fff;display:block}img.chart{max-width:100%;height:auto}
.shots{display:flex;flex-wrap:wrap;gap:14px}.shot{border:1px solid #eceff3;border-radius:6px;
padding:4px 10px 8px}.shot p{margin:4px 0 6px}.row{display:flex;gap:6px}
figure{margin:0}figcaption{font-size:11px;color:#667;text-align:center}
.two{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:0 16px}
table.kv{width:auto}table.kv th{padding-right:24px;white-space:nowrap}
.split{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.muted{color:#778}
"""


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _bars(ax, counts: np.ndarray, edges: np.ndarray, *, small: bool = False) -> None:
    ax.stairs(counts, edges, fill=True, color=BAR)
    ax.set_xlim(edges[0], edges[-1])
    ax.set_ylim(0, max(1, int(counts.max(initial=0))) * 1.08)
    ax.tick_params(labelsize=6 if small else 9)
    ax.grid(axis="y", color="#e4e4e4", linewidth=0.6)
    ax.set_axisbelow(True)


def histogram_png(counts: np.ndarray, edges: np.ndarray, *, xlabel: str) -> bytes:
    """One histogram (bin counts over ``edges``) as PNG bytes."""
    fig = _figure(5.6, 2.5)
    ax = fig.add_subplot()
    _bars(ax, counts, edges)
    ax.set_xlabel(xlabel, parse_math=False)
    ax.set_ylabel("images")
    return _png(fig)


def class_histograms_png(hists: Mapping[str, np.ndarray], edges: np.ndarray) -> bytes:
    """Small multiples: one histogram of the predicted pixel fraction per class."""
    cols = min(4, max(1, len(hists)))
    rows = math.ceil(len(hists) / cols)
    fig = _figure(1.7 * cols, 1.3 * rows + 0.3)
    for i, (name, counts) in enumerate(hists.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        _bars(ax, counts, edges, small=True)
        ax.set_title(name, fontsize=9, parse_math=False)
    fig.supxlabel("fraction of the image's pixels predicted as the class", fontsize=9)
    fig.supylabel("images", fontsize=9)
    return _png(fig)


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def _num(n: int) -> str:
    return f"{n:,}"


def _seconds(s: float | None) -> str:
    return "-" if s is None else f"{s:,.1f} s"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], *, id_: str = "") -> str:
    """A table of cells already escaped (or built from escaped parts); ``num`` columns right."""
    ident = f' id="{id_}"' if id_ else ""
    ths = "".join(
        f'<th class="num">{h[1:]}</th>' if h.startswith("#") else f"<th>{h}</th>" for h in head
    )
    body = "".join(f"<tr>{''.join(cells)}</tr>" for cells in rows)
    return f"<table{ident}><thead><tr>{ths}</tr></thead><tbody>{body}</tbody></table>"


def _td(value: Any, cls: str = "", **data: Any) -> str:
    attrs = f' class="{cls}"' if cls else ""
    attrs += "".join(f' data-{k}="{_e(v)}"' for k, v in data.items())
    return f"<td{attrs}>{value}</td>"


def _status(stats: Any) -> str:
    order = sorted(stats.status, key=lambda s: (s != "ok", s != "failed", s))
    cards = [
        f'<div class="card"><b id="count-total">{_num(stats.rows)}</b><span>inputs</span></div>'
    ]
    for name in order:
        cards.append(
            f'<div class="card {_e(name)}"><b data-status="{_e(name)}">{_num(stats.status[name])}'
            f"</b><span>{_e(name)}</span></div>"
        )
    models = _table(
        ["model URI", "version", "#rows"],
        [
            [
                _td(_e(m["model_uri"]), "path"),
                _td(_e(m["model_version"])),
                _td(_num(m["rows"]), "num"),
            ]
            for m in stats.models
        ],
        id_="manifest-models",
    )
    return (
        "<section><h2>Every input of this output (the manifest)</h2>"
        f'<div class="cards" id="status-counts">{"".join(cards)}</div>'
        f'<h2 style="margin-top:14px">Rows by the model that made them</h2>{models}</section>'
    )


UNKNOWN = "not known"
"""What a report made alone shows for the run's figures that the manifest does not record."""


def _run(run: Mapping[str, Any]) -> str:
    """The run's figures; a report made alone (``source: manifest``) shows the last job of the
    manifest, says which figures it cannot know, and how its throughput was estimated."""
    alone = run.get("source") == "manifest"
    rate = run.get("images_per_second") or 0.0
    facts = [
        ("processed in this run", _num(run.get("processed", 0))),
        ("skipped (already done)", UNKNOWN if alone else _num(run.get("skipped", 0))),
        ("rejected", UNKNOWN if alone else _num(run.get("rejected", 0))),
        ("throughput", f"{rate:,.2f} images/s" if rate else "-"),
        ("pipeline", UNKNOWN if alone else _seconds(run.get("pipeline_seconds"))),
        ("elapsed (job start to report)", UNKNOWN if alone else _seconds(run.get("seconds"))),
    ]
    model = [
        ("model URI", run.get("model_uri")),
        ("model name", run.get("model_name")),
        ("model version", run.get("model_version")),
        ("alias", run.get("model_alias")),
        ("checkpoint sha256", run.get("checkpoint_sha256")),
        ("settings", run.get("settings")),
        ("job id", run.get("job_id")),
    ]
    rows = [[f"<th>{k}</th>", _td(v, "num")] for k, v in facts]
    rows += [[f"<th>{k}</th>", _td(_e(v if v is not None else "-"), "path")] for k, v in model]
    table = _table(["", ""], rows, id_="run").replace("<table", '<table class="kv"', 1)
    if not alone:
        return f"<section><h2>This run</h2>{table}</section>"
    note = (
        '<p class="muted" id="run-source">Made from the manifest alone (unet-report): the run '
        "is the job whose rows finished last; its throughput is its rows over the time between "
        "its first and last finished row; skipped and rejected counts and the run's timings are "
        f"{UNKNOWN} (the segment run's own report shows them).</p>"
    )
    return f"<section><h2>Last job in the manifest</h2>{table}{note}</section>"


def _confidence(stats: Any, assets: Mapping[str, str]) -> str:
    if "confidence" not in assets:
        return "<section><h2>Mean confidence</h2><p class=muted>No ok image.</p></section>"
    mean = stats.conf_sum / stats.conf_n
    return (
        "<section><h2>Mean confidence per image</h2>"
        f"<p>Mean of the per-image mean softmax confidence: <b>{mean:.3f}</b> over "
        f"{_num(stats.conf_n)} images.</p>"
        f'<img class="chart" src="{_e(assets["confidence"])}" alt="histogram of the mean '
        'confidence per image"></section>'
    )


def _classes(stats: Any, assets: Mapping[str, str]) -> str:
    if "classes" not in assets:
        return ""
    rows = [
        [
            _td(_e(name)),
            _td(f"{stats.class_sum[name] / max(1, stats.class_n):.3f}", "num"),
            _td(_num(stats.class_present[name]), "num"),
        ]
        for name in stats.class_hist
    ]
    table = _table(["class", "#mean fraction", "#images with it"], rows, id_="classes")
    table = table.replace("<table", '<table class="kv"', 1)
    return (
        '<section><h2>Predicted class fractions</h2><div class="split">'
        f'<img class="chart" src="{_e(assets["classes"])}" alt="histograms of the fraction of '
        f'pixels predicted per class">{table}'
        "</div></section>"
    )


def _worst(thumbs: Sequence[Mapping[str, Any]]) -> str:
    if not thumbs:
        return ""
    cards = []
    for t in thumbs:
        name = _e(t["relative_path"])
        head = f'<p><span class="path">{name}</span> <b>{t["mean_confidence"]:.3f}</b></p>'
        if t.get("error"):
            body = f'<p class="err">{_e(t["error"])}</p>'
        else:
            body = "".join(
                f'<figure><img class="thumb" src="{_e(t[kind])}" alt="{kind} of {name}">'
                f"<figcaption>{kind}</figcaption></figure>"
                for kind in ("image", "mask", "overlay")
            )
        cards.append(f'<div class="shot">{head}<div class="row">{body}</div></div>')
    return (
        f"<section><h2>Lowest mean confidence ({len(thumbs)})</h2>"
        f'<div class="shots" id="worst">{"".join(cards)}</div></section>'
    )


def _failures(stats: Any) -> str:
    failed = stats.status.get("failed", 0)
    if not failed:
        return '<section><h2>Failures</h2><p id="no-failures">None.</p></section>'
    rows = [
        [_td(_e(f["relative_path"]), "path"), _td(_e(f["error"]), "err")] for f in stats.failures
    ]
    more = failed - len(stats.failures)
    note = f'<p class="muted">{_num(more)} more in the manifest.</p>' if more > 0 else ""
    table = _table(["input", "error"], rows, id_="failures")
    return f"<section><h2>Failures ({_num(failed)})</h2>{table}{note}</section>"


def render(
    *,
    output: str,
    manifest_uri: str,
    stats: Any,
    run: Mapping[str, Any],
    assets: Mapping[str, str],
    thumbs: Sequence[Mapping[str, Any]],
) -> str:
    """The whole page. ``stats`` is a `jobs.reporting.qc_report.ManifestStats`; ``assets``
    maps "confidence" and "classes" to chart paths relative to the page."""
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    title = f"Segmentation QC report: {output}"
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>Segmentation QC report</h1><p>{_e(output)}</p>"
        f"<p>manifest {_e(manifest_uri)}; written {now}</p></header><main>"
        f'<div class="two">{_status(stats)}{_run(run)}</div>'
        f'<div class="two">{_confidence(stats, assets)}{_failures(stats)}</div>'
        f"{_classes(stats, assets)}"
        f"{_worst(thumbs)}</main></body></html>\n"
    )
