"""The engine room: running the grid of (method x dataset x seed) runs.

- launch.py      bench run end to end: prepare the data, plan the grid, skip what is done,
                 execute (run_plan), and the command's one call (`bench_run`)
- grid.py        RunPlan, RunSpec, run identities and keys, triage of finished/running runs,
                 threads per worker
- executors.py   where runs execute: in process, in worker processes, on Ray
- run.py         one run: open it, compute its result (fit, predict, evaluate), log it
- evaluation.py  predictions -> metrics, localisation, the selection table rows
- resources.py   devices and peak memory
- cost_plan.py   bench plan: measured costs, calibration, estimates of a grid

May import: api, stats. Tracking (MLflow) is top level: the engine writes what report/ and
check/ read.
"""

MAY_IMPORT: tuple[str, ...] = ("api", "stats")
