"""The benchmark suite's one loop: a benchmark under every estimator that applies to it.

The command line's tables, the main job's pages and ``benchmarks/`` all draw from
:func:`candidates` and :func:`diagnose_each`, so they always agree on what applies.
"""

from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Union

import pyro
import pyro.poutine as poutine
from pyro.poutine.util import prune_subsample_sites

import pyro.distributions as dist

from pyro_grad.harness.comparison.svi_compare import claims_unbiased
from pyro_grad.diagnostics import GradientReport, diagnose
from pyro_grad.distributions import leaf_distribution, parameter_provenance
from pyro_grad.engine.control_flow import READ
from pyro_grad.engine.particles import watched_trace
from pyro_grad.harness.models.benchmark import Benchmark
from pyro_grad.handler import latent_sites
from pyro_grad.gradient_estimators import REGISTRY, Estimator


class Candidate(NamedTuple):
    """One way to run a benchmark: its label, the estimators config (one estimator for
    every site, or site → estimator where the sites need different settings), and the
    particles it needs."""

    label: str
    config: Union[Estimator, Dict[str, Estimator]]
    particles: int

    @property
    def unbiased(self) -> bool:
        return bool(claims_unbiased(self.config))


def relaxation_refusals(bench: Benchmark) -> List[str]:
    """Why a relaxed control variate (RELAX, REBAR) would refuse the benchmark, one
    reason per site: a latent site read into Python control flow, a discrete latent
    site whose parameters depend on an earlier one, and in an ELBO a Categorical site
    (see :mod:`pyro_grad.gradient_estimators.relax`). Read from one traced run, by provenance."""
    with poutine.block():
        trace = prune_subsample_sites(watched_trace(bench.guide or bench.program, bench.arguments(), {}, False))
    latents = [site for site in trace.nodes.values() if site["type"] == "sample" and not site["is_observed"]]
    reasons = []
    for i, site in enumerate(latents):
        if site["infer"].get(READ):
            reasons.append(f"site '{site['name']}' is read into Python control flow")
        if bench.guide is not None and isinstance(leaf_distribution(site["fn"]), dist.Categorical):
            reasons.append(f"an ELBO scores Categorical site '{site['name']}' by its log-mass")
        upstream = parameter_provenance(site["fn"])
        if leaf_distribution(site["fn"]).support.is_discrete:
            reasons += [f"discrete site '{site['name']}' depends on '{s['name']}'"
                        for s in latents[:i] if s["name"] in upstream]
    return reasons


def candidates(bench: Benchmark) -> List[Candidate]:
    """Every registered estimator that applies to all of the benchmark's latent sites,
    in registry order, with each estimator's own variants (the score function beside
    its leave-one-out baseline). For an ELBO only estimators whose draws are exact
    values qualify (the model scores them), and only an ELBO splits its terms by
    plate elements (so enumerates a plate-local site). Relaxed control variates are
    left out where they would refuse (:func:`relaxation_refusals`)."""
    with poutine.block():
        sites = [site for site, _ in latent_sites(bench.guide or bench.program, bench.arguments(), {},
                                                  split_by_plates=bench.guide is not None)]
    relaxable = None
    exact_value = bench.guide is not None
    found = []
    objective = "elbo" if bench.guide is not None else "expectation"
    for cls in REGISTRY:
        if objective not in cls.objectives or not sites or not all(cls.applies_to(site) for site in sites):
            continue
        if getattr(cls, "relaxes", False):
            relaxable = not relaxation_refusals(bench) if relaxable is None else relaxable
            if not relaxable:
                continue
        per_site = [cls.examples_for(site, exact_value) for site in sites]
        for examples in zip(*per_site):
            if any(e.estimator.refusal(site) is not None for e, site in zip(examples, sites)):
                continue
            first = examples[0]
            if all(e.estimator == first.estimator for e in examples):
                config: Union[Estimator, Dict[str, Estimator]] = first.estimator
            else:
                config = {site.name: e.estimator for e, site in zip(examples, sites)}
            found.append(Candidate(first.label, config, max(e.particles for e in examples)))
    return found


def diagnose_each(
    bench: Benchmark,
    num_samples: int,
    num_samples_by_name: Optional[Mapping[str, int]] = None,
    seed: int = 0,
) -> Dict[str, GradientReport]:
    """``{label: report}``: the benchmark diagnosed under each of its :func:`candidates`,
    against its exact reference, with ``num_samples`` gradient draws
    (``num_samples_by_name[bench.name]`` when given, for the costly benchmarks). The
    param store is cleared and the benchmark reset before each. Only parameters are
    targets: each site's share of their variance comes with the draws, while the
    derivative along a site's own parameters would take a pass per site (sir has 20)."""
    count = (num_samples_by_name or {}).get(bench.name, num_samples)
    reports = {}
    for candidate in candidates(bench):
        pyro.clear_param_store()
        reports[candidate.label] = diagnose(
            bench.program, *bench.arguments(), guide=bench.guide, estimators=candidate.config,
            num_particles=candidate.particles, num_samples=count, reference=bench.reference_gradient,
            seed=seed, sites=False,
        )
    return reports


def svi_configs(bench: Benchmark) -> Dict[str, Any]:
    """The SVI comparison's configurations: every candidate, the leave-one-out score
    function standing for the plain one (which SVI trains with the same particles)."""
    return {c.label: c.config for c in candidates(bench) if c.label != "Score"}
