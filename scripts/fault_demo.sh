#!/usr/bin/env bash
# The four faults of issue 27, as a user meets them, on PneumoniaMNIST with PaDiM seed 0:
# a cache cut short, a cache changed in place, a full disk under the cache, and two runs
# started at once on a new SQLite store. Prints what the user sees and the AUC afterwards.
#
#   scripts/fault_demo.sh [PYTHON]       (default: .venv/bin/python; run as root for tmpfs)
#   MODULE=benchmark.cli PYTHONPATH=OLD_CHECKOUT scripts/fault_demo.sh   (code before issue 27)
#
# Works in a temporary folder; the repository's results/ are not touched.
set -uo pipefail
PY=${1:-$(pwd)/.venv/bin/python}
WORK=$(mktemp -d)
trap 'umount -l "$WORK/small" 2>/dev/null; rm -rf "$WORK"' EXIT
cd "$WORK"
export BENCH_CACHE_DIR=$WORK/cache
# MODULE=benchmark.cli PYTHONPATH=<old checkout> runs the code from before the rename.
bench() { "$PY" -m "${MODULE:-medad_bench.cli}" "$@" 2>&1; }
run() { bench run --methods padim --dataset pneumoniamnist --seeds 0 --no-progress --threads 1 \
  --tracking-uri "sqlite:///$WORK/$1.db" "${@:2}" 2>&1 | grep -v "^note" | tail -"${TAIL:-3}"; }

echo "== baseline"; run base
images=$(ls -d "$BENCH_CACHE_DIR"/pneumoniamnist-*/images.npy)

echo "== 1. images.npy cut to half its size"
truncate -s $(( $(stat -c %s "$images") / 2 )) "$images"
TAIL=6 run base --force

echo "== 2. 200 KB of images.npy overwritten in place (same size)"
images=$(ls -d "$BENCH_CACHE_DIR"/pneumoniamnist-*/images.npy)
dd if=/dev/urandom of="$images" bs=1K seek=1024 count=200 conv=notrunc status=none
TAIL=6 run base --force

echo "== 3. the cache on a full disk (2 MB tmpfs), then the space freed"
mkdir -p small && mount -t tmpfs -o size=2m tmpfs small
BENCH_CACHE_DIR=$WORK/small TAIL=4 run full
echo "-- left in the small disk: $(ls -A small | wc -l) entries"
umount -l small
TAIL=3 run full

echo "== 4. two runs started at once on a new SQLite store"
TAIL=3 run together --force > one.log & TAIL=3 run together --force > two.log; wait
cat one.log two.log
