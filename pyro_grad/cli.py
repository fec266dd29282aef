"""The ``pyro-grad`` command line: ``report`` (the main job) and ``diagnose``."""

import argparse
import concurrent.futures as cf
import contextlib
import importlib
import inspect
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional

import pandas as pd
import torch

from pyro_grad.harness.comparison.executor import local_pool, usable_cores
from pyro_grad.diagnostics import diagnose
from pyro_grad.errors import EstimatorError, first_line
from pyro_grad.gradient_estimators import parse_estimator
from pyro_grad.gradient_estimators.registry import registered_names


class UsageError(Exception):
    """A mistake on the command line: reported in one line, exit code 2."""


def gradient_table(num_samples: int = 10_000, seed: int = 0) -> pd.DataFrame:
    """Each seed program under each applicable estimator: mean, exact, variance."""
    from pyro_grad.harness.models import seeds
    from pyro_grad.harness.presentation.suite import diagnose_each

    tables = []
    for bench in seeds.BENCHMARKS:
        for label, report in diagnose_each(bench, num_samples, seed=seed).items():
            table = report.params[
                ["param", "unbiased (claimed)", "reference", "mean", "std. error", "variance", "cost", "flagged"]
            ]
            tables.append(table.assign(program=bench.name, estimator=label))
    table = pd.concat(tables, ignore_index=True)
    return table[["program", "estimator"] + [c for c in table.columns if c not in ("program", "estimator")]]


def import_from_here(module_name: str) -> Any:
    """Import ``module_name`` looking in the current directory first, as ``python -m``
    does (the console script's own ``sys.path[0]`` is its bin directory); the search
    path is left as it was."""
    here = os.getcwd()
    added = here not in sys.path
    if added:
        sys.path.insert(0, here)
    try:
        return importlib.import_module(module_name)
    finally:
        if added:
            sys.path.remove(here)


def import_object(spec: str) -> Any:
    """``MODULE:NAME`` → the object, or a one-line :class:`UsageError`."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UsageError(f"expected MODULE:FUNCTION, got {spec!r}")
    try:
        return getattr(import_from_here(module_name), attr)
    except ImportError as error:
        raise UsageError(f"cannot import module {module_name!r}: {error}") from None
    except AttributeError:
        raise UsageError(f"module {module_name!r} has no attribute {attr!r}") from None


def writable_directory(path: str) -> Path:
    """``path`` created if need be and checked writable, or a one-line :class:`UsageError`."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".write-test").touch()
        (out / ".write-test").unlink()
    except OSError as error:
        raise UsageError(f"cannot write to --out {path}: {error.strerror}") from None
    return out


def models_table() -> pd.DataFrame:
    """One row per built-in benchmark: its name, objective, arguments and description."""
    from pyro_grad.harness.models import registry

    return pd.DataFrame(
        [
            {
                "name": b.name,
                "objective": "ELBO" if b.guide is not None else "E[f]",
                "arguments": ", ".join(b.arg_names),
                "exact reference": b.reference_gradient is not None,
                "description": b.description,
            }
            for b in registry().values()
        ]
    )


class Program(NamedTuple):
    """A program named on the command line, with what its benchmark (if any) supplies."""

    fn: Callable
    args: tuple
    reference: Optional[Callable]
    guide: Optional[Callable]
    reset: Optional[Callable]


def load_program(spec: str, overrides: List[str]) -> Program:
    """A registry name or ``MODULE:NAME`` → the program, its arguments, and its
    benchmark's exact reference, guide and reset (each None without a benchmark).

    NAME may be a :class:`pyro_grad.harness.models.Benchmark` or a program function; a function that a
    registered benchmark runs takes that benchmark's defaults and guide. Arguments come
    from the function's numeric defaults and ``--arg NAME=VALUE``; each number becomes a
    tensor that requires grad.
    """
    from pyro_grad.harness.models import Benchmark, registry

    benchmarks = registry()
    if spec in benchmarks:
        obj = benchmarks[spec]
    elif ":" not in spec:
        raise UsageError(f"unknown program {spec!r}; the registry has {sorted(benchmarks)}, or give MODULE:FUNCTION")
    else:
        obj = import_object(spec)
    bench = obj if isinstance(obj, Benchmark) else next(
        (b for b in benchmarks.values() if b.program is obj), None
    )
    if bench is not None:
        names, values = list(bench.arg_names), dict(zip(bench.arg_names, bench.default_args))
        program, reference, guide, reset = bench.program, bench.reference_gradient, bench.guide, bench.reset
        if reset is not None:
            reset()
    elif callable(obj):
        params = [p for p in inspect.signature(obj).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        names = [p.name for p in params]
        values = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
        program, reference, guide, reset = obj, None, None, None
    else:
        raise UsageError(f"{spec} is neither a program nor a benchmark")
    for item in overrides:
        name, _, value = item.partition("=")
        if name not in names:
            raise UsageError(f"--arg {item!r}: the program's arguments are {names}")
        if name in values and not isinstance(values[name], (int, float)):
            raise UsageError(f"--arg {item!r}: {name} is {type(values[name]).__name__} data, not a number")
        try:
            values[name] = float(value)
        except ValueError:
            raise UsageError(f"--arg {item!r}: {value!r} is not a number") from None
    missing = [n for n in names if n not in values]
    if missing:
        raise UsageError(f"{spec} needs --arg for {missing}")
    args = tuple(
        torch.tensor(float(values[n]), requires_grad=True) if isinstance(values[n], (int, float)) else values[n]
        for n in names
    )
    return Program(program, args, reference, guide, reset)


def parse_config(items: List[str], option: str = "--estimator") -> Any:
    """``SITE=ESTIMATOR[:ARG]`` items → {site: estimator}; one lone ``ESTIMATOR[:ARG]``
    sets every site's. The one grammar of ``--estimator`` and of ``--config``'s list."""
    config: Dict[str, Any] = {}
    for item in items:
        site, sep, name = item.partition("=")
        if not sep:
            if len(items) == 1:
                return parse_estimator(site)
            raise UsageError(f"{option} takes SITE=ESTIMATOR[:ARG] items, or one ESTIMATOR[:ARG] for "
                             f"every site; got {items}")
        if not site or not name:
            raise UsageError(f"{option} {item!r}: expected SITE=ESTIMATOR[:ARG]")
        config[site] = parse_estimator(name)
    return config or None


def run_diagnose(ns: argparse.Namespace) -> int:
    program, args, exact, guide, _ = load_program(ns.program, ns.arg)
    if ns.guide is not None:
        guide = import_object(ns.guide)
        if not callable(guide):
            raise UsageError(f"--guide {ns.guide} is not a function")
        exact = None  # a benchmark's exact gradient is its own guide's
    reference = {"none": None, "exact": exact, "enumerate": "enumerate", "reparam": "reparam"}[ns.reference]
    if ns.reference == "exact" and exact is None:
        raise UsageError(f"{ns.program} has no exact reference; use --reference enumerate, reparam or none")
    out = writable_directory(ns.out) if ns.out else None
    report = diagnose(
        program, *args, guide=guide, estimators=parse_config(ns.estimator), num_samples=ns.samples,
        num_particles=ns.particles, reference=reference,
    )
    markdown = report.to_markdown()
    print(markdown)
    if out is not None:
        figure = out / "gradients.png"
        try:
            report.plot().savefig(figure, dpi=100)
            (out / "report.md").write_text(
                f"# Gradient diagnosis of `{ns.program}`\n\n{markdown}\n\n![gradient draws](gradients.png)\n"
            )
        except OSError as error:
            raise UsageError(f"cannot write the report in {out}: {error.strerror}; free some space "
                             "or choose another --out") from None
        print(f"\nwrote {out / 'report.md'}")
    return 0


def parse_configs(items: List[str]) -> Dict[str, Any]:
    """``NAME=SITE=ESTIMATOR[:ARG],...`` or ``NAME=ESTIMATOR[:ARG]`` (every site) → configs."""
    configs: Dict[str, Any] = {}
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            raise UsageError(f"--config {item!r}: expected NAME=SITE=ESTIMATOR[:ARG],... or NAME=ESTIMATOR[:ARG]")
        configs[name] = parse_config(spec.split(","), option=f"--config {name}=")
    return configs


@contextlib.contextmanager
def executor_for(workers: Optional[int], scheduler: Optional[str]) -> Iterator[Optional[cf.Executor]]:
    """``--workers N``: N local processes; ``--scheduler ADDRESS``: a running Dask
    scheduler's workers; neither: None (this process computes every run).

    Every run, here or on a worker, uses this process's torch thread count, since its
    bits depend on it. With workers it is set, while they run, to one worker's share of
    the cores (local processes), or to 1, the thread Dask gives each task
    (OMP_NUM_THREADS=1), so that the workers do not compete for cores."""
    if workers is None and scheduler is None:
        yield None
        return
    previous = torch.get_num_threads()
    try:
        if workers is not None:
            torch.set_num_threads(max(1, usable_cores() // workers))
            with local_pool(workers) as pool:
                yield pool
        else:
            torch.set_num_threads(1)
            with dask_client(scheduler) as client:
                yield client.get_executor()
    finally:
        torch.set_num_threads(previous)


def dask_client(scheduler: str) -> Any:
    try:
        import distributed
    except ImportError:
        raise UsageError("--scheduler needs Dask's distributed: pip install 'pyro-grad[dask]'") from None
    try:
        return distributed.Client(scheduler, timeout=30)
    except (OSError, ValueError) as error:  # unreachable (TimeoutError is an OSError), or not an address
        raise UsageError(f"cannot reach the Dask scheduler at {scheduler}: {first_line(error)}") from None


def run_compare(ns: argparse.Namespace) -> int:
    from pyro_grad.harness.comparison import compare
    from pyro_grad.harness.presentation.html_report import report

    if ns.workers is not None and ns.scheduler is not None:
        raise UsageError("give --workers and --scheduler one at a time: local processes, or a Dask scheduler's workers")
    model, args, _, guide, reset = load_program(ns.model, [])
    configs = parse_configs(ns.config) or {"auto": None}
    out = writable_directory(ns.out)
    with executor_for(ns.workers, ns.scheduler) as executor:
        result = compare(model, guide, *args, configs=configs, num_steps=ns.steps, num_particles=ns.particles,
                         seeds=tuple(range(ns.seeds)), diagnose_every=max(1, ns.steps // 2), out=str(out),
                         reset=reset, executor=executor)
    print(result.summary().to_markdown(index=False, floatfmt=".4g"))
    print(f"\n{result.provenance()} ({out / 'runs.sqlite'})")
    print(f"wrote {report(result, out / 'report.html', title=f'{ns.model}: SVI comparison')}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in the same one line as every other mistake."""

    def error(self, message: str) -> None:
        print(f"pyro-grad: error: {message} (see pyro-grad {self.prog.split()[-1]} --help)", file=sys.stderr)
        sys.exit(2)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from pyro_grad import __version__

    names = ", ".join(registered_names())
    estimators_help = (
        f"Estimator names: {names}; each takes an optional :ARG, its first setting "
        "(score:loo, score:0.5, gumbelsoftmax:0.1)."
    )
    formatter = argparse.ArgumentDefaultsHelpFormatter
    parser = _Parser(prog="pyro-grad", description="Gradient estimators for Pyro programs",
                     epilog=estimators_help, formatter_class=formatter)
    parser.add_argument("--version", action="version", version=f"pyro-grad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    report = sub.add_parser("report", help="the main job: compare every built-in model, write reports/index.html",
                            formatter_class=formatter)
    report.add_argument("--out", default="reports", help="directory for the pages")
    report.add_argument("--steps", type=positive_int, default=200, help="SVI steps per run")
    report.add_argument("--samples", type=positive_int, default=2000, help="gradient draws per estimator")
    report.add_argument("--workers", type=positive_int, default=None, metavar="N",
                        help="build N pages at a time, each in a local process (None: one after another)")
    report.add_argument("--models", default=None, metavar="NAME,...",
                        help="only these built-in models (default: every one)")
    table = sub.add_parser("table", help="the seed programs' gradients under each applicable estimator",
                           formatter_class=formatter)
    table.add_argument("--samples", type=positive_int, default=10_000, help="gradient draws per estimator")
    cmp = sub.add_parser("compare", help="train a model under estimator configurations side by side",
                         epilog=estimators_help, formatter_class=formatter)
    cmp.add_argument("model", help="a registry name (pyro-grad models) or MODULE:FUNCTION")
    cmp.add_argument("--config", action="append", default=[], metavar="NAME=SITE=ESTIMATOR[:ARG],...",
                     help="e.g. loo=f=score:loo or fast=disarm (one estimator for every site); "
                          "none given: the automatic choice")
    cmp.add_argument("--steps", type=positive_int, default=200, help="SVI steps per run")
    cmp.add_argument("--seeds", type=positive_int, default=2, help="number of seeds (0, 1, ...)")
    cmp.add_argument("--particles", type=positive_int, default=4, help="particles per step")
    cmp.add_argument("--out", default="compare-out", help="directory for runs.sqlite and report.html")
    cmp.add_argument("--workers", type=positive_int, default=None, metavar="N",
                     help="compute the runs on N local processes (None: in this process)")
    cmp.add_argument("--scheduler", default=None, metavar="ADDRESS",
                     help="compute the runs on a running Dask scheduler's workers, e.g. tcp://HOST:8786 "
                          "(pip install 'pyro-grad[dask]')")
    sub.add_parser("models", help="list the built-in benchmark programs", formatter_class=formatter)
    diag = sub.add_parser("diagnose", help="per-parameter and per-site gradient statistics of a program",
                          epilog=estimators_help, formatter_class=formatter)
    diag.add_argument("program", help="a registry name or MODULE:FUNCTION (a program or a models benchmark)")
    diag.add_argument("--guide", metavar="MODULE:FUNCTION",
                      help="a guide: diagnose the ELBO gradient (a registry benchmark's own guide by default)")
    diag.add_argument("--samples", type=positive_int, default=1000, help="independent gradient draws")
    diag.add_argument("--particles", type=positive_int, default=1, help="particles per draw")
    diag.add_argument("--estimator", action="append", default=[], metavar="SITE=ESTIMATOR[:ARG]",
                      help="e.g. z=reparam, a=score:loo; or one NAME for every site")
    diag.add_argument("--reference", default="none", choices=["none", "exact", "enumerate", "reparam"],
                      help="the exact gradient to measure bias against")
    diag.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE", help="a program argument")
    diag.add_argument("--out", help="directory for report.md and its figure")
    return parser


@contextlib.contextmanager
def log_lines_off_a_terminal() -> Iterator[None]:
    """pyro_grad's INFO lines (a line per stored run) on stderr while a command runs,
    where no progress bar shows: in logs and CI."""
    if sys.stderr.isatty():
        yield
        return
    logger = logging.getLogger("pyro_grad")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("pyro-grad: %(message)s"))
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def main(argv: Optional[List[str]] = None) -> int:
    ns = build_parser().parse_args(argv)
    with log_lines_off_a_terminal():
        return _run(ns)


def _run(ns: argparse.Namespace) -> int:
    try:
        if ns.command == "report":
            from pyro_grad.harness.presentation.main_job import build_reports

            models = [m for m in ns.models.split(",") if m] if ns.models is not None else None
            index = build_reports(str(writable_directory(ns.out)), num_steps=ns.steps, num_samples=ns.samples,
                                  log=lambda line: print(line, file=sys.stderr, flush=True), models=models,
                                  workers=ns.workers)
            print(f"wrote {index}")
            return 0
        if ns.command == "table":
            print(gradient_table(ns.samples).to_markdown(index=False, floatfmt=".4g"))
            return 0
        if ns.command == "compare":
            return run_compare(ns)
        if ns.command == "models":
            print(models_table().to_markdown(index=False))
            return 0
        return run_diagnose(ns)
    except (UsageError, EstimatorError) as error:
        # Pyro appends trace shapes to errors raised inside a trace: keep the first line.
        print(f"pyro-grad: error: {first_line(error)}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError) as error:
        # Raised by the program itself, e.g. a distribution given an invalid parameter.
        print(f"pyro-grad: error: the program raised {type(error).__name__}: {first_line(error)}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kept = f"; finished runs are kept in {Path(ns.out) / 'runs.sqlite'}" if ns.command == "compare" else ""
        print(f"pyro-grad: interrupted{kept}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
