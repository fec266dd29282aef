"""The one exception type pyro_grad raises for misuse, so callers can catch it."""


def first_line(error: BaseException) -> str:
    """An error's first line (Pyro appends trace shapes to errors raised in a trace)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


class EstimatorError(ValueError):
    """An estimator was asked for something it cannot do, or the input is malformed.

    Messages name the site, the distribution and what would apply instead.
    """
