"""The check room: bench check, the runs against a reference.

- gate.py       the AUC regression gate: a recorded reference, seed by seed
- published.py  a peer's published table as the reference

May import: report (run selection), stats.
"""

MAY_IMPORT: tuple[str, ...] = ("report", "stats")
