"""The sigmoid belief net at equal wall time: pyro_grad's unbiased estimators against
Pyro's TraceGraph_ELBO with its decaying-average baseline.

Run: ``.venv/bin/python benchmarks/bench_sbn.py [SECONDS]``. Each contender trains a fresh
one-layer SBN (16 binary latents) on 256 binarized digits by Adam for the same wall-time
budget, in one run; the ELBO reached is then estimated for all alike with 200 particles.
Target: the best unbiased pyro_grad configuration above TraceGraph_ELBO.
"""

import sys
import time
import warnings

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, TraceGraph_ELBO

import pyro_grad as pg
from pyro_grad.harness.models.sbn import SigmoidBeliefNet, binarized_digits

warnings.filterwarnings("ignore")
LATENTS, IMAGES, PARTICLES = 16, 256, 4


def tracegraph_guide(net):
    def guide(data):
        pyro.module("sbn", net)
        with pyro.plate("data", len(data)):
            pyro.sample("h", dist.Bernoulli(logits=net.encoder(data)).to_event(1),
                        infer={"baseline": {"use_decaying_avg_baseline": True}})
    return guide


def train(label, loss, guide_for, data, seconds):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    net = SigmoidBeliefNet(LATENTS)
    guide = guide_for(net)
    svi = SVI(net.model, guide, pyro.optim.Adam({"lr": 0.01}), loss=loss)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        svi.step(data)
        steps += 1
    with torch.no_grad():
        evaluation = pg.ELBO(num_particles=200, vectorize_particles=True)
        elbo = -evaluation.loss(net.model, net.guide, data) / len(data)
    return {"contender": label, "steps": steps, "ELBO per image": elbo}


def main(seconds: float = 20.0) -> None:
    data = binarized_digits(IMAGES)
    contenders = [
        ("TraceGraph_ELBO (decaying baseline)", TraceGraph_ELBO(num_particles=PARTICLES), tracegraph_guide),
        ("pg Score(loo)", pg.ELBO(num_particles=PARTICLES, vectorize_particles=True),
         lambda net: pg.estimators(net.guide, {"h": pg.Score("loo")})),
        ("pg DisARM", pg.ELBO(num_particles=PARTICLES, vectorize_particles=True),
         lambda net: pg.estimators(net.guide, {"h": pg.DisARM()})),
        ("pg ARM", pg.ELBO(num_particles=PARTICLES, vectorize_particles=True),
         lambda net: pg.estimators(net.guide, {"h": pg.ARM()})),
    ]
    print(f"SBN, {LATENTS} latents, {IMAGES} digits, {PARTICLES} particles, {seconds:.0f} s each")
    rows = [train(label, loss, guide_for, data, seconds) for label, loss, guide_for in contenders]
    baseline = rows[0]["ELBO per image"]
    for row in rows:
        print(f"  {row['contender']:38s} steps {row['steps']:6d}   ELBO/image {row['ELBO per image']:9.3f}   "
              f"Δ vs TraceGraph {row['ELBO per image'] - baseline:+8.3f}")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 20.0)
