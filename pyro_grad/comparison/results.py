"""``Comparison``: the runs of :func:`~pyro_grad.compare`, as tables, figures and ArviZ data."""

import math
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

from pyro_grad.presentation.figures import band_figure, points_figure

if TYPE_CHECKING:
    import arviz
    from matplotlib.figure import Figure

#: The last fraction of steps averaged for a run's final ELBO.
FINAL_FRACTION = 0.1


def _final(elbo: list) -> float:
    tail = max(1, int(len(elbo) * FINAL_FRACTION))
    return float(np.mean(elbo[-tail:])) if elbo else float("nan")


def _smoothed(elbo: list, window: int) -> np.ndarray:
    x = np.asarray(elbo, dtype=float)
    if len(x) < window:
        return x
    return np.convolve(x, np.ones(window) / window, mode="valid")


class Comparison:
    """Runs keyed by (config label, seed); each a dict with ``status``, ``reason``,
    ``step``, ``elbo`` (per step), ``checkpoints`` (step, variance, snr), ``seconds``
    and ``cpu seconds`` (wall and CPU time, checkpoints excluded), ``evaluations``,
    ``posterior`` ({site: draws}, indexed by data point) and ``notes``.

    ``origin[(label, seed)]`` says where each run came from: ``"reused"`` from the
    store, ``"recomputed"`` (a run of this label and seed was stored under other
    settings) or ``"new"``.
    """

    def __init__(self, runs: Dict[Tuple[str, int], Dict[str, Any]], configs: Dict[str, str],
                 origin: Optional[Dict[Tuple[str, int], str]] = None):
        self.runs = runs
        self.configs = configs
        self.origin = origin if origin is not None else {key: "new" for key in runs}
        self.reference: Dict[str, np.ndarray] = {}

    def provenance(self) -> str:
        """One line: how many runs were reused from the store, recomputed, or new."""
        counts = {kind: sum(o == kind for o in self.origin.values()) for kind in ("reused", "recomputed", "new")}
        return (f"{counts['reused']} runs reused from the store, {counts['recomputed']} recomputed "
                f"(stored under other settings), {counts['new']} new")

    @property
    def notes(self) -> List[str]:
        """Notes from the runs (sites left out of the posterior draws), each once."""
        return list(dict.fromkeys(note for r in self.runs.values() for note in r.get("notes", [])))

    def add_nuts_reference(
        self, model: Any, *args: Any, num_samples: int = 300, warmup_steps: int = 200, seed: int = 0, **kwargs: Any
    ) -> "Comparison":
        """Draw a NUTS reference posterior (Pyro's MCMC) for a model whose latents are all
        continuous; :meth:`to_inference_data` then includes it as ``"site[NUTS]"``."""
        import pyro
        from pyro.infer import MCMC, NUTS

        pyro.set_rng_seed(seed)
        mcmc = MCMC(NUTS(model), num_samples=num_samples, warmup_steps=warmup_steps, disable_progbar=True)
        mcmc.run(*args, **kwargs)
        self.reference = {site: draws.detach().numpy() for site, draws in mcmc.get_samples().items()}
        return self

    @property
    def labels(self):
        return list(dict.fromkeys(label for label, _ in self.runs))

    def target(self) -> float:
        """The default target ELBO: the lowest final ELBO (mean over seeds) of any
        configuration, so that every configuration can reach it."""
        finals = self.summary(target=float("-inf"))["final ELBO"]
        return float(finals.min())

    def summary(self, target: Optional[float] = None) -> pd.DataFrame:
        """Per configuration: final ELBO mean ± sd over seeds (finished runs), the mean
        steps and seconds to reach ``target`` (smoothed over 5% of the steps), gradient
        variance at the last checkpoint, failed runs."""
        target = self.target() if target is None else target
        rows = []
        for label in self.labels:
            runs = [r for (l, _), r in self.runs.items() if l == label]
            done = [r for r in runs if r["status"] == "finished"]
            finals = [_final(r["elbo"]) for r in done]
            steps, seconds = [], []
            for r in done:
                window = max(1, len(r["elbo"]) // 20)
                smooth = _smoothed(r["elbo"], window)
                hit = np.nonzero(smooth >= target)[0]
                if len(hit):
                    step = int(hit[0]) + window
                    steps.append(step)
                    seconds.append(r["seconds"] * step / max(1, len(r["elbo"])))
            variances = [r["checkpoints"][-1]["variance"] for r in done if r["checkpoints"]]
            rows.append({
                "config": label,
                "estimators": self.configs.get(label, ""),
                "final ELBO": float(np.mean(finals)) if finals else float("nan"),
                "± sd": float(np.std(finals)) if finals else float("nan"),
                "steps to target": float(np.mean(steps)) if steps else float("nan"),
                "seconds to target": float(np.mean(seconds)) if seconds else float("nan"),
                "seconds per run": float(np.mean([r["seconds"] for r in runs])),
                "CPU seconds per run": float(np.mean([r.get("cpu seconds", math.nan) for r in runs])),
                "gradient variance": float(np.mean(variances)) if variances else float("nan"),
                "failed runs": sum(r["status"] != "finished" for r in runs),
                "reused runs": sum(self.origin.get((label, s)) == "reused" for (l, s) in self.runs if l == label),
            })
        return pd.DataFrame(rows)

    def failures(self) -> pd.DataFrame:
        """Runs that stopped early, with their reason and step."""
        return pd.DataFrame([
            {"config": l, "seed": s, "step": r["step"], "reason": r["reason"]}
            for (l, s), r in self.runs.items() if r["status"] != "finished"
        ])

    def plot_elbo(self) -> "Figure":
        """Smoothed ELBO per step: the mean over seeds, with the range as a band."""
        curves = {}
        for label in self.labels:
            traces = [r["elbo"] for (l, _), r in self.runs.items() if l == label and r["elbo"]]
            if traces:
                n = min(len(t) for t in traces)
                window = max(1, n // 20)
                smooth = np.stack([_smoothed(t[:n], window) for t in traces])
                curves[label] = (np.arange(smooth.shape[1]) + window, smooth.mean(0), smooth.min(0), smooth.max(0))
        return band_figure(curves, "step", "ELBO (smoothed)")

    def plot_variance(self) -> "Figure":
        """Total gradient variance at the checkpoints (log scale), mean over seeds."""
        series = {}
        for label in self.labels:
            points: Dict[int, list] = {}
            for (l, _), r in self.runs.items():
                if l == label:
                    for c in r["checkpoints"]:
                        points.setdefault(c["step"], []).append(c["variance"])
            if points:
                steps = sorted(points)
                series[label] = (steps, [float(np.mean(points[s])) for s in steps])
        return points_figure(series, "step", "total gradient variance", log=True)

    def to_inference_data(self) -> "arviz.InferenceData":
        """The guides' posterior draws: one variable per (site, configuration), named
        ``"site[config]"``, with the seeds as chains (and ``"site[NUTS]"``, one chain,
        when a NUTS reference was added)."""
        import arviz as az

        posterior = {f"{site}[NUTS]": draws[None] for site, draws in self.reference.items()}
        for label in self.labels:
            runs = sorted(((s, r) for (l, s), r in self.runs.items() if l == label and r["posterior"]))
            if not runs:
                continue
            for site in runs[0][1]["posterior"]:
                posterior[f"{site}[{label}]"] = np.stack([np.asarray(r["posterior"][site]) for _, r in runs])
        return az.from_dict(posterior=posterior)
