"""The one exception type pyro_grad raises for misuse, so callers can catch it."""


class EstimatorError(ValueError):
    """An estimator was asked for something it cannot do, or the input is malformed.

    Messages name the site, the distribution and what would apply instead.
    """
