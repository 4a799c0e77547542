"""The lab report: one self-contained HTML page built from ``results.json``.

Inline CSS, no JavaScript, no network: the page opens from disk anywhere, and
figures are embedded as data URIs (each links to its PNG for full size), so
``index.html`` alone survives being moved. Every piece of text from the results goes
through :func:`html.escape`.
"""

from __future__ import annotations

import base64
import os
from html import escape
from pathlib import Path
from typing import Any

from blocklab.lab.base import VERDICT_MEANING

_COLOURS = {
    "supported": "#1a7f37",
    "partly": "#9a6700",
    "inconclusive": "#6e7781",
    "not supported": "#bc4c00",
    "error": "#cf222e",
    "holds": "#1a7f37",
    "fails": "#bc4c00",
}

_CSS = """
body{font:15px/1.5 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#1f2328}
h1{margin-bottom:.2em}h2{margin-top:2.5em;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #d0d7de;padding:.3em .6em;
text-align:left;vertical-align:top}th{background:#f6f8fa}td.num{font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:.1em .6em;border-radius:1em;color:#fff;font-size:.85em;
font-weight:600;white-space:nowrap}.card{color:#656d76;font-weight:normal;font-size:.8em}
.claim{border-left:4px solid #d0d7de;padding-left:1em;font-style:italic}
.env td:first-child{font-weight:600}img{max-width:100%;border:1px solid #d0d7de;margin:.5em 0}
pre{background:#fff0f0;padding:1em;overflow-x:auto;font-size:.85em}
code{background:#f6f8fa;padding:.1em .3em}
.run{color:#656d76;font-size:.85em}tr.context td,span.context{color:#656d76}
details{margin:1em 0}summary{cursor:pointer;color:#0969da}
"""


def _badge(verdict: str) -> str:
    colour = _COLOURS.get(verdict, "#6e7781")
    return f'<span class="badge" style="background:{colour}">{escape(verdict)}</span>'


def _number(value: float) -> str:
    return f"{value:.4g}"


def _format(value: Any, max_items: int = 12) -> str:
    """A metric value as short text: floats to 4 significant digits, long lists cut."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, list):
        items = [_format(v, max_items) for v in value]
        if len(items) > max_items:
            items = items[: max_items - 3] + ["…"] + items[-2:] + [f"(n={len(value)})"]
            return "[" + ", ".join(items[:-1]) + "] " + items[-1]
        return "[" + ", ".join(items) + "]"
    return str(value)


def flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts (and lists of dicts) as one level with dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                flat.update(flatten(item, f"{name}.{i}."))
        else:
            flat[name] = value
    return flat


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...] = (), css: str = "") -> str:
    """An HTML table from rows of already escaped cells."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    cls = f' class="{css}"' if css else ""
    return f"<table{cls}>" + (f"<tr>{head}</tr>" if head else "") + body + "</table>"


def _anchor(record: dict[str, Any]) -> str:
    return escape(f"exp-{record['id']}", quote=True)


def _summary(records: list[dict[str, Any]]) -> str:
    rows = [
        (
            f'<a href="#{_anchor(r)}">{escape(str(r["id"]))}</a>',
            escape(r.get("title") or ""),
            _badge(r["verdict"]),
            f'{r.get("seconds", 0.0):.1f}',
            escape(" ".join(str((r.get("run") or {}).get(k) or "") for k in ("date", "scale"))
                   + f" seed {(r.get('run') or {}).get('seed')}"),
        )
        for r in records
    ]
    counts = {}
    for r in records:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    totals = ", ".join(f"{n} {escape(v)}" for v, n in counts.items()) or "no experiments run"
    return f"<p>{totals}</p>" + _table(rows, ("id", "title", "verdict", "seconds", "run"))


def _interval(estimate: dict[str, Any]) -> str:
    """``value [low, high]`` of a stored estimate (None ends are unbounded)."""
    value = estimate.get("value")
    if value is None:
        return "—"
    low, high = estimate.get("low"), estimate.get("high")
    if low == high and low is not None:
        return _number(value)
    ends = [_number(e) if e is not None else s for e, s in ((low, "-inf"), (high, "inf"))]
    return f"{_number(value)} [{ends[0]}, {ends[1]}]"


def _threshold(check: dict[str, Any]) -> str:
    threshold = check.get("threshold")
    if check.get("op") == "in" and isinstance(threshold, list):
        return f"in [{_number(threshold[0])}, {_number(threshold[1])}]"
    return f"{check.get('op', '')} {_format(threshold)}"


def _checks_table(checks: list[dict[str, Any]]) -> str:
    """The checks behind the verdict: estimate with its 95% interval, threshold, status;
    context rows (not counted) greyed."""
    body = []
    for check in checks:
        est = check.get("estimate") or {}
        counted = check.get("counted", True)
        status = check.get("status", "")
        cells = (
            escape(str(check.get("name", ""))) + ("" if counted else " (context)"),
            escape(_interval(est)),
            escape(f"{est.get('n', '')} ({est.get('method', '')})"),
            escape(_threshold(check)),
            _badge(status) if counted else escape(status),
            escape(check.get("why") or ""),
        )
        cls = "" if counted else ' class="context"'
        body.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in (
        "check", "estimate [95% interval]", "repetitions", "threshold", "status", "why"))
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _card_table(rows: list[dict[str, Any]]) -> str:
    """The card's items, each with the checks that answer it (status badges; context
    checks greyed) or why nothing at this scale does."""
    body = []
    for row in rows:
        answers = []
        for check in row.get("checks") or []:
            name = escape(str(check.get("name", "")))
            answers.append(f"{name} {_badge(check.get('status', ''))}" if check.get("counted")
                           else f'<span class="context">{name} (context)</span>')
        cells = (escape(str(row.get("item", ""))), "<br>".join(answers) or "&mdash;",
                 escape(row.get("untested") or ""))
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("card item", "answered by", "not counted because"))
    return (f"<details open><summary>The card, item by item</summary><table><tr>{head}</tr>"
            f"{''.join(body)}</table></details>")


def _run_line(record: dict[str, Any]) -> str:
    run = record.get("run") or {}
    parts = [f"{k} {run[k]}" for k in ("date", "scale", "seed", "device", "threads")
             if run.get(k) is not None]
    if run.get("git_commit"):
        parts.append(f"commit {str(run['git_commit'])[:10]}")
    if run.get("load_average"):
        parts.append("load average " + " / ".join(f"{x:g}" for x in run["load_average"]))
    return f'<p class="run">Run: {escape(", ".join(parts))}</p>' if parts else ""


def _legend() -> str:
    rows = [(_badge(v), escape(meaning)) for v, meaning in VERDICT_MEANING.items()]
    return ("<p>Each verdict is computed from the experiment's checks. A check compares a "
            "measured estimate's 95% interval (over repeated seeds or interleaved timings) "
            "with a threshold named in the experiment: it <b>holds</b> when the whole "
            "interval is on the claimed side, <b>fails</b> when the whole interval is on the "
            "other side, and is <b>inconclusive</b> otherwise. Context rows hold by "
            "construction and are shown, not counted.</p>" + _table(rows, ("verdict", "means")))


def _image_src(figure: str, out_dir: Path | None) -> str:
    """A data URI of the PNG under ``out_dir`` (its relative path if it cannot be read)."""
    if out_dir is not None:
        try:
            data = (out_dir / figure).read_bytes()
        except OSError:
            pass
        else:
            return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return escape(figure, quote=True)


def _section(record: dict[str, Any], out_dir: Path | None = None) -> str:
    title = escape(record.get("title") or str(record["id"]))
    label = " · ".join(str(x) for x in (record.get("card"), record["id"]) if x)
    parts = [
        f'<section id="{_anchor(record)}">',
        f'<h2>{title} <span class="card">{escape(label)}</span></h2>',
    ]
    if record.get("claim"):
        parts.append(f'<p class="claim">{escape(record["claim"])}</p>')
    parts.append(f"<p>Verdict: {_badge(record['verdict'])} "
                 f"in {record.get('seconds', 0.0):.1f} s</p>")
    parts.append(_run_line(record))
    if record.get("checks"):
        parts.append(_checks_table(record["checks"]))
    if record.get("card_items"):
        parts.append(_card_table(record["card_items"]))
    if record.get("evidence"):
        parts.append(f"<p>{escape(record['evidence'])}</p>")
    for figure in record.get("figures") or []:
        href = escape(figure, quote=True)
        parts.append(f'<p><a href="{href}"><img src="{_image_src(figure, out_dir)}" '
                     f'alt="{href}"></a></p>')
    parts.append(f"<p>Rerun (updates this section, keeps the others): "
                 f"<code>{escape(record.get('command') or '')}</code></p>")
    metrics = flatten(record.get("metrics") or {})
    if metrics:
        rows = [(escape(k), escape(_format(v))) for k, v in metrics.items()]
        parts.append("<details><summary>All metrics</summary>"
                     + _table(rows, ("metric", "value")) + "</details>")
    error = record.get("error")
    if error:
        parts.append(f"<pre>{escape(error.get('message', ''))}\n\n"
                     f"{escape(error.get('traceback', ''))}</pre>")
    parts.append("</section>")
    return "\n".join(parts)


def render_html(results: dict[str, Any], out_dir: str | os.PathLike[str] | None = None) -> str:
    """The report page for ``results`` (the content of ``results.json``); figures are
    embedded from ``out_dir`` when given, linked otherwise."""
    root = Path(out_dir) if out_dir is not None else None
    env = results.get("environment", {})
    records = results.get("experiments", [])
    env_rows = [(escape(str(k)), escape(_format(v))) for k, v in env.items()]
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>blocklab lab report</title><style>{_CSS}</style></head><body>",
        "<h1>blocklab lab report</h1>",
        "<p>The whole lab: <code>make lab</code> (or <code>blocklab lab --quick --out "
        "lab-report</code>); every section below gives the command that reruns it.</p>",
        "<p>Environment of the latest run:</p>",
        _table(env_rows, css="env"),
        "<h2>Summary</h2>",
        _summary(records),
        _legend(),
        *(_section(r, root) for r in records),
        "</body></html>",
    ]) + "\n"


def write_html(results: dict[str, Any], out_dir: str | os.PathLike[str]) -> Path:
    """Write ``out_dir/index.html`` for ``results`` and return its path."""
    path = Path(out_dir) / "index.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(results, path.parent), encoding="utf-8")
    return path
