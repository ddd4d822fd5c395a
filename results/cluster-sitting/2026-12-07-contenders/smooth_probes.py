"""The smoothed-probe experiment of docs/validation.md, section 8, "How much of the spread is the probe"
(twelfth session): every launch's workload probe (and contention) replaced by the median over the launches
within WINDOW_MIN minutes of it, then the scenario compared as `python -m sim` does. Not part of the tool.
Run from the checkout's root:  python results/cluster-sitting/2026-12-07-contenders/smooth_probes.py both 10 SCENARIO...
MODE: none|speed|contention|both"""
import contextlib, dataclasses, datetime, io, json, re, statistics as st, sys, tempfile
import sim.validation.measured as M
from sim.cli import main as sim_main
mode, W = sys.argv[1], float(sys.argv[2])
orig = M.load_measured

def ts(r):
    return datetime.datetime.fromisoformat(r["timestamp_utc"]).timestamp()

def smoothed(files):
    recs = []
    for p in files:
        r = json.load(open(p))
        if r.get("workload_probe_s") and r.get("contended_workload_probe_s"):
            recs.append((p, ts(r), r["world_size"], r["workload_probe_s"],
                         st.fmean(r["contended_workload_probe_s"]) / st.fmean(r["workload_probe_s"])))
    out = orig(files)
    by_path = {}
    for p, t, w, wl, k in recs:
        near = [x for x in recs if abs(x[1] - t) <= W * 60]
        speed = st.median([s for x in near for s in x[3]])
        cont = st.median([x[4] for x in near if x[2] == w])
        by_path[p] = (speed, cont)
    new = {}
    for key, m in out.items():
        wl = tuple(by_path[p][0] if p in by_path and mode in ("speed", "both") else w for p, w in zip(m.files, m.workloads_s))
        ct = tuple(by_path[p][1] if p in by_path and mode in ("contention", "both") else c for p, c in zip(m.files, m.contention))
        new[key] = dataclasses.replace(m, workloads_s=wl, contention=ct)
    return new

if mode != "none":
    M.load_measured = smoothed
for path in sys.argv[3:]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        sim_main([path, "--no-progress", "--out", tempfile.mkdtemp()])
    text = buf.getvalue()
    mape = re.findall(r"^MAPE .*", text, re.M)
    groups = re.findall(r"^  (\S+)\s+(\S+)\s+([\d.]+)%", text, re.M)
    within = sum(float(g[2]) <= 5 for g in groups)
    print(f"{mode} W={W} {path}: {mape[-1] if mape else '?'}; groups within 5%: {within}/{len(groups)}")
