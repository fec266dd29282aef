"""``Comparison``: the fits of :func:`~pyro_grad.compare`, as tables, figures and ArviZ data."""

import math
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

from pyro_grad.harness.comparison.store import is_lost
from pyro_grad.diagnostics.figures import band_figure, points_figure

if TYPE_CHECKING:
    import arviz
    from matplotlib.figure import Figure

#: The last fraction of steps averaged for a fit's final ELBO.
FINAL_FRACTION = 0.1
#: The target ELBO is the start plus this fraction of the best configuration's
#: improvement from it: where the configurations separate, not at the start.
TARGET_FRACTION = 0.8


def _final(elbo: list) -> float:
    tail = max(1, int(len(elbo) * FINAL_FRACTION))
    return float(np.mean(elbo[-tail:])) if elbo else float("nan")


def _smoothed(elbo: list, window: int) -> np.ndarray:
    x = np.asarray(elbo, dtype=float)
    if len(x) < window:
        return x
    return np.convolve(x, np.ones(window) / window, mode="valid")


class Comparison:
    """Fits keyed by (config label, seed); each a dict with ``status``, ``reason``,
    ``step``, ``elbo`` (per step), ``checkpoints`` (step, variance, snr), ``seconds``
    and ``cpu seconds`` (wall and CPU time, checkpoints excluded), ``evaluations``,
    ``posterior`` ({site: draws}, indexed by data point) and ``notes``.

    ``origin[(label, seed)]`` says where each fit came from: ``"reused"`` from the
    store, ``"recomputed"`` (a fit of this label and seed was stored under other
    settings) or ``"new"``.
    """

    def __init__(self, fits: Dict[Tuple[str, int], Dict[str, Any]], configs: Dict[str, str],
                 origin: Optional[Dict[Tuple[str, int], str]] = None, objective: str = "ELBO",
                 unbiased: Optional[Dict[str, Optional[bool]]] = None, settings: Optional[Dict[str, Any]] = None):
        self.fits = fits
        self.configs = configs
        self.origin = origin if origin is not None else {key: "new" for key in fits}
        self.reference: Dict[str, np.ndarray] = {}
        #: What the fits maximized ("ELBO", or "bound" for pg.IWAE), as the tables name it.
        self.objective = objective
        #: Per config, whether every estimator it sets claims to be unbiased (None: a
        #: callable config, which may choose anything).
        self.unbiased: Dict[str, Optional[bool]] = dict(unbiased or {})
        #: log p(x) where it is known (the ELBO's maximum), drawn in :meth:`plot_elbo`.
        self.log_evidence: Optional[float] = None
        #: How :func:`~pyro_grad.compare` was asked to train: ``num_steps``,
        #: ``num_particles``, ``seeds``, ``budget``, ``diagnose_every``,
        #: ``checkpoint_samples`` and ``batch`` (what each step sees of the data).
        self.settings: Dict[str, Any] = dict(settings or {})

    def what_was_run(self) -> pd.DataFrame:
        """Per configuration, what its fits did: SVI steps (the range over seeds, where a
        fit stopped early or the budget gave it fewer), program evaluations per fit,
        particles per step, seeds, the data each step saw, and the budget rule."""
        rows = []
        for label in self.labels:
            fits = [r for (l, _), r in self.fits.items() if l == label]
            steps = sorted({len(r["elbo"]) for r in fits})
            evaluations = [r.get("evaluations", math.nan) for r in fits]
            rows.append({
                "config": label,
                "steps": f"{steps[0]}" if len(steps) == 1 else f"{steps[0]}–{steps[-1]}",
                "evaluations per fit": float(np.mean(evaluations)) if evaluations else math.nan,
                "particles": self.settings.get("num_particles"),
                "seeds": len(fits),
                "data per step": self.settings.get("batch", ""),
            })
        return pd.DataFrame(rows)

    def budget_rule(self) -> str:
        """The budget every configuration was given, in words."""
        s = self.settings
        if not s:
            return ""
        seeds = ", ".join(map(str, s.get("seeds", ())))
        if s.get("budget") == "evaluations":
            rule = (f"equal program evaluations: each configuration gets the evaluations of {s['num_steps']} steps "
                    "of the cheapest, so a costlier one trains for fewer steps")
        else:
            rule = f"{s['num_steps']} SVI steps for every configuration"
        checkpoints = (f"; gradient variance measured every {s['diagnose_every']} steps from "
                       f"{s['checkpoint_samples']} draws" if s.get("diagnose_every") else "")
        return f"Budget: {rule}, {s['num_particles']} particles per step, seeds {seeds}{checkpoints}."

    def provenance(self) -> str:
        """One line: how many fits were reused from the store, recomputed, or new."""
        counts = {kind: sum(o == kind for o in self.origin.values()) for kind in ("reused", "recomputed", "new")}
        return (f"{counts['reused']} fits reused from the store, {counts['recomputed']} recomputed "
                f"(stored under other settings), {counts['new']} new")

    @property
    def notes(self) -> List[str]:
        """Notes from the fits (sites left out of the posterior draws), each once."""
        return list(dict.fromkeys(note for r in self.fits.values() for note in r.get("notes", [])))

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
        return list(dict.fromkeys(label for label, _ in self.fits))

    def target(self) -> float:
        """The default target ELBO: the start (the mean first smoothed ELBO of every
        finished fit) plus :data:`TARGET_FRACTION` of the improvement the best
        configuration made from it (its final ELBO, mean over seeds; among those that
        claim to be unbiased, when any finished). A configuration reaches it only by
        training, not by starting."""
        finals = self.summary(target=float("-inf")).set_index("config")[f"final {self.objective}"]
        unbiased = [label for label in finals.index if self.unbiased.get(label) and math.isfinite(finals[label])]
        best = float(finals[unbiased].max()) if unbiased else float(finals.max())
        starts = [_smoothed(r["elbo"], max(1, len(r["elbo"]) // 20))[0] for r in self.fits.values()
                  if r["status"] == "finished" and r["elbo"]]
        if not starts or not math.isfinite(best):
            return best
        start = float(np.mean(starts))
        return start + TARGET_FRACTION * (best - start)

    def to_target(self, target: Optional[float] = None) -> pd.DataFrame:
        """Per finished fit: the ``steps``, ``seconds`` and program ``evaluations`` it took
        for its ELBO (smoothed over 5% of the steps) to reach ``target`` (the default
        :meth:`target`), NaN when it never did."""
        target = self.target() if target is None else target
        rows = []
        for (label, seed), r in self.fits.items():
            if r["status"] != "finished":
                continue
            window = max(1, len(r["elbo"]) // 20)
            hit = np.nonzero(_smoothed(r["elbo"], window) >= target)[0]
            step = int(hit[0]) + window if len(hit) else math.nan
            fraction = step / max(1, len(r["elbo"]))
            rows.append({"config": label, "seed": seed, "steps": step, "seconds": r["seconds"] * fraction,
                         "evaluations": r.get("evaluations", math.nan) * fraction})
        return pd.DataFrame(rows, columns=["config", "seed", "steps", "seconds", "evaluations"])

    def summary(self, target: Optional[float] = None) -> pd.DataFrame:
        """Per configuration, fewest evaluations to the target first: the mean seconds (± sd over seeds) and program
        evaluations for the ELBO to reach ``target`` (smoothed over 5% of the steps; the
        default target is :meth:`target`), whether the config claims to be unbiased, the
        final ELBO mean ± sd over seeds (finished fits), time per fit, gradient variance
        at the last checkpoint, failed fits. A config that missed the target in some seed
        has NaN there and sorts last."""
        target = self.target() if target is None else target
        hits = self.to_target(target) if target > float("-inf") else None
        rows = []
        for label in self.labels:
            fits = [r for (l, _), r in self.fits.items() if l == label]
            done = [r for r in fits if r["status"] == "finished"]
            finals = [_final(r["elbo"]) for r in done]
            reached = hits[hits["config"] == label] if hits is not None else pd.DataFrame()
            # A failed fit never reached the target: the config's figures need every seed.
            every = len(reached) == len(fits) and bool(reached["seconds"].notna().all())
            variances = [r["checkpoints"][-1]["variance"] for r in done if r["checkpoints"]]
            rows.append({
                "config": label,
                "estimators": self.configs.get(label, ""),
                "unbiased": self.unbiased.get(label),
                "seconds to target": float(reached["seconds"].mean()) if every else float("nan"),
                "± sd (s)": float(reached["seconds"].std(ddof=0)) if every else float("nan"),
                "evaluations to target": float(reached["evaluations"].mean()) if every else float("nan"),
                f"final {self.objective}": float(np.mean(finals)) if finals else float("nan"),
                "± sd": float(np.std(finals)) if finals else float("nan"),
                # A fit lost with its worker has no timings.
                "seconds per fit": float(np.mean(timed)) if (timed := [r["seconds"] for r in fits
                                                                       if not is_lost(r)]) else math.nan,
                "CPU seconds per fit": float(np.mean([r.get("cpu seconds", math.nan) for r in fits
                                                      if not is_lost(r)] or [math.nan])),
                "gradient variance": float(np.mean(variances)) if variances else float("nan"),
                "failed fits": sum(r["status"] != "finished" for r in fits),
                "reused fits": sum(self.origin.get((label, s)) == "reused" for (l, s) in self.fits if l == label),
            })
        table = pd.DataFrame(rows)
        # Fewest program evaluations first, as the verdict ranks (seconds vary from run to run).
        return table.sort_values("evaluations to target", kind="stable", na_position="last").reset_index(drop=True)

    def failures(self) -> pd.DataFrame:
        """Fits that stopped early, with their reason and step."""
        return pd.DataFrame([
            {"config": l, "seed": s, "step": r["step"], "reason": r["reason"]}
            for (l, s), r in self.fits.items() if r["status"] != "finished"
        ])

    def evaluations_per_step(self, label: str) -> float:
        """A configuration's program evaluations per SVI step (mean over its fits)."""
        per_step = [r["evaluations"] / len(r["elbo"]) for (l, _), r in self.fits.items()
                    if l == label and r["elbo"] and r.get("evaluations")]
        return float(np.mean(per_step)) if per_step else 1.0

    def plot_elbo(self) -> "Figure":
        """Smoothed ELBO against program evaluations (the budget's unit: configurations
        ran different numbers of steps): the mean over seeds, with the range as a band;
        the target of :meth:`summary` and, where known, the exact log p(x) as lines."""
        curves = {}
        for label in self.labels:
            traces = [r["elbo"] for (l, _), r in self.fits.items() if l == label and r["elbo"]]
            if traces:
                n = min(len(t) for t in traces)
                window = max(1, n // 20)
                smooth = np.stack([_smoothed(t[:n], window) for t in traces])
                steps = np.arange(smooth.shape[1]) + window
                curves[label] = (steps * self.evaluations_per_step(label), smooth.mean(0), smooth.min(0),
                                 smooth.max(0))
        levels = {}
        if curves:
            levels[f"target (start + {TARGET_FRACTION:.0%} of best gain)"] = self.target()
        if self.log_evidence is not None:
            levels["exact log p(x), the ELBO's maximum"] = self.log_evidence
        return band_figure(curves, "program evaluations", f"{self.objective} (smoothed over 5% of the steps)",
                           levels)

    def plot_variance(self) -> "Figure":
        """Total gradient variance at the checkpoints (log scale), mean over seeds."""
        series = {}
        for label in self.labels:
            points: Dict[int, list] = {}
            for (l, _), r in self.fits.items():
                if l == label:
                    for c in r["checkpoints"]:
                        points.setdefault(c["step"], []).append(c["variance"])
            if points:
                steps = sorted(points)
                per_step = self.evaluations_per_step(label)
                series[label] = ([s * per_step for s in steps], [float(np.mean(points[s])) for s in steps])
        return points_figure(series, "program evaluations", "total gradient variance (log scale)", log=True)

    def to_inference_data(self) -> "arviz.InferenceData":
        """The guides' posterior draws: one variable per (site, configuration), named
        ``"site[config]"``, with the seeds as chains (and ``"site[NUTS]"``, one chain,
        when a NUTS reference was added)."""
        import arviz as az

        posterior = {f"{site}[NUTS]": draws[None] for site, draws in self.reference.items()}
        for label in self.labels:
            fits = sorted(((s, r) for (l, s), r in self.fits.items() if l == label and r["posterior"]))
            if not fits:
                continue
            for site in fits[0][1]["posterior"]:
                posterior[f"{site}[{label}]"] = np.stack([np.asarray(r["posterior"][site]) for _, r in fits])
        return az.from_dict(posterior=posterior)
