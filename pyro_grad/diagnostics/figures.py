"""Figures for reports: plain ``matplotlib.figure.Figure`` objects.

They are built without pyplot, so no backend is chosen or switched (a user's
``plt.show()`` keeps working) and nothing is registered with pyplot's figure manager
(nothing to close). matplotlib itself is imported only when a figure is made.
"""

import math
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: The most panels one figure of gradient draws shows.
MAX_PANELS = 12
#: Markers cycled against matplotlib's 10 default colours: 7 is prime to 10, so the
#: first 70 series each get their own colour and marker.
MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def style(i: int) -> Dict[str, Any]:
    """Series ``i``'s colour, marker and line style: distinct for every series of a figure
    (70 pairs of colour and marker; beyond, the line style changes too)."""
    return {"color": f"C{i % 10}", "marker": MARKERS[i % len(MARKERS)],
            "linestyle": ("-", "--", ":")[(i // 70) % 3]}


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


def plot_draws(
    samples: Dict[str, Dict[str, torch.Tensor]],
    references: Dict[str, torch.Tensor],
    names: List[str],
    kind: str = "hist",
) -> "Figure":
    """One panel per parameter element; each labelled set of draws in its own colour."""
    panels = []
    for name in names:
        shape = next((s[name].shape[1:] for s in samples.values() if name in s), torch.Size())
        for j in range(max(1, shape.numel())):
            panels.append((name, j, shape))
    panels = panels[:MAX_PANELS]
    columns = min(3, max(1, len(panels)))
    rows = math.ceil(len(panels) / columns) or 1
    fig, axes = subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    for ax, (name, j, shape) in zip(axes.flat, panels):
        title = name if not shape else f"{name}[{j}]"
        draws = {
            label: s[name].reshape(s[name].shape[0], -1)[:, j].double().numpy()
            for label, s in samples.items()
            if name in s
        }
        if kind == "box":
            ax.boxplot(list(draws.values()), showmeans=True, showfliers=False)
            ax.set_xticks(range(1, len(draws) + 1), list(draws), rotation=40, ha="right", fontsize="small")
            ax.set_ylabel("gradient draw")
        else:
            for i, (label, x) in enumerate(draws.items()):
                ax.hist(x, bins=100, alpha=0.35, density=True, color=style(i)["color"], label=label)
                ax.axvline(x.mean(), color=style(i)["color"], linewidth=1)
            ax.set_xlabel("gradient draw (vertical lines: means)")
            ax.set_ylabel("density")
        if name in references:
            ref = float(torch.as_tensor(references[name]).reshape(-1)[j])
            line = ax.axhline if kind == "box" else ax.axvline
            line(ref, color="black", linestyle="dashed", linewidth=1, label="reference")
        ax.set_title(f"∂/∂{title}")
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def band_figure(curves: Dict[str, Tuple[Sequence[float], Sequence[float], Sequence[float], Sequence[float]]],
                xlabel: str, ylabel: str, levels: Optional[Dict[str, float]] = None) -> "Figure":
    """One line per label, ``(x, middle, low, high)``, with the low–high range as a band;
    ``levels``: horizontal reference lines by label (an exact value, a target)."""
    fig, ax = subplots(figsize=(8, 4.5))
    for i, (label, (x, middle, low, high)) in enumerate(curves.items()):
        look = style(i)
        ax.plot(x, middle, label=label, markevery=max(1, len(x) // 8), markersize=4, **look)
        ax.fill_between(x, low, high, color=look["color"], alpha=0.15)
    for j, (label, level) in enumerate((levels or {}).items()):
        ax.axhline(level, color="black", linestyle=("dashed", "dotted")[j % 2], linewidth=1, label=label)
    return _labelled(fig, ax, xlabel, ylabel)


def points_figure(series: Dict[str, Tuple[List[float], List[float]]], xlabel: str, ylabel: str,
                  log: bool = False) -> "Figure":
    """One marked line per label, ``(x, y)``; ``log`` for a log-scaled y axis."""
    fig, ax = subplots(figsize=(8, 4.5))
    for i, (label, (x, y)) in enumerate(series.items()):
        ax.plot(x, y, label=label, **style(i))
    if log:
        ax.set_yscale("log")
    return _labelled(fig, ax, xlabel, ylabel)


def _labelled(fig: "Figure", ax: Any, xlabel: str, ylabel: str) -> "Figure":
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ax.get_legend_handles_labels()[0]:
        # Beside the axes, so that no curve hides behind it, at any count.
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig
