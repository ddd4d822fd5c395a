"""``report.html``: one self-contained page of a run (no network): the scenario, the TTFT tables,
every plot embedded, simulated against measured where the scenario has measurements, and links to
the timeline traces written beside it. Written with the other outputs under ``--out``.
"""
from __future__ import annotations

import base64
import html

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
.nofit{color:#999}.best{font-weight:bold}img{max-width:100%;border:1px solid #eee;margin:.5em 0}
pre{background:#f7f7f7;padding:1em;overflow-x:auto;font-size:12px}"""


def _cell(row) -> tuple[str, str]:
    if row is None:
        return "-", ""
    if row.result is None:
        return "does not fit", "nofit"
    text = f"{row.result.ttft_s * 1e3:.2f}"
    if row.speedup_vs_tsp is not None:
        text += f" ({row.speedup_vs_tsp:.2f}x)"
    return text, ""


def ttft_table(scenario, block) -> str:
    """One model and cluster: TTFT in ms per scheme and GPU count (rows) and context (columns), the
    fastest of each GPU count and context in bold."""
    contexts = sorted({r.job.context for r in block})
    lines: dict[tuple[str, int], dict[int, object]] = {}
    for r in block:
        lines.setdefault((r.job.scheme.name, r.job.num_gpus), {})[r.job.context] = r
    order = [s.name for s in scenario.schemes]
    best = {}
    for r in block:
        if r.result is not None and r.job.scheme.kind != "single":
            key = (r.job.num_gpus, r.job.context)
            best[key] = min(best.get(key, float("inf")), r.result.ttft_s)
    out = ["<table><tr><th>scheme</th><th>GPUs</th>" + "".join(f"<th>{c}</th>" for c in contexts) + "</tr>"]
    for (scheme, n), cells in sorted(lines.items(), key=lambda kv: (kv[0][1], order.index(kv[0][0]))):
        tds = []
        for c in contexts:
            row = cells.get(c)
            text, cls = _cell(row)
            if row is not None and row.result is not None and row.job.scheme.kind != "single" \
                    and row.result.ttft_s == best.get((n, c)):
                cls = "best"
            tds.append(f'<td class="{cls}">{html.escape(text)}</td>')
        out.append(f"<tr><td>{html.escape(scheme)}</td><td>{n}</td>{''.join(tds)}</tr>")
    return "\n".join(out) + "</table>"


def _image(path: str, alt: str) -> str:
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def write(path: str, scenario, table, *, text_report: str, images: list[tuple[str, str, str]],
          traces: list[str], validation_text: str = "") -> None:
    """The page, to ``path``. ``images``: (title, file name, PNG to read) to embed, each under its
    model and cluster where its name ends in ``_MODEL_CLUSTER.png``; ``traces``: file names of Chrome
    traces beside the page, linked; ``text_report``: the terminal report, kept at the end."""
    blocks: dict[tuple[str, str], list] = {}
    for row in table:
        blocks.setdefault((row.job.model.name, row.job.cluster.name), []).append(row)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(scenario.name)}</title>"
             f"<style>{_STYLE}</style></head><body>",
             f"<h1>Scenario {html.escape(scenario.name)}</h1>",
             f"<p>{html.escape(scenario.gpu.name)}, {html.escape(scenario.dtype)}"
             + (f" &mdash; {html.escape(scenario.description)}" if scenario.description else "") + "</p>",
             "<p>TTFT in ms (speedup over tsp on as many GPUs); the fastest parallel scheme of each column "
             "and GPU count in bold.</p>"]
    for (model, cluster), block in blocks.items():
        parts.append(f"<h2>{html.escape(model)} on {html.escape(cluster)}</h2>")
        parts.append(ttft_table(scenario, block))
        for title, name, png in images:
            if name.endswith(f"_{model}_{cluster}.png"):
                parts.append(_image(png, title))
    others = [(t, p) for t, name, p in images if not any(name.endswith(f"_{m}_{c}.png") for m, c in blocks)]
    if others or validation_text:
        parts.append("<h2>Simulated against measured, timelines</h2>")
        if validation_text:
            parts.append(f"<pre>{html.escape(validation_text)}</pre>")
        parts += [_image(p, t) for t, p in others]
    if traces:
        parts.append("<h2>Traces</h2><p>Open in https://ui.perfetto.dev or chrome://tracing:</p><ul>"
                     + "".join(f'<li><a href="{html.escape(t)}">{html.escape(t)}</a></li>' for t in traces) + "</ul>")
    parts.append(f"<h2>The terminal report</h2><pre>{html.escape(text_report)}</pre></body></html>")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts) + "\n")
