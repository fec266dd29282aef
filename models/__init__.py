"""A suite of stochastic programs with exact references; ``registry()`` lists them."""

from typing import Dict

from models.benchmark import Benchmark


def registry() -> Dict[str, Benchmark]:
    """{name: benchmark} for every built-in program."""
    from models import seeds

    return {b.name: b for b in seeds.BENCHMARKS}


__all__ = ["Benchmark", "registry"]
