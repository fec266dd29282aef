"""``AutoGuide``: a mean-field guide for models with discrete and continuous latents.

Pyro's autoguides reject discrete latents unless they are enumerated. This one gives
every latent site of the model its own factor, inside the model's plates:

* a continuous site: a Normal in unconstrained space, mapped to the site's support
  (``biject_to``), so it is reparameterizable;
* a Bernoulli site: Bernoulli with learnable logits; a Categorical or OneHotCategorical
  site: learnable logits over its categories.

Any other discrete site (Poisson, Binomial, ...) raises an error naming it. The
estimators config (``pg.estimators(AutoGuide(model), {...})``) picks each site's path.
"""

from typing import Any, Callable, Dict

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from torch.distributions import biject_to, constraints

from pyro_grad.errors import EstimatorError
from pyro_grad.site_tangent import leaf_distribution


class AutoGuide:
    """Mean-field guide for ``model``, built from one run of the model on first call.

    Params are named ``"{prefix}.{site}.loc"``, ``".scale"`` or ``".logits"``.
    """

    def __init__(self, model: Callable, prefix: str = "auto", init_scale: float = 0.1):
        self.model = model
        self.prefix = prefix
        self.init_scale = init_scale
        self.prototype = None

    def _setup(self, args: tuple, kwargs: dict) -> None:
        with poutine.block():
            trace = poutine.trace(self.model).get_trace(*args, **kwargs)
        self.prototype = {
            name: site
            for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and not site["infer"].get("_do_not_trace")
            and type(site["fn"]).__name__ != "_Subsample"
        }
        for name, site in self.prototype.items():
            self._factor(name, site)  # fails early, naming the site, if unsupported

    def _factor(self, name: str, site: dict) -> Any:
        fn, value = site["fn"], site["value"].detach()
        leaf = leaf_distribution(fn)
        key = f"{self.prefix}.{name}"
        if isinstance(leaf, dist.Bernoulli):
            logits = pyro.param(f"{key}.logits", torch.zeros(fn.shape()))
            return dist.Bernoulli(logits=logits).to_event(fn.event_dim)
        if isinstance(leaf, (dist.Categorical, dist.OneHotCategorical)):
            categories = leaf.probs.shape[-1]
            logits = pyro.param(f"{key}.logits", torch.zeros(fn.batch_shape + (categories,)))
            family = dist.Categorical if isinstance(leaf, dist.Categorical) else dist.OneHotCategorical
            return family(logits=logits)
        if fn.support.is_discrete:
            raise EstimatorError(
                f"AutoGuide cannot model site '{name}' ({type(leaf).__name__}): only continuous, "
                "Bernoulli and Categorical latents are supported; write a guide for it"
            )
        transform = biject_to(fn.support)
        unconstrained = transform.inv(value)
        loc = pyro.param(f"{key}.loc", unconstrained.clone())
        scale = pyro.param(
            f"{key}.scale", torch.full_like(unconstrained, self.init_scale), constraint=constraints.positive
        )
        event_dim = unconstrained.dim() - len(fn.batch_shape)
        base = dist.Normal(loc, scale).to_event(max(event_dim, 0))
        return dist.TransformedDistribution(base, transform)

    def __call__(self, *args: Any, **kwargs: Any) -> Dict[str, torch.Tensor]:
        if self.prototype is None:
            self._setup(args, kwargs)
        values = {}
        for name, site in self.prototype.items():
            with _plates(site):
                values[name] = pyro.sample(name, self._factor(name, site))
        return values


class _plates:
    """Re-enter the plates a prototype site was sampled in."""

    def __init__(self, site: dict):
        self.frames = [f for f in site["cond_indep_stack"] if f.vectorized]
        self.stack = []

    def __enter__(self):
        for frame in sorted(self.frames, key=lambda f: -f.dim):
            plate = pyro.plate(frame.name, frame.size, dim=frame.dim)
            plate.__enter__()
            self.stack.append(plate)

    def __exit__(self, *exc):
        for plate in reversed(self.stack):
            plate.__exit__(*exc)
        self.stack = []
