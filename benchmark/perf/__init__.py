"""The perf room: throughput measurements.

- throughput.py   bench perf: AnomalyPro training and scoring, in the suite and bare
- overhead.py     bench perf --methods: each method's fit and predict through the
                  suite against its own steps in a plain loop (what the engine adds)
- preparation.py  bench data perf: preparing the cache against a bare decode

May import: engine, api, stats (and methods/: throughput.py times AnomalyPro's own loop).
"""

MAY_IMPORT: tuple[str, ...] = ("engine", "api", "stats")
