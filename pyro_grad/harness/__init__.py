"""The benchmark harness, above the core: SVI comparisons (``comparison``: ``compare``,
the fit ledger and store, executors), reports and the main job (``presentation``), and
the benchmark programs with exact references (``models``).

Its dependencies are the ``harness`` extra (``pip install "pyro-grad[harness]"``; the
``dev`` extra includes it). The core (estimators, engine, handler, objectives,
diagnostics, tuning) never imports it: ``pyro_grad.compare``, ``pyro_grad.Comparison``,
``pyro_grad.AutoGuide`` and ``pyro_grad.report`` load it on first use.
"""
