"""``GradientReport`` and ``EstimatorComparison``: tables, raw draws and figures."""

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List

import pandas as pd
import torch

from pyro_grad.presentation.figures import subplots

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: At most this many parameter elements get a panel in a figure.
MAX_PANELS = 12


@dataclass
class GradientReport:
    """Per-parameter and per-site statistics of a gradient estimator's draws.

    * ``params``: one row per parameter element: mean, variance, standard error, SNR
      (|mean|/std), the parameter's total variance, cost (program evaluations per
      draw), seconds per draw, work-normalized variance (total variance × cost), and,
      with a reference, reference, bias, z (bias / standard error) and ``flagged``.
    * ``sites``: one row per sample site and distribution parameter: the estimator
      used, and the statistics of the derivative along a common shift of that
      parameter's elements (the site estimator's own variance), and ``variance share``.
    * ``samples``: ``{name: (num_samples, *shape) tensor}``, the raw draws (parameters,
      and sites as ``"site.param"``).
    * ``path``: ``"vectorized"`` or ``"loop"``, how the draws were made.
    """

    params: pd.DataFrame
    sites: pd.DataFrame
    samples: Dict[str, torch.Tensor]
    path: str
    references: Dict[str, torch.Tensor] = field(default_factory=dict)
    label: str = "estimators"

    def to_markdown(self) -> str:
        return "\n\n".join(
            [
                f"## Parameters ({self.path} path)",
                self.params.to_markdown(index=False, floatfmt=".4g"),
                "## Sample sites",
                self.sites.to_markdown(index=False, floatfmt=".4g") if len(self.sites) else "(none)",
            ]
        )

    def plot(self) -> "Figure":
        """Histograms of the per-draw gradients with the reference (dashed) and mean lines."""
        return plot_draws({self.label: self.samples}, self.references, list(self.params["param"].unique()))


@dataclass
class EstimatorComparison:
    """Several :class:`GradientReport` side by side; tables gain a ``candidate`` column."""

    reports: Dict[str, GradientReport]

    @property
    def params(self) -> pd.DataFrame:
        return _side_by_side({k: r.params for k, r in self.reports.items()})

    @property
    def sites(self) -> pd.DataFrame:
        return _side_by_side({k: r.sites for k, r in self.reports.items()})

    @property
    def samples(self) -> Dict[str, Dict[str, torch.Tensor]]:
        return {k: r.samples for k, r in self.reports.items()}

    def to_markdown(self) -> str:
        sites = self.sites
        return "\n\n".join(
            [
                "## Parameters",
                self.params.to_markdown(index=False, floatfmt=".4g"),
                "## Sample sites",
                sites.to_markdown(index=False, floatfmt=".4g") if len(sites) else "(none)",
            ]
        )

    def plot(self, kind: str = "auto") -> "Figure":
        """Each candidate's draws per parameter element: overlaid histograms
        (``kind="hist"``) or box plots (``kind="box"``), with the reference line.
        ``"auto"`` takes box plots when there are more than four candidates or one of
        them has (near) zero variance, whose histogram would be a single spike."""
        references = next((r.references for r in self.reports.values() if r.references), {})
        names = list(dict.fromkeys(n for r in self.reports.values() for n in r.params["param"]))
        if kind == "auto":
            degenerate = any((r.params["variance"] < 1e-10).any() for r in self.reports.values())
            kind = "box" if degenerate or len(self.reports) > 4 else "hist"
        return plot_draws(self.samples, references, names, kind=kind)


def _side_by_side(tables: Dict[str, pd.DataFrame]) -> pd.DataFrame:
    frames = [t.assign(candidate=name) for name, t in tables.items() if len(t)]
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    return table[["candidate"] + [c for c in table.columns if c != "candidate"]]


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
            ax.set_xticks(range(1, len(draws) + 1), list(draws), rotation=20)
        else:
            for i, (label, x) in enumerate(draws.items()):
                ax.hist(x, bins=100, alpha=0.35, density=True, color=f"C{i}", label=label)
                ax.axvline(x.mean(), color=f"C{i}", linewidth=1)
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
