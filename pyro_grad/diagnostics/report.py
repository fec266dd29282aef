"""``GradientReport`` and ``EstimatorComparison``: tables, raw draws and figures."""

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict

import pandas as pd
import torch

from pyro_grad.diagnostics.figures import plot_draws

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: At most this many parameter elements get a panel in a figure.


@dataclass
class GradientReport:
    """Per-parameter and per-site statistics of a gradient estimator's draws.

    * ``params``: one row per parameter element: mean, variance, standard error, SNR
      (|mean|/std), the parameter's total variance, cost (program evaluations per
      draw), seconds per draw, work-normalized variance (total variance × cost), and,
      with a reference, reference, bias, z (bias / standard error), ``wrong sign`` and
      ``flagged`` (at least 4 standard errors off and significant after Holm's
      correction across every element of the report, family-wise rate 1e-3).
    * ``sites``: one row per sample site and distribution parameter: the estimator
      used and ``why`` (who chose it; for "auto", why: a smooth pathwise value, no
      ``rsample``, or a jump in f that rules the pathwise derivative out), and the
      statistics of the derivative along a common shift of that
      parameter's elements (the site estimator's own variance), and ``variance share``.
    * ``samples``: ``{name: (num_samples, *shape) tensor}``, the raw draws (parameters,
      and sites as ``"site.param"``).
    * ``mode``: ``"vectorized"`` or ``"loop"``, how the draws were made.
    * ``num_particles``: particles per draw; ``seed``: the seed the draws replayed.
    * ``shares``: each latent site's share of the total parameter-gradient variance (NaN
      for a pathwise site, whose part cannot be separated), with or without ``sites``;
      ``site_evaluations``: each site's program evaluations per particle; ``estimators``: each
      site's estimator; ``reasons``: why each site has it (the sites table's ``why``).
    """

    params: pd.DataFrame
    sites: pd.DataFrame
    samples: Dict[str, torch.Tensor]
    mode: str
    references: Dict[str, torch.Tensor] = field(default_factory=dict)
    label: str = "estimators"
    shares: Dict[str, float] = field(default_factory=dict)
    site_evaluations: Dict[str, int] = field(default_factory=dict)
    estimators: Dict[str, Any] = field(default_factory=dict)
    reasons: Dict[str, str] = field(default_factory=dict)
    #: Particles per gradient draw, and the seed the draws replayed.
    num_particles: int = 1
    seed: int = 0

    def what_was_run(self) -> pd.DataFrame:
        """One row: the gradient draws, particles per draw, program evaluations per draw,
        how the draws were made and the seed."""
        return pd.DataFrame([{
            "candidate": self.label, "gradient draws": next(iter(self.samples.values())).shape[0] if self.samples else 0,
            "particles per draw": self.num_particles,
            "evaluations per draw": int(self.params["cost"].iloc[0]) if len(self.params) else None,
            "draws made": self.mode, "seed": self.seed,
        }])

    def to_markdown(self) -> str:
        return "\n\n".join(
            [
                f"## Parameters ({self.mode} draws)",
                self.params.to_markdown(index=False, floatfmt=".4g"),
                "## Sample sites",
                self.sites.to_markdown(index=False, floatfmt=".4g") if len(self.sites) else "(none)",
            ]
        )

    def by_parameter(self) -> pd.DataFrame:
        """:attr:`params` aggregated over each parameter's elements (see :func:`by_parameter`)."""
        return by_parameter(self.params)

    def total_variance(self) -> float:
        """Σ over every parameter element of its gradient variance."""
        return float(self.params.groupby("param", sort=False)["total variance"].first().sum())

    def work_normalized_variance(self) -> float:
        """:meth:`total_variance` × program evaluations per draw (one cost per report)."""
        return self.total_variance() * float(self.params["cost"].iloc[0])

    def site_summary(self) -> pd.DataFrame:
        """One row per latent site: its estimator and why, whether it claims to be
        unbiased, its evaluations per particle and its share of the parameter-gradient
        variance (measured with or without ``sites``)."""
        return pd.DataFrame([
            {"site": site, "estimator": repr(estimator), "why": self.reasons.get(site, ""),
             "unbiased": getattr(estimator, "unbiased", None),
             "evaluations per particle": self.site_evaluations.get(site), "variance share": self.shares.get(site, math.nan)}
            for site, estimator in self.estimators.items()
        ])

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

    def what_was_run(self) -> pd.DataFrame:
        """One row per candidate (:meth:`GradientReport.what_was_run`)."""
        return pd.concat([r.what_was_run() for r in self.reports.values()], ignore_index=True)

    @property
    def sites(self) -> pd.DataFrame:
        return _side_by_side({k: r.sites for k, r in self.reports.items()})

    def by_parameter(self) -> pd.DataFrame:
        """:attr:`params` aggregated over each candidate's parameter elements."""
        return by_parameter(self.params)

    def site_summary(self) -> pd.DataFrame:
        """Each candidate's :meth:`GradientReport.site_summary`, side by side."""
        return _side_by_side({k: r.site_summary() for k, r in self.reports.items()})

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


def by_parameter(params: pd.DataFrame) -> pd.DataFrame:
    """One row per parameter (and candidate): its elements, mean and reference (for a
    scalar; blank for a tensor), total variance, median SNR, cost, seconds per draw,
    work-normalized variance, and with a reference the largest |bias| and |z| and the
    number of flagged elements."""
    if not len(params):
        return params
    keys = [k for k in ("candidate", "param") if k in params]
    groups = params.groupby(keys, sort=False)
    table = groups.agg(**{
        "elements": ("element", "size"),
        "unbiased (claimed)": ("unbiased (claimed)", "first"),
        "total variance": ("total variance", "first"),
        "median SNR": ("SNR", "median"),
        "cost": ("cost", "first"),
        "seconds per draw": ("seconds per draw", "first"),
        "work-normalized variance": ("work-normalized variance", "first"),
    })
    scalar = table["elements"] == 1
    table.insert(1, "mean", groups["mean"].first().where(scalar))
    if "reference" in params:
        table.insert(2, "reference", groups["reference"].first().where(scalar))
        table["largest |bias|"] = groups["bias"].agg(lambda b: b.abs().max())
        table["largest |z|"] = groups["z"].agg(lambda z: z.abs().max())
        table["flagged"] = groups["flagged"].sum().astype(int)
    return table.reset_index()
