"""``AutoGuide``: a mean-field guide for models with discrete and continuous latents.

Pyro's autoguides reject discrete latents unless they are enumerated. This one gives
every latent site of the model its own factor, inside the model's plates:

* a continuous site: a Normal in unconstrained space, mapped to the site's support
  (``biject_to``), so it is reparameterizable;
* a Bernoulli site: Bernoulli with learnable logits; a Categorical or OneHotCategorical
  site: learnable logits over its categories.

Any other discrete site (Poisson, Binomial, ...) raises an error naming it. The
estimators config (``pg.estimators(AutoGuide(model), {...})``) picks each site's path.

Plates are shared as in Pyro's autoguides (``pyro.infer.autoguide``): one plate object
per model plate, built from the model's prototype trace, with the model's
``subsample_size``. A site local to a subsampled plate has parameters for every data
point, indexed by the plate's subsample indices.
"""

import contextlib
from typing import Any, Callable, Dict, Iterator

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.ops.tensor_utils import periodic_repeat
from torch.distributions import biject_to, constraints

from pyro_grad.errors import EstimatorError
from pyro_grad.distributions import leaf_distribution


def subsampled_frames(site: dict) -> list:
    """The vectorized plates of a site that draw a minibatch of their full size."""
    return [f for f in site["cond_indep_stack"] if f.vectorized and (f.full_size or f.size) != f.size]


class AutoGuide:
    """Mean-field guide for ``model``, built from one run of the model on first call.

    Params are named ``"{prefix}.{site}.loc"``, ``".scale"`` or ``".logits"``.
    """

    def __init__(self, model: Callable, prefix: str = "auto", init_scale: float = 0.1):
        self.model = model
        self.prefix = prefix
        self.init_scale = init_scale
        self._prototype = None
        self._frames: Dict[str, Any] = {}
        self._whole_data = False

    def __repr__(self) -> str:
        model = getattr(self.model, "__qualname__", type(self.model).__name__)
        return f"AutoGuide({model}, prefix={self.prefix!r}, init_scale={self.init_scale!r})"

    def _setup(self, args: tuple, kwargs: dict) -> None:
        with poutine.block():
            trace = poutine.trace(self.model).get_trace(*args, **kwargs)
        prototype = {
            name: site
            for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and not site["infer"].get("_do_not_trace")
            and type(site["fn"]).__name__ != "_Subsample"
        }
        for name, site in prototype.items():
            _family(name, site)  # fails early, naming the site, if unsupported (and again on every call)
        self._frames = {f.name: f for site in prototype.values() for f in site["cond_indep_stack"] if f.vectorized}
        self._prototype = prototype

    @contextlib.contextmanager
    def whole_data(self) -> Iterator[None]:
        """Within this context the guide's plates cover every data point (no
        subsampling): posterior draws for each data point, as ``pg.compare`` records."""
        self._whole_data, previous = True, self._whole_data
        try:
            yield
        finally:
            self._whole_data = previous

    def _plates(self) -> Dict[str, pyro.plate]:
        plates = {}
        for name, frame in sorted(self._frames.items()):
            full_size = frame.full_size or frame.size
            subsample_size = full_size if self._whole_data else frame.size
            plates[name] = pyro.plate(name, full_size, dim=frame.dim, subsample_size=subsample_size)
        return plates

    def __call__(self, *args: Any, **kwargs: Any) -> Dict[str, torch.Tensor]:
        if self._prototype is None:
            self._setup(args, kwargs)
        plates = self._plates()
        values = {}
        for name, site in self._prototype.items():
            with contextlib.ExitStack() as stack:
                indices = {
                    frame.name: stack.enter_context(plates[frame.name])
                    for frame in site["cond_indep_stack"] if frame.vectorized
                }
                values[name] = pyro.sample(name, self._factor(name, site, indices))
        return values

    def _local(self, name: str, init: torch.Tensor, extra_dims: int, site: dict, indices: dict,
               constraint: Any = constraints.real) -> torch.Tensor:
        """A parameter shaped like ``init`` (the prototype's shape, with ``extra_dims``
        dims right of the batch dims), full size along subsampled plates, and the slice
        of it at this call's subsample indices."""
        subsampled = subsampled_frames(site)

        def full_init() -> torch.Tensor:
            value = init
            for frame in subsampled:
                value = periodic_repeat(value, frame.full_size, frame.dim - extra_dims)
            return value.contiguous()

        value = pyro.param(f"{self.prefix}.{site['name']}.{name}", full_init, constraint=constraint)
        for frame in subsampled:
            value = value.index_select(value.dim() + frame.dim - extra_dims, indices[frame.name])
        return value

    def _factor(self, name: str, site: dict, indices: dict) -> Any:
        fn, family = site["fn"], _family(name, site)
        if family is dist.Bernoulli:
            logits = self._local("logits", torch.zeros(fn.shape()), fn.event_dim, site, indices)
            return dist.Bernoulli(logits=logits).to_event(fn.event_dim)
        if family is dist.Categorical:
            categories = leaf_distribution(fn).probs.shape[-1]
            init = torch.zeros(fn.shape() + (categories,))
            logits = self._local("logits", init, fn.event_dim + 1, site, indices)
            return dist.Categorical(logits=logits).to_event(fn.event_dim)
        if family is dist.OneHotCategorical:
            logits = self._local("logits", torch.zeros(fn.shape()), fn.event_dim, site, indices)
            return dist.OneHotCategorical(logits=logits).to_event(fn.event_dim - 1)
        transform = biject_to(fn.support)
        unconstrained = transform.inv(site["value"].detach())
        event_dim = max(unconstrained.dim() - len(fn.batch_shape), 0)
        loc = self._local("loc", unconstrained.clone(), event_dim, site, indices)
        scale = self._local("scale", torch.full_like(unconstrained, self.init_scale), event_dim, site, indices,
                            constraint=constraints.positive)
        return dist.TransformedDistribution(dist.Normal(loc, scale).to_event(event_dim), transform)


def _family(name: str, site: dict) -> Any:
    """The guide family for a site: Bernoulli, Categorical, OneHotCategorical, or
    TransformedDistribution for a continuous site; an error naming any other."""
    fn = site["fn"]
    leaf = leaf_distribution(fn)
    for family in (dist.Bernoulli, dist.OneHotCategorical, dist.Categorical):
        if isinstance(leaf, family):
            return family
    if fn.support.is_discrete:
        raise EstimatorError(
            f"AutoGuide cannot model site '{name}' ({type(leaf).__name__}): only continuous, "
            "Bernoulli and Categorical latents are supported; write a guide for it"
        )
    return dist.TransformedDistribution
