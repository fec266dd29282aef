"""``tune``: the quietest unbiased estimator at every site, by measured variance per unit of work.

For each latent site, every candidate estimator is diagnosed (``pg.diagnose``'s draws,
with the other sites at their current choice) and the one with the lowest variance ×
evaluations (or × seconds) is kept. Sites are visited in program order, and the rounds
repeat until a round changes nothing (coordinate descent, at most ``max_rounds``).
Every measurement replays the same seed, so candidates are compared on common random
numbers, and a configuration measured once is never measured again. After the first
round a site re-measures only its contenders: the candidates within
:data:`CONTENDER_FACTOR` of its best. Last, in an expectation or an ELBO where two or more discrete
sites are tuned, they are measured once more all on ``MeasureValued``'s one-run engine
(which shares one alternative run among them, so one site alone gains nothing and the
site-by-site descent cannot find it), and that is kept if it ranks better
(:func:`one_engine`).
"""

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type, Union

import pandas as pd
import torch

from pyro_grad.diagnostics.diagnose import diagnose
from pyro_grad.diagnostics.report import GradientReport
from pyro_grad.diagnostics.statistics import disagreeing, paired_z
from pyro_grad.distributions import describe
from pyro_grad.errors import EstimatorError
from pyro_grad.handler import latent_sites
from pyro_grad.objectives.objective import Objective, objective_type
from pyro_grad.gradient_estimators import Estimator, MeasureValued, Score, Site
from pyro_grad.gradient_estimators.measure_valued import discrete
from pyro_grad.gradient_estimators.registry import not_applicable

#: After the first round, a site re-measures only the candidates within this factor of
#: its best (re-measuring every candidate of every site would multiply the cost by the
#: rounds; the other sites' choices rarely move a candidate this far).
CONTENDER_FACTOR = 4.0
#: How a Tuning ranks candidates: the variance times the work one draw takes.
METRICS = {"evaluations": "work-normalized variance", "seconds": "time-normalized variance"}

Candidates = Union[None, Sequence[Estimator], Mapping[str, Union[Estimator, Sequence[Estimator]]]]


@dataclass
class Tuning:
    """What :func:`tune` chose and measured.

    * ``config``: ``{site: estimator}`` for every latent site, ready for
      ``pg.estimators(program, tuning.config)``; sites the program fixed itself
      (``infer={"estimator": ...}`` or a handler's config) keep their estimator.
    * ``table``: one row per round, site and candidate: the total parameter-gradient
      ``variance`` with that candidate at the site (the others at their choice then),
      the site's ``variance share`` (its score term's share of that variance; NaN for a
      pathwise site), its ``site evaluations per particle``, ``cost``
      (evaluations per draw), ``seconds`` (per draw), ``work-normalized variance``
      (variance × cost) and ``time-normalized variance`` (variance × seconds), whether it
      was ``eligible`` (measured, unbiased or ``allow_biased``, and for an unbiased one a
      mean that ``agrees with the reference``: every candidate's draws are paired, on
      common random numbers, with those of an estimator that needs no smoothness
      (``MeasureValued()`` where it applies, else the score function), and a candidate
      whose mean differs by at least 4 standard errors, significant after Holm's
      correction across the site's candidates and parameter elements, on the tuning's
      seed and again on the next, is excluded: that catches jumps the watch cannot see;
      None where no reference could run), ``refused`` (why it could not run, a pathwise
      estimator at a site whose value reaches f through a jump among them,
      else empty) and ``chosen`` (the site's choice after that round).
    * ``metric``: ``"evaluations"`` or ``"seconds"``; ``rounds``: rounds run;
      ``fixed``: the sites the program fixed itself, with their estimators (not tuned).
    """

    config: Dict[str, Estimator]
    table: pd.DataFrame
    metric: str = "evaluations"
    rounds: int = 1
    fixed: Dict[str, Estimator] = field(default_factory=dict)

    def __repr__(self) -> str:
        chosen = ", ".join(f"{site!r}: {estimator!r}" for site, estimator in self.config.items())
        return f"Tuning({{{chosen}}}, metric={self.metric!r}, rounds={self.rounds})"

    @property
    def choices(self) -> pd.DataFrame:
        """The final round's rows of each site's chosen estimator."""
        last = self.table[self.table["round"] == self.table.groupby("site")["round"].transform("max")]
        return last[last["chosen"]].reset_index(drop=True)


def default_candidates(site: Site, objective: Type[Objective], num_particles: int,
                       allow_biased: bool) -> List[Estimator]:
    """Every registered estimator derived for ``objective`` (with each one's own
    variants, as the benchmark suite runs them) that applies to ``site`` at
    ``num_particles``; biased ones only when ``allow_biased``. A bound scores the
    guide's draws by their density, so only exact values qualify there."""
    found = []
    for cls in objective.derived_estimators():
        if not cls.applies_to(site):
            continue
        for example in cls.examples_for(site, exact_value=objective.takes_guide):
            estimator = example.estimator
            if (
                estimator.refusal(site) is None
                and num_particles >= estimator.min_particles
                and (estimator.unbiased or allow_biased)
                and estimator not in found
            ):
                found.append(estimator)
    return found


def candidate_lists(
    sites: List[Tuple[Site, Optional[Estimator]]],
    candidates: Candidates,
    objective: Type[Objective],
    num_particles: int,
    allow_biased: bool,
) -> Dict[str, List[Estimator]]:
    """``{site: [estimators to measure]}`` for every site the program does not fix; one
    clear error for a candidate list that names an unknown site or leaves a site
    with nothing to measure."""
    names = [site.name for site, _ in sites]
    if isinstance(candidates, Mapping):
        unknown = sorted(set(candidates) - set(names))
        if unknown:
            raise EstimatorError(f"candidates name site(s) {unknown} that the program does not have; "
                                 f"its latent sites are {names}")
        for site, fixed in sites:
            if fixed is not None and site.name in candidates:
                raise EstimatorError(f"candidates name site '{site.name}', which the program fixes to {fixed!r} "
                                     "(its infer={'estimator': ...} or an estimators config around it)")
    elif candidates is not None:
        if isinstance(candidates, Estimator) or not all(isinstance(e, Estimator) for e in candidates):
            raise EstimatorError("candidates must be None, a list of estimators, or a dict of site -> "
                                 f"estimator(s), got {candidates!r}")
    lists, used = {}, set()
    for site, fixed in sites:
        if fixed is not None:
            continue
        if candidates is None:
            options = default_candidates(site, objective, num_particles, allow_biased)
        else:
            given = candidates.get(site.name, None) if isinstance(candidates, Mapping) else candidates
            if given is None:
                options = default_candidates(site, objective, num_particles, allow_biased)
            else:
                given = [given] if isinstance(given, Estimator) else list(given)
                for e in given:
                    if not isinstance(e, Estimator):
                        raise EstimatorError(f"candidates[{site.name!r}] must hold estimators, got {e!r}")
                options = [e for e in given if e.refusal(site) is None and objective.name in e.objectives]
                refused = [e for e in given if e not in options]
                if isinstance(candidates, Mapping) and refused:
                    raise not_applicable(refused[0], site, objective=objective.name)
                used.update(options)
        if not options:
            fits = ", ".join(repr(e) for e in default_candidates(site, objective, num_particles, True)) or "none"
            raise EstimatorError(
                f"no candidate to measure at site '{site.name}' ({describe(site.fn)}); estimators that apply "
                f"there with {num_particles} particle(s): {fits}"
            )
        lists[site.name] = options
    if candidates is not None and not isinstance(candidates, Mapping):
        idle = [e for e in candidates if e not in used]
        if idle:
            raise EstimatorError(f"candidate(s) {idle} apply to none of the sites {names}")
    return lists


#: pg.diagnose's own keywords: a program's keyword of one of these names cannot reach it.
DIAGNOSE_SETTINGS = frozenset({"guide", "objective", "num_samples", "reference", "num_particles", "vectorize", "seed",
                               "sites", "estimators"})

#: The figures of one configuration, whichever site it is measured for.
COLUMNS = ("variance", "variance share", "site evaluations per particle", "cost", "seconds", "work-normalized variance",
           "time-normalized variance")


def _measure(report: GradientReport) -> Dict[str, Any]:
    """One configuration's figures from its report (one row per parameter element),
    with every site's variance share and evaluations per particle, to be read per site."""
    variance = report.total_variance()
    cost = int(report.params["cost"].iloc[0])
    seconds = float(report.params["seconds per draw"].iloc[0])
    return {
        "variance": variance,
        "cost": cost,
        "seconds": seconds,
        "work-normalized variance": report.work_normalized_variance(),
        "time-normalized variance": variance * seconds,
        "shares": dict(report.shares),
        "site evaluations": dict(report.site_evaluations),
        "samples": report.samples,
        "refused": "",
    }


def smoothness_free_reference(site: Site, num_particles: int, objective: str) -> Estimator:
    """The estimator every candidate's mean at ``site`` is checked against: one that needs
    no smoothness of f in the value, so that a jump the watch cannot see (a custom
    autograd function, say) cannot bias it. ``MeasureValued()`` where it applies (it
    also stays right where the support moves with the parameters, as a Uniform(0, θ)'s,
    and is the quieter), else the score function, leave-one-out where it applies."""
    coupled = MeasureValued()
    if objective in coupled.objectives and coupled.applies_to(site) and coupled.refusal(site) is None:
        return coupled
    return Score("loo") if num_particles >= 2 and objective != "iwae" else Score()


def flagged(results: List[tuple], reference: Dict[str, Any]) -> Dict[int, bool]:
    """``{position: disagrees}`` for every measured, unbiased candidate of ``results``
    (``(estimator, eligible, position, figures)``) against the ``reference``'s figures."""
    checked = [r for r in results if r[0].unbiased and not r[3]["refused"] and not reference["refused"]]
    return dict(zip((r[2] for r in checked),
                    disagreeing([paired_z(r[3]["samples"], reference["samples"]) for r in checked])))


def at_site(figures: Dict[str, Any], site: str) -> Dict[str, Any]:
    """A configuration's figures as one site's row: its own share and evaluations per particle."""
    if figures["refused"]:
        return {column: math.nan for column in COLUMNS}
    return {
        **{column: figures[column] for column in COLUMNS if column in figures},
        "variance share": figures["shares"].get(site, math.nan),
        "site evaluations per particle": float(figures["site evaluations"].get(site, math.nan)),
    }


@dataclass(frozen=True)
class Settings:
    """How :func:`tune` measures (its keywords, apart from the program's own)."""

    guide: Optional[Callable] = None
    candidates: Candidates = None
    num_particles: int = 1
    num_samples: int = 200
    metric: str = "evaluations"
    allow_biased: bool = False
    objective: Any = None
    vectorize: bool = True
    seed: int = 0
    max_rounds: int = 3

    def check(self) -> None:
        if self.metric not in METRICS:
            raise EstimatorError(f"metric must be one of {sorted(METRICS)}, got {self.metric!r}")
        if not isinstance(self.max_rounds, int) or isinstance(self.max_rounds, bool) or self.max_rounds < 1:
            raise EstimatorError(f"max_rounds must be a positive integer, got {self.max_rounds!r}")


def tune(
    fn: Callable,
    *args: Any,
    guide: Optional[Callable] = None,
    candidates: Candidates = None,
    num_particles: int = 1,
    num_samples: int = 200,
    metric: str = "evaluations",
    allow_biased: bool = False,
    objective: Any = None,
    vectorize: bool = True,
    seed: int = 0,
    max_rounds: int = 3,
    **kwargs: Any,
) -> Tuning:
    """Choose each latent site's estimator: the one with the lowest measured variance
    per unit of work, among the candidates that apply and claim ``unbiased=True``
    (any, with ``allow_biased``).

    The program is ``fn`` for ``E[fn]``, or the guide of model ``fn`` (pass
    ``objective=pg.IWAE`` for the bound). A site's variance is the total variance of
    the gradient in every parameter (``pg.diagnose``'s draws, ``num_samples`` of
    ``num_particles`` particles each), with that candidate at the site and every other
    site at its current choice; ``metric`` weighs it by the program evaluations one draw
    costs (``"evaluations"``) or its seconds (``"seconds"``, noisier). Ties go to the
    cheaper, then to the first listed. Sites the program fixes itself are left as they
    are. ``objective``, ``vectorize`` and ``seed`` are ``pg.diagnose``'s; every other
    keyword is the program's. Measuring draws from its own random stream, seeded by
    ``seed``: the caller's stream goes on as if nothing had been measured.

    :param candidates: None (every registered estimator that applies), a list of
        estimators (each measured at every site it applies to), or a dict of site →
        estimator(s) (other sites take every estimator that applies).
    :returns: a :class:`Tuning`; use ``pg.estimators(program, tuning.config)``.
    """
    settings = Settings(guide, candidates, num_particles, num_samples, metric, allow_biased, objective, vectorize,
                        seed, max_rounds)
    return tune_with(fn, args, kwargs, settings)


def tune_with(fn: Callable, args: tuple, kwargs: dict, settings: Settings) -> Tuning:
    """:func:`tune` with the program's keywords apart from the settings (so that a
    program keyword named ``seed`` or ``metric`` stays the program's)."""
    settings.check()
    clashes = sorted(set(kwargs) & DIAGNOSE_SETTINGS)
    if clashes:
        raise EstimatorError(f"the program's keyword(s) {clashes} have the names of pg.diagnose's settings, which "
                             "measures the tuning: pass them positionally, or rename them")
    with torch.random.fork_rng():
        # Every draw here, the program's first run included, comes from this stream, never
        # from the caller's (whose next numbers are the coming training step's).
        torch.manual_seed(settings.seed)
        return _search(fn, tuple(args), dict(kwargs), settings)


def _search(fn: Callable, args: tuple, kwargs: dict, settings: Settings) -> Tuning:
    """The coordinate descent (see the module's docstring)."""
    objective = objective_type(settings.objective, settings.guide)
    guide = settings.guide
    program = fn if guide is None else guide
    sites = latent_sites(program, args, kwargs, split_by_plates=objective.splits_by_plates)
    if not sites:
        raise EstimatorError("the program has no latent sample site: there is no estimator to tune")
    fixed = {site.name: estimator for site, estimator in sites if estimator is not None}
    options = candidate_lists(sites, settings.candidates, objective, settings.num_particles,
                              settings.allow_biased)
    by_name = {site.name: site for site, _ in sites}
    kind = objective.name
    ranking = METRICS[settings.metric]
    measured: Dict[tuple, Dict[str, Any]] = {}

    def run(config: Dict[str, Estimator], draws: int, seed: int) -> GradientReport:
        return diagnose(fn, *args, guide=guide, objective=objective, estimators=lambda m: config.get(m["name"]),
                        num_particles=settings.num_particles, num_samples=draws, vectorize=settings.vectorize,
                        seed=seed, sites=False, **kwargs)

    def measure(config: Dict[str, Estimator], seed: int = settings.seed) -> Dict[str, Any]:
        key = (seed, *sorted(config.items(), key=lambda item: item[0]))
        if key not in measured:
            try:
                measured[key] = _measure(run(config, settings.num_samples, seed))
            except (EstimatorError, NotImplementedError) as error:
                measured[key] = {"refused": str(error)}
        return measured[key]

    def disagree(name: str, results: List[tuple]) -> Dict[int, bool]:
        """Which candidates' means at site ``name`` differ from the reference's: flagged on
        the tuning's seed, and again on a second seed (the paired t-statistic of a skewed,
        heavy-tailed score function misfires more often than its nominal rate)."""
        reference = smoothness_free_reference(by_name[name], settings.num_particles, kind)
        first = flagged(results, measure({**current, name: reference}))
        again = [(e, eligible, p, measure({**current, name: e}, settings.seed + 1))
                 for e, eligible, p, _ in results if first.get(p)]
        second = flagged(again, measure({**current, name: reference}, settings.seed + 1)) if again else {}
        return {p: bool(second.get(p)) for p in first}

    # The first diagnosis in a process pays one-time costs (lazy imports, caches); a
    # throwaway one of two draws keeps them out of the first candidate's seconds.
    try:
        run({}, 2, settings.seed)
    except (EstimatorError, NotImplementedError):
        pass  # the program's own choices cannot run: the candidates' rows will say why
    current: Dict[str, Estimator] = {}
    flagged_one_run: set = set()
    contenders: Dict[str, List[Estimator]] = {}
    rows: List[Dict[str, Any]] = []
    rounds = 0
    for rounds in range(1, settings.max_rounds + 1):
        changed = False
        for name, choices in options.items():
            if rounds > 1:
                # Later rounds re-measure only the candidates that came close last time.
                choices = contenders.get(name, choices)
            results = []
            for position, estimator in enumerate(choices):
                figures = measure({**current, name: estimator})
                eligible = estimator.unbiased or settings.allow_biased
                results.append((estimator, eligible, position, figures))
            # Every unbiased candidate's mean against an estimator that needs no smoothness.
            flags = disagree(name, results)
            flagged_one_run |= {name for e, _, p, _ in results if flags.get(p) and _is_one_run(e)}
            results = [(e, eligible and not flags.get(position, False), position, figures)
                       for e, eligible, position, figures in results]
            runnable = [r for r in results if r[1] and not r[3]["refused"]]
            if not runnable:
                reasons = "; ".join(
                    f"{e!r}: {f['refused'] or ('its mean disagrees' if flags.get(p) else 'biased')}"
                    for e, _, p, f in results)
                raise EstimatorError(
                    f"no candidate could be measured at site '{name}' ({describe(by_name[name].fn)}): {reasons}"
                )
            best = min(runnable, key=lambda r: (_finite(r[3][ranking]), r[3]["cost"], r[2]))[0]
            lowest = min(_finite(r[3][ranking]) for r in runnable)
            contenders[name] = [e for e, _, _, f in runnable if _finite(f[ranking]) <= CONTENDER_FACTOR * lowest]
            changed |= current.get(name) != best
            current[name] = best
            for estimator, eligible, position, figures in results:
                rows.append({
                    "round": rounds, "site": name, "distribution": describe(by_name[name].fn),
                    "estimator": repr(estimator), "unbiased": estimator.unbiased,
                    "eligible": eligible and not figures["refused"], **at_site(figures, name),
                    "agrees with the reference": (not flags[position]) if position in flags else None,
                    "refused": figures["refused"], "chosen": estimator == best,
                })
        if not changed or len(options) == 1:
            break
    together = one_engine(current, by_name, kind, flagged_one_run)
    if together is not None:
        # A one-run site alone costs what a re-run does: the engine's worth shows only
        # when the discrete sites share its one alternative run, so they are tried together.
        # This comparison is a round of its own, whichever configuration it keeps.
        before, after = measure(current), measure(together)
        keep = not after["refused"] and _finite(after[ranking]) < _finite(before[ranking])
        rounds += 1
        for name in (n for n in together if together[n] != current.get(n)):
            for estimator, figures, chosen in ((current.get(name), before, not keep), (together[name], after, keep)):
                rows.append({
                    "round": rounds, "site": name, "distribution": describe(by_name[name].fn),
                    "estimator": repr(estimator), "unbiased": True, "eligible": not figures["refused"],
                    **at_site(figures, name), "agrees with the reference": None, "refused": figures["refused"],
                    "chosen": chosen,
                })
        if keep:
            current = together
    config = {site.name: current.get(site.name, fixed.get(site.name)) for site, _ in sites}
    return Tuning(config, pd.DataFrame(rows), settings.metric, rounds, fixed)


def _is_one_run(estimator: Optional[Estimator]) -> bool:
    return isinstance(estimator, MeasureValued) and estimator.one_run


def one_engine(current: Dict[str, Estimator], sites: Mapping[str, Site], objective: str,
               flagged: set) -> Optional[Dict[str, Estimator]]:
    """``current`` with every tuned discrete site that ``MeasureValued`` takes on the
    one-run engine, when there are two or more in an objective it serves (an expectation
    or an ELBO), that moves one of them, and none had the one-run engine's mean flagged;
    else None."""
    one_run = MeasureValued(engine="one-run")
    if objective not in one_run.objectives:
        return None
    names = [n for n in current if discrete(sites[n].fn) and one_run.applies_to(sites[n])
             and one_run.refusal(sites[n]) is None]
    if len(names) < 2 or flagged & set(names) or all(_is_one_run(current[n]) for n in names):
        return None
    return {**current, **{n: MeasureValued(engine="one-run") for n in names}}


def _finite(value: float) -> float:
    """NaN and infinities rank last."""
    return value if math.isfinite(value) else math.inf
