"""Presentation: HTML pages (``html_report``), the main job's pages for every built-in
model (``main_job``), recommendations (``recommendation``), and the one "benchmark ×
applicable estimators" loop the CLI, the reports and ``benchmarks/`` share (``suite``).
Figures are the diagnostics' (:mod:`pyro_grad.diagnostics.figures`)."""
