"""Pyro's own ``infer`` keys at a sample site: what pyro_grad does with each.

A program written for Pyro's ELBOs says how to treat a site in its ``infer`` dict. pg
honours those keys or refuses them with one clear error; it never ignores one:

=================================  =============================================================
``infer`` key                      what pg does
=================================  =============================================================
``baseline`` (TraceGraph_ELBO's)   honoured at a site without ``rsample``: the site's estimator
                                   is ``Score`` with that baseline (``use_decaying_avg_baseline``
                                   and ``baseline_beta``: the decaying average; ``nn_baseline`` with
                                   ``nn_baseline_input``, or ``baseline_value``: that baseline,
                                   fitted by the squared error, so its network gets gradients).
                                   A pg estimator on the site wins. At a site with ``rsample``
                                   TraceGraph_ELBO takes the pathwise gradient and uses no
                                   baseline: so does pg, and it warns once.
``enumerate``                      ``"parallel"``: in ``pg.ELBO`` the site is summed out exactly, as
                                   TraceEnum_ELBO does (:mod:`pyro_grad.objectives.enumeration`);
                                   a pg estimator on the site wins. ``"sequential"``, and the key in
                                   ``pg.IWAE`` or ``pg.expectation``: refused
``expand``, ``num_samples``,       refused: pg enumerates a site's whole support, never a sample of
``tmc``, ``dim``                   it (TraceEnum_ELBO's tensor Monte Carlo)
``is_auxiliary``, ``is_observed``  as in Pyro's ELBOs (bookkeeping of Pyro's own)
=================================  =============================================================

Other keys are a program's own metadata, which Pyro ignores too.
"""

import warnings
from typing import Any, Optional, Set

import torch

from pyro_grad.distributions import describe
from pyro_grad.errors import EstimatorError
from pyro_grad.gradient_estimators import Estimator, Score

#: TraceGraph_ELBO's baseline options, with their defaults there.
BASELINE_OPTIONS = {"nn_baseline": None, "nn_baseline_input": None, "use_decaying_avg_baseline": False,
                    "baseline_beta": 0.90, "baseline_value": None}
#: The keys that set how Pyro enumerates, beyond ``enumerate`` itself: a sample of the
#: support (tensor Monte Carlo) or its layout.
TMC_KEYS = ("expand", "num_samples", "tmc", "dim")
#: Keys that ask Pyro to enumerate a site (or set how).
ENUMERATION_KEYS = ("enumerate", *TMC_KEYS)


class NetworkBaseline:
    """TraceGraph_ELBO's ``nn_baseline(nn_baseline_input)``: the baseline of a site, a
    network of an input the program computed (detached, as Pyro does). The program
    registers the network (``pyro.module``), as it does for Pyro."""

    def __init__(self, network: Any, network_input: Any) -> None:
        self.network = network
        self.network_input = network_input

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        value = self.network_input.detach() if torch.is_tensor(self.network_input) else self.network_input
        return self.network(value)

    def __repr__(self) -> str:
        return f"nn_baseline {type(self.network).__name__}"


class ValueBaseline:
    """TraceGraph_ELBO's ``baseline_value``: a tensor the program computed, fitted by the
    squared error (what it depends on is the program's to train)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.as_tensor(self.value)

    def __repr__(self) -> str:
        return "baseline_value"


def baseline_estimator(msg: dict) -> Optional[Estimator]:
    """The estimator a site's Pyro ``infer={"baseline": {...}}`` asks for, or None when it
    has none; one clear error for options TraceGraph_ELBO does not know or pg cannot
    combine. At a site with ``rsample`` there is none (the gradient is pathwise)."""
    options = msg["infer"].get("baseline")
    if options is None:
        return None
    name = msg["name"]
    if not isinstance(options, dict):
        raise EstimatorError(f"site '{name}': infer['baseline'] must be a dict of TraceGraph_ELBO's baseline "
                             f"options {sorted(BASELINE_OPTIONS)}, got {options!r}")
    unknown = sorted(set(options) - set(BASELINE_OPTIONS))
    if unknown:
        raise EstimatorError(f"site '{name}': infer['baseline'] has option(s) {unknown}, which TraceGraph_ELBO "
                             f"does not know either; its options are {sorted(BASELINE_OPTIONS)}")
    settings = {**BASELINE_OPTIONS, **options}
    network, value, decaying = settings["nn_baseline"], settings["baseline_value"], settings["use_decaying_avg_baseline"]
    if network is not None and value is not None:
        raise EstimatorError(f"site '{name}': infer['baseline'] sets both nn_baseline and baseline_value, which "
                             "TraceGraph_ELBO refuses too; keep one")
    if decaying and (network is not None or value is not None):
        raise EstimatorError(f"site '{name}': infer['baseline'] asks for a decaying average and a "
                             f"{'nn_baseline' if network is not None else 'baseline_value'} at once; TraceGraph_ELBO "
                             "adds them, pg takes one baseline per site: keep one")
    if network is not None and settings["nn_baseline_input"] is None:
        raise EstimatorError(f"site '{name}': infer['baseline'] has an nn_baseline but no nn_baseline_input")
    if getattr(msg["fn"], "has_rsample", False):
        return None
    if network is not None:
        return Score(baseline=NetworkBaseline(network, settings["nn_baseline_input"]))
    if value is not None:
        return Score(baseline=ValueBaseline(value))
    if decaying:
        return Score("decay", beta=float(settings["baseline_beta"]))
    return Score()


class InferKeys:
    """Checks each latent site's Pyro ``infer`` keys for one objective (named as errors
    name it: ``"pg.ELBO"``): honours ``enumerate="parallel"`` where the objective
    ``enumerates`` (sums marked sites out, as TraceEnum_ELBO), refuses every other
    enumeration key, and warns once per site where a baseline cannot apply."""

    def __init__(self, objective: str, enumerates: bool = False) -> None:
        self.objective = objective
        self.enumerates = enumerates
        self._warned: Set[str] = set()

    def check(self, msg: dict, where: str = "") -> None:
        infer = msg["infer"]
        site = f"site '{msg['name']}' ({describe(msg['fn'])}){where}"
        asked = {key: infer[key] for key in ENUMERATION_KEYS if infer.get(key) not in (None, False)}
        if asked and not self.enumerates:
            raise EstimatorError(
                f"{site} asks Pyro to enumerate it (infer {asked}, as config_enumerate sets): {self.objective} "
                "does not sum enumerated sites out (its bound is not linear in them). Use pg.ELBO, which sums "
                "them out as TraceEnum_ELBO does, or drop the enumeration and pg estimates the site's gradient"
            )
        tmc = {key: value for key, value in asked.items() if key in TMC_KEYS}
        if tmc:
            raise EstimatorError(
                f"{site} sets {tmc}: {self.objective} enumerates a site's whole support in parallel, never a "
                "sample of it (TraceEnum_ELBO's tensor Monte Carlo); drop those keys, or use TraceEnum_ELBO"
            )
        how = asked.get("enumerate")
        if how is not None and how != "parallel":
            raise EstimatorError(
                f"{site} asks for enumerate={how!r}: {self.objective} sums sites out in parallel only; "
                "write infer={'enumerate': 'parallel'} (config_enumerate's default)"
            )
        if how == "parallel" and not getattr(msg["fn"], "has_enumerate_support", False):
            raise EstimatorError(
                f"{site} is marked for enumeration, but its distribution has no finite support to sum over; "
                "drop the mark there, and pg estimates the site's gradient"
            )
        if "baseline" in infer and getattr(msg["fn"], "has_rsample", False) and msg["name"] not in self._warned:
            self._warned.add(msg["name"])
            warnings.warn(
                f"site '{msg['name']}' ({describe(msg['fn'])}) has rsample, so its gradient is pathwise and its "
                "infer['baseline'] takes no part, as in TraceGraph_ELBO", stacklevel=2,
            )
