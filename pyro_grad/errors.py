"""The one exception type pyro_grad raises for misuse, so callers can catch it."""


def first_line(error: BaseException) -> str:
    """An error's first line (Pyro appends trace shapes to errors raised in a trace)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


class EstimatorError(ValueError):
    """An estimator was asked for something it cannot do, or the input is malformed.

    Messages name the site, the distribution and what would apply instead.
    """


def float_index(estimator: object, site: str, distribution: str) -> str:
    """What drew ``site`` as a float index, for :func:`float_index_error`."""
    return f"{estimator!r} draws site '{site}' ({distribution}) as a float index"


def is_index_dtype_error(error: BaseException) -> bool:
    """Whether torch refused a float tensor as an index (``x[i]``, ``one_hot``, ``gather``,
    ``index_select``), not an index out of range or another error of the program's."""
    text = first_line(error)
    return isinstance(error, (IndexError, RuntimeError)) and (
        "indices must be" in text or ("index" in text and ("dtype" in text or "LongTensor" in text))
    )


def float_index_error(sites: "list[str]", error: BaseException) -> EstimatorError:
    """A program indexed with a Categorical draw that an estimator hands it as a float
    (``sites``: what drew which site so); torch's own message names neither."""
    return EstimatorError(
        f"{'; '.join(sites)}, so that f can be differentiated in it, and the program indexed with it "
        f"({first_line(error)}); draw a OneHotCategorical there, or choose another estimator for the site"
    )
