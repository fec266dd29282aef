"""The documentation: README.md, CONTRIBUTING.md and the MkDocs site in docs/.

* The site builds with ``mkdocs build --strict`` (every warning an error: broken links
  and anchors, unresolvable API references).
* The README's estimator table is the one ``docs/estimator_table.py`` generates from
  the registry.
* Every ```python block runs as the standalone file a user would save
  (``python example.py`` in an empty directory) and exits 0; where its comments promise
  printed numbers (``print(x)  # tensor(19.9825)``) it prints exactly those, in order.
  Blocks assert their other claims themselves (the IWAE example learns the posterior,
  the tuning example picks the coupled difference, the cluster runs equal the serial
  runs bit for bit, ...).
"""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", flags=re.S | re.M)
#: What a block's comments promise it prints: "# tensor(19.9825)", "# Reparam() tensor(27.9372)".
PROMISED = re.compile(r"#[^\n]*?tensor\((-?[\d.]+)\)")
PRINTED = re.compile(r"tensor\((-?[\d.]+)\)")
#: Fences that are shown, never run.
NOT_RUN = {"bash", "text", "console"}
#: Seconds a block may take before it is reported as hung (the slowest takes about 15).
TIMEOUT = 180


def fenced_blocks(path: pathlib.Path):
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(path.read_text(encoding="utf-8"))]


def python_blocks():
    cases = []
    for path in DOCUMENTS:
        blocks = [code for language, code in fenced_blocks(path) if language == "python"]
        for index, code in enumerate(blocks):
            name = path.relative_to(ROOT).as_posix()
            cases.append(pytest.param(code, id=f"{name}-{index}"))
    return cases


def generator():
    spec = importlib.util.spec_from_file_location("estimator_table", ROOT / "docs" / "estimator_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_fenced_block_names_its_language():
    # A bare ``` fence would be neither run nor marked as output; say which it is.
    for path in DOCUMENTS:
        for language, _ in fenced_blocks(path):
            assert language == "python" or language in NOT_RUN, f"{path.name}: a ```{language} block"


@pytest.mark.parametrize("code", python_blocks())
def test_python_block_runs_as_a_script_and_prints_what_it_promises(code, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    # One torch thread per block, as conftest gives each of the two xdist workers.
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, script.name], cwd=tmp_path, capture_output=True, text=True,
                          timeout=TIMEOUT, env=env)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    promised = PROMISED.findall(code)
    if promised:
        assert PRINTED.findall(done.stdout) == promised, done.stdout


def test_the_readme_estimator_table_is_the_generated_one():
    tables = generator()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert tables.readme_table(readme) == tables.estimator_table(), (
        "the README's estimator table is stale: run `python docs/estimator_table.py --write`"
    )


def test_the_generated_table_has_a_row_per_registered_estimator():
    from pyro_grad.gradient_estimators.registry import REGISTRY

    rows = generator().estimator_table().splitlines()[2:]
    assert [row.split("`")[1].split("(")[0] for row in rows] == [cls.__name__ for cls in REGISTRY]
    for cls, row in zip(REGISTRY, rows):
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:-1]]
        assert len(cells) == 7 and all(cells), row
        assert cells[5] == ("yes" if cls.unbiased else "**no**")


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    command = next(line for code in (c for lang, c in fenced_blocks(ROOT / "README.md") if lang == "bash")
                   for line in code.splitlines() if line.endswith("python -m pytest"))
    assert command in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "pyro-grad report" in readme


def test_the_site_builds_strictly(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    estimators = (tmp_path / "site" / "estimators" / "index.html").read_text(encoding="utf-8")
    assert "{{ estimator_table }}" not in estimators and "<td><code>DisARM(engine='rerun', paths=None)</code></td>" in estimators
    assert (tmp_path / "site" / "contributing" / "index.html").exists()
    assert (tmp_path / "site" / "finite_differences.png").exists()
