"""Run from the checkout's root: python results/cluster-sitting/2026-12-07-contenders/probe-ab/probe_ab.py 20 OUT.tsv
Is the harness's pool probe slower than the bridge's in-process probe at the same moment? Interleaved."""
import statistics as st, sys
from reference.measure import cluster as C
from reference.measure.timing import workload_probe_s, speed_probe_s
M = "profiles/models/cpu-llama-h512/config.json"
rows = []
C.workload_probes_s(M, "fp32", 8)  # warm the pool as the harness does
workload_probe_s(M, "fp32")        # and this process's model
for i in range(int(sys.argv[1])):
    alone, _ = C.workload_probes_s(M, "fp32", 4)
    here = workload_probe_s(M, "fp32")
    pool_alone2 = C._pool(8).submit(workload_probe_s, M, "fp32").result()
    g = speed_probe_s(15)
    rows.append((alone, here, pool_alone2, g))
    print(f"{i}: pool {alone*1e3:.1f}  in-process {here*1e3:.1f}  pool again {pool_alone2*1e3:.1f}  gemm {g*1e3:.2f}", flush=True)
print("median pool", round(st.median(r[0] for r in rows)*1e3,1), "in-process", round(st.median(r[1] for r in rows)*1e3,1),
      "pool again", round(st.median(r[2] for r in rows)*1e3,1), "ratio pool/in-process", round(st.median(r[0]/r[1] for r in rows),3))
with open(sys.argv[2], "w") as f:  # a table: one row a pair
    f.writelines("\t".join(f"{x:.6f}" for x in r) + "\n" for r in rows)
