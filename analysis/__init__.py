"""Reading finished (or running) studies: MLflow runs → tidy frames → fronts, tables, figures.

Modules, one concept each:

- ``runs``: MLflow → ``Runs`` (``.trials``, ``.epochs``, ``.layers`` DataFrames);
- ``pareto``: seed aggregation and non-dominated fronts (pure pandas/numpy);
- ``selection``: the operating-point rule used by the tables (pure);
- ``tables``: the paper's Table 1 layout as Markdown, CSV and LaTeX (pure);
- ``figures``: Pareto fronts, layer profiles, training curves, sensitivity statistics;
- ``report``: ``study report``: all of the above into one folder, logged to the parent run.

Nothing here imports the training side (torch, ``study.train``, ``study.runner``).
"""
