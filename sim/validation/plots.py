"""Plots of simulated against measured milliseconds (TTFT per configuration, compute per replayed
rank)."""
from __future__ import annotations

import os


def scatter_plot(points: list[tuple[str, str, float, float]], title: str, what: str, path: str,
                 log: bool = False, band: float = 0.10) -> None:
    """Simulated against measured milliseconds, the ideal line and a +-``band`` band. ``points`` are
    (marker label, colour label, measured ms, simulated ms): one marker per marker label (a scheme),
    one colour per colour label (a cluster, a model), each in sorted order."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    markers = "osD^v<>P*X"
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ci, colour in enumerate(sorted({p[1] for p in points})):
        for mi, marker in enumerate(sorted({p[0] for p in points})):
            pts = [p for p in points if p[:2] == (marker, colour)]
            if pts:
                ax.scatter([p[2] for p in pts], [p[3] for p in pts], marker=markers[mi % len(markers)],
                           color=colours[ci % len(colours)], label=f"{marker}, {colour}",
                           s=36 if not log else 14, alpha=1.0 if not log else 0.7)
    values = [v for p in points for v in p[2:]]
    lo, hi = min(values) * 0.85, max(values) * 1.15
    ax.plot([lo, hi], [lo, hi], color="black", lw=1, label="ideal (simulated = measured)")
    ax.fill_between([lo, hi], [lo * (1 - band), hi * (1 - band)], [lo * (1 + band), hi * (1 + band)], color="grey",
                    alpha=0.15, label=f"±{band:.0%}")
    if log:
        from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(ScalarFormatter())
            axis.set_minor_formatter(NullFormatter())
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel(f"measured {what} (ms)")
    ax.set_ylabel(f"simulated {what} (ms)")
    ax.set_title(title)
    ax.legend(fontsize=6, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
