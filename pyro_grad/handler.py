"""The ``estimators`` handler: choose each sample site's gradient path before it is drawn."""

from collections.abc import Mapping
from typing import Any, Callable, Optional, Union

from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample

from pyro_grad.errors import EstimatorError
from pyro_grad.paths import Estimator, Reparam, Score

Config = Union[None, Mapping, Callable[[dict], Optional[Estimator]]]

#: Set in a site's ``infer`` once a handler has prepared it, so outer handlers leave it be.
PREPARED = "_pyro_grad_prepared"


def _check_estimator(value: Any, where: str) -> Estimator:
    if not isinstance(value, Estimator):
        raise EstimatorError(
            f"{where} must be a pyro_grad estimator such as Reparam() or "
            f"Score(baseline='loo'), got {value!r}"
        )
    return value


class EstimatorMessenger(Messenger):
    """Sets ``msg["infer"]["estimator"]`` for every latent sample site and switches its path.

    Precedence: ``config`` (a mapping from site names, or a callable of the site
    message), then the site's own ``infer={"estimator": ...}``, then ``default``.
    Observed and subsample sites are left alone, as are sites an inner handler
    already prepared. The site's distribution object is never mutated: a path
    switch replaces ``msg["fn"]`` with a wrapper.
    """

    def __init__(self, config: Config = None, default: Union[str, Estimator, None] = "auto"):
        super().__init__()
        if isinstance(config, Mapping):
            for name, value in config.items():
                _check_estimator(value, f"config[{name!r}]")
        elif config is not None and not callable(config):
            raise EstimatorError(
                f"config must be a dict of site names to estimators or a callable, got {config!r}"
            )
        if default not in ("auto", None):
            _check_estimator(default, "default")
        self.config = config
        self.default = default
        self._seen = set()

    def __enter__(self):
        self._seen = set()
        return super().__enter__()

    def __exit__(self, exc_type, exc_value, traceback):
        result = super().__exit__(exc_type, exc_value, traceback)
        if exc_type is None and isinstance(self.config, Mapping):
            unknown = sorted(set(self.config) - self._seen)
            if unknown:
                raise EstimatorError(
                    f"estimators config names site(s) {unknown} that the program does not "
                    f"have; its latent sample sites are {sorted(self._seen)}"
                )
        return result

    def _choose(self, msg: dict) -> Optional[Estimator]:
        name = msg["name"]
        if isinstance(self.config, Mapping) and name in self.config:
            return self.config[name]
        if callable(self.config) and not isinstance(self.config, Mapping):
            chosen = self.config(msg)
            if chosen is not None:
                return _check_estimator(chosen, f"config({name!r})")
        if "estimator" in msg["infer"]:
            return _check_estimator(msg["infer"]["estimator"], f"site {name!r} infer['estimator']")
        if self.default == "auto":
            return Reparam() if getattr(msg["fn"], "has_rsample", False) else Score("auto")
        return self.default

    def _pyro_sample(self, msg: dict) -> None:
        if msg["is_observed"] or isinstance(msg["fn"], _Subsample):
            return
        self._seen.add(msg["name"])
        if msg["infer"].get(PREPARED) or msg["value"] is not None:
            return  # prepared by an inner handler, or replayed: the draw is not ours
        estimator = self._choose(msg)
        if estimator is None:
            return
        estimator.prepare(msg)
        msg["infer"]["estimator"] = estimator
        msg["infer"][PREPARED] = True


def estimators(
    fn: Union[Callable, Mapping, None] = None,
    config: Config = None,
    *,
    default: Union[str, Estimator, None] = "auto",
) -> Any:
    """Choose the gradient estimator of each sample site of ``fn``.

    As a wrapper: ``guide = pg.estimators(guide, {"z": pg.Score(baseline="loo")})``.
    As a context manager: ``with pg.estimators({"z": pg.Reparam()}): ...``.

    :param fn: the program (a model or a guide) to wrap; a mapping here is taken as
        ``config`` for the context-manager form.
    :param config: site name → estimator, or a callable ``(site message) →
        estimator or None``. Wins over a site's ``infer={"estimator": ...}``.
    :param default: for sites nothing else chose: ``"auto"`` (``Reparam`` where the
        distribution has ``rsample``, else ``Score`` with a leave-one-out baseline
        when there are K ≥ 2 particles and a decaying average otherwise), an
        estimator, or ``None`` to leave the site to an outer handler.
    """
    if isinstance(fn, Mapping) and config is None:
        fn, config = None, fn
    messenger = EstimatorMessenger(config, default=default)
    return messenger if fn is None else messenger(fn)
