"""The second forum thread at its own size: x_mean, x_var of shape (1, 16, 300, 300) fed
through z = x_mean + sqrt(x_var)·ε to Conv2d(16, 32, 3, padding=1).

Run: ``.venv/bin/python benchmarks/bench_conv_net.py [DRAWS]``. Draws the gradient of
the expected mean squared output w.r.t. 1.44 million inputs, pathwise and by the score
function (leave-one-out, 2 particles), in one run; prints each estimator's total
variance, the relative error of its mean against the closed form, and seconds per draw.
"""

import sys
import time
import warnings


import pyro_grad as pg
from pyro_grad.harness.models import forum

warnings.filterwarnings("ignore")


def main(num_samples: int = 20) -> None:
    x_mean, x_var = forum.conv_inputs(300)
    exact = forum.conv_net_gradient(x_mean, x_var)
    norm = {k: float(v.norm()) for k, v in exact.items()}
    print(f"300×300, {num_samples} draws each; |exact| x_mean {norm['x_mean']:.4g}, x_var {norm['x_var']:.4g}")
    for label, estimator, k in (("Reparam", pg.Reparam(), 1), ("Score(loo), K=2", pg.Score("loo"), 2)):
        start = time.perf_counter()
        report = pg.diagnose(forum.conv_net, x_mean, x_var, estimators=estimator, num_particles=k,
                             num_samples=num_samples, sites=False)
        seconds = (time.perf_counter() - start) / num_samples
        for name in ("x_mean", "x_var"):
            s = report.samples[name]
            error = float((s.mean(0) - exact[name]).norm()) / norm[name]
            print(f"  {label:16s} {name:7s} total variance {float(s.var(0).sum()):10.4g}   "
                  f"relative error of the mean {error:8.3f}   {seconds:6.2f} s/draw ({report.mode})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
