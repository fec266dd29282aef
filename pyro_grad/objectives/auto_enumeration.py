"""Which guide sites an ELBO's ``"auto"`` sums out, as ``TraceEnum_ELBO`` would.

At a guide site whose distribution has no ``rsample``, ``"auto"`` is the score function,
``Score("auto")``: ``∇log q(z) · (f − b)``, one sampled ``z`` per particle. Where the site
can be summed out instead, summing it out (TraceEnum_ELBO's parallel enumeration,
:mod:`pyro_grad.objectives.enumeration`) is exact: the site adds no variance, every term
downstream sees every value weighted by ``q(z)``, and the step is one run whose tensors
are the support's size wider. Measured at one particle (``benchmarks/bench_dpmm.py``, the
Dirichlet-process mixture tutorial, final −ELBO over seeds 0–2): summed out 1191, the
score function with the pooled baseline 1478, with none 1421, ``Trace_ELBO`` 1822.

A site ``s`` is summed out by ``"auto"`` when, on a hidden sampled run:

* ``"auto"`` chose its estimator (no config, site ``infer``, default or measured choice),
  and chose the score function (the distribution has no ``rsample``);
* its distribution has a finite support (``enumerate_support``), one element per
  particle or per plate element;
* its value reaches only ELBO terms inside all of its plates, and is not read into Python
  (the locality TraceGraph_ELBO's Rao-Blackwellization reads from provenance): then each
  plate element's values change only that element's terms, and the enumerated dim
  broadcasts as TraceEnum's does;

and, over all such sites together:

* their supports' sizes multiply to at most :data:`MAX_AUTO_WIDTH` (the enumerated
  tensors are that much wider than a sampled run's);
* no guide site has a difference estimator (which re-runs the program, and does not
  combine with summing out);
* a second hidden run with them summed out goes through: a program whose tensors do not
  broadcast an enumerated dim (a ``torch.cat`` with a batch, a ``.view``) raises there.

All or none: if one condition fails, ``"auto"`` keeps the score function at every site,
and the site table says why (:meth:`AutoEnumeration.reason`). The decision is made once per
model and guide, before the first step (as ``max_plate_nesting``'s guess); a site first
seen later keeps the score function. ``pg.Enumerate()`` at a site sums it out whatever
this rule says, and any estimator chosen at a site wins over ``"auto"``.
"""

import math
from typing import Any, Callable, Dict, Iterable, Mapping, Optional

from pyro.poutine.messenger import Messenger

from pyro_grad.distributions import describe, without_path_switch
from pyro_grad.errors import first_line
from pyro_grad.gradient_estimators import DifferenceEstimator, Enumerate, ScoreEstimator, Site
from pyro_grad.handler import AUTO, CHOICE

#: The most values ``"auto"`` sums out per run: the product of the summed sites' support
#: sizes, by which the enumerated tensors are wider than a sampled run's.
MAX_AUTO_WIDTH = 64


class AutoEnumeration(Messenger):
    """Before the draw, switches each site in ``sites`` whose score-function estimator came
    from ``"auto"`` to ``pg.Enumerate()`` (which the ELBO sums out). Enter it outside the
    estimators handlers, so that it sees their choice, and inside the ELBO's enumeration.
    One per model and guide keeps the decision across an ELBO's steps."""

    def __init__(self) -> None:
        super().__init__()
        #: Whether the sites were decided (by :meth:`decide`).
        self.decided = False
        #: site → its support's size, for the sites ``"auto"`` sums out.
        self.sites: Dict[str, int] = {}
        #: site → why ``"auto"`` does not sum it out, for the sites it considered.
        self.declined: Dict[str, str] = {}

    def _pyro_sample(self, msg: dict) -> None:
        if msg["name"] not in self.sites or msg["is_observed"] or msg["value"] is not None:
            return
        choice = msg["infer"].get(CHOICE)
        if choice is None or choice.strength != AUTO or not isinstance(msg["infer"].get("estimator"), ScoreEstimator):
            return
        estimator = Enumerate()
        msg["fn"] = without_path_switch(msg["fn"])
        estimator.prepare(msg)
        msg["infer"]["estimator"] = estimator

    def decide(self, nodes: Mapping[str, dict], local: Callable[[dict], bool],
               runs_summed: Callable[[], Optional[Exception]]) -> None:
        """Choose the sites to sum out from a sampled run's latent guide sites ``nodes``:
        ``local(node)`` says whether a site's values reach only terms in its plates (and
        are not read into Python); ``runs_summed()`` runs the program once with
        :attr:`sites` summed out and returns what it raised, or None."""
        self.decided = True
        candidates: Dict[str, int] = {}
        for name, node in nodes.items():
            choice = node["infer"].get(CHOICE)
            if choice is None or choice.strength != AUTO or not isinstance(node["infer"].get("estimator"),
                                                                            ScoreEstimator):
                continue
            site = Site.of(node)
            if not Enumerate.applies_to(site):
                continue
            if not local(node):
                self.declined[name] = ("not summed out: its value reaches ELBO terms outside its plates or is read "
                                       "into Python, so an enumerated dim would not broadcast as TraceEnum's does")
                continue
            candidates[name] = Enumerate.support_size(site.fn)
        if not candidates:
            return
        rerun = next((n for n, node in nodes.items()
                      if isinstance(node["infer"].get("estimator"), DifferenceEstimator)), None)
        width = math.prod(candidates.values())
        why = None
        if rerun is not None:
            estimator = nodes[rerun]["infer"]["estimator"]
            why = (f"site '{rerun}' has {estimator!r}, which re-runs the program and does not combine with "
                   "summing sites out")
        elif width > MAX_AUTO_WIDTH:
            why = (f"the {len(candidates)} sites it could sum out have {width:,} joint values, more than the "
                   f"{MAX_AUTO_WIDTH} 'auto' sums out (pg.Enumerate() at a site sums it out anyway)")
        else:
            self.sites = candidates
            raised = runs_summed()
            if raised is not None:
                self.sites = {}
                shown = describe(nodes[next(iter(candidates))]["fn"])
                why = (f"the program did not run with them summed out ({type(raised).__name__}: "
                       f"{first_line(raised)}); its tensors must broadcast an enumerated dim (as "
                       f"TraceEnum_ELBO needs), e.g. {shown}'s value on the left of its plates")
        if why is not None:
            for name in candidates:
                self.declined[name] = f"not summed out: {why}"

    def chosen_around(self, traces: Iterable[Any]) -> bool:
        """Whether a handler around the objective's call (``with pg.estimators(...)``, which
        the hidden runs do not see) chose another estimator at a site in :attr:`sites`:
        then no site is summed out (the step's runs must be redone), and the sites say why."""
        for trace in traces:
            for name in self.sites:
                node = trace.nodes.get(name)
                choice = node["infer"].get(CHOICE) if node is not None else None
                if choice is not None and choice.strength != AUTO:
                    why = (f"not summed out: an estimators handler around the objective's call chose "
                           f"{node['infer']['estimator']!r} at site '{name}'")
                    self.declined.update({n: why for n in self.sites})
                    self.sites = {}
                    return True
        return False

    def reason(self, name: str) -> Optional[str]:
        """Why ``"auto"`` sums site ``name`` out, or does not, or None if it never considered it."""
        if name in self.sites:
            return (f"the distribution has no rsample, and its {self.sites[name]} values reach only terms in its "
                    "plates, so 'auto' sums it out: exact, no variance from the site")
        if name in self.declined:
            return f"the distribution has no rsample ({self.declined[name]})"
        return None
