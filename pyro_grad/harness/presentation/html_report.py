"""``report``: one self-contained HTML page (figures embedded) and a markdown twin.

A page opens with a recommendation (:mod:`~pyro_grad.harness.presentation.recommendation`),
then tables aggregated per parameter (per-element rows in a collapsed block and in a
CSV beside the page), the sample sites, and figures. Pages are rendered from the Jinja2
templates in ``templates/``, which share one layout.
"""

import base64
import io
import platform
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, NamedTuple, Optional, Tuple, Union

import pandas as pd

from pyro_grad.harness.comparison.results import Comparison
from pyro_grad.diagnostics.report import EstimatorComparison, GradientReport
from pyro_grad.diagnostics.statistics import FAMILY_ALPHA, FLAG_Z
from pyro_grad.errors import EstimatorError
from pyro_grad.diagnostics.figures import is_figure
from pyro_grad.harness.presentation.recommendation import Recommendation, recommend
from pyro_grad.tuning.tune import Tuning

if TYPE_CHECKING:
    from jinja2 import Environment
    from matplotlib.figure import Figure

#: Rows of the posterior summary shown (a local latent per data point makes many).
MAX_POSTERIOR_ROWS = 30
#: Per-element rows shown in a page's collapsed block; the CSV beside it has them all.
MAX_ELEMENT_ROWS = 500
#: A table longer than this (a program with many sites) is collapsed below the verdict.
MAX_SHOWN_ROWS = 20


class Noted(NamedTuple):
    """A table with a note under it (how its flags were decided, say)."""

    table: pd.DataFrame
    note: str


class ElementRows(NamedTuple):
    """Per-element rows: a collapsed block on the page, all of them in ``<page>-<name>.csv``."""

    table: pd.DataFrame
    name: str
    note: str = ""


def machine() -> pd.DataFrame:
    """The machine and the versions that made the report."""
    rows = [("python", platform.python_version()), ("platform", platform.platform())]
    for package in ("torch", "pyro-ppl", "arviz", "pyro-grad"):
        try:
            rows.append((package, metadata.version(package)))
        except metadata.PackageNotFoundError:
            rows.append((package, "not installed"))
    return pd.DataFrame(rows, columns=["what", "version"])


def templates() -> "Environment":
    """The page templates (``templates/``), HTML autoescaped."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    return Environment(loader=PackageLoader("pyro_grad.harness.presentation", "templates"),
                       autoescape=select_autoescape(["html"]), keep_trailing_newline=True)


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    # "tight": the legend beside the axes is part of the image.
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return buffer.getvalue()


def flags_note(reports: Mapping[str, GradientReport]) -> str:
    sizes = sorted({len(r.params) for r in reports.values()})
    return (f"Bias flags: at least {FLAG_Z:g} standard errors from the exact reference (or a confident wrong "
            f"sign), and significant after Holm's correction across every parameter element of the candidate "
            f"({', '.join(map(str, sizes))} elements; family-wise false-alarm rate {FAMILY_ALPHA:g}).")


def _draw_sections(reports: Mapping[str, GradientReport], obj: Any) -> List[Tuple[str, Any]]:
    by_parameter = obj.by_parameter()
    with_reference = any("flagged" in r.params for r in reports.values())
    note = flags_note(reports) if with_reference else "No exact reference: bias is not measured."
    return [
        ("Recommendation", recommend(obj)),
        ("What was run", Noted(obj.what_was_run(), "Every candidate's draws replay the same seed, so candidates "
                                                   "meet the same random numbers where they draw alike.")),
        ("Parameters (aggregated over elements)", Noted(by_parameter, note)),
        ("Parameters, per element", ElementRows(obj.params, "elements")),
        ("Sample sites", _sites_section(obj)),
        ("Gradient draws", obj.plot()),
    ]


def _sites_section(obj: Any) -> Any:
    """The sites table: the per-parameter rows when ``pg.diagnose(sites=True)`` made them,
    else each site's estimator and share; collapsed below the verdict when long."""
    if len(obj.sites):
        table, note = obj.sites, "One row per site and distribution parameter."
    else:
        table = obj.site_summary()
        note = ("Each site's estimator and why, evaluations per particle and share of the total parameter-gradient "
                "variance (NaN for a pathwise site, whose part cannot be separated); pg.diagnose(sites=True) adds "
                "the derivative along each site's own distribution parameters.")
    return ElementRows(table, "sites", note) if len(table) > MAX_SHOWN_ROWS else Noted(table, note)


def sections(obj: Any, bias: Optional[Mapping[str, str]] = None) -> List[Tuple[str, Any]]:
    """(heading, content) for a Comparison, GradientReport, EstimatorComparison or
    Tuning; content is a :class:`Recommendation`, a table, :class:`Noted`,
    :class:`ElementRows`, a figure or text. ``bias``: measured bias in words per
    biased SVI configuration."""
    if isinstance(obj, Comparison):
        parts = [
            ("Recommendation", recommend(obj, bias)),
            ("What was run", Noted(obj.what_was_run(), obj.budget_rule())),
            ("Summary", Noted(obj.summary(), "Target: the start plus 80% of the best unbiased configuration's "
                                             "improvement from it; times and evaluations are means over seeds, ± "
                                             "their standard deviation. This page measures training to the "
                                             "target; pg.tune measures the gradient's variance per evaluation at "
                                             "the start, so the two can differ: the quietest gradient at the start "
                                             "does not always train fastest.")),
            ("ELBO during training", obj.plot_elbo()),
            ("About the ELBO figure", "Each curve is the mean over seeds of the ELBO estimate, smoothed over 5% "
                                      "of the steps, against program evaluations (the budget's unit); the band "
                                      "spans the seeds. The dashed line is the target; the dotted one, where "
                                      "known, the exact log p(x), the ELBO's maximum: a step's estimate is "
                                      "noisy, so a smoothed curve of few particles can sit above it."),
            ("Gradient variance at checkpoints", obj.plot_variance()),
            ("Estimator configurations", pd.DataFrame(list(obj.configs.items()), columns=["config", "estimators"])),
        ]
        if len(obj.failures()):
            parts.append(("Fits stopped early", obj.failures()))
        parts.append(("Fits", f"{obj.provenance()}."))
        for note in obj.notes:
            parts.append(("Note", note))
        return parts + _posterior(obj)
    if isinstance(obj, GradientReport):
        return _draw_sections({obj.label: obj}, obj)
    if isinstance(obj, EstimatorComparison):
        return _draw_sections(obj.reports, obj)
    if isinstance(obj, Tuning):
        return [
            ("Recommendation", recommend(obj)),
            ("Chosen at each site", obj.choices),
            ("Every measurement", ElementRows(obj.table, "measurements",
                                              "One row per round, site and candidate; refused candidates say why.")),
        ]
    raise EstimatorError(
        "report() takes a Comparison, GradientReport, EstimatorComparison or Tuning, "
        f"got {type(obj).__name__}"
    )


def _posterior(obj: Comparison) -> List[Tuple[str, Any]]:
    import arviz as az

    idata = obj.to_inference_data()
    if not hasattr(idata, "posterior"):
        return [("Posterior", "(no posterior draws were kept)")]
    # R-hat and ESS need two chains (seeds); with one, only the statistics are defined.
    kind = "all" if idata.posterior.sizes["chain"] >= 2 else "stats"
    shown, total = first_elements(idata.posterior, MAX_POSTERIOR_ROWS)
    posterior = az.summary(az.from_dict(posterior=shown) if shown is not None else idata, kind=kind).reset_index()
    if shown is not None:
        heading = (f"Posterior (ArviZ summary, the first {MAX_POSTERIOR_ROWS} of {total} variables; "
                   "elements numbered in row-major order)")
    else:
        heading = "Posterior (ArviZ summary)"
    return [(heading, ElementRows(posterior, "posterior", "Posterior draws of each configuration (one chain per "
                                                         "seed), for reference: they do not decide the "
                                                         "recommendation."))]


def first_elements(posterior: Any, limit: int) -> Tuple[Any, int]:
    """The first ``limit`` scalar variables of an ArviZ posterior as ``{name: (chain,
    draw[, k])}`` arrays, and how many there are; None for the arrays when all fit.
    Summarizing only what is shown: ArviZ's summary of every element of a 200-latent
    VAE's posterior took minutes."""
    sizes = {name: int(array[0, 0].size) for name, array in posterior.data_vars.items()}
    total = sum(sizes.values())
    if total <= limit:
        return None, total
    shown, room = {}, limit
    for name, array in posterior.data_vars.items():
        if room == 0:
            break
        values = array.values
        if values.ndim > 2:
            values = values.reshape(values.shape[:2] + (-1,))[..., :room]
        shown[name] = values
        room -= sizes[name] if values.ndim == 2 else values.shape[2]
    return shown, total


def report(obj: Any, path: Union[str, Path], title: str = "pyro_grad report",
           bias: Optional[Mapping[str, str]] = None, beside: Optional[str] = None) -> Path:
    """Write ``path`` (HTML, figures embedded as PNG), its markdown twin (``.md``, with
    the figures as PNG files beside it) and the CSVs of its per-element rows. Returns the
    HTML path. ``obj`` is a :class:`~pyro_grad.Comparison`, :class:`~pyro_grad.GradientReport`,
    :class:`~pyro_grad.EstimatorComparison` or :class:`~pyro_grad.Tuning`. ``beside``: what
    ``pg.tune`` said of the same program, shown under the verdict (the main job's SVI pages)."""
    path = Path(path)
    parts = sections(obj, bias)
    if beside is not None:
        parts.insert(1, ("pg.tune at the start", beside))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise EstimatorError(f"cannot write the report to {path.parent}: {error.strerror}") from None
    return _write(parts, path, title)


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, or one :class:`~pyro_grad.EstimatorError` naming the file."""
    try:
        path.write_bytes(data)
    except OSError as error:
        # A full disk or a read-only directory: nothing computed is lost (runs are stored).
        raise EstimatorError(
            f"cannot write the report file {path}: {error.strerror}; free some space or choose another directory"
        ) from None


def table_html(table: pd.DataFrame) -> str:
    """The table in a box that scrolls sideways when it is wider than the page: cells
    wrap only between words, never mid-word or mid-number."""
    # A blank, not "NaN", where a value does not apply (a tensor parameter's mean).
    html = table.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0, na_rep="")
    return f'<div class="scroll">{html}</div>'


def table_markdown(table: pd.DataFrame) -> str:
    return table.to_markdown(index=False, floatfmt=".4g", missingval="")


def _rendered(parts: List[Tuple[str, Any]], path: Path) -> List[Dict[str, Any]]:
    """Each section as the templates take it, writing the figures' PNGs and the CSVs."""
    rendered = []
    for i, (heading, content) in enumerate(parts):
        section: Dict[str, Any] = {"heading": heading}
        if isinstance(content, Recommendation):
            section.update(kind="recommendation", lines=content.lines)
        elif isinstance(content, Noted):
            section.update(kind="table", html=table_html(content.table), markdown=table_markdown(content.table),
                           note=content.note)
        elif isinstance(content, pd.DataFrame):
            section.update(kind="table", html=table_html(content), markdown=table_markdown(content), note="")
        elif isinstance(content, ElementRows):
            csv = path.with_name(f"{path.stem}-{content.name}.csv")
            write_file(csv, content.table.to_csv(index=False).encode("utf-8"))
            shown = content.table.head(MAX_ELEMENT_ROWS)
            more = f", the first {MAX_ELEMENT_ROWS} shown" if len(content.table) > MAX_ELEMENT_ROWS else ""
            section.update(kind="details", html=table_html(shown), csv=csv.name, note=content.note,
                           summary=f"{len(content.table)} rows{more}")
        elif is_figure(content):
            png = _png(content)
            image = path.with_name(f"{path.stem}-figure-{i}.png")
            write_file(image, png)
            section.update(kind="figure", png=base64.b64encode(png).decode(), image=image.name)
        else:
            section.update(kind="text", text=str(content))
        rendered.append(section)
    return rendered


def _write(parts: List[Tuple[str, Any]], path: Path, title: str) -> Path:
    environment = templates()
    rendered = _rendered(parts, path)
    versions = machine()
    page = environment.get_template("page.html").render(title=title, sections=rendered,
                                                         machine=table_html(versions))
    write_file(path, page.encode("utf-8"))
    markdown = environment.get_template("page.md").render(title=title, sections=rendered,
                                                          machine_markdown=table_markdown(versions))
    write_file(path.with_suffix(".md"), markdown.encode("utf-8"))
    return path
