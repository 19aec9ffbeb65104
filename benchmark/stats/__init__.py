"""The stats room: numbers computed from scores, labels and maps, nothing else.

- image_metrics.py  AUC, the threshold metrics, clinical operating points, AUCp
- pixel_metrics.py  pixel AUROC, Dice, the pixel thresholds, pixel AP, AUPRO, best Dice
- intervals.py      two-level intervals of seed means, paired tests, Holm
- coverage.py       the coverage simulation of those intervals (issue 13)
- competence.py     did the model learn? the validation checks behind `competent`

May import: no other room (only the top-level errors); every room may import stats. The
competence checks live here, not in api/, because they are arithmetic on scores; the one
helper that needs a Method (`competence_of`) is in api/conformance.py.
"""

MAY_IMPORT: tuple[str, ...] = ()
