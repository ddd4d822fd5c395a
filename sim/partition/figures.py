"""The figures of docs/partitioning.md: the TTFT landscape the search walks on 2 GPUs, and the searched
fractions against context length on 2, 4 and 8 GPUs (``python -m sim.partition figures``)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..scenario import Scenario  # noqa: E402
from .search import grid_search, search_job, simulator_oracle, start_chunks  # noqa: E402
from .sweep import jobs  # noqa: E402

LANDSCAPE_POINTS = 95


def landscape_plot(scenario: Scenario, context: int, path: str) -> str:
    """Per model and cluster of the scenario: simulated TTFT of kvr on 2 GPUs against rank 0's share of
    the context, with the points the search scored and the one it chose."""

    todo = jobs(scenario, [2], [context])
    fig, axes = plt.subplots(1, len(todo), figsize=(4.2 * len(todo), 3.6), squeeze=False)
    for ax, job in zip(axes[0], todo):
        oracle = simulator_oracle(job)
        seen: dict[tuple[int, ...], float] = {}

        def scored(chunks, oracle=oracle, seen=seen):
            seen[chunks] = oracle(chunks)
            return seen[chunks]

        result = grid_search(context, 2, scored, start_chunks(job))
        splits = sorted({round(context * (0.03 + 0.94 * i / (LANDSCAPE_POINTS - 1))) for i in range(LANDSCAPE_POINTS)})
        ttft = [oracle((s, context - s)) * 1e3 for s in splits]
        ax.plot([s / context for s in splits], ttft, color="0.3", lw=1.5, label="TTFT (simulated)")
        coarse = {c for c, _ in result.coarse}
        ax.scatter([c[0] / context for c in coarse], [seen[c] * 1e3 for c in coarse], s=30, color="tab:blue",
                   zorder=3, label="coarse grid")
        fine = [c for c in seen if c not in coarse]
        ax.scatter([c[0] / context for c in fine], [seen[c] * 1e3 for c in fine], s=14, color="tab:orange",
                   zorder=4, label="finer grids")
        best = result.chunks
        ax.scatter([best[0] / context], [result.ttft_s * 1e3], marker="*", s=160, color="tab:red", zorder=5,
                   label=f"kvr-s: {best[0]}/{best[1]}")
        ax.axvline(0.5, color="0.7", ls=":", lw=1)
        ax.set_title(f"{job.model.name}, {job.cluster.name}\nC={context}, 2 GPUs", fontsize=10)
        ax.set_xlabel("rank 0's share of the context, c_0 / C")
        ax.set_ylabel("TTFT (ms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center")
    fig.suptitle(f"The landscape the KVR-S search walks ({scenario.name}); dotted: even split", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fractions_plot(scenario: Scenario, contexts, path: str, *, progress: bool = True) -> str:
    """Per model (rows) and P = 2, 4, 8 (columns): each rank's searched fraction of C against C, on the
    scenario's first cluster."""
    from tqdm import tqdm


    contexts = contexts or [1024, 1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384]
    counts = [n for n in (2, 4, 8) if n <= scenario.clusters[0].num_gpus]
    cluster = scenario.clusters[0].name
    todo = jobs(scenario, counts, contexts, clusters=[cluster])
    found = {}
    for job in tqdm(todo, desc="kvr-s searches", unit="search", disable=None if progress else True):
        found[job.model.name, job.num_gpus, job.context] = search_job(job)[0].chunks
    models = [m.name for m in scenario.models]
    fig, axes = plt.subplots(len(models), len(counts), figsize=(4.2 * len(counts), 3.3 * len(models)),
                             squeeze=False, sharex=True)
    for row, model in enumerate(models):
        for col, n in enumerate(counts):
            ax = axes[row][col]
            colors = plt.cm.viridis([i / max(n - 1, 1) for i in range(n)])
            for rank in range(n):
                ax.plot(contexts, [found[model, n, c][rank] / c for c in contexts], marker="o", ms=3,
                        color=colors[rank], label=f"rank {rank}")
            ax.axhline(1 / n, color="0.6", ls=":", lw=1)
            ax.set_xscale("log", base=2)
            ax.set_title(f"{model}, {n} GPUs", fontsize=10)
            ax.set_ylabel("fraction of C")
            ax.grid(alpha=0.3)
            if row == len(models) - 1:
                ax.set_xlabel("context C (tokens)")
            ax.legend(fontsize=6, ncol=2 if n > 4 else 1, loc="best", framealpha=0.6)
    fig.suptitle(f"KVR-S fractions against context ({scenario.name}, {cluster}); dotted: even", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

