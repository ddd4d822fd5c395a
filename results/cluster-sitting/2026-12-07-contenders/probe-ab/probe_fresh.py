"""Run from the checkout's root: python results/cluster-sitting/2026-12-07-contenders/probe-ab/probe_fresh.py 12 OUT.tsv
The harness's pool probe against the same probe in a fresh process (as a rank is), interleaved."""
import statistics as st, subprocess, sys
from reference.measure import cluster as C
M = "profiles/models/cpu-llama-h512/config.json"
FRESH = [sys.executable, "-c", "from reference.measure.timing import workload_probe_s as w; "
         f"w('{M}', 'fp32'); print(w('{M}', 'fp32'))"]
C.workload_probes_s(M, "fp32", 8)
rows = []
for i in range(int(sys.argv[1])):
    pool = C._pool(8).submit(C.workload_probe_s, M, "fp32").result()
    fresh = float(subprocess.run(FRESH, capture_output=True, text=True, check=True).stdout.split()[-1])
    rows.append((pool, fresh))
    print(f"{i}: pool {pool * 1e3:.1f}  fresh process {fresh * 1e3:.1f}", flush=True)
print("median pool", round(st.median(r[0] for r in rows) * 1e3, 1), "fresh", round(st.median(r[1] for r in rows) * 1e3, 1),
      "ratio", round(st.median(r[0] / r[1] for r in rows), 3))
with open(sys.argv[2], "w") as f:  # a table: one row a pair
    f.writelines("\t".join(f"{x:.6f}" for x in r) + "\n" for r in rows)
