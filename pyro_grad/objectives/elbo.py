"""``ELBO``: Pyro's evidence lower bound, with each guide site's gradient path chosen per site."""

import copy
import warnings
from collections import defaultdict
from typing import Any, Callable, Dict, FrozenSet, Iterator, List, NamedTuple, Optional, Tuple

import pyro
import pyro.infer
from pyro.infer import config_enumerate
import pyro.poutine as poutine
import torch
from pyro.distributions.util import is_identically_zero
from pyro.infer.util import MultiFrameTensor, is_validation_enabled, torch_item
from pyro.util import get_rng_state, set_rng_state, warn_if_nan

from pyro_grad.distributions import describe
from pyro_grad.engine.provenance import plain, provenance_of
from pyro_grad import baselines
from pyro_grad.engine.control_flow import watched_reads
from pyro_grad.handler import EstimatorMessenger
from pyro_grad.engine.alternative_run import AlternativeRun
from pyro_grad.engine.importance import ImportanceRun, changed_last_site, importance_run
from pyro_grad.errors import EstimatorError
from pyro_grad.gradient_estimators import ScoreEstimator
from pyro_grad.gradient_estimators.registry import derived_for
from pyro_grad.objectives.jump_policy import (
    JumpGuard,
    SameDraws,
    choice_reasons,
    found_jumps,
    is_pathwise,
    latent_nodes,
)
from pyro_grad.objectives.auto_enumeration import AutoEnumeration
from pyro_grad.objectives.enumeration import enumerated_terms, enumerating, is_enumerated
from pyro_grad.objectives.objective_check import ObjectiveCheck
from pyro_grad.pyro_infer import InferKeys
from pyro_grad.engine.surrogate import (
    Block,
    Estimates,
    assemble,
    check_num_particles,
    difference_sites,
    difference_terms,
    evaluations,
    group,
    one_run_terms,
    score_part,
)
from pyro_grad.engine.one_run import differentiable_inputs
from pyro_grad.engine.recording import Recorder, compile_options
from pyro_grad.engine.particles import (
    ParticleLayout,
    concat_particles,
    mark_read_jumps,
    mark_reads,
    match_dims,
    plate_depth,
    read_sites,
)


class ELBO(pyro.infer.ELBO):
    """ELBO whose gradient obeys the estimator chosen for each guide site.

    ``ELBO = E_q[log p(x, z) − log q(z)]``. Reparameterized guide sites contribute
    pathwise gradients (and their ``log q`` as in ``Trace_ELBO``); every score-path site
    ``s`` adds ``∇log q(z_s) · (c_s − b_s)`` where ``c_s`` sums only the ELBO terms downstream of
    ``s`` (Rao-Blackwellized by provenance and plates, as ``TraceGraph_ELBO``) and ``b_s``
    is the site's baseline. Baselines see all K particles at once, so ``"loo"`` works in
    both the vectorized and the looped mode.

    Wrap the guide with :func:`pyro_grad.estimators` to choose paths; unchosen sites
    use ``"auto"``. Use as ``SVI(model, guide, optim, loss=pg.ELBO(num_particles=8))``.
    ``differentiable_loss`` returns a surrogate whose value is ``−ELBO``.

    To tune the sites nothing else chose, before the first step and every N steps, wrap
    it: ``pg.Retuned(pg.ELBO(...), every=N)`` (:class:`~pyro_grad.tuning.retuned.Retuned`).

    Sites marked for enumeration (``config_enumerate``, ``infer={"enumerate":
    "parallel"}``, ``pg.Enumerate()``), in the model or the guide, are summed out as
    ``TraceEnum_ELBO`` sums them (:mod:`pyro_grad.objectives.enumeration`); the other
    guide sites keep their estimators. Where ``"auto"`` would give a guide site the score
    function and the site can be summed out (a finite support whose values stay in the
    site's plates), ``"auto"`` sums it out instead
    (:mod:`pyro_grad.objectives.auto_enumeration`). As there, ``max_plate_nesting`` is guessed, when
    not given, by one run of model and guide before the first step (hidden from outer
    handlers; the random state is restored after it).

    Pathwise guide sites are watched for jumps (see the README's "Programs that jump") on
    the first step, on a step that draws a site no watched step saw (again, on the same
    draws), after a tuning switch, and one step in ``watch_jumps_every`` (1: every step,
    at about a quarter of a Gaussian VAE's step each); at a site where f jumps, ``"auto"``
    switches to ``MeasureValued`` or ``Score`` from then on, and an explicit pathwise
    estimator is refused.

    ``compile=True`` (or ``"auto"``, or ``{"backend": "trace"}``) runs the steps after the
    first few as one recorded tensor function, with no Pyro on the path
    (:mod:`pyro_grad.engine.recording`): the same gradients, parameters and baseline
    state; a watched step still runs uncompiled every ``watch_jumps_every`` steps, and
    checks that the recording still fits the program.
    """

    # The Objective protocol (:mod:`pyro_grad.objectives.objective`).
    name = "elbo"
    takes_guide = True
    averages_particles = True
    splits_by_plates = True
    #: Whether sites marked for enumeration are summed out, as TraceEnum_ELBO does
    #: (:mod:`pyro_grad.objectives.enumeration`).
    enumerates = True

    def __init__(
        self,
        num_particles: int = 1,
        vectorize_particles: bool = False,
        max_plate_nesting: float = float("inf"),
        watch_jumps_every: int = 10,
        compile: Any = False,
        **kwargs: Any,
    ) -> None:
        check_num_particles(num_particles)
        options = compile_options(compile)
        if isinstance(watch_jumps_every, bool) or not isinstance(watch_jumps_every, int) or watch_jumps_every < 1:
            raise EstimatorError(f"watch_jumps_every must be a positive integer, got {watch_jumps_every!r}")
        moved = sorted({"retune_every", "tune_options"} & set(kwargs))
        if moved:
            raise EstimatorError(
                f"{moved[0]}= moved to a wrapper: pg.Retuned(pg.{type(self).__name__}(...), every=N, **tune_options) "
                "tunes before the first step and every N steps"
            )
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            **kwargs,
        )
        # One handler for the ELBO's lifetime: it keeps the decaying baselines' state
        # across SVI steps, and yields to any handler the user put around the guide.
        self.estimators = EstimatorMessenger()
        # Pathwise sites are watched for jumps on the first step, after a new choice,
        # when a site no watched step saw appears, and every watch_jumps_every steps
        # (watching costs a Gaussian VAE's step about a quarter); what the watch found
        # is kept by the guard (for this model and guide), which switches "auto"'s
        # Reparam at those sites before every later draw.
        self.watch_jumps_every = watch_jumps_every
        self.jump_guard = JumpGuard(self.name)
        self.watch_jumps = True
        self._watching = False
        # Which guide sites "auto" sums out (as TraceEnum_ELBO would), decided before the
        # first step for this model and guide.
        self.auto_enumeration = AutoEnumeration()
        self._programs: Optional[Tuple[Callable, Callable]] = None
        self._seen_sites: FrozenSet[str] = frozenset()
        self._unwatched_steps = 0
        self._infer_keys = InferKeys(f"pg.{type(self).__name__}", enumerates=self.enumerates)
        # compile=: steps after the first few run one recorded tensor function
        # (pyro_grad.engine.recording).
        self.recorder = None if options is None else Recorder(f"pg.{type(self).__name__}", options)

    @classmethod
    def configured(cls, num_particles: int, vectorize: bool, max_plate_nesting: Optional[int]) -> "ELBO":
        return cls(num_particles=num_particles, vectorize_particles=vectorize,
                   max_plate_nesting=float("inf") if max_plate_nesting is None else max_plate_nesting)

    def programs(self, model: Callable, guide: Optional[Callable]) -> List[Callable]:
        return [model, guide]

    @classmethod
    def derived_estimators(cls) -> List[type]:
        """The registered estimator classes derived for this objective."""
        return derived_for(cls.name)

    def chosen_program(self, model: Callable, guide: Optional[Callable]) -> Callable:
        return guide

    def exact(self, model: Callable, guide: Optional[Callable], args: tuple, kwargs: dict) -> torch.Tensor:
        """The exact ELBO, every guide site enumerated (Pyro's ``TraceEnum_ELBO``)."""
        loss = pyro.infer.TraceEnum_ELBO().differentiable_loss(model, config_enumerate(guide, "parallel"), *args,
                                                               **kwargs)
        return -loss

    def _get_trace(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> ImportanceRun:
        batched = self.vectorize_particles and self.num_particles > 1
        if self.enumerates:
            model, guide = enumerating(model, guide, self.max_plate_nesting, self._infer_keys)
        with watched_reads(batched, is_pathwise if self._watching else None) as reads:
            run = importance_run(model, guide, args, kwargs, self.max_plate_nesting)
        mark_reads(run.guide_trace, reads.sites)
        mark_read_jumps(run.guide_trace, reads.jumps)
        self._check_model_only_sites(run)
        return run

    def _check_model_only_sites(self, run: ImportanceRun) -> None:
        """A latent site the model draws and the guide does not is summed out when it is
        marked for enumeration (as TraceEnum_ELBO does), else sampled from its prior (as
        Trace_ELBO does); an estimator asked for there would not take effect, so it is
        refused, as is an enumeration pg cannot do."""
        for name, site in run.model_trace.nodes.items():
            if site["type"] != "sample" or site["is_observed"] or name in run.guide_trace.nodes:
                continue
            self._infer_keys.check(site, " in the model (the guide does not draw it)")
            estimator = site["infer"].get("estimator")
            if estimator is not None and site["infer"].get("_enumerate_dim") is None:
                raise EstimatorError(
                    f"site '{name}' ({describe(site['fn'])}) is drawn in the model but not in the guide, so "
                    f"pg.{type(self).__name__} samples it from its prior (as Trace_ELBO does) and its estimator "
                    f"{estimator!r} would not take effect; choose estimators for guide sites, or pg.Enumerate() "
                    "here to sum the site out (as TraceEnum_ELBO does)"
                )

    def _runs(self, model: Callable, guide: Callable, args: tuple, kwargs: dict, watch: bool) -> List[ImportanceRun]:
        """One step's trace pairs (one per particle when looped). With ``watch``, its
        pathwise draws are watched for jumps, and each run is redone on its own draws
        while a site in it must switch (:class:`~pyro_grad.objectives.jump_policy.JumpGuard`).
        An unwatched step whose runs draw a site no watched step saw is watched after
        all, on the same draws; every ``watch_jumps_every`` steps the next is watched."""

        def redo(_: Optional[ImportanceRun] = None) -> ImportanceRun:
            if self.vectorize_particles and self.num_particles > 1:
                return self._get_vectorized_trace(model, guide, args, kwargs)
            return self._get_trace(model, guide, args, kwargs)

        self._watching = watch
        try:
            runs = list(self._get_traces(model, guide, args, kwargs))
        finally:
            self._watching = False
        names = frozenset(n for run in runs for t in (run.model_trace, run.guide_trace) for n in t.nodes)
        if not watch and names <= self._seen_sites:
            self._unwatched_steps += 1
            self.watch_jumps |= self._unwatched_steps % self.watch_jumps_every == 0
            return runs
        if self.enumerates and any(is_enumerated(run.model_trace, run.guide_trace) for run in runs):
            self.jump_guard.reruns = False  # a jumping site switches to the score function
        self._watching = True
        try:
            if not watch:  # new sites: the same draws again, watched
                runs = [self._watched_again(run, redo) for run in runs]
            runs = [self.jump_guard.settle(run, review_jumps, redo, lambda r: r.guide_full) for run in runs]
        finally:
            self._watching = False
        self.watch_jumps = False  # only once the runs passed review: a refusal is raised again
        self._seen_sites |= names
        return runs

    def _step_runs(self, model: Callable, guide: Callable, args: tuple, kwargs: dict, watch: bool) -> List[ImportanceRun]:
        """One step's runs (:meth:`_runs`). Where a handler around the call chose another
        estimator at a site ``"auto"`` sums out, the sites are sampled after all and the
        runs redone from the same random state (so the draws are those the step makes
        without the decision)."""
        state = get_rng_state() if self.auto_enumeration.sites else None
        runs = self._runs(model, guide, args, kwargs, watch)
        if state is not None and self.auto_enumeration.chosen_around(run.guide_trace for run in runs):
            set_rng_state(state)
            runs = self._runs(model, guide, args, kwargs, watch)
        return runs

    @staticmethod
    def _watched_again(run: ImportanceRun, redo: Callable[[], ImportanceRun]) -> ImportanceRun:
        with SameDraws(run.guide_full):
            return redo()

    def _checked_guide(self, model: Callable, guide: Callable) -> Callable:
        """``guide`` as a step runs it: its sites chosen by the estimators handler, switched
        by the jump guard, and checked for this objective. What the guard learned is about
        one model and guide: another pair starts afresh. Programs compare by ``==``: a
        bound method (``net.model``) is a new object at every attribute read, yet the same
        program."""
        if self._programs is not None and (self._programs[0] != model or self._programs[1] != guide):
            self.jump_guard = JumpGuard(self.name)
            self.auto_enumeration = AutoEnumeration()
            self._seen_sites = frozenset()
            self.watch_jumps = True
        self._programs = (model, guide)
        return ObjectiveCheck(self.name, self._infer_keys)(
            self.auto_enumeration(self.jump_guard(self.estimators(guide))))

    def _choose_sums(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> None:
        """Which guide sites ``"auto"`` sums out (:class:`AutoEnumeration`), decided on
        hidden runs of the checked ``guide`` from a saved random state, as the plate-nesting
        guess: a sampled run shows which sites' values stay in their plates, and a run
        with them summed out shows that the program broadcasts the enumerated dims."""
        state = get_rng_state()
        try:
            with poutine.block(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the step itself gives Pyro's warnings
                try:
                    with watched_reads(False) as reads:
                        run = importance_run(model, guide, args, kwargs, self.max_plate_nesting)
                    mark_reads(run.guide_trace, reads.sites)
                    terms = _particle_terms(run.model_trace, run.guide_trace, ParticleLayout(None, 1))
                except Exception:  # the step raises it again, where it belongs
                    self.auto_enumeration.decided = True
                    return
                self.auto_enumeration.decide(latent_nodes([run.guide_trace]), lambda node: stays_in_plates(terms, node),
                                             lambda: self._runs_summed(model, guide, args, kwargs))
        finally:
            set_rng_state(state)

    def _runs_summed(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> Optional[Exception]:
        """What one step's run raises with ``"auto"``'s chosen sites summed out, or None."""
        try:
            with torch.enable_grad():
                if self.vectorize_particles and self.num_particles > 1:
                    run = self._get_vectorized_trace(model, guide, args, kwargs)
                else:
                    run = self._get_trace(model, guide, args, kwargs)
                dim = self._particle_dim()
                layout = ParticleLayout(dim, self.num_particles if dim is not None else 1)
                enumerated_terms(run.model_trace, run.guide_trace, layout, 1, surrogate=True)
        except Exception as error:  # reported as the reason 'auto' did not sum the sites out
            return error
        return None

    def _guess_plate_nesting(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> None:
        """Enumeration takes the dims left of the plates: as TraceEnum_ELBO, one run
        (hidden from outer handlers, nothing enumerated) finds how deep they nest. The
        run draws from a saved random state, so the step's draws are those it would make
        without it (a comparison with a Pyro ELBO under one seed stays draw for draw)."""
        state = get_rng_state()
        try:
            with poutine.block():
                checked = ObjectiveCheck(self.name, self._infer_keys)(guide)
                run = importance_run(model, checked, args, kwargs, float("inf"), scores=False)
        finally:
            set_rng_state(state)
        depth = plate_depth([run.model_trace, run.guide_trace])
        self.max_plate_nesting = depth + (self.vectorize_particles and self.num_particles > 1)

    def _particle_dim(self):
        if self.vectorize_particles and self.num_particles > 1:
            return -self.max_plate_nesting
        return None

    def _particles(
        self,
        model: Callable,
        guide: Callable,
        args: tuple,
        kwargs: dict,
        surrogate: bool,
        num_samples: int = 1,
    ) -> Tuple[torch.Tensor, Estimates]:
        """ELBO estimates ``(G,)`` and their surrogates (see :class:`Estimates`). The
        ``num_particles`` particles form ``G = num_samples`` independent samples of
        ``num_particles / G`` particles each; a surrogate's value equals its estimate."""
        if self.enumerates and self.max_plate_nesting == float("inf"):
            self._guess_plate_nesting(model, guide, args, kwargs)
        guide = self._checked_guide(model, guide)
        if self.enumerates and not self.auto_enumeration.decided:
            self._choose_sums(model, guide, args, kwargs)

        def particle_programs() -> Tuple[Callable, Callable]:
            # The model and guide an alternative run traces: inside the particle plate
            # when the particles are vectorized (``dim``, known once the first traces ran).
            if dim is None:
                return model, guide
            return self._vectorized_num_particles(model), self._vectorized_num_particles(guide)

        def run_alternative(run: ImportanceRun, first: PairTerms, site: str, value, keep_gradients: bool,
                            relaxed: bool):
            # A re-run's only use is its value of f: no provenance, no read watch, no score
            # parts; and when the site is the guide's last, no guide run at all. A relaxed
            # value lies outside the discrete support: no support checks, and a fresh guide
            # run, since the first run's distributions check their values.
            alternative_model, alternative_guide = particle_programs()
            with AlternativeRun(run.guide_full, {site: value}, run.model_full, relaxed), torch.set_grad_enabled(
                keep_gradients and torch.is_grad_enabled()
            ), pyro.validation_enabled(is_validation_enabled() and not relaxed):
                again = importance_run(
                    alternative_model, alternative_guide, args, kwargs, self.max_plate_nesting, scores=False,
                    guide_full=None if relaxed else changed_last_site(run.guide_full, site, value),
                )
            elbo, by_plates = terms_by_plates(again.model_trace, again.guide_trace, layout)
            f = site_f(by_plates, elbo, run.guide_trace.nodes[site], layout, first.read)
            return f if keep_gradients else f.detach()

        def run_changes(run: ImportanceRun, changes: Dict[str, Tuple[torch.Tensor, torch.Tensor]],
                        frames: Optional[tuple]) -> torch.Tensor:
            # The one-run engine's alternative run (pyro_grad.engine.one_run): each site's
            # jumped value where it was kept; returns the per-particle ELBO, or with the
            # sites' plate ``frames`` each plate element's terms.
            alternative_model, alternative_guide = particle_programs()
            values = {name: value for name, (value, _) in changes.items()}
            picked = {name: mask for name, (_, mask) in changes.items()}
            with AlternativeRun(run.guide_full, values, run.model_full, picked=picked), torch.no_grad():
                again = importance_run(alternative_model, alternative_guide, args, kwargs, self.max_plate_nesting,
                                       scores=False)
            elbo, by_plates = terms_by_plates(again.model_trace, again.guide_trace, layout)
            return elbo if frames is None else torch.as_tensor(by_plates.sum_to(frames))

        elbos, surrogates, blocks, differences, traces = [], [], [], [], []
        guide_trace = None
        for run in self._step_runs(model, guide, args, kwargs, watch=surrogate and self.watch_jumps):
            model_trace, guide_trace = run.model_trace, run.guide_trace
            traces += [model_trace, guide_trace]
            # Known only once the first traces guessed max_plate_nesting.
            dim = self._particle_dim()
            k = self.num_particles if dim is not None else 1
            layout = ParticleLayout(dim, k)
            if self.enumerates and is_enumerated(model_trace, guide_trace):
                # TraceEnum's sum over the enumerated sites: exact, no difference terms.
                value, block = enumerated_terms(model_trace, guide_trace, layout, num_samples if dim is not None else 1,
                                                surrogate)
                elbos.append(value.detach())
                surrogates.append(value)
                blocks.append(block)
                differences.append(({}, {}))
                continue
            terms = _particle_terms(model_trace, guide_trace, layout)
            elbos.append(terms.elbo)
            surrogates.append(terms.surrogate)
            blocks.append(terms.block)
            if surrogate:
                rerun_terms, losses = difference_terms(
                    guide_trace, layout,
                    lambda s, t=terms, g=guide_trace: site_f(t.by_plates, t.elbo, g.nodes[s], layout, t.read).detach(),
                    lambda s, v, keep, relaxed, t=terms, r=run: run_alternative(r, t, s, v, keep, relaxed),
                    local=lambda s, t=terms, g=guide_trace: stays_in_plates(t, g.nodes[s]),
                    scored=True,
                )
                # One-run sites difference the whole per-particle ELBO (the terms a jump does
                # not reach are replayed, and cancel), or each plate element its own terms.
                frames, batch, f = plate_local(terms, guide_trace) or (None, None, terms.elbo)
                rerun_terms.update(one_run_terms(
                    guide_trace, layout, f, lambda changes, r=run, fr=frames: run_changes(r, changes, fr),
                    inputs=differentiable_inputs(args, kwargs, run.guide_full), batch=batch,
                ))
                differences.append((rerun_terms, losses))
        elbo = group(concat_particles(elbos), num_samples).mean(1)
        if not surrogate:
            return elbo, Estimates(elbo, evaluations=evaluations(guide_trace))
        # The ELBO is maximized, so auxiliary losses enter with a minus sign.
        estimates = assemble(surrogates, blocks, differences, num_samples, guide_trace, args, kwargs, loss_sign=-1.0)
        estimates.reasons = choice_reasons(guide_trace, self.jump_guard, self.auto_enumeration)
        estimates.traces = traces
        return elbo, estimates

    def estimates(
        self, model: Callable, guide: Callable, args: tuple = (), kwargs: Optional[dict] = None, num_samples: int = 1
    ) -> Estimates:
        """``num_samples`` independent surrogate ELBOs of ``num_particles`` particles each,
        with their per-site terms: ``values (G,)`` (gradients ascend the ELBO), each
        score-path site's share ``score_terms[site] (G,)``, the estimators each site used
        and their runs. The raw material of ``pg.diagnose``; baselines see each sample's
        own particles."""
        check_num_particles(num_samples)
        wide = copy.copy(self)  # shares the estimators handler and jump guard, so their state
        wide.num_particles = self.num_particles * num_samples
        wide.watch_jumps = True  # a diagnosis always watches its draws for jumps
        if self.vectorize_particles and self.num_particles == 1 and wide.num_particles > 1:
            wide.max_plate_nesting += 1  # Pyro's ELBO keeps a particle dim only for K > 1
        return wide._particles(model, guide, tuple(args), dict(kwargs or {}), surrogate=True, num_samples=num_samples)[1]

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """An estimate of −ELBO (no gradients; baseline state untouched)."""
        with torch.no_grad():
            elbo, _ = self._particles(model, guide, args, kwargs, surrogate=False)
        loss = -torch_item(elbo[0])
        warn_if_nan(loss, "loss")
        return loss

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any):
        """A surrogate whose value is the −ELBO estimate and whose gradient is the estimators'."""
        if self.recorder is None:
            return self._surrogate_loss(model, guide, args, kwargs)[0]
        loss = self.recorder.step(lambda: self._surrogate_loss(model, guide, args, kwargs), (model, guide), args,
                                  kwargs, ordinary=self._ordinary_step(model, guide))
        if self.recorder.last == "flat":  # the step the watch counts, as _runs counts an unwatched one
            self._unwatched_steps += 1
            self.watch_jumps |= self._unwatched_steps % self.watch_jumps_every == 0
        return loss

    def _surrogate_loss(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> Tuple[torch.Tensor, list]:
        _, estimates = self._particles(model, guide, args, kwargs, surrogate=True)
        return -estimates.values[0], estimates.traces

    def _ordinary_step(self, model: Callable, guide: Callable) -> bool:
        """Whether the next step runs as every other: the same programs, plate nesting
        and sums known, no watch for jumps. Only such a step is recorded or replayed."""
        return (self._programs is not None and self._programs[0] == model and self._programs[1] == guide
                and not self.watch_jumps and self.max_plate_nesting != float("inf")
                and (not self.enumerates or self.auto_enumeration.decided))

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        surrogate_loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if surrogate_loss.requires_grad:
            surrogate_loss.backward(retain_graph=self.retain_graph)
        loss = torch_item(surrogate_loss)
        warn_if_nan(loss, "loss")
        return loss


def review_jumps(run: ImportanceRun) -> Tuple[Dict[str, dict], dict]:
    """A watched trace pair's latent guide sites, and the jumps that reach its log-densities."""
    scored = [provenance_of(site["log_prob"]) for trace in (run.model_trace, run.guide_trace)
              for site in trace.nodes.values() if site["type"] == "sample"]
    return latent_nodes([run.guide_trace]), found_jumps([run.guide_trace], scored)


class PairTerms(NamedTuple):
    """One trace pair's per-particle ``elbo`` and ``surrogate`` ``(P,)``, its score-path
    ``block``, every ELBO term by plates (``by_plates``: ``log p`` and ``−log q``), the terms
    downstream of each guide site (``downstream``), and the guide sites read into
    Python (``read``)."""

    elbo: torch.Tensor
    surrogate: torch.Tensor
    block: Block
    by_plates: MultiFrameTensor
    downstream: Dict[str, MultiFrameTensor]
    read: List[str]


def site_f(
    by_plates: MultiFrameTensor, elbo: torch.Tensor, site: dict, layout: ParticleLayout, read: List[str]
) -> torch.Tensor:
    """The ELBO terms (``by_plates``) each element of a guide site can change,
    summed to its plates (what a difference estimator differences, per plate element),
    shaped to broadcast against its batch; the whole per-particle ``elbo (P,)`` for a
    site read into Python."""
    if site["name"] not in read:
        f = plate_terms(by_plates, site)
        if f is not None:
            return f
    return layout.align(elbo)


def plate_terms(by_plates: MultiFrameTensor, site: dict) -> Optional[torch.Tensor]:
    """The ELBO terms summed to the site's plates, when they broadcast against its batch
    (each plate element's own); None where terms have a batch dim no plate declares,
    where only the total is safe."""
    batch = site["fn"].batch_shape
    f = torch.as_tensor(by_plates.sum_to(site["cond_indep_stack"]))
    try:
        if f.dim() <= len(batch) and torch.broadcast_shapes(f.shape, batch) == batch:
            return f
    except RuntimeError:
        pass
    return None


def plate_local(terms: PairTerms, guide_trace) -> Optional[Tuple[tuple, torch.Size, torch.Tensor]]:
    """The plate frames and batch shape the one-run sites of ``guide_trace`` share, and
    each plate element's terms (:func:`plate_terms`), when every one's terms stay in its
    plates (the same vectorized plates and batch for all), so that each plate element
    keeps a jump of its own and differences its own terms (the per-plate
    Rao-Blackwellization); else None: one jump per particle."""
    nodes = [site for _, site, _ in difference_sites(guide_trace, None, one_run=True)]
    if not nodes or not all(stays_in_plates(terms, site) for site in nodes):
        return None
    plates = {frozenset(f for f in site["cond_indep_stack"] if f.vectorized) for site in nodes}
    shapes = {site["fn"].batch_shape for site in nodes}
    if len(plates) != 1 or not next(iter(plates)) or len(shapes) != 1:
        return None
    own = plate_terms(terms.by_plates, nodes[0])
    return None if own is None else (nodes[0]["cond_indep_stack"], next(iter(shapes)), own)


def stays_in_plates(terms: PairTerms, site: dict) -> bool:
    """Whether every ELBO term that depends on the site lies in all of the site's plates,
    so that each plate element's terms depend on that element alone."""
    if site["name"] in terms.read:
        return False
    own = frozenset(f for f in site["cond_indep_stack"] if f.vectorized)
    # A batch dim no plate declares (z of shape (N, D) in a plate of N) is not independent:
    # a term may depend on the whole of it (x_n on every z_{n, d}).
    batch, declared = site["fn"].batch_shape, {f.dim for f in own}
    if any(size > 1 and i - len(batch) not in declared for i, size in enumerate(batch)):
        return False
    return all(own <= frames for frames in terms.downstream.get(site["name"], {}))


def elbo_terms(model_trace, guide_trace) -> Iterator[Tuple[bool, dict, FrozenSet[str], torch.Tensor]]:
    """Every ELBO term in program order, model first: ``(in_guide, site, upstream,
    term)`` with ``term`` = ``log p`` or ``−log q`` as a plain tensor and ``upstream`` the
    sites it depends on. The provenance is read once here: tracking it through every
    later op takes longer than the ELBO itself."""
    for in_guide, trace in ((False, model_trace), (True, guide_trace)):
        for site in trace.nodes.values():
            if site["type"] == "sample":
                term = plain(site["log_prob"])
                yield in_guide, site, provenance_of(site["log_prob"]), -term if in_guide else term


def terms_by_plates(model_trace, guide_trace, layout: ParticleLayout) -> Tuple[torch.Tensor, MultiFrameTensor]:
    """The per-particle ELBO ``(P,)`` of one trace pair and its terms by plates."""
    elbo, by_plates = torch.zeros(layout.num), MultiFrameTensor()
    for _, site, _, term in elbo_terms(model_trace, guide_trace):
        elbo = elbo + layout.reduce(term)
        by_plates.add((site["cond_indep_stack"], term))
    return elbo, by_plates


def _particle_terms(model_trace, guide_trace, layout: ParticleLayout) -> PairTerms:
    """Per-particle ELBO and surrogate ELBO of one trace pair, its score-path block, and
    its terms by plates."""
    elbo = surrogate = torch.zeros(layout.num)
    downstream = defaultdict(MultiFrameTensor)
    by_plates = MultiFrameTensor()
    # The model's terms, and the guide's in program order (name, term).
    terms, guide_terms = [], []
    for in_guide, site, upstream, term in elbo_terms(model_trace, guide_trace):
        term_sum = layout.reduce(term)
        elbo = elbo + term_sum
        # Reparameterized sites keep log q's pathwise gradient; score-path sites keep
        # only its value, since their score term already carries −log q in f.
        if not in_guide or is_identically_zero(site["score_parts"].score_function):
            surrogate = surrogate + term_sum
        else:
            entropy_sum = layout.reduce(plain(torch.as_tensor(site["score_parts"].entropy_term)))
            surrogate = surrogate - entropy_sum + (term_sum + entropy_sum).detach()
        frame_term = (site["cond_indep_stack"], term)
        for name in upstream:
            downstream[name].add(frame_term)
        by_plates.add(frame_term)
        if in_guide:
            guide_terms.append((site["name"], frame_term))
        else:
            terms.append(frame_term)
    # A guide site read into Python control flow may change every term after it (which
    # sites exist, what they draw), in any plate element: all of those are downstream.
    read = read_sites(guide_trace)
    for name in read:
        position = next(i for i, (n, _) in enumerate(guide_terms) if n == name)
        downstream[name] = MultiFrameTensor(*terms, *(term for _, term in guide_terms[position:]))
    block: Block = {}
    for name, downstream_terms in downstream.items():
        site = guide_trace.nodes.get(name)
        estimator = site["infer"].get("estimator") if site else None
        if not isinstance(estimator, ScoreEstimator):
            continue
        score = layout.first(plain(site["score_parts"].score_function))
        traced = torch.as_tensor(downstream_terms.sum_to(() if name in read else site["cond_indep_stack"]))
        f = match_dims(layout.first(traced), score.dim())
        block[name] = score_part(estimator, site, score, f, traced, layout, baselines.state_of(site))
    return PairTerms(elbo, surrogate, block, by_plates, dict(downstream), read)
