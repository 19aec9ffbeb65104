"""Run a command and report the peak resident memory of it and all its child processes together.

    python scripts/peak_memory.py bench run --methods all --dataset covidx --data-root TREE

Samples the whole process tree every 50 ms (psutil), as `bench data perf` does, so decoding
workers and Ray workers count too. Prints the peak and the wall time at the end; the exit code
is the command's.
"""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from medad_bench.perf.preparation import _watch


def main(command: list[str]) -> int:
    if not command:
        print(__doc__, file=sys.stderr)
        return 2
    started = time.perf_counter()
    process = subprocess.Popen(command)
    peak = _watch(psutil.Process(process.pid))
    code = process.wait()
    seconds = time.perf_counter() - started
    print(f"peak memory of the command and its children: {peak / 2**30:.2f} GiB "
          f"({peak / 2**20:,.0f} MiB); wall {seconds:,.0f} s; exit code {code}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
