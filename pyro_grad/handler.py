"""The ``estimators`` handler: choose each sample site's gradient path before it is drawn."""

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple, Union

import pyro.poutine as poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites
from pyro.poutine.runtime import get_plates
from pyro.poutine.subsample_messenger import _Subsample

from pyro_grad import baselines
from pyro_grad.baselines import RunningAverages
from pyro_grad.errors import EstimatorError, float_index, float_index_error, is_index_dtype_error
from pyro_grad.distributions import describe, without_path_switch
from pyro_grad.gradient_estimators import Enumerate, Estimator, Reparam, Score, Site, not_applicable
from pyro_grad.pyro_infer import baseline_estimator

Config = Union[None, Mapping, Estimator, Callable[[dict], Optional[Estimator]]]

#: Key in a site's ``infer`` of the :class:`Choice` that prepared it.
CHOICE = "_pyro_grad_choice"

# How strongly a handler's choice holds, weakest first. Handlers nest: the innermost
# sees a site first, and an outer handler re-prepares the site only with a stronger
# choice, so an objective's built-in "auto" never hides a user's config around it. A
# measured choice (``tuned``, :class:`pyro_grad.Retuned`'s) beats "auto" and yields to
# anything a user wrote.
AUTO, TUNED, DEFAULT, SITE, CONFIG = range(5)


@dataclass(frozen=True)
class Choice:
    """Who chose a site's estimator, and what the site looked like before.

    ``strength`` is one of ``AUTO < TUNED < DEFAULT < SITE < CONFIG``; ``site_estimator`` is the
    site's own ``infer["estimator"]``, so that an outer handler can choose again from
    the site as written. (The choosing handler's baseline state goes in the site's
    ``infer`` under :data:`pyro_grad.baselines.STATE`.)
    """

    strength: int
    site_estimator: Optional[Estimator]


def _check_estimator(value: Any, where: str) -> Estimator:
    if not isinstance(value, Estimator):
        raise EstimatorError(
            f"{where} must be a pyro_grad estimator such as Reparam() or "
            f"Score(baseline='loo'), got {value!r}"
        )
    return value


def auto_estimator(fn: Any) -> Estimator:
    """``Reparam`` where the distribution has ``rsample``, else ``Score("auto")``."""
    return Reparam() if getattr(fn, "has_rsample", False) else Score("auto")


class EstimatorMessenger(Messenger):
    """Sets ``msg["infer"]["estimator"]`` for every latent sample site and switches its path.

    Precedence, strongest first: ``config`` (a mapping from site names, a callable of
    the site message, or one estimator for every site), then the site's own ``infer={"estimator": ...}``,
    then Pyro's mark ``infer={"enumerate": "parallel"}`` (``config_enumerate``'s; ``Enumerate()``,
    which sums the site out in an ELBO), then its ``infer={"baseline": {...}}`` as TraceGraph_ELBO reads it (``Score`` with that
    baseline, at a site without ``rsample``: :mod:`pyro_grad.pyro_infer`), then an
    explicit ``default`` estimator, then ``tuned`` (site name → estimator measured by
    :func:`pyro_grad.tune`: :class:`pyro_grad.Retuned` passes its choice here), then ``"auto"``. Among nested handlers the inner
    one wins a tie and an outer one overrides a weaker choice, so that
    ``with pg.estimators({"z": pg.Score()}): pg.expectation(f, θ)`` uses ``Score`` at
    ``z`` although the objective applies ``"auto"`` inside. Observed, subsample and
    replayed sites are left alone. The site's distribution object is never mutated: a
    path switch replaces ``msg["fn"]`` with a wrapper.

    The handler keeps the state of the baselines it chose (the decaying averages), so
    wrap a program once and reuse it to carry that state across steps.
    """

    def __init__(self, config: Config = None, default: Union[str, Estimator, None] = "auto",
                 tuned: Optional[Mapping] = None):
        super().__init__()
        if isinstance(config, Mapping):
            for name, value in config.items():
                _check_estimator(value, f"config[{name!r}]")
        elif config is not None and not isinstance(config, Estimator) and not callable(config):
            raise EstimatorError(
                "config must be a dict of site names to estimators, a callable of the site "
                f"message, or one estimator for every site; got {config!r}"
            )
        if default == "tune":
            raise EstimatorError(
                "default='tune' moved to a wrapper of the objective: pg.Retuned(pg.ELBO(...)) as SVI's loss, "
                "or pg.Retuned(pg.expectation)(fn, *args, ...), tunes the sites nothing else chose before the "
                "first call (and every N calls with every=N)"
            )
        if isinstance(default, str) and default != "auto":
            raise EstimatorError(f"default must be 'auto', None or an estimator, got {default!r}")
        if default is not None and not isinstance(default, str):
            _check_estimator(default, "default")
        for name, value in (tuned or {}).items():
            _check_estimator(value, f"tuned[{name!r}]")
        self.config = config
        self.default = default
        self.tuned: Mapping = dict(tuned or {})
        self.averages = RunningAverages()
        self._seen = set()
        self._float_indices = []

    def __enter__(self):
        self._seen = set()
        self._float_indices = []
        return super().__enter__()

    def __exit__(self, exc_type, exc_value, traceback):
        result = super().__exit__(exc_type, exc_value, traceback)
        if exc_value is not None and self._float_indices and is_index_dtype_error(exc_value):
            raise float_index_error(self._float_indices, exc_value) from exc_value
        if exc_type is None and isinstance(self.config, Mapping):
            unknown = sorted(set(self.config) - self._seen)
            if unknown:
                raise EstimatorError(
                    f"estimators config names site(s) {unknown} that the program does not "
                    f"have; its latent sample sites are {sorted(self._seen)}"
                )
        return result

    def _choose(self, msg: dict, site_estimator: Optional[Estimator]) -> Optional[Tuple[Estimator, int]]:
        name = msg["name"]
        if isinstance(self.config, Estimator):
            return self.config, CONFIG
        if isinstance(self.config, Mapping) and name in self.config:
            return self.config[name], CONFIG
        if callable(self.config) and not isinstance(self.config, Mapping):
            chosen = self.config(msg)
            if chosen is not None:
                return _check_estimator(chosen, f"config({name!r})"), CONFIG
        if site_estimator is not None:
            return _check_estimator(site_estimator, f"site {name!r} infer['estimator']"), SITE
        if msg["infer"].get("enumerate") == "parallel":  # as config_enumerate marks a site
            return Enumerate(), SITE
        pyro_baseline = baseline_estimator(msg)  # TraceGraph_ELBO's infer={"baseline": {...}}
        if pyro_baseline is not None:
            return pyro_baseline, SITE
        if isinstance(self.default, Estimator):
            return self.default, DEFAULT
        if name in self.tuned:
            return self.tuned[name], TUNED
        if self.default == "auto":
            return auto_estimator(msg["fn"]), AUTO
        return None

    def choices(self) -> tuple:
        """What this handler would choose, comparable across calls (a recorded step,
        :mod:`pyro_grad.engine.recording`, checks it): its identity, config, default and
        tuned choices (a callable config as itself: what it returns is not seen)."""
        config = tuple(self.config.items()) if isinstance(self.config, Mapping) else self.config
        return (id(self), config, self.default, tuple(self.tuned.items()))

    def _pyro_estimator_handlers(self, msg: dict) -> None:
        # A recorded step asks which handlers are around it (pyro_grad.engine.recording).
        # A step that runs the recording draws no site here, yet follows these choices (made
        # when its sites were seen, on an uncompiled step that checked the names): the
        # names count as seen.
        msg["infer"]["handlers"].append(self.choices())
        if isinstance(self.config, Mapping):
            self._seen.update(self.config)

    def _pyro_sample(self, msg: dict) -> None:
        if msg["is_observed"] or isinstance(msg["fn"], _Subsample):
            return
        self._seen.add(msg["name"])
        earlier: Optional[Choice] = msg["infer"].get(CHOICE)
        if earlier is None and msg["value"] is not None:
            return  # replayed: the draw is not ours
        if earlier is None:
            site_estimator = msg["infer"].get("estimator")
        else:
            site_estimator = earlier.site_estimator
        # Choose from the site as written: without the inner handler's path switch, but
        # with what handlers in between did (a plate broadcasting it, say).
        prepared, msg["fn"] = msg["fn"], without_path_switch(msg["fn"])
        choice = self._choose(msg, site_estimator)
        if choice is None or (earlier is not None and choice[1] <= earlier.strength):
            msg["fn"] = prepared
            return
        estimator, strength = choice
        # Refused here, before the draw, with what applies instead.
        site = Site.of(msg, get_plates())
        reason = estimator.refusal(site)
        if reason is not None:
            raise not_applicable(estimator, site, reason)
        estimator.prepare(msg)
        if getattr(msg["fn"], "draws_float_index", False):
            self._float_indices.append(float_index(estimator, site.name, describe(site.fn)))
        msg["infer"]["estimator"] = estimator
        msg["infer"][CHOICE] = Choice(strength, site_estimator)
        baselines.keep_state(msg, self.averages)


class WrappedProgram:
    """A program run under an :class:`EstimatorMessenger` (``messenger``, which keeps the
    state of the baselines it chose across calls)."""

    def __init__(self, messenger: "EstimatorMessenger", fn: Callable):
        functools.update_wrapper(self, fn, updated=())
        self.messenger = messenger
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.messenger:
            return self.fn(*args, **kwargs)

    def __enter__(self) -> None:
        name = getattr(self.fn, "__name__", type(self.fn).__name__)
        raise EstimatorError(
            f"pg.estimators({name}) wraps {name} as a program, so it cannot open a `with` block; "
            f"for a callable config there, write `with pg.estimators(config={name}):`"
        )

    def __exit__(self, *exc: Any) -> None:
        return None


def estimators(
    fn: Union[Callable, Mapping, None] = None,
    config: Config = None,
    *,
    default: Union[str, Estimator, None] = "auto",
) -> Any:
    """Choose the gradient estimator of each sample site of ``fn``.

    As a wrapper: ``guide = pg.estimators(guide, {"z": pg.Score(baseline="loo")})``.
    As a context manager: ``with pg.estimators({"z": pg.Reparam()}): ...`` or
    ``with pg.estimators(config=choose): ...``; a handler's explicit choices win over
    the objectives' built-in ``"auto"`` inside it.

    :param fn: the program (a model or a guide) to wrap; a mapping or an estimator
        here is taken as ``config`` for the context-manager form.
    :param config: site name → estimator, a callable ``(site message) → estimator or
        None``, or one estimator for every site. Wins over a site's
        ``infer={"estimator": ...}``.
    :param default: for sites nothing else chose: ``"auto"`` (``Reparam`` where the
        distribution has ``rsample``, else ``Score`` with a leave-one-out baseline
        when there are K ≥ 2 particles and a decaying average otherwise), an
        estimator, or ``None`` to leave the site to an outer handler. (For the quietest
        unbiased estimator, measured, wrap the objective: :class:`pyro_grad.Retuned`.)
    """
    if isinstance(fn, (Mapping, Estimator)) and config is None:
        fn, config = None, fn
    messenger = EstimatorMessenger(config, default=default)
    if fn is None:
        return messenger
    if not callable(fn):
        raise EstimatorError(f"pg.estimators: {fn!r} is neither a program nor an estimators config")
    return WrappedProgram(messenger, fn)


def with_config(program: Callable, config: Config) -> Callable:
    """``program`` under an estimators ``config`` (any form :func:`estimators` takes), or
    unchanged for None: the one resolver ``diagnose``, ``compare`` and the CLI share."""
    return program if config is None else estimators(program, config)


def latent_sites(program: Callable, args: tuple, kwargs: dict,
                 split_by_plates: bool = True) -> List[Tuple[Site, Optional[Estimator]]]:
    """The program's latent sites in program order, each with the estimator it fixes
    itself (a site's ``infer={"estimator": ...}``, or a handler's choice, inside the
    program or around the call, stronger than a measured one), else None.

    Handlers around the call see the run (only param sites are hidden from them, so
    that a caller's param capture, SVI's, collects nothing). Without
    ``split_by_plates`` (``pg.expectation``, whose f is one value per particle) a
    site's plates do not split its elements (see :class:`~pyro_grad.gradient_estimators.Site`)."""
    with poutine.block(hide_types=["param"]):
        trace = prune_subsample_sites(poutine.trace(program).get_trace(*args, **kwargs))
    found = []
    for node in trace.nodes.values():
        if node["type"] != "sample" or node["is_observed"]:
            continue
        site = Site.of(node)
        if not split_by_plates:
            site = Site(site.name, site.fn, site.elements, 1)
        choice: Optional[Choice] = node["infer"].get(CHOICE)
        if choice is not None:
            fixed = node["infer"]["estimator"] if choice.strength > TUNED else None
        else:
            fixed = node["infer"].get("estimator")
        found.append((site, fixed))
    return found
