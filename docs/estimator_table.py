"""The estimator table of the README and of docs/estimators.md, generated from the registry.

Every cell comes from the estimator classes in ``pyro_grad.gradient_estimators.registry.REGISTRY``
(in their order), so the table cannot drift from the code:

* **estimator**: the class and its fields' defaults (the dataclass fields);
* **gradient**: the first sentence of the class docstring, with its citation moved out;
* **paper**: the citation in the class docstring, else the one the module's docstring
  gives next to the class's name;
* **applies to**: the families of :data:`PROBES` whose sites the class's ``applies_to``
  accepts and whose default instance (``example_for(site)``) does not refuse, with
  ``K ≥ 2`` where the instance needs two particles (``min_particles``);
* **objectives**: ``objectives``, named as the objectives' errors name them;
* **unbiased**: ``unbiased``;
* **evaluations per particle**: ``evaluations(site)`` at those same sites: the program evaluations per
  particle that ``pg.diagnose`` and ``pg.compare`` count.

``python docs/estimator_table.py`` prints the table; ``--write`` rewrites the README's
copy between the ``<!-- estimator-table -->`` and ``<!-- /estimator-table -->`` markers
(``tests/test_docs.py`` checks that it is current). The documentation site gets the same
table through the MkDocs hook in ``docs/hooks.py``.
"""

import argparse
import collections
import dataclasses
import inspect
import pathlib
import re
import sys
from typing import Callable, Dict, List, Optional, Tuple

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BEGIN, END = "<!-- estimator-table -->", "<!-- /estimator-table -->"
#: Where a page asks for the table (docs/hooks.py replaces it).
PLACEHOLDER = "{{ estimator_table }}"

#: Column titles, in order.
COLUMNS = ("estimator", "gradient", "paper", "applies to", "objectives", "unbiased", "evaluations per particle")


def _probes() -> List[Tuple[str, str, Callable]]:
    """``(family, variant, distribution factory)``: the sites the table probes. Parameters
    that require grad are the ones that move; a family listed with several variants is
    named with the variants an estimator accepts when it does not accept them all."""
    import pyro.distributions as dist
    import torch

    def moving(value):
        return torch.tensor(value, requires_grad=True)

    p5 = [0.1, 0.2, 0.3, 0.2, 0.2]
    return [
        ("Normal", "", lambda: dist.Normal(moving(0.0), moving(1.0))),
        ("LogNormal", "", lambda: dist.LogNormal(moving(0.0), moving(1.0))),
        ("Exponential", "", lambda: dist.Exponential(moving(1.0))),
        ("Gamma", "rate", lambda: dist.Gamma(2.0, moving(1.0))),
        ("Gamma", "concentration", lambda: dist.Gamma(moving(2.0), 1.0)),
        ("Beta", "", lambda: dist.Beta(moving(2.0), moving(2.0))),
        ("Dirichlet", "", lambda: dist.Dirichlet(moving([1.0, 1.0, 1.0]))),
        ("Uniform", "", lambda: dist.Uniform(moving(0.0), moving(1.0))),
        ("Bernoulli", "", lambda: dist.Bernoulli(moving(0.3))),
        ("Binomial(5)", "", lambda: dist.Binomial(5, moving(0.3))),
        ("Categorical(5)", "", lambda: dist.Categorical(moving(p5))),
        ("OneHotCategorical(5)", "", lambda: dist.OneHotCategorical(moving(p5))),
        ("Poisson", "", lambda: dist.Poisson(moving(2.0))),
        ("Geometric", "", lambda: dist.Geometric(moving(0.3))),
        ("Multinomial", "", lambda: dist.Multinomial(5, moving([0.2, 0.3, 0.5]))),
    ]


#: The names of the probed families, for the docs' prose.
PROBES = (
    "Normal, LogNormal, Exponential, Gamma (rate or concentration moving), Beta, Dirichlet, "
    "Uniform, Bernoulli, Binomial(5), Categorical(5), OneHotCategorical(5), Poisson, Geometric, "
    "Multinomial"
)


def _rst_to_text(text: str) -> str:
    """A docstring fragment as plain table text: RST roles and literals unwrapped,
    whitespace collapsed, pipes escaped for a markdown table."""
    text = re.sub(r":\w+:`~?(?:[\w.]+\.)?([\w]+)`", r"\1", text)  # :class:`~pyro_grad.ELBO` -> ELBO
    text = text.replace("``", "")
    text = re.sub(r"\s*\((?:tables in the )?module docs\)", "", text)
    text = re.sub(r"\s+", " ", text).strip()
    return text.replace("|", "\\|")


def _first_sentence(doc: str) -> str:
    """The docstring's first sentence: up to the first '. ' (or the end of the first
    paragraph), never inside a ``literal`` or parentheses ("(Shi et al. 2022)")."""
    paragraph = doc.strip().split("\n\n")[0]
    literal, parens, i = False, 0, 0
    while i < len(paragraph):
        if paragraph.startswith("``", i):
            literal = not literal
            i += 2
            continue
        char = paragraph[i]
        if not literal:
            parens += (char == "(") - (char == ")")
            if char == "." and not parens and (i + 1 == len(paragraph) or paragraph[i + 1].isspace()):
                return paragraph[: i + 1]
        i += 1
    return paragraph


# A citation: "(Authors YEAR)" or "(Authors, VENUE YEAR, §n)".
_CITATION = re.compile(r"\s*\(((?:[A-Z][^()]*?)(?:19|20)\d\d(?:, §\d+)?)\)")


def _paper(cls: type) -> Tuple[str, str]:
    """``(citation, docstring sentence without it)``: the citation of the class docstring's
    first sentence, else of its docstring, else what the module docstring writes next to
    the class's name (``ARM (Yin & Zhou 2019)``)."""
    doc = inspect.getdoc(cls) or ""
    sentence = _first_sentence(doc)
    found = _CITATION.search(sentence)
    if found:
        return found.group(1), sentence[: found.start()] + sentence[found.end():]
    found = _CITATION.search(doc)
    if found:
        return found.group(1), sentence
    module_doc = sys.modules[cls.__module__].__doc__ or ""
    found = re.search(rf"(?<![\w]){re.escape(cls.__name__)}\s*\(([^()]*(?:19|20)\d\d[^()]*)\)", module_doc)
    return (found.group(1) if found else ""), sentence


def _signature(cls: type) -> str:
    fields = dataclasses.fields(cls) if dataclasses.is_dataclass(cls) else ()
    shown = ", ".join(f"{f.name}={f.default!r}" for f in fields if f.default is not dataclasses.MISSING)
    return f"`{cls.__name__}({shown})`"


def _families(names: List[str]) -> str:
    return ", ".join(names) if names else "none of the probed families"


def _row(cls: type, objectives: Dict[str, str]) -> List[str]:
    from pyro_grad.gradient_estimators.base import Site

    accepted: Dict[str, List[str]] = collections.OrderedDict()
    variants: Dict[str, List[str]] = collections.defaultdict(list)
    runs: Dict[str, Tuple[int, Optional[int]]] = collections.OrderedDict()
    min_particles = 1
    for family, variant, make in _probes():
        variants[family].append(variant)
        site = Site("x", make(), 1)
        if not cls.applies_to(site):
            continue
        estimator = cls.example_for(site)
        if estimator.refusal(site) is not None:
            continue
        accepted.setdefault(family, []).append(variant)
        summed = estimator.evaluations(dataclasses.replace(site, summed_out=True))
        runs.setdefault(family, (estimator.evaluations(site), summed))
        min_particles = max(min_particles, int(estimator.min_particles))
    names = [
        family if accepted[family] == variants[family] else f"{family} ({', '.join(accepted[family])})"
        for family in accepted
    ]
    applies = _families(names) + ("; K ≥ 2" if min_particles >= 2 else "")

    # One number where the runs do not depend on the family; else the number most
    # families share and the exceptions, or (no majority) every family's.
    counts = collections.Counter(r for r, _ in runs.values())
    usual, most = counts.most_common(1)[0] if counts else (1, 0)
    if 2 * most <= len(runs):
        usual = None
    by_runs: Dict[int, List[str]] = collections.OrderedDict()
    for family, (r, _) in runs.items():
        if r != usual:
            by_runs.setdefault(r, []).append(family)
    parts = ([str(usual)] if usual is not None else []) + [f"{r} at {' or '.join(f)}" for r, f in by_runs.items()]
    cost = "; ".join(parts)
    summed = {s for _, s in runs.values()}
    if summed and summed != set(counts):
        cost += f"; {' or '.join(str(s) for s in sorted(summed))} summed out in pg.ELBO"

    citation, sentence = _paper(cls)
    return [
        _signature(cls),
        _rst_to_text(sentence),
        _rst_to_text(citation) or "—",
        applies,
        ", ".join(name for key, name in objectives.items() if key in cls.objectives),
        "yes" if cls.unbiased else "**no**",
        cost,
    ]


def estimator_table() -> str:
    """The markdown table of every registered estimator (module docs for the columns)."""
    from pyro_grad.gradient_estimators.registry import OBJECTIVES, REGISTRY

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_row(cls, OBJECTIVES)) + " |" for cls in REGISTRY]
    return "\n".join(lines) + "\n"


def readme_table(text: str) -> str:
    """The table between the README's markers."""
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[start:end].strip("\n") + "\n"


def with_table(text: str, table: str) -> str:
    """``text`` with the table between its markers replaced by ``table``."""
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n" + table + text[end:]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite the README's table between its markers")
    args = parser.parse_args(argv)
    table = estimator_table()
    if not args.write:
        sys.stdout.write(table)
        return 0
    text = README.read_text(encoding="utf-8")
    updated = with_table(text, table)
    if updated != text:
        README.write_text(updated, encoding="utf-8")
        print(f"rewrote the estimator table in {README.name}")
    else:
        print(f"{README.name}'s estimator table is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
