"""``pyro-grad``: the commands, their parser, and one line per mistake."""

import argparse
import contextlib
import logging
import sys
from pathlib import Path
from typing import Iterator, List, Optional

from pyro_grad.cli.executors import executor_for
from pyro_grad.cli.programs import import_object, load_program, parse_config, parse_configs
from pyro_grad.cli.tables import gradient_table, models_table
from pyro_grad.cli.usage import Parser, UsageError, positive_int, writable_directory
from pyro_grad.errors import EstimatorError, first_line
from pyro_grad.gradient_estimators.registry import registered_names


def run_diagnose(ns: argparse.Namespace) -> int:
    from pyro_grad.diagnostics import diagnose

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
                         reset=reset, executor=executor, compile=COMPILE[ns.compile])
    print(result.summary().to_markdown(index=False, floatfmt=".4g"))
    print(f"\n{result.provenance()} ({out / 'fits.sqlite'})")
    print(f"wrote {report(result, out / 'report.html', title=f'{ns.model}: SVI comparison')}")
    return 0


#: --compile's choices, as the losses' compile= (pyro_grad.engine.recording).
COMPILE = {"auto": "auto", "inductor": True, "trace": {"backend": "trace"}, "off": False}


def build_parser() -> argparse.ArgumentParser:
    from pyro_grad import __version__

    names = ", ".join(registered_names())
    estimators_help = (
        f"Estimator names: {names}; each takes an optional :ARG, its first setting "
        "(score:loo, score:0.5, gumbelsoftmax:0.1)."
    )
    formatter = argparse.ArgumentDefaultsHelpFormatter
    parser = Parser(prog="pyro-grad", description="Gradient estimators for Pyro programs",
                     epilog=estimators_help, formatter_class=formatter)
    parser.add_argument("--version", action="version", version=f"pyro-grad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    report = sub.add_parser("report", help="the main job: compare every built-in model, write reports/index.html",
                            formatter_class=formatter)
    report.add_argument("--out", default="reports", help="directory for the pages")
    report.add_argument("--steps", type=positive_int, default=None,
                        help="SVI steps per fit, for every page (default: 200, fewer for the costly models, to keep "
                             "the main job within 5 minutes)")
    report.add_argument("--samples", type=positive_int, default=None,
                        help="gradient draws per estimator, for every page (default: 2000, fewer for the costly "
                             "models)")
    report.add_argument("--workers", type=positive_int, default=None, metavar="N",
                        help="build N pages at a time, each in a local process (default: one per usable core; "
                             "1: one after another, in this process)")
    report.add_argument("--models", default=None, metavar="NAME,...",
                        help="only these built-in models (default: every one)")
    report.add_argument("--compile", choices=COMPILE, default="off",
                        help="how SVI steps run: off (uncompiled; measured faster on the main job's short fits), "
                             "auto (recorded and run flat where the program allows, the same draws), inductor "
                             "(compiled), trace (recorded)")
    table = sub.add_parser("table", help="the seed programs' gradients under each applicable estimator",
                           formatter_class=formatter)
    table.add_argument("--samples", type=positive_int, default=10_000, help="gradient draws per estimator")
    cmp = sub.add_parser("compare", help="train a model under estimator configurations side by side",
                         epilog=estimators_help, formatter_class=formatter)
    cmp.add_argument("model", help="a registry name (pyro-grad models) or MODULE:FUNCTION")
    cmp.add_argument("--config", action="append", default=[], metavar="NAME=SITE=ESTIMATOR[:ARG],...",
                     help="e.g. loo=f=score:loo or fast=disarm (one estimator for every site); "
                          "none given: the automatic choice")
    cmp.add_argument("--steps", type=positive_int, default=200, help="SVI steps per fit")
    cmp.add_argument("--seeds", type=positive_int, default=2, help="number of seeds (0, 1, ...)")
    cmp.add_argument("--particles", type=positive_int, default=4, help="particles per step")
    cmp.add_argument("--out", default="compare-out", help="directory for fits.sqlite and report.html")
    cmp.add_argument("--compile", choices=COMPILE, default="off",
                     help="how SVI steps run: off (uncompiled), auto (recorded and run flat where the program "
                          "allows, the same draws; pays for itself after 100-500 steps), inductor (compiled), "
                          "trace (recorded)")
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
    """pyro_grad's INFO lines (a line per stored fit) on stderr while a command runs,
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

            from pyro_grad.harness.comparison.executor import usable_cores

            models = [m for m in ns.models.split(",") if m] if ns.models is not None else None
            workers = ns.workers if ns.workers is not None else usable_cores()
            index = build_reports(str(writable_directory(ns.out)), num_steps=ns.steps, num_samples=ns.samples,
                                  log=lambda line: print(line, file=sys.stderr, flush=True), models=models,
                                  workers=None if workers == 1 else workers, compile=COMPILE[ns.compile])
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
        kept = f"; finished fits are kept in {Path(ns.out) / 'fits.sqlite'}" if ns.command == "compare" else ""
        print(f"pyro-grad: interrupted{kept}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
