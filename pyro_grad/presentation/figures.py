"""Figures for reports: plain ``matplotlib.figure.Figure`` objects.

They are built without pyplot, so no backend is chosen or switched (a user's
``plt.show()`` keeps working) and nothing is registered with pyplot's figure manager
(nothing to close). matplotlib itself is imported only when a figure is made.
"""

from typing import TYPE_CHECKING, Any, Tuple

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def subplots(rows: int = 1, columns: int = 1, figsize: Tuple[float, float] = (7, 4), **kwargs: Any) -> Tuple["Figure", Any]:
    """A new figure and its axes, as ``pyplot.subplots`` would give them."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, columns, **kwargs)


def is_figure(obj: Any) -> bool:
    """Whether ``obj`` is a matplotlib figure (without importing matplotlib for other objects)."""
    import sys

    figure_module = sys.modules.get("matplotlib.figure")
    return figure_module is not None and isinstance(obj, figure_module.Figure)
