"""The report room: reading finished runs back from MLflow and presenting them.

- table.py            run selection (select_runs, ReportData) and Table 1 in Markdown, LaTeX
                      and HTML, its statistics and notes
- model_selection.py  the model-selection section (checkpoints chosen by AUCp)
- cross_dataset.py    one table across datasets (bench report --datasets)
- figures.py          the figures, drawn from plain arrays (nothing here reads MLflow)
- html.py             the self-contained HTML page
- budget_curve.py     AUC against training budget (bench report --budget-curve)
- document.py         bench report: build (runs, figures, text), write and log the report

May import: stats. Not the engine: a report reads what runs logged, whichever code ran them.
"""

MAY_IMPORT: tuple[str, ...] = ("stats",)
