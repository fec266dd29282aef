"""The shared engine under both objectives: running K particles (``particles``), coupled
re-runs at other site values (``alternative_run``), the pruned perturbations of the
one-run engine (``one_run``), Python reads of drawn values
(``control_flow``), a guide and model run as an ELBO scores them (``importance``), fast
provenance reads (``provenance``), and assembling per-sample terms into a surrogate
(``surrogate``)."""
