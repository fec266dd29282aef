"""TraceEnum_ELBO's enumeration inside :class:`pyro_grad.ELBO`.

A site marked for enumeration is summed out exactly, as ``TraceEnum_ELBO`` sums it:

* in the model (``config_enumerate`` on the model, ``infer={"enumerate": "parallel"}`` at
  a site the guide does not draw), the model's log-density is marginalized over it,
  ``log Σ_z p(x, z, ·)``, by Pyro's tensor contraction (``pyro.ops.contract``), so
  ``pyro.markov`` chains cost what they cost there;
* in the guide (``config_enumerate`` on the guide, the ``infer`` key, or ``pg.Enumerate()``
  at the site), every ELBO term downstream of the site sees every value, weighted by
  ``q(z)`` (TraceEnum's Dice factor, Foerster et al. 2018, via ``pyro.infer.util.Dice``).

The other guide sites keep their estimators. A pathwise site's gradient flows through the
enumerated terms as through any other. A score-path site ``s`` gets its own estimator's
term ``∇log q(z_s) · (f_s − b_s)``, where ``f_s`` is what Dice multiplies by ``s``'s factor:
the terms at ``s``'s plates or deeper, summed over the enumerated values with their
weights (plate-level Rao-Blackwellization, as TraceEnum's). ``f_s`` is read as the gradient
of the expected ELBO in a zero *probe* standing where ``s``'s Dice factor stands: one
backward pass gives every site's ``f``.

Cost: the enumerated tensors are ``S`` times wider per enumerated site in scope, as in
TraceEnum_ELBO; plus one backward pass for the probes. Difference estimators (which re-run
the program at other values) are not combined with enumeration and are refused.
"""

from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch
from opt_einsum import shared_intermediates
from pyro.distributions.score_parts import ScoreParts
from pyro.infer.util import Dice
from pyro.ops import packed
from pyro.ops.contract import contract_tensor_tree
from pyro.poutine.enum_messenger import EnumMessenger
from pyro.poutine.messenger import Messenger
from pyro.poutine.trace_struct import Trace

from pyro_grad.distributions import describe
from pyro_grad.engine.particles import PARTICLE_PLATES, ParticleLayout, match_dims
from pyro_grad.engine.provenance import plain
from pyro_grad.engine.surrogate import Block, ScorePart
from pyro_grad import baselines
from pyro_grad.errors import EstimatorError
from pyro_grad.gradient_estimators import DifferenceEstimator, Enumerate, ScoreEstimator, ValueGradientEstimator
from pyro_grad.pyro_infer import ENUMERATION_KEYS, InferKeys

#: Key of a site's ``infer`` that Pyro's enumeration sets (``EnumMessenger``).
ENUMERATE_DIM = "_enumerate_dim"


class EnumerationMarks(Messenger):
    """Before a guide site's draw, in an ELBO: ``pg.Enumerate()`` means TraceEnum's parallel
    enumeration, so the site is marked ``infer["enumerate"] = "parallel"``; a site marked
    by Pyro (``config_enumerate``) where an explicit pg estimator won keeps that estimator,
    and its mark is taken off (the site table says which estimator ran)."""

    def _pyro_sample(self, msg: dict) -> None:
        if msg["is_observed"] or msg["value"] is not None:
            return
        estimator = msg["infer"].get("estimator")
        if isinstance(estimator, Enumerate):
            msg["infer"]["enumerate"] = "parallel"
        elif estimator is not None and msg["infer"].get("enumerate") == "parallel":
            msg["infer"]["enumerate"] = None

    def _pyro_post_sample(self, msg: dict) -> None:
        refuse_late_enumerate(msg)


def refuse_late_enumerate(msg: dict) -> None:
    """A ``pg.Enumerate()`` chosen after Pyro's enumeration passed the site (by a
    ``pg.estimators`` handler around the objective's call) would be one sampled value:
    refused, with the forms that do enumerate."""
    if (not msg["is_observed"] and isinstance(msg["infer"].get("estimator"), Enumerate)
            and msg["infer"].get(ENUMERATE_DIM) is None):
        raise EstimatorError(
            f"pg.Enumerate() at site '{msg['name']}' ({describe(msg['fn'])}) was chosen by a pg.estimators "
            "handler around the objective's call, after pg.ELBO's enumeration had passed the site, so the "
            "site would be sampled, not summed out; wrap the model or guide instead (pg.estimators(program, "
            f"{{'{msg['name']}': pg.Enumerate()}})), or mark the site infer={{'enumerate': 'parallel'}}"
        )


class ModelMarks(Messenger):
    """Before a model site's draw: ``pg.Enumerate()`` chosen there (``pg.estimators(model,
    {"z": pg.Enumerate()})``) marks it for enumeration too, and its enumeration keys are
    checked (``InferKeys``) before Pyro enumerates it."""

    def __init__(self, infer_keys: InferKeys) -> None:
        super().__init__()
        self.infer_keys = infer_keys

    def _pyro_sample(self, msg: dict) -> None:
        if msg["is_observed"] or msg["value"] is not None:
            return
        if isinstance(msg["infer"].get("estimator"), Enumerate):
            msg["infer"]["enumerate"] = "parallel"
        if any(msg["infer"].get(key) not in (None, False) for key in ENUMERATION_KEYS):
            self.infer_keys.check(msg, " in the model")

    def _pyro_post_sample(self, msg: dict) -> None:
        refuse_late_enumerate(msg)


def enumerating(model, guide, max_plate_nesting: int, infer_keys: InferKeys):
    """``model`` and ``guide`` as TraceEnum_ELBO runs them: parallel enumeration in the
    dims left of the plates, the model's after the guide's."""
    guide = EnumMessenger(first_available_dim=-1 - max_plate_nesting)(EnumerationMarks()(guide))
    return EnumMessenger()(ModelMarks(infer_keys)(model)), guide


def is_enumerated(model_trace: Trace, guide_trace: Trace) -> bool:
    """Whether a trace pair summed any site out."""
    return any(site["type"] == "sample" and site["infer"].get(ENUMERATE_DIM) is not None
               for trace in (model_trace, guide_trace) for site in trace.nodes.values())


def _ordinal(trace: Trace, site: dict) -> frozenset:
    return frozenset(trace.plate_to_symbol[f.name] for f in site["cond_indep_stack"] if f.vectorized)


def _common_scale(sites: List[dict]):
    """The one subsampling scale every enumerated term shares (the contraction's log-sum
    cannot take a scale per term)."""
    scales = {float(site["scale"]) for site in sites}
    for site in sites:
        if torch.is_tensor(site["scale"]) and site["scale"].dim():
            raise EstimatorError(f"site '{site['name']}' is scaled by a tensor, and an enumerated sum takes one "
                                 "scalar scale (as in TraceEnum_ELBO)")
    if len(scales) > 1:
        names = sorted(site["name"] for site in sites)
        raise EstimatorError(f"the enumerated sites and the terms that depend on them ({names}) have different "
                             f"subsampling scales {sorted(scales)}; an enumerated sum takes one (as in TraceEnum_ELBO)")
    return sites[0]["scale"] if sites else 1.0


def marginal_costs(model_trace: Trace, guide_trace: Trace) -> Tuple[Dict[frozenset, list], Dict[str, frozenset]]:
    """The model's terms by ordinal (the plates they lie in), with every model-enumerated
    site summed out by ``contract_tensor_tree``; and every sample site's ordinal. Terms
    are packed tensors (``pyro.ops.packed``). As TraceEnum_ELBO: a site depends on
    another iff its plates include the other's."""
    ordering = {name: _ordinal(trace, site) for trace in (model_trace, guide_trace)
                for name, site in trace.nodes.items() if site["type"] == "sample"}
    costs: Dict[frozenset, list] = OrderedDict()
    enumerated: Dict[frozenset, list] = OrderedDict()
    enum_dims, plain_dims = set(), set().union(*ordering.values())
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample":
            continue
        if name in guide_trace.nodes:
            costs.setdefault(ordering[name], []).append(site)
            plain_dims.update(guide_trace.nodes[name]["packed"]["log_prob"]._pyro_dims)
        elif site["infer"].get(ENUMERATE_DIM) is None:
            costs.setdefault(ordering[name], []).append(site)
        else:
            enumerated.setdefault(ordering[name], []).append(site)
            enum_dims.update(site["packed"]["log_prob"]._pyro_dims)
    enum_dims -= plain_dims
    if not enumerated:
        return OrderedDict((t, [s["packed"]["log_prob"] for s in sites]) for t, sites in costs.items()), ordering
    _check_guide_enumeration_is_as_local(enumerated, guide_trace)
    marginal: Dict[frozenset, list] = OrderedDict()
    log_factors: Dict[frozenset, list] = OrderedDict()
    in_sum = []
    for t, sites in costs.items():
        for site in sites:
            log_prob = site["packed"]["log_prob"]
            if enum_dims.isdisjoint(log_prob._pyro_dims):
                marginal.setdefault(t, []).append(log_prob)
            else:  # mask inside the log-sum, scale outside it
                masked = packed.scale_and_mask(site["packed"]["unscaled_log_prob"], mask=site["packed"]["mask"])
                log_factors.setdefault(t, []).append(masked)
                in_sum.append(site)
    for t, sites in enumerated.items():
        for site in sites:
            log_factors.setdefault(t, []).append(site["packed"]["unscaled_log_prob"])
            in_sum.append(site)
    scale = _common_scale(in_sum)
    with shared_intermediates():
        log_factors = contract_tensor_tree(log_factors, enum_dims)
    for t, terms in log_factors.items():
        marginal.setdefault(t, []).extend(packed.scale_and_mask(term, scale=scale) for term in terms)
    return marginal, ordering


def _check_guide_enumeration_is_as_local(enumerated: Dict[frozenset, list], guide_trace: Trace) -> None:
    """TraceEnum_ELBO's restriction: no guide-enumerated site lies in a plate that some
    model-enumerated site lies outside of."""
    common = frozenset.intersection(*enumerated.keys())
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample" and site["infer"].get(ENUMERATE_DIM) is not None:
            for frame in site["cond_indep_stack"]:
                if frame.vectorized and guide_trace.plate_to_symbol[frame.name] not in common:
                    raise EstimatorError(
                        f"guide site '{name}' is enumerated in plate '{frame.name}', and a site the model "
                        "enumerates lies outside that plate; as in TraceEnum_ELBO, model enumeration must be "
                        "no more global than guide enumeration: enumerate that site in the guide too"
                    )


def _refuse_difference_estimators(guide_trace: Trace) -> None:
    for name, site in guide_trace.nodes.items():
        estimator = site["infer"].get("estimator") if site["type"] == "sample" else None
        if isinstance(estimator, (DifferenceEstimator, ValueGradientEstimator)) and not site["is_observed"] \
                and site["infer"].get(ENUMERATE_DIM) is None:
            raise EstimatorError(
                f"{estimator!r} at site '{name}' ({describe(site['fn'])}): this program sums sites out "
                "(enumeration, as TraceEnum_ELBO), and pg does not yet combine enumeration with estimators "
                "that re-run the program or differentiate f in the value; at this site use Reparam(), "
                "STL(), Score() (with any baseline) or Enumerate()"
            )


def _pack(trace: Trace, plate_to_symbol: Optional[Dict[str, str]] = None) -> None:
    """Pyro's packed tensors of a trace, from plain copies of its densities (the
    provenance they carry is for the jump watch, already done)."""
    for site in trace.nodes.values():
        if site["type"] != "sample":
            continue
        site["log_prob"] = plain(site["log_prob"])
        if "score_parts" in site:
            site["score_parts"] = ScoreParts(*(plain(p) if torch.is_tensor(p) else p for p in site["score_parts"]))
    trace.pack_tensors(plate_to_symbol)


def _uses_score(site: dict) -> bool:
    estimator = site["infer"].get("estimator")
    return (site["type"] == "sample" and not site["is_observed"] and isinstance(estimator, ScoreEstimator)
            and site["infer"].get(ENUMERATE_DIM) is None)


def enumerated_terms(
    model_trace: Trace, guide_trace: Trace, layout: ParticleLayout, num_samples: int = 1, surrogate: bool = True
) -> Tuple[torch.Tensor, Block]:
    """An enumerated trace pair's per-particle ELBO surrogate ``(P,)`` (each particle's
    entry is its group's mean, so a mean over a group's particles is that group's
    estimate; ``num_samples`` groups) and its score-path block.

    The surrogate's value is TraceEnum_ELBO's ELBO estimate; its gradient is exact
    through the enumerated sites, pathwise at pathwise sites, and leaves the score-path
    sites to their estimators' terms (the block: ``∇log q(z_s)`` with its ``f_s``).
    Without ``surrogate`` only the value is computed (no probes, empty block).
    """
    _refuse_difference_estimators(guide_trace)
    _pack(guide_trace)
    _pack(model_trace, guide_trace.plate_to_symbol)
    costs, ordering = marginal_costs(model_trace, guide_trace)
    probes: Dict[str, torch.Tensor] = {}
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample":
            continue
        log_prob = site["packed"]["log_prob"]
        if surrogate and _uses_score(site):
            # The score-path site's own Dice factor becomes a zero probe (value 1, no
            # gradient to the parameters): its estimator adds its score term instead.
            # Its −log q enters by value only, as in Trace_ELBO: its gradient at fixed z
            # has mean zero and only adds variance.
            score = site["score_parts"].score_function
            probe = torch.zeros(score.shape if torch.is_tensor(score) else (), requires_grad=True)
            probes[name] = probe
            parts = site["packed"]["score_parts"]
            site["packed"]["score_parts"] = parts._replace(
                score_function=packed.pack(probe, site["infer"]["_dim_to_symbol"]))
            log_prob = log_prob.detach()
            log_prob._pyro_dims = site["packed"]["log_prob"]._pyro_dims
        costs.setdefault(ordering[name], []).append(packed.neg(log_prob))
    dice = Dice(guide_trace, ordering)
    total = dice.compute_expectation(costs)
    if not torch.is_tensor(total):
        total = torch.tensor(float(total))
    block: Block = {}
    if probes and total.requires_grad:
        fs = torch.autograd.grad(total, list(probes.values()), retain_graph=True, allow_unused=True)
        for (name, probe), f in zip(probes.items(), fs):
            site = guide_trace.nodes[name]
            score = layout.first(plain(site["score_parts"].score_function))
            f = torch.zeros(probe.shape) if f is None else f.detach()
            # Value-gradient estimators are refused beside enumeration: no draw to read.
            block[name] = ScorePart(site["infer"]["estimator"], score, match_dims(layout.first(f), score.dim()),
                                    baselines.state_of(site), None)
    if num_samples == 1:
        return (total / layout.num).expand(layout.num), block
    return _group_means(dice, costs, layout, num_samples, guide_trace), block


def _group_means(dice: Dice, costs: Dict[frozenset, list], layout: ParticleLayout, num_samples: int,
                 guide_trace: Trace) -> torch.Tensor:
    """Each particle's entry: its group's expected ELBO over the group's particles. The
    expectation is linear in the costs, so with each particle's costs weighted by a
    ``w_i = 1``, ``∂E/∂w_i`` is particle i's share of it: one contraction and one backward
    pass for every group (differentiable in the parameters where gradients are on)."""
    # The model's plates joined the guide's symbols when the model was packed.
    symbol = next(guide_trace.plate_to_symbol[name] for name in PARTICLE_PLATES if name in guide_trace.plate_to_symbol)
    differentiable = torch.is_grad_enabled()
    with torch.enable_grad():
        weights = torch.ones(layout.num, requires_grad=True)
        weights._pyro_dims = symbol
        weighted = OrderedDict((t, [_masked(c, weights) for c in terms]) for t, terms in costs.items())
        (shares,) = torch.autograd.grad(dice.compute_expectation(weighted), weights, create_graph=differentiable)
    per_group = layout.num // num_samples
    return shares.reshape(num_samples, per_group).mean(1).repeat_interleave(per_group)


def _masked(cost, mask: torch.Tensor) -> torch.Tensor:
    """A packed cost times a packed mask (``pyro.ops.packed.mul`` calls an ``einsum``
    signature current torch does not take)."""
    if not torch.is_tensor(cost):
        cost = torch.tensor(float(cost))
        cost._pyro_dims = ""
    cost, mask = packed.broadcast_all(cost, mask)
    result = cost * mask
    result._pyro_dims = cost._pyro_dims
    return result


__all__ = ["EnumerationMarks", "enumerating", "is_enumerated", "marginal_costs", "enumerated_terms"]
