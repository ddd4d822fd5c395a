"""How well a launch's TTFT follows its own workload probe (docs/validation.md, section 8, "How much of the
spread is the probe"): per configuration, each round's TTFT and probe over the configuration's means, then
the regression slope and correlation pooled over configurations. Not part of the tool.
Run:  python results/cluster-sitting/2026-12-07-contenders/probe_slope.py results/cluster-sitting/2026-12-07-fixed/rounds"""
import collections, glob, json, os, statistics as st, sys

groups = collections.defaultdict(list)
for f in glob.glob(os.path.join(sys.argv[1], "*.json")):
    d = json.load(open(f))
    groups[os.path.basename(f).rsplit("_r", 1)[0]].append((d["ttft_median_s"], st.fmean(d["workload_probe_s"])))
for world in (4, 8):
    xs, ys = [], []
    for key, v in groups.items():
        if f"_P{world}_" not in key:
            continue
        mt, mw = st.fmean(t for t, _ in v), st.fmean(w for _, w in v)
        xs += [w / mw - 1 for _, w in v]
        ys += [t / mt - 1 for t, _ in v]
    mx, my = st.fmean(xs), st.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    print(f"P={world}: {len(xs)} launches, slope {slope:.2f}, correlation {st.correlation(xs, ys):.2f}, "
          f"sd probe {st.pstdev(xs):.3f}, sd TTFT {st.pstdev(ys):.3f}")
