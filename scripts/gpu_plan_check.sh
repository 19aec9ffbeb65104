#!/usr/bin/env bash
# Issue 12 on a CUDA machine, in one go (about 8 minutes on an H100):
#   1. full-profile costs of every method at 256 px (`bench plan --calibrate`), saved to $OUT;
#   2. the plan of the full COVIDx grid (seeds 0 and 0,1,2) from those costs;
#   3. real fits beside their estimates on a small COVIDx fixture (scripts/plan_check.py).
# Needs anomalib and its own needs beside the machine's PyTorch: carry them as wheels in .whl/
# (see the device notes). Run from the repository root: OUT=folder bash scripts/gpu_plan_check.sh
set -uo pipefail
OUT=${OUT:-results/gpu}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 BENCH_CACHE_DIR=/tmp/bench-cache
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
bench() { python3 -W ignore -m benchmark.cli "$@"; }
COSTS="$OUT/cuda-costs.json"
for m in alad alocc anomalypro brainomaly fanogan ganomaly padim patchcore; do
  timeout 150 python3 -W ignore -m benchmark.cli plan --methods $m --dataset covidx \
    --profile full --device cuda --calibrate --costs "$COSTS" > /dev/null \
    || echo "calibration of $m failed"
done
bench plan --methods all --dataset covidx --profile full --device cuda --costs "$COSTS" \
  | tee "$OUT/plan-full-covidx.txt"
bench plan --methods all --dataset covidx --profile full --device cuda --costs "$COSTS" \
  --seeds 0,1,2 | tail -1 | tee -a "$OUT/plan-full-covidx.txt"
bench data make-fixture --format covidx --count 600 --size 256 --out /tmp/covidx-600 \
  > /dev/null 2>&1
timeout 240 python3 -W ignore scripts/plan_check.py --dataset covidx --data-root /tmp/covidx-600 \
  --profile full --device cuda --costs "$COSTS" \
  --methods padim,patchcore,anomalypro,fanogan,ganomaly,alad \
  --set anomalypro.iterations=600 --set anomalypro.decay_iterations=0 \
  --set anomalypro.checkpoint_every=300 --set fanogan.gan_iterations=100 \
  --set fanogan.encoder_iterations=100 --set ganomaly.iterations=300 --set alad.iterations=300 \
  --out "$OUT/plan-check.json" 2>&1 | grep -v -i warn | tee "$OUT/plan-check.txt"
