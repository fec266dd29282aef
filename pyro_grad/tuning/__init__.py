"""Automatic per-site choice of gradient estimators, by measured variance per unit of work.

:mod:`~pyro_grad.tuning.tune` measures and chooses (``pg.tune``);
:mod:`~pyro_grad.tuning.schedule` decides when the objectives tune. (Nothing is imported
here: the objectives import the schedule, and ``tune`` diagnoses through them.)
"""
