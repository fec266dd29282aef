"""A suite of stochastic programs with exact references; ``registry()`` lists them."""

from typing import Dict

from pyro_grad.harness.models.benchmark import Benchmark


def registry() -> Dict[str, Benchmark]:
    """{name: benchmark} for every built-in program."""
    from pyro_grad.harness.models import coin, forum, mixture, mnist_vae, sbn, seeds, sir

    benchmarks = [
        *seeds.BENCHMARKS, *forum.BENCHMARKS, sir.BENCHMARK, coin.BENCHMARK, mixture.BENCHMARK, sbn.BENCHMARK,
        mnist_vae.BENCHMARK,
    ]
    return {b.name: b for b in benchmarks}


__all__ = ["Benchmark", "registry"]
