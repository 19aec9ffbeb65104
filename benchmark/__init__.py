"""Reproducible benchmark suite for unsupervised anomaly detection in medical images.

The engine lives in rooms, each a subpackage whose `__init__` says what it holds and, in
`MAY_IMPORT`, which other rooms its modules may import (tests/test_layout.py checks every
import, those inside functions included, through scripts/import_graph.py):

    stats   <- api <- engine <- perf
    stats   <- report <- check
    cli: parses options, calls one library function per command, prints (may import any room)

- stats/   numbers from scores: image metrics, pixel metrics, intervals, the coverage
           simulation, the competence checks
- api/     what a method is: the contract, the registry, the iterative engine, seeding, the
           conformance checks (plug-ins and methods/ import `medad_bench.api`)
- engine/  running the grid: the grid and its keys, one run, executors, evaluation, resources,
           the cost plan (bench plan)
- report/  reading the runs back: run selection and Table 1, model selection, cross-dataset,
           figures, HTML, the budget curve, the report document (bench report)
- check/   the regression gate and published references (bench check)
- perf/    throughput measurements (bench perf, bench data perf)

Cross-cutting modules stay at the top level and import no room: errors (the exception
types), disk (writes that fail with one message), shipped (package data), tracking (MLflow: the
engine writes runs and the report and check rooms read them), weights (pretrained backbones:
methods/ and the cli use them) and data/ (formats, cards, the cache; data/prepared.py builds a
TrainSet of api/contract.py, the one import from the top level into a room).
"""

__version__ = "0.1.0"
