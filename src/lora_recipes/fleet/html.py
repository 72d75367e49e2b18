"""leaderboard.html: one self-contained static page. The chart is inlined as a base64 PNG, the
style and a few lines of script (click a column heading to sort the table by it; again to
reverse) are in the page; it loads nothing from anywhere, so it opens offline, from a file or an
artifact store alike.
"""

from __future__ import annotations

import base64
import html
from typing import Any

from lora_recipes.fleet.leaderboard import ADAPTER_HEAD, MISSING, adapter_rows, duration, money, score, scored_tasks

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 76em; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border-bottom: 1px solid #ddd; padding: .3em .7em; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { cursor: pointer; user-select: none; background: #f5f5f5; }
th[data-dir="asc"]::after { content: " \\25B2"; } th[data-dir="desc"]::after { content: " \\25BC"; }
tfoot td { font-weight: bold; border-top: 2px solid #999; }
pre { background: #f5f5f5; padding: .8em; overflow-x: auto; }
.missing { color: #999; }
img { max-width: 100%; }
"""

# Sort a table's body rows by the clicked column: numbers as numbers (a cell's data-v), missing
# cells last either way, text otherwise.
SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("thead th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var desc = th.dataset.dir !== "desc";
      table.querySelectorAll("thead th").forEach(function (h) { delete h.dataset.dir; });
      th.dataset.dir = desc ? "desc" : "asc";
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var cell = row.cells[col];
        var v = cell.getAttribute("data-v");
        if (v === "") { return null; }
        return v !== null ? parseFloat(v) : cell.textContent.trim().toLowerCase();
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === null || y === null) { return x === y ? 0 : (x === null ? 1 : -1); }
        var c = x < y ? -1 : (x > y ? 1 : 0);
        return desc ? -c : c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def _text_url(escaped: str) -> str:
    """URLs in command text (the served endpoint) with the colon as an entity: they read and copy
    the same, and the page holds no http(s) URL that a tool could take for a resource to load."""
    return escaped.replace("://", "&#58;//")


def _cell(text: str, value: float | int | None = None, numeric: bool = False) -> str:
    cls = ' class="missing"' if text == MISSING else ""
    data = ""
    if numeric:
        data = f' data-v="{"" if value is None else value}"'
    return f"<td{cls}{data}>{html.escape(text)}</td>"


def _table(head: list[str], body: list[str], foot: str = "") -> str:
    ths = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f'<table class="sortable"><thead><tr>{ths}</tr></thead><tbody>{"".join(body)}</tbody>{foot}</table>'


def render_html(board: dict[str, Any], png: bytes | None) -> str:
    systems, tot = board["systems"], board["totals"]
    body = []
    for t in board["tasks"]:
        cells = [_cell(t["name"]), _cell(t["metric"] or MISSING)]
        cells += [_cell(score(t["scores"].get(s)), t["scores"].get(s), numeric=True) for s in systems]
        body.append(f"<tr>{''.join(cells)}</tr>")
    means = [
        _cell(
            score(board["mean"][s]["value"]) + (f" ({board['mean'][s]['tasks']})" if board["mean"][s]["tasks"] else "")
        )
        for s in systems
    ]
    label = f"mean over the {len(scored_tasks(board))} scored tasks"
    foot = f"<tfoot><tr>{_cell(label)}{_cell('')}{''.join(means)}</tr></tfoot>"
    scores_table = _table(["task", "metric", *systems], body, foot)

    numeric = {3, 4, 5, 6, 7, 8, 9}
    raw_keys: list[str | None] = [
        None,
        None,
        None,
        "adapter",
        "lift",
        "steps",
        "tokens",
        "training_seconds",
        "gpu_hours",
        "cost_usd",
    ]
    adapter_body = []
    for t, row in zip(board["tasks"], adapter_rows(board), strict=True):
        values: dict[str, Any] = {**t, "adapter": t["scores"].get("adapter")}
        a, b = t["scores"].get("adapter"), t["scores"].get("base")
        values["lift"] = None if a is None or b is None else a - b
        cells = [
            _cell(text, values.get(key) if key else None, numeric=i in numeric)
            for i, (text, key) in enumerate(zip(row, raw_keys, strict=True))
        ]
        adapter_body.append(f"<tr>{''.join(cells)}</tr>")
    adapters_table = _table(ADAPTER_HEAD, adapter_body)

    chart = (
        f'<img alt="per-task scores: base, adapter, GPT-4" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        if png is not None
        else "<p>(no chart: matplotlib is not installed)</p>"
    )
    failed = f"; failed: {html.escape(', '.join(tot['failed']))}" if tot["failed"] else ""
    serving = board["serving"]
    commands = [*serving["vllm"], "", *serving["lorax"], "", *serving["evaluate"]]
    serving_html = (
        f"<pre>{_text_url(html.escape(chr(10).join(commands).strip()))}</pre>"
        if any(serving.values())
        else "<p>No adapter is trained yet.</p>"
    )
    errors = "".join(
        f"<li>{html.escape(t['name'])} ({html.escape(t['status'])}): {html.escape(t['error'])}</li>"
        for t in board["tasks"]
        if t["error"]
    )
    title = html.escape(f"Leaderboard: {board['runs']}")
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{title}</title><style>{STYLE}</style></head>
<body>
<h1>{title}</h1>
<p>{tot["tasks"]} tasks, {tot["adapters"]} adapters trained, {tot["scored"]} scored; generated {html.escape(board["generated"])}.
Click a column heading to sort. Missing values are {MISSING}.</p>
{chart}
<h2>Scores</h2>
{scores_table}
<h2>Adapters</h2>
{adapters_table}
{f"<ul>{errors}</ul>" if errors else ""}
<h2>Fleet</h2>
<ul>
<li>adapters: {tot["adapters"]} of {tot["tasks"]} trained{failed}</li>
<li>cost: {html.escape(money(tot["cost_usd"]))}, {tot["gpu_hours"]:.4f} GPU-hours, {tot["tokens"]:,} tokens trained</li>
<li>training time: {duration(tot["training_seconds"])} over all runs; fleet wall time {duration(tot["fleet_wall_seconds"])}</li>
</ul>
<h2>Serving the fleet</h2>
{serving_html}
<script>{SCRIPT}</script>
</body>
</html>
"""
