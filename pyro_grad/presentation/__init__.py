"""Presentation: figures (``figures``), HTML pages (``html_report``), the main job's
pages for every built-in model (``main_job``), and the one "benchmark × applicable
estimators" loop the CLI, the reports and ``benchmarks/`` share (``suite``).

Nothing here is imported by ``import pyro_grad`` beyond ``html_report.report``, and
that loads matplotlib and ArviZ only when it draws."""
