#!/bin/bash
# The contenders' sitting of results/cluster-sitting/2026-12-07-contenders, one step after the other, from a
# clone of main at the commit named in sitting.log (PYTHONPATH points at it), writing here. Run from the
# checkout's root:
#   SRC=/path/to/clone bash results/cluster-sitting/2026-12-07-contenders/run.sh > results/cluster-sitting/2026-12-07-contenders/sitting.log 2>&1
# pipeline runs last, in its own call, so that a failure there cannot cost the other rounds.
set -euo pipefail
S=results/cluster-sitting/2026-12-07-contenders
export PYTHONPATH=${SRC:?clone of main}
PY=${PY:-python}
echo "commit $(git -C "$SRC" rev-parse HEAD); start $(date -u +%FT%TZ); uptime: $(uptime)"
step() { echo "== $(date -u +%TZ) $*"; "$@"; }
step $PY -m reference.measure.profile --model profiles/models/cpu-llama-h512/config.json --device cpu --dtype fp32 --grid cpu --repeat 7 --out $S/cpu-llama-h512-fp32.json
step $PY -m reference.measure.profile --model profiles/models/cpu-llama-h512/config.json --device cpu --dtype fp32 --grid cpu-low --repeat 15 --add-to $S/cpu-llama-h512-fp32.json --out $S/cpu-llama-h512-fp32-low.json
step $PY -m reference.measure.workload_bridge $S/cpu-llama-h512-fp32-low.json
step $PY -m reference.measure.cluster $S/validate-contenders.yaml --out-dir $S/rounds --rounds 3 --warmup 1 --repeat 2 \
    --schemes ring,ring-zigzag,ulysses,tp --gpus 4,8 --busy-cpu 256KB,1MB,4MB
step $PY -m reference.measure.cluster $S/validate-contenders.yaml --out-dir $S/rounds --rounds 3 --warmup 1 --repeat 2 \
    --schemes pipeline --gpus 4
echo "end $(date -u +%FT%TZ)"
