"""MkDocs hooks (mkdocs.yml's ``hooks:``): the estimator table, and CONTRIBUTING.md as a page.

* A page's ``{{ estimator_table }}`` becomes the table that ``docs/estimator_table.py``
  generates from ``pyro_grad.gradient_estimators.registry.REGISTRY`` (the README carries the same
  table between its markers).
* The top-level ``CONTRIBUTING.md`` is added to the site as ``contributing.md``; its
  links into ``docs/`` are made relative to the site.
"""

import importlib.util
import pathlib

from mkdocs.structure.files import File

HERE = pathlib.Path(__file__).resolve().parent
CONTRIBUTING = HERE.parent / "CONTRIBUTING.md"


def _generator():
    spec = importlib.util.spec_from_file_location("estimator_table", HERE / "estimator_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def on_files(files, config):
    files.append(File.generated(config, "contributing.md", content=CONTRIBUTING.read_text(encoding="utf-8")))
    return files


def on_page_markdown(markdown, page, config, files):
    generator = _generator()
    if generator.PLACEHOLDER in markdown:
        markdown = markdown.replace(generator.PLACEHOLDER, generator.estimator_table())
    if page.file.src_uri == "contributing.md":
        markdown = markdown.replace("](docs/", "](").replace("](README.md", "](index.md")
    return markdown
