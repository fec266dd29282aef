"""What an objective does at a pathwise site whose value reaches f through a jump.

The watch (:mod:`pyro_grad.engine.jumps`) finds the jumps while the program runs; the
objective then reviews them (:meth:`JumpGuard.review`), site by site:

* a site whose pathwise estimator came from ``"auto"`` (or a measured choice) switches
  to an unbiased estimator that needs no smoothness: ``MeasureValued()`` where the
  distribution has a weak derivative, else ``Score("auto")`` (the leave-one-out baseline
  at K ≥ 2). The run is redone with the switch, and the guard keeps it for later runs;
* a pathwise estimator the user chose (a config, a site's ``infer``, a handler's
  default) is refused with one error naming the site, the operation, the line and what
  applies, unless it says ``jumps="ignore"``.

A site's path is switched before its draw (in ``_pyro_sample``), so a run that found a
jump is never patched after the fact: it is redone on the same draws
(:class:`SameDraws`), with only the switched sites' paths changed. Redoing it on fresh
draws would bias the estimate: the runs where a jump shows (a rare branch, say) would be
the ones thrown away.
"""

from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import torch
from pyro.ops.provenance import ProvenanceTensor
from pyro.poutine.messenger import Messenger

from pyro_grad.distributions import describe, parameter_provenance, without_path_switch
from pyro_grad.engine.jumps import Jump, jumps_in
from pyro_grad.engine.particles import READ_JUMPS
from pyro_grad.engine.provenance import plain, provenance_of
from pyro_grad.errors import EstimatorError
from pyro_grad.handler import AUTO, CHOICE, CONFIG, DEFAULT, SITE, TUNED
from pyro_grad.gradient_estimators import Estimator, MeasureValued, PathwiseEstimator, Score, Site, weak_derivatives
from pyro_grad.gradient_estimators.registry import applicable


def is_pathwise(msg: dict) -> bool:
    """Whether a site's value is drawn by a pathwise estimator, whose jumps are watched."""
    return isinstance(msg["infer"].get("estimator"), PathwiseEstimator)


def latent_nodes(traces: Iterable[Any]) -> Dict[str, dict]:
    """Every latent sample site of ``traces`` (one per looped particle), by name: a site
    that only some particles draw is reviewed all the same."""
    nodes: Dict[str, dict] = {}
    for trace in traces:
        for name, node in trace.nodes.items():
            if node["type"] == "sample" and not node["is_observed"]:
                nodes.setdefault(name, node)
    return nodes


def found_jumps(traces: Iterable[Any], provenances: Iterable[frozenset]) -> Dict[str, List[Jump]]:
    """Every jump that reaches what the objective differentiates (``provenances``), and
    every read of a pathwise value into Python (marked in ``traces``), by site."""
    found: Dict[str, List[Jump]] = {}
    jumps = [j for p in provenances for j in jumps_in(p)]
    jumps += [j for t in traces for node in t.nodes.values() for j in node.get("infer", {}).get(READ_JUMPS, ())]
    for jump in jumps:
        if jump not in found.setdefault(jump.site, []):
            found[jump.site].append(jump)
    return found


def smooth_free(site: Site, objective: str, reruns: bool = True) -> Estimator:
    """The unbiased estimator ``"auto"`` takes at a site where f jumps: ``MeasureValued()``
    where it applies (in ``pg.expectation`` and ``pg.ELBO``) and has a weak derivative in
    every parameter of the distribution, else ``Score("auto")``. (A Gamma has one in its
    rate only: ``diagnose``'s site rows shift its concentration too, which it refuses.)
    Without ``reruns`` (a program that sums sites out, which re-runs do not combine
    with), ``Score("auto")``."""
    coupled = MeasureValued()
    family = weak_derivatives.family_of(site.fn)
    if (reruns and objective in coupled.objectives and coupled.applies_to(site) and coupled.refusal(site) is None
            and family is not None and not family[0].refused):
        return coupled
    return Score("auto")


def describe_jumps(jumps: List[Jump], limit: int = 3) -> str:
    """The first ``limit`` jumps, for a message: ``> at model.py:3, torch.round at model.py:5``."""
    shown = ", ".join(str(j) for j in jumps[:limit])
    return shown + (f" and {len(jumps) - limit} more" if len(jumps) > limit else "")


def jump_error(estimator: Estimator, site: Site, jumps: List[Jump], objective: str) -> EstimatorError:
    """The refusal of a pathwise ``estimator`` the user chose at a site where f jumps."""
    options = [e for e in applicable(site, objective) if not isinstance(e, PathwiseEstimator) and e.unbiased]
    listed = ", ".join(repr(e) for e in options) or "none"
    return EstimatorError(
        f"{estimator!r} at site '{site.name}' ({describe(site.fn)}): the site's value reaches f through "
        f"{describe_jumps(jumps)}, where f jumps in the value; the pathwise derivative misses the jump, so "
        f"its gradient would be wrong. Unbiased estimators that apply: {listed}. If the jump cannot change "
        f"E[f] (a comparison only logged, say), write {type(estimator).__name__}(jumps='ignore')"
    )


#: Redos of one run at most: each switches at least one site.
MAX_REDOS = 16


def through(name: str, other: str, jumps: List[Jump], other_jumps: List[Jump], nodes: Mapping[str, dict]) -> bool:
    """Whether every jump of site ``name`` is one of ``other``'s, and ``other``'s value came from
    ``name``'s (so ``name``'s marks may come through ``other`` alone)."""
    same = {(j.operation, j.line) for j in other_jumps}
    return name in provenance_of(nodes[other]["value"]) and all((j.operation, j.line) in same for j in jumps)


class SameDraws(Messenger):
    """Replays every draw of ``trace`` (an unpruned trace, so subsample indices too): the
    redo of a run whose sites switched path sees the very same values. A site that is no
    longer pathwise takes its value detached (its estimator differentiates its law);
    enter it outside the particle plate and every estimators handler, as
    :class:`~pyro_grad.engine.alternative_run.AlternativeRun`."""

    def __init__(self, trace: Any) -> None:
        super().__init__()
        self.trace = trace

    def _pyro_sample(self, msg: dict) -> None:
        if msg["is_observed"] or msg["value"] is not None:
            return
        node = self.trace.nodes.get(msg["name"])
        if node is None or node["type"] != "sample" or node["is_observed"]:
            return
        value = plain(node["value"])
        if not is_pathwise(msg):
            # As a non-pathwise draw is made (DetachedSample.sample): no derivative through
            # the value, or a leaf for estimators that differentiate f in it, and the
            # provenance of the parameters it was drawn from.
            value = value.detach()
            if getattr(msg["fn"], "differentiable_value", False):
                value.requires_grad_(torch.is_grad_enabled())
            upstream = parameter_provenance(msg["fn"])
            value = ProvenanceTensor(value, upstream) if upstream else value
        msg["value"] = value


class JumpGuard(Messenger):
    """Switches, before the draw, each site listed in ``switched`` whose pathwise estimator
    came from ``"auto"`` or a measurement, to the estimator listed (see module docs).

    Enter it outside the estimators handlers, so that it sees their choice. One guard
    per objective keeps what it learned across that objective's runs (an ELBO's steps).
    """

    def __init__(self, objective: str) -> None:
        super().__init__()
        self.objective = objective
        #: site → (the estimator it switched to, the jumps that made it switch).
        self.switched: Dict[str, Tuple[Estimator, List[Jump]]] = {}
        #: site → the jumps a user's ``jumps="ignore"`` let through.
        self.ignored: Dict[str, List[Jump]] = {}
        #: Whether a switched site may take an estimator that re-runs the program (not
        #: in a program that sums sites out: see :mod:`pyro_grad.objectives.enumeration`).
        self.reruns = True

    def _pyro_sample(self, msg: dict) -> None:
        name = msg["name"]
        if name not in self.switched or msg["is_observed"] or msg["value"] is not None:
            return
        choice = msg["infer"].get(CHOICE)
        if not is_pathwise(msg) or choice is None or choice.strength > TUNED:
            return
        estimator, _ = self.switched[name]
        msg["fn"] = without_path_switch(msg["fn"])
        estimator.prepare(msg)
        msg["infer"]["estimator"] = estimator

    def review(self, nodes: Mapping[str, dict], found: Dict[str, List[Jump]]) -> bool:
        """Apply the policy to the jumps a run ``found`` (its latent sites ``nodes``):
        True when a site switches, so the run must be redone; one error for a pathwise
        estimator the user chose there.

        A jump in a later pathwise draw also marks every pathwise draw its value came from
        (``w ~ Normal(z, 1)``, ``w > 0``); once the later one switches, its own estimator
        differentiates its law in ``z`` and ``z``'s path is right. So a site whose marks
        all come through a later jumping site waits for the redo, which tells."""
        pending = {}
        for name, jumps in found.items():
            node = nodes.get(name)
            estimator = node["infer"].get("estimator") if node is not None else None
            if not isinstance(estimator, PathwiseEstimator):
                continue
            if estimator.jumps == "ignore":
                self.ignored[name] = jumps
                continue
            choice = node["infer"].get(CHOICE)
            if choice is None or choice.strength > TUNED:
                raise jump_error(estimator, Site.of(node), jumps, self.objective)
            pending[name] = jumps  # already switched: drawn before the switch (another looped particle)
        for name, jumps in pending.items():
            if name in self.switched:
                continue
            if not any(through(name, other, jumps, pending[other], nodes) for other in pending if other != name):
                self.switched[name] = (smooth_free(Site.of(nodes[name]), self.objective, self.reruns), jumps)
        return bool(pending)

    def settle(self, run: Any, review: Callable[[Any], Tuple[Mapping[str, dict], Dict[str, List[Jump]]]],
               redo: Callable[[Any], Any], draws: Callable[[Any], Any]) -> Any:
        """``run`` once no site in it must switch: while :meth:`review` of ``review(run)``
        switches one, ``run`` is redone by ``redo(run)`` on the same draws
        (:class:`SameDraws` of the trace ``draws(run)``)."""
        for _ in range(MAX_REDOS):
            if not self.review(*review(run)):
                return run
            with SameDraws(draws(run)):
                run = redo(run)
        nodes, _ = review(run)
        raise EstimatorError(
            f"the program's pathwise sites kept changing from run to run ({sorted(nodes)[:8]} ...), so pg cannot "
            "choose their estimators before their draws; give the sites names that repeat, or choose an "
            "estimator that needs no smoothness for them (pg.estimators(..., default=pg.Score('loo')))"
        )

    def reason(self, name: str) -> Optional[str]:
        """Why the guard touched site ``name``'s estimator, or None."""
        if name in self.switched:
            estimator, jumps = self.switched[name]
            return (f"f jumps in its value at {describe_jumps(jumps)}: Reparam would miss the jump, "
                    f"{estimator!r} needs no smoothness")
        if name in self.ignored:
            return f"f jumps in its value at {describe_jumps(self.ignored[name])}, ignored as asked (jumps='ignore')"
        return None


#: Who chose a site's estimator, by the strength of the choice (:class:`~pyro_grad.handler.Choice`).
CHOSEN_BY = {
    AUTO: "auto",
    TUNED: "measured by pg.tune",
    DEFAULT: "the estimators handler's default",
    SITE: "the site's infer={'estimator': ...}",
    CONFIG: "an estimators config",
}


def choice_reasons(trace, guard: JumpGuard, *explainers: Any) -> Dict[str, str]:
    """Why each latent site of ``trace`` has its estimator: who chose it, and for
    ``"auto"`` why (a smooth pathwise value, no ``rsample``, a jump, or what ``explainers``
    say: each has ``reason(name)``, as an ELBO's
    :class:`~pyro_grad.objectives.auto_enumeration.AutoEnumeration`)."""
    reasons = {}
    for name, node in trace.nodes.items():
        if node["type"] != "sample" or node["is_observed"] or "estimator" not in node["infer"]:
            continue
        choice = node["infer"].get(CHOICE)
        chosen_by = CHOSEN_BY[choice.strength] if choice is not None else "the site's infer={'estimator': ...}"
        if choice is not None and choice.strength == SITE and choice.site_estimator is None:
            chosen_by = "the site's infer={'baseline': ...}, as TraceGraph_ELBO reads it"
            if node["infer"].get("enumerate") == "parallel":
                chosen_by = "the site's infer={'enumerate': 'parallel'} (config_enumerate's)"
        if node["infer"].get("_enumerate_dim") is not None:
            chosen_by += ": summed out, as TraceEnum_ELBO does"
        why = next((r for r in (x.reason(name) for x in (guard, *explainers)) if r is not None), None)
        if why is None and choice is not None and choice.strength == AUTO:
            why = ("the distribution has rsample and f is smooth in the value where watched" if is_pathwise(node)
                   else "the distribution has no rsample")
        reasons[name] = f"{chosen_by}: {why}" if why else chosen_by
    return reasons
