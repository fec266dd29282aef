"""The README's complete Python examples run, and print what the README says they print."""

import contextlib
import io
import pathlib
import re

import pyro

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_tutorial_and_poisson_examples_print_what_the_readme_shows():
    # The seed tutorial (block 1) and the torch.poisson answer (block 2) are complete
    # programs; "Printed with pyro.set_rng_seed(0) once at the start."
    blocks = python_blocks()[:2]
    pyro.set_rng_seed(0)
    namespace, output = {}, io.StringIO()
    with contextlib.redirect_stdout(output):
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
    printed = re.findall(r"tensor\((-?[\d.]+)\)", output.getvalue())
    promised = [m for block in blocks for m in re.findall(r"# .*?tensor\((-?[\d.]+)\)", block)]
    assert printed == promised


def test_the_multi_sample_bound_example_learns_the_posterior_it_prints():
    # "Multi-sample bounds": IWAE with DReG on the conjugate Gaussian, whose posterior
    # mean is x / 2; after 600 Adam steps within 0.1 (the guide's sd is ≈ 0.7).
    (block,) = [b for b in python_blocks() if "pg.IWAE(num_particles=16)" in b]
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    namespace = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(block, str(README), "exec"), namespace)
    m, data = pyro.param("m").detach(), namespace["data"]
    assert (m - data / 2).abs().max() < 0.1, m


def test_the_tuning_example_picks_the_coupled_difference_it_prints():
    # "Choosing estimators automatically": a Poisson site under a smooth cost; the
    # printed config is the README's comment, and the tuned gradient reaches rate.grad.
    (block,) = [b for b in python_blocks() if "pg.tune(f, rate" in b]
    pyro.clear_param_store()
    namespace, output = {}, io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(block, str(README), "exec"), namespace)
    assert output.getvalue().splitlines()[0] == "{'z': MeasureValued()}"
    assert namespace["rate"].grad is not None


def test_the_cluster_example_runs_on_two_processes_bit_for_bit(tmp_path, monkeypatch):
    # "Running on a cluster": the block asserts its own runs equal the serial runs.
    (block,) = [b for b in python_blocks() if "ProcessPoolExecutor(2, mp_context=spawn)" in b]
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(block, str(README), "exec"), namespace)
    assert (tmp_path / "runs" / "fits.sqlite").exists() and len(namespace["result"].runs) == 4


def test_the_jump_example_prints_the_exact_gradient_it_shows():
    # "Programs that jump": round(z) under the default, seeded 0; the exact gradient is 1.000.
    (block,) = [b for b in python_blocks() if "return torch.round(z)" in b]
    import torch

    import pyro.distributions as dist
    import pyro_grad as pg

    pyro.set_rng_seed(0)
    namespace, output = {"pyro": pyro, "dist": dist, "torch": torch, "pg": pg}, io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(block, str(README), "exec"), namespace)
    printed = re.findall(r"tensor\((-?[\d.]+)\)", output.getvalue())
    assert printed == re.findall(r"# .*?tensor\((-?[\d.]+)\)", block)
    assert abs(float(printed[0]) - 1.0) < 0.01


def test_the_enumeration_example_sums_the_assignments_out_as_traceenum_does():
    # "Enumeration as TraceEnum_ELBO does it": the block asserts pg's loss is TraceEnum's;
    # here also against log p(data) summed by hand over the two components.
    (block,) = [b for b in python_blocks() if "def mixture(data)" in b]
    import torch

    import pyro.distributions as dist
    import pyro_grad as pg

    pyro.clear_param_store()
    namespace = {"pyro": pyro, "dist": dist, "torch": torch, "pg": pg}
    exec(compile(block, str(README), "exec"), namespace)
    data = namespace["data"]
    weights, locs = torch.tensor([0.4, 0.6]), torch.tensor([1.0, 9.0])
    by_hand = torch.logsumexp(weights.log() + dist.Normal(locs, 1.0).log_prob(data[:, None]), -1).sum()
    assert abs(namespace["loss"].item() + by_hand.item()) < 1e-4
