"""Reading finished (or running) studies: MLflow runs → tidy frames → fronts, tables, figures.

Modules, one concept each:

- ``runs``: MLflow → ``Runs`` (``.trials``, ``.epochs``, ``.layers`` DataFrames);
- ``setting``: a trial's short "Setting" label (searched or study-set params, train overrides);
- ``pareto``: seed aggregation and non-dominated fronts (pure pandas/numpy);
- ``selection``: the operating-point rule used by the tables (pure);
- ``matched``: compression at matched validation error per seed, against a reference method,
  with bootstrap intervals and permutation-test p-values (pure); ``matched_text``: the same in
  words and as a table;
- ``tables``: the paper's Table 1 layout as Markdown, CSV and LaTeX (pure);
- ``figures``: the selection view of the Pareto fronts, the reporting view of the selected
  points, layer profiles, training curves, sensitivity statistics; ``figstyle``: what they
  share (style, a colour and marker per method, small-multiple grids, zero-aware log axes);
- ``findings``: the one-line findings under the figures (pure);
- ``document``: a small document model rendered to Markdown and HTML;
- ``sections``: the report's sections (prose, tables, figures) written into a document;
- ``report``: ``make_report``: all of the above into one folder, logged to the parent run
  (``study report`` resolves its inputs and calls it).

Nothing here imports the training side (torch, ``study.train``, ``study.runner``); of
``study`` it imports only the torch-free run format, :mod:`study.runformat`.
"""
