"""PNG plots (matplotlib, Agg backend) and the Chrome-trace JSON of a timeline (opens in Perfetto,
https://ui.perfetto.dev, or chrome://tracing; format: the Trace Event Format's complete events "X").
"""
from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from .engine import Result  # noqa: E402

OP_COLOURS = {"embed": "#7f7f7f", "qkv": "#1f77b4", "kv-pad": "#17becf", "kv-cat": "#bcbd22",
              "attention": "#d62728", "mlp": "#2ca02c",
              "head": "#9467bd", "send": "#ff7f0e", "all-gather": "#8c564b",
              "comm-contention": "#e377c2"}  # compute slowed beside NCCL kernels (docs/cost_model.md)
OTHER_COLOUR = "#c7c7c7"  # an op without a colour of its own


def ttft_plot(rows, model: str, cluster: str, path: str) -> None:
    """One column per GPU count: TTFT against context (log-log; ``single`` in every column) and, below,
    the speedup over ``tsp`` on as many GPUs. On a noisy cluster the line is the mean over the draws
    and a band spans their p50..p99."""
    rows = [r for r in rows if r.job.model.name == model and r.job.cluster.name == cluster
            and r.result is not None]  # a configuration that does not fit has no time to draw
    counts = sorted({r.job.num_gpus for r in rows if r.job.scheme.kind != "single"}) or [1]
    fig, axes = plt.subplots(2, len(counts), figsize=(4.2 * len(counts), 6.4), sharex=True, sharey="row",
                             squeeze=False, gridspec_kw={"height_ratios": [3, 2]})
    schemes = list(dict.fromkeys(r.job.scheme.name for r in rows))
    for col, n in enumerate(counts):
        top, bottom = axes[0][col], axes[1][col]
        for i, scheme in enumerate(schemes):
            mine = sorted((r.job.context, r) for r in rows
                          if r.job.scheme.name == scheme and r.job.num_gpus in (n, 1))
            if not mine:
                continue
            style = dict(ls="--" if scheme == "single" else "-", marker="osv^Dxp*"[i % 8], ms=4,
                         color=f"C{i}", alpha=0.85, label=scheme)
            top.plot([c for c, _ in mine], [r.result.ttft_s * 1e3 for _, r in mine], **style)
            spread = [(c, r.spread) for c, r in mine if r.spread is not None]
            if spread:
                top.fill_between([c for c, _ in spread], [x.p50_s * 1e3 for _, x in spread],
                                 [x.p99_s * 1e3 for _, x in spread], color=f"C{i}", alpha=0.2, lw=0)
                top.vlines([c for c, _ in spread], [x.p50_s * 1e3 for _, x in spread],  # a lone context too
                           [x.p99_s * 1e3 for _, x in spread], color=f"C{i}", alpha=0.6, lw=1.5)
            sped = [(c, r.speedup_vs_tsp) for c, r in mine if r.speedup_vs_tsp is not None]
            if sped:
                bottom.plot(*zip(*sped), **style)
        top.set_yscale("log")
        top.set_title(f"{n} GPUs")
        bottom.set_xscale("log", base=2)
        bottom.set_xlabel("context (tokens)")
        for ax in (top, bottom):
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("TTFT (ms)")
    axes[1][0].set_ylabel("speedup over tsp")
    handles = {label: h for ax in axes[0] for h, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), loc="upper center", bbox_to_anchor=(0.5, 0.02),
               ncol=len(handles), fontsize=9, frameon=False)
    fig.suptitle(f"{model} on {cluster}: time to first token")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


MEASURED_COLOURS = {"layer": "#c7c7c7", "wait": "#e377c2"}  # sends as the simulated ones


def timeline_plot(result: Result, title: str, path: str, measured: list[dict] | None = None) -> None:
    """Gantt chart: per rank, a lane of compute ops and below it a lane of the transfers it sends; with
    `measured` (a measured trace's events, ``reference.trace``) a second panel below on the same time
    axis: per rank its layer spans with their waits over them, and its sends."""
    ranks = len(result.ranks)
    rows = 2 if measured else 1
    fig, axes = plt.subplots(rows, 1, figsize=(13, rows * (1.0 + 0.75 * ranks) + 0.3 * (rows - 1)),
                             sharex=True, squeeze=False)
    ax = axes[0][0]
    for seg in result.segments:
        y = 2 * (ranks - 1 - seg.rank) + (1 if seg.kind == "compute" else 0.35)
        colour = OP_COLOURS.get(seg.op, OTHER_COLOUR)  # transfers get an edge in their colour so short ones stay visible
        _bar(ax, seg.start_s, seg.end_s, y, 0.8 if seg.kind == "compute" else 0.5, colour,
             edge="white" if seg.kind == "compute" else colour)
    ax.axvline(result.ttft_s * 1e3, color="black", lw=1, ls="--")
    ax.text(result.ttft_s * 1e3, 2 * ranks, "first token", va="bottom", ha="center", fontsize=8)
    _lanes(ax, ranks, "simulated " if measured else "")
    ax.set_xlim(0, max(result.makespan_s, _end_s(measured)) * 1e3 * 1.02)
    ax.set_title(title)
    handles = [matplotlib.patches.Patch(color=c, label=op) for op, c in OP_COLOURS.items()
               if any(s.op == op for s in result.segments)]
    if measured:
        _measured_panel(axes[1][0], measured)
        handles += [matplotlib.patches.Patch(color=c, label=f"measured {k}") for k, c in MEASURED_COLOURS.items()]
    axes[-1][0].set_xlabel("time (ms)")
    axes[-1][0].legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.55 / (0.75 * ranks)),
                       ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _bar(ax, start_s: float, end_s: float, y: float, h: float, colour: str, edge: str) -> None:
    ax.broken_barh([(start_s * 1e3, (end_s - start_s) * 1e3)], (y, h), facecolors=colour, edgecolor=edge,
                   linewidth=0.2 if edge == "white" else 0.6)


def _lanes(ax, ranks: int, prefix: str) -> None:
    ax.set_yticks([2 * (ranks - 1 - r) + t for r in range(ranks) for t in (1.4, 0.6)])
    ax.set_yticklabels([f"{prefix}rank {r} {lane}" for r in range(ranks) for lane in ("compute", "sends")],
                       fontsize=8)
    ax.set_ylim(0, 2 * ranks)


def _spans(events: list[dict]) -> list[dict]:
    return [e for e in events if e["ph"] == "X" and e["pid"] > 0]


def _end_s(events: list[dict] | None) -> float:
    return max(((e["ts"] + e["dur"]) / 1e6 for e in _spans(events or [])), default=0.0)


def _measured_panel(ax, events: list[dict]) -> None:
    ranks = max(e["pid"] for e in _spans(events))
    for e in sorted(_spans(events), key=lambda e: e["cat"] == "wait"):  # waits over their layers
        start, end, rank = e["ts"] / 1e6, (e["ts"] + e["dur"]) / 1e6, e["pid"] - 1
        colour = MEASURED_COLOURS.get(e["cat"], OP_COLOURS["send"])
        if e["tid"] == 1:
            _bar(ax, start, end, 2 * (ranks - 1 - rank) + 0.35, 0.5, colour, edge=colour)
        else:  # waits sit inside their layer's span: drawn over it, a little lower
            wait = e["cat"] == "wait"
            _bar(ax, start, end, 2 * (ranks - 1 - rank) + (1.1 if wait else 1), 0.6 if wait else 0.8, colour,
                 edge=colour if wait else "white")
    _lanes(ax, ranks, "measured ")
    ax.set_title("measured (one traced prefill)", fontsize=10)


def trace_events(result: Result, title: str) -> list[dict]:
    """One process per rank with two threads, compute (tid 0) and sends (tid 1); times in microseconds."""
    events: list[dict] = [{"ph": "M", "name": "process_name", "pid": 0, "tid": 0, "args": {"name": title}}]
    for r in range(len(result.ranks)):
        events.append({"ph": "M", "name": "process_name", "pid": r + 1, "tid": 0, "args": {"name": f"rank {r}"}})
        for tid, lane in ((0, "compute"), (1, "sends")):
            events.append({"ph": "M", "name": "thread_name", "pid": r + 1, "tid": tid, "args": {"name": lane}})
    for seg in result.segments:
        args: dict = {"layer": seg.layer}
        if seg.kind == "transfer":
            args.update(to_rank=seg.peer, bytes=seg.nbytes)
        name = seg.op if seg.layer is None else f"{seg.op} L{seg.layer}"
        events.append({"ph": "X", "name": name, "cat": seg.kind, "pid": seg.rank + 1,
                       "tid": 0 if seg.kind == "compute" else 1, "ts": seg.start_s * 1e6,
                       "dur": (seg.end_s - seg.start_s) * 1e6, "args": args})
    events.append({"ph": "i", "name": "first token", "pid": len(result.ranks), "tid": 0, "s": "p",
                   "ts": result.ttft_s * 1e6})
    return events


def side_by_side(simulated: list[dict], measured: list[dict]) -> list[dict]:
    """A simulated and a measured trace in one: processes "simulated rank r" (pids as they were) and
    "measured rank r" (pids after them), both timed from their prefill's start."""
    shift = max(e["pid"] for e in simulated) + 1
    out = []
    for events, prefix, offset in ((simulated, "simulated ", 0), (measured, "measured ", shift)):
        for e in events:
            e = {**e, "pid": e["pid"] + offset}
            if e["ph"] == "M" and e["name"] == "process_name" and e["pid"] > offset:
                e["args"] = {"name": prefix + e["args"]["name"]}
            out.append(e)
    return out


def chrome_trace(result: Result, title: str, path: str, measured: list[dict] | None = None) -> None:
    """The timeline's Trace Event Format JSON (with `measured`, side by side with it)."""
    events = trace_events(result, title)
    if measured:
        events = side_by_side(events, measured)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"traceEvents": events, "displayTimeUnit": "ms"}, f)
        f.write("\n")


def winner_map(rows, model: str, cluster: str, path: str) -> None:
    """Context across, GPU count up: each cell coloured by the fastest scheme there and labelled with
    its name and its margin over the runner-up (TTFT_second / TTFT_first - 1); "no fit" where no
    scheme fits the GPUs' memory. ``single`` is left out (it runs on one GPU)."""
    rows = [r for r in rows if r.job.model.name == model and r.job.cluster.name == cluster
            and r.job.scheme.kind != "single"]
    contexts = sorted({r.job.context for r in rows})
    counts = sorted({r.job.num_gpus for r in rows})
    schemes = list(dict.fromkeys(r.job.scheme.name for r in rows))
    colour = {s: f"C{i % 10}" for i, s in enumerate(schemes)}
    fig, ax = plt.subplots(figsize=(1.3 * len(contexts) + 2.2, 0.9 * len(counts) + 1.6))
    for y, n in enumerate(counts):
        for x, c in enumerate(contexts):
            cell = sorted((r.result.ttft_s, r.job.scheme.name) for r in rows
                          if (r.job.num_gpus, r.job.context) == (n, c) and r.result is not None)
            if not cell:
                ax.add_patch(plt.Rectangle((x, y), 1, 1, color="0.85"))
                ax.text(x + 0.5, y + 0.5, "no fit", ha="center", va="center", fontsize=8, color="0.3")
                continue
            best_s, best = cell[0]
            gain = (cell[1][0] / best_s - 1) * 100 if len(cell) > 1 else None
            margin = "" if gain is None else f"+{gain:.1f}%" if gain < 10 else f"+{gain:.0f}%"
            ax.add_patch(plt.Rectangle((x, y), 1, 1, color=colour[best], alpha=0.75))
            ax.text(x + 0.5, y + 0.5, f"{best}\n{margin}", ha="center", va="center", fontsize=7.5)
    ax.set_xlim(0, len(contexts))
    ax.set_ylim(0, len(counts))
    ax.set_xticks([x + 0.5 for x in range(len(contexts))],
                  [f"{c // 1024}k" if c >= 1024 and c % 1024 == 0 else str(c) for c in contexts])
    ax.set_yticks([y + 0.5 for y in range(len(counts))], [str(n) for n in counts])
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("GPUs")
    ax.set_title(f"{model} on {cluster}: fastest scheme (margin over the runner-up)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
