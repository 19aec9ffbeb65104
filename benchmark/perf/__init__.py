"""The perf room: throughput measurements.

- throughput.py   bench perf: AnomalyPro training and scoring, in the suite and bare
- overhead.py     bench perf --methods: each method's fit and predict through the
                  suite against its bare loop, side by side (what the suite adds)
- bare_loops.py   a bare PyTorch loop per built-in method: the same networks, losses,
                  images and budget, nothing else
- preparation.py  bench data perf: preparing the cache against a bare decode

May import: engine, api, stats (and methods/: the bare loops use the methods' networks and losses).
"""

MAY_IMPORT: tuple[str, ...] = ("engine", "api", "stats")
