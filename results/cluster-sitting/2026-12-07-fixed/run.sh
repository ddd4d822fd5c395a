#!/bin/bash
# The sitting of results/cluster-sitting/2026-12-07-fixed, one step after the other, from a clone of main at
# the commit named in sitting.log (PYTHONPATH points at it), writing here. Run from the checkout's root:
#   SRC=/path/to/clone bash results/cluster-sitting/2026-12-07-fixed/run.sh > results/cluster-sitting/2026-12-07-fixed/sitting.log 2>&1
set -euo pipefail
S=results/cluster-sitting/2026-12-07-fixed
export PYTHONPATH=${SRC:?clone of main}
PY=${PY:-python}
echo "commit $(git -C "$SRC" rev-parse HEAD); start $(date -u +%FT%TZ); uptime: $(uptime)"
step() { echo "== $(date -u +%TZ) $*"; "$@"; }
step $PY -m reference.measure.profile --model profiles/models/cpu-llama-h512/config.json --device cpu --dtype fp32 --grid cpu --repeat 7 --out $S/cpu-llama-h512-fp32.json
step $PY -m reference.measure.profile --model profiles/models/cpu-llama-h512/config.json --device cpu --dtype fp32 --grid cpu-low --repeat 15 --add-to $S/cpu-llama-h512-fp32.json --out $S/cpu-llama-h512-fp32-low.json
step $PY -m reference.measure.workload_bridge $S/cpu-llama-h512-fp32-low.json
step $PY -m sim.partition build-table $S/_notable.yaml --contexts 1024,1536,3072,4096 --out $S/validate-cluster-fixed-table.json --no-progress
step $PY -m reference.measure.cluster $S/validate-cluster.yaml --out-dir $S/rounds --rounds 5 --warmup 1 --repeat 2 --busy-cpu 256KB,1MB,4MB
echo "end $(date -u +%FT%TZ)"
