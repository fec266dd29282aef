"""Automatic per-site choice of gradient estimators, by measured variance per unit of work.

:mod:`~pyro_grad.tuning.tune` measures and chooses (``pg.tune``);
:mod:`~pyro_grad.tuning.retuned` wraps an objective to tune before its first call and
every N calls (``pg.Retuned``). Tuning sits above the objectives and diagnostics: it
diagnoses through them, and they never import it.
"""
