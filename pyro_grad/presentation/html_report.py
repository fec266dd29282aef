"""``report``: one self-contained HTML page (figures embedded) and a markdown twin."""

import base64
import html
import io
import platform
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Tuple, Union

import pandas as pd

from pyro_grad.comparison.results import Comparison
from pyro_grad.diagnostics.report import EstimatorComparison, GradientReport
from pyro_grad.errors import EstimatorError
from pyro_grad.presentation.figures import is_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Rows of the posterior summary shown (a local latent per data point makes many).
MAX_POSTERIOR_ROWS = 30

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; } img { max-width: 100%; } code { background: #f6f6f6; }
"""


def machine() -> pd.DataFrame:
    """The machine and the versions that made the report."""
    rows = [("python", platform.python_version()), ("platform", platform.platform())]
    for package in ("torch", "pyro-ppl", "arviz", "pyro-grad"):
        try:
            rows.append((package, metadata.version(package)))
        except metadata.PackageNotFoundError:
            rows.append((package, "not installed"))
    return pd.DataFrame(rows, columns=["what", "version"])


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def sections(obj: Any) -> List[Tuple[str, Union[pd.DataFrame, "Figure", str]]]:
    """(heading, table | figure | text) for a Comparison, GradientReport or EstimatorComparison."""
    if isinstance(obj, Comparison):
        parts = [
            ("Summary", obj.summary()),
            ("ELBO during training", obj.plot_elbo()),
            ("Gradient variance at checkpoints", obj.plot_variance()),
            ("Estimator configurations", pd.DataFrame(list(obj.configs.items()), columns=["config", "estimators"])),
        ]
        if len(obj.failures()):
            parts.append(("Runs stopped early", obj.failures()))
        parts.append(("Runs", f"{obj.provenance()}."))
        for note in obj.notes:
            parts.append(("Note", note))
        import arviz as az

        idata = obj.to_inference_data()
        if not hasattr(idata, "posterior"):
            parts.append(("Posterior", "(no posterior draws were kept)"))
            return parts
        # R-hat and ESS need two chains (seeds); with one, only the statistics are defined.
        kind = "all" if idata.posterior.sizes["chain"] >= 2 else "stats"
        shown, total = first_elements(idata.posterior, MAX_POSTERIOR_ROWS)
        posterior = az.summary(az.from_dict(posterior=shown) if shown is not None else idata, kind=kind).reset_index()
        if shown is not None:
            heading = (f"Posterior (ArviZ summary, the first {MAX_POSTERIOR_ROWS} of {total} variables; "
                       "elements numbered in row-major order)")
        else:
            heading = "Posterior (ArviZ summary)"
        parts.append((heading, posterior))
        return parts
    if isinstance(obj, (GradientReport, EstimatorComparison)):
        return [
            ("Parameters", obj.params),
            ("Sample sites", obj.sites if len(obj.sites) else "(none)"),
            ("Gradient draws", obj.plot()),
        ]
    raise EstimatorError(
        f"report() takes a Comparison, GradientReport or EstimatorComparison, got {type(obj).__name__}"
    )


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


def report(obj: Any, path: Union[str, Path], title: str = "pyro_grad report") -> Path:
    """Write ``path`` (HTML, figures embedded as PNG) and its markdown twin (``.md``, with
    the figures as PNG files beside it). Returns the HTML path."""
    path = Path(path)
    parts = sections(obj) + [("Machine and versions", machine())]
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


def _write(parts: List[Tuple[str, Any]], path: Path, title: str) -> Path:
    body, markdown = [f"<h1>{html.escape(title)}</h1>"], [f"# {title}"]
    for i, (heading, content) in enumerate(parts):
        body.append(f"<h2>{html.escape(heading)}</h2>")
        markdown.append(f"## {heading}")
        if isinstance(content, pd.DataFrame):
            body.append(content.to_html(index=False, float_format=lambda v: f"{v:.4g}"))
            markdown.append(content.to_markdown(index=False, floatfmt=".4g"))
        elif is_figure(content):
            png = _png(content)
            encoded = base64.b64encode(png).decode()
            body.append(f'<img alt="{html.escape(heading)}" src="data:image/png;base64,{encoded}">')
            image = path.with_name(f"{path.stem}-figure-{i}.png")
            write_file(image, png)
            markdown.append(f"![{heading}]({image.name})")
        else:
            body.append(f"<p>{html.escape(str(content))}</p>")
            markdown.append(str(content))
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>"
    )
    write_file(path, page.encode("utf-8"))
    write_file(path.with_suffix(".md"), ("\n\n".join(markdown) + "\n").encode("utf-8"))
    return path
