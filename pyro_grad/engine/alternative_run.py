"""``AlternativeRun``: re-run a program with one site's value changed, coupled to a first run.

Estimators that differentiate by differences of f (measure-valued derivatives,
ARM, DisARM, enumeration) compare the program's f at the sampled value with its
f at an alternative value. The lower the variance of that difference, the better,
so the alternative run shares the first run's randomness wherever it can:

* the changed site takes the alternative value;
* every other site whose distribution is unchanged (all upstream sites, and downstream
  sites the change does not reach) replays its value from the first run;
* a site whose distribution changed is drawn anew, coupled to its first value through
  a common uniform where the distribution allows (Bernoulli; any distribution with
  ``cdf`` and ``icdf``), else independently;
* a site whose shape control flow changed (a plate sized by a draw) is drawn anew: there
  is nothing to couple it with element by element.

Subsample sites count as sites: a re-run scores the first run's data points, unless
control flow resized the plate.
"""

from typing import Any, Dict, Optional

import pyro.distributions as dist
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from pyro.poutine.trace_struct import Trace

from pyro_grad.engine.assumptions import decided
from pyro_grad.engine.provenance import plain
from pyro_grad.distributions import (
    describe,
    equal_parameters,
    given_parameters,
    leaf_distribution,
    probs_of,
    same_distribution,
    uniform_given_bernoulli,
)
from pyro_grad.errors import EstimatorError


def coupled_draw(old_fn: Any, old_value: torch.Tensor, new_fn: Any) -> Any:
    """A draw from ``new_fn`` sharing a uniform with ``old_value ~ old_fn``, or None."""
    old_leaf, new_leaf = leaf_distribution(old_fn), leaf_distribution(new_fn)
    shape = torch.broadcast_shapes(old_value.shape, new_fn.shape())
    if isinstance(old_leaf, dist.Bernoulli) and isinstance(new_leaf, dist.Bernoulli):
        p_old = probs_of(old_leaf).detach().expand(shape)
        # u | b, then b' = 1[u < p'].
        u = uniform_given_bernoulli(old_value.detach().expand(shape), p_old)
        return (u < probs_of(new_leaf).detach().expand(shape)).to(old_value.dtype)
    try:
        u = old_fn.cdf(old_value.detach())
        return new_fn.icdf(u)
    except (NotImplementedError, AttributeError, ValueError):
        return None


def redrawn_where_changed(old_fn: Any, old_value: torch.Tensor, new_fn: Any) -> Optional[torch.Tensor]:
    """A draw from ``new_fn`` that keeps ``old_value`` (drawn from ``old_fn``) at the
    elements whose distribution did not change and is coupled to it on common random
    numbers at the others (drawn anew where the family has none); None when the families
    differ and nothing couples (the site is drawn anew)."""
    redrawn = coupled_draw(old_fn, old_value, new_fn)
    same = unchanged_elements(old_fn, new_fn, old_value)
    if same is None:
        return redrawn
    redrawn = new_fn.sample() if redrawn is None else redrawn
    return torch.where(same, old_value, redrawn.to(old_value.dtype))


def unchanged_elements(old_fn: Any, new_fn: Any, value: torch.Tensor) -> Optional[torch.Tensor]:
    """Which elements of ``value`` (a mask shaped like it) have the same distribution under
    ``old_fn`` and ``new_fn``: the same family with equal parameters there; None when the
    families differ."""
    old_leaf, new_leaf = leaf_distribution(old_fn), leaf_distribution(new_fn)
    if type(old_leaf) is not type(new_leaf):
        return None
    old_params, new_params = given_parameters(old_leaf), given_parameters(new_leaf)
    if old_params.keys() != new_params.keys():
        return None
    event_dim = len(new_fn.event_shape)
    # Dims .to_event() made event dims: batch dims of the parameters, one element here.
    reinterpreted = event_dim - len(new_leaf.event_shape)
    batch = value.shape[: value.dim() - event_dim]
    same = torch.ones(batch, dtype=torch.bool)
    for name in old_params:
        x, y = torch.broadcast_tensors(plain(old_params[name]).detach(), plain(new_params[name]).detach())
        parameter_event_dims = getattr(old_leaf.arg_constraints.get(name), "event_dim", 0)
        equal = equal_parameters(x, y, parameter_event_dims)
        # A parameter's own event dims (a Categorical's probabilities) count as one element.
        own = parameter_event_dims + reinterpreted
        if own:
            equal = equal.reshape((1,) * max(0, own - equal.dim()) + equal.shape)
            equal = equal.reshape(equal.shape[: equal.dim() - own] + (-1,)).all(-1)
        same = same & equal
    return same.reshape(same.shape + (1,) * event_dim).expand(value.shape)


class AlternativeRun(Messenger):
    """Replays ``trace`` except at the sites of ``changes``, which take their values
    there (see module docs). ``trace`` must be unpruned, so that its subsample indices
    replay. In an ELBO, ``trace`` is the guide's and ``model_trace`` the model's first
    run, for the sites only the model draws (its own subsample indices, say).
    ``relaxed`` changes are continuous relaxations: a discrete site whose distribution
    they change is refused, since its redraw would jump.

    Enter it *outside* the particle plate so that distributions are compared after
    broadcasting. Sites whose value is already set (observed, or replayed by an inner
    handler, as a model replaying its guide) are left alone.
    """

    def __init__(
        self, trace: Trace, changes: Dict[str, torch.Tensor], model_trace: Optional[Trace] = None, relaxed: bool = False,
        picked: Optional[Dict[str, torch.Tensor]] = None,
    ):
        super().__init__()
        self.trace = trace
        self.changes = changes
        self.model_trace = model_trace
        self.relaxed = relaxed
        #: site → a mask of the particles whose value is the change; the others take the
        #: site as an unchanged site would (replayed, or redrawn where a change upstream
        #: reached its distribution): the one-run engine's per-particle perturbations.
        self.picked = picked or {}

    def _pyro_sample(self, msg: dict) -> None:
        if msg["is_observed"] or msg["value"] is not None:
            return
        name = msg["name"]
        if name in self.changes and name not in self.picked:
            msg["value"] = self.changes[name]
            return
        if name in self.changes:
            self._redraw(msg)
            if msg["value"] is None:
                msg["value"] = msg["fn"].sample()
            if self.changes[name].shape != msg["value"].shape:
                # Control flow upstream resized the site (a plate sized by a draw): the
                # first run's values, the change's among them, no longer fit, so it is
                # drawn as an unchanged site is. No particle kept its jump here: a
                # particle keeps one, and the resizing one is upstream.
                if decided(self.picked[name].any()):
                    raise EstimatorError(f"site '{name}' ({describe(msg['fn'])}) changed shape in a run that "
                                         "moves it: a jump and a resized plate at once")
                return
            msg["value"] = torch.where(self.picked[name], self.changes[name], msg["value"])
            return
        self._redraw(msg)

    def _redraw(self, msg: dict) -> None:
        """Set an unchanged site's value: replayed where its distribution is the first
        run's, element by element; elsewhere drawn on common random numbers (None: anew)."""
        name = msg["name"]
        first = self.trace.nodes.get(name)
        if first is None and self.model_trace is not None:
            first = self.model_trace.nodes.get(name)
        if first is None or first["type"] != "sample":
            return
        old_value = plain(first["value"])
        if isinstance(msg["fn"], _Subsample):
            # The first run's minibatch, unless control flow resized the plate.
            if (msg["fn"].size, msg["fn"].subsample_size) == (getattr(first["fn"], "size", None),
                                                             getattr(first["fn"], "subsample_size", None)):
                msg["value"] = old_value
            return
        if old_value.shape != msg["fn"].shape():
            # Control flow changed the site's shape (a plate sized by a draw): there is
            # nothing to replay or couple element by element, so it is drawn anew.
            return
        if same_distribution(first["fn"], msg["fn"]):
            msg["value"] = old_value
            return
        if self.relaxed and leaf_distribution(msg["fn"]).support.is_discrete:
            changed = ", ".join(f"'{n}'" for n in self.changes)
            raise EstimatorError(
                f"discrete site '{name}' ({describe(msg['fn'])}) depends on the relaxed value of site "
                f"{changed}: a re-run would redraw it, f would jump in the relaxed value and the "
                "relaxed control variate (RELAX, REBAR) would be biased there; use DisARM(), "
                "IndeCateR() or Score('loo') at that site"
            )
        if self.picked:
            # Per-particle changes reach some elements only: the others keep their value.
            msg["value"] = redrawn_where_changed(first["fn"], old_value, msg["fn"])
        else:
            msg["value"] = coupled_draw(first["fn"], old_value, msg["fn"])  # None: draw anew
