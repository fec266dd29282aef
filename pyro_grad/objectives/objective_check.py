"""``ObjectiveCheck``: an objective refuses, at the site, an estimator not derived for it."""

from typing import Optional

from pyro.poutine.messenger import Messenger

from pyro_grad.errors import EstimatorError
from pyro_grad.gradient_estimators import Site
from pyro_grad.gradient_estimators.registry import OBJECTIVES, NotApplicable, not_applicable
from pyro_grad.pyro_infer import InferKeys


class ObjectiveCheck(Messenger):
    """Stops ``objective`` (``"expectation"``, ``"elbo"`` or ``"iwae"``) at a latent site
    whose estimator was derived for other objectives (VIMCO in an ELBO, say), and a
    bound (an ELBO or the IWAE) at a guide site whose draw is not an exact value of its
    distribution (a soft relaxation's), before the model scores it; and checks the
    site's Pyro ``infer`` keys (:class:`~pyro_grad.pyro_infer.InferKeys`)."""

    def __init__(self, objective: str, infer_keys: Optional[InferKeys] = None) -> None:
        super().__init__()
        self.objective = objective
        # An objective that lives across steps passes its own, so that a warning comes once.
        self.infer_keys = infer_keys or InferKeys(OBJECTIVES[objective])

    def __exit__(self, exc_type, exc_value, traceback):
        result = super().__exit__(exc_type, exc_value, traceback)
        # A handler inside refused a site without knowing the objective: what applies is
        # what applies in this one.
        if isinstance(exc_value, NotApplicable) and exc_value.estimator is not None and exc_value.objective is None:
            raise exc_value.for_objective(self.objective) from None
        return result

    def _pyro_sample(self, msg: dict) -> None:
        # Before the draw, for the estimators chosen inside; after it (below), for a
        # handler around the objective's call that chose again.
        if not msg["is_observed"] and msg["value"] is None:
            self.infer_keys.check(msg)
        self._pyro_post_sample(msg)

    def _pyro_post_sample(self, msg: dict) -> None:
        estimator = msg["infer"].get("estimator")
        if estimator is None or msg["is_observed"]:
            return
        if self.objective not in estimator.objectives:
            derived = " and ".join(OBJECTIVES[o] for o in sorted(estimator.objectives))
            raise not_applicable(
                estimator, Site.of(msg), f"it is derived for {derived}, not {OBJECTIVES[self.objective]}", self.objective
            )
        site = Site.of(msg)
        reason = estimator.objective_refusal(site, self.objective)
        if reason is not None:
            raise not_applicable(estimator, site, reason, self.objective)
        if not estimator.exact_value and self.objective != "expectation":
            raise EstimatorError(
                f"{estimator!r} at guide site '{msg['name']}': a soft relaxed sample is not in "
                "the discrete support the model scores; use GumbelSoftmax(hard=True), "
                "StraightThrough() or an unbiased estimator in an ELBO"
            )
