"""``compile=``: a recorded step gives the uncompiled step's answers.

Under ``backend="trace"`` the recorded graph draws the random numbers the uncompiled step
draws from the same state, so every SVI step's loss and every parameter after it agree
to float tolerance (the same operations, run from a graph instead of Python). Under
``backend="inductor"`` the compiler draws its own random numbers, so the gradient is
checked in distribution against the exact gradient of a small Bernoulli VAE (every
latent summed out), within 4.5 standard errors.
"""

import contextlib
import logging

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI

import pyro_grad as pg
from pyro_grad.errors import EstimatorError
from pyro_grad.harness.models import mnist_vae

TRACE = {"backend": "trace"}
STEPS = 24  # the first (watched) step, a recording, flat steps and the watch every 10 steps


def images(n: int, seed: int = 0) -> torch.Tensor:
    return mnist_vae.binarize(torch.rand(n, 784, generator=torch.Generator().manual_seed(seed)),
                              torch.Generator().manual_seed(seed + 1))


def vae_run(compile, estimator, num_particles, objective=pg.ELBO, steps=STEPS, x=None, guide=None):
    """SVI on a 4-latent Bernoulli VAE: each step's loss and how it ran, and the weights."""
    pyro.clear_param_store()
    net = mnist_vae.BernoulliVAE(latents=4)
    chosen = guide(net) if guide else pg.estimators(net.guide, {"z": estimator})
    loss = objective(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1, compile=compile)
    svi = SVI(net.model, chosen, pyro.optim.Adam({"lr": 0.01}), loss=loss)
    x = images(6) if x is None else x
    pyro.set_rng_seed(0)
    losses, paths = [], []
    for _ in range(steps):
        losses.append(svi.step(x))
        paths.append(loss.recorder.last if loss.recorder else None)
    return torch.tensor(losses), torch.cat([p.detach().flatten() for p in net.parameters()]), paths


@pytest.mark.parametrize("estimator, num_particles, objective", [
    (pg.Score("loo"), 2, pg.ELBO),
    (pg.DisARM(), 1, pg.ELBO),
    (pg.Score("pooled"), 1, pg.ELBO),  # one bias-corrected decaying average, state carried across steps
    (pg.Score("decay"), 1, pg.ELBO),  # a decaying average per element
    (pg.RELAX(), 1, pg.ELBO),  # a learned control variate: its network's parameters in the store
    (pg.VIMCO(), 3, pg.IWAE),
], ids=["loo", "disarm", "pooled", "decay", "relax", "iwae-vimco"])
def test_recorded_svi_equals_uncompiled_draw_for_draw(estimator, num_particles, objective):
    """The 4-latent VAE, 24 SVI steps from one seed: every loss and the final weights of
    the recorded run equal the uncompiled run's (float tolerance), and most steps ran flat."""
    losses, weights, _ = vae_run(False, estimator, num_particles, objective)
    compiled_losses, compiled_weights, paths = vae_run(TRACE, estimator, num_particles, objective)
    assert paths.count("flat") >= STEPS - 5, paths
    assert "recorded" in paths
    torch.testing.assert_close(compiled_losses, losses, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(compiled_weights, weights, rtol=1e-4, atol=1e-5)


def gaussian_model(x):
    w = pyro.param("w", torch.tensor(0.5))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(w * z, 1.0), obs=x)


def gaussian_guide(x):
    a = pyro.param("a", torch.tensor(0.1))
    s = pyro.param("s", torch.tensor(1.0), constraint=dist.constraints.positive)
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(a * x, s))


def gaussian_run(compile, steps=STEPS):
    pyro.clear_param_store()
    loss = pg.ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1, compile=compile)
    svi = SVI(gaussian_model, gaussian_guide, pyro.optim.Adam({"lr": 0.05}), loss=loss)
    x = torch.linspace(-2, 2, 5)
    pyro.set_rng_seed(0)
    losses = torch.tensor([svi.step(x) for _ in range(steps)])
    return losses, {k: v.detach().clone() for k, v in pyro.get_param_store().items()}, loss


def test_recorded_pathwise_steps_with_a_constrained_parameter():
    """A Gaussian latent (Reparam, watched for jumps every 10 steps) whose scale is a
    positive pyro.param: the recorded run equals the uncompiled one step for step."""
    losses, params, _ = gaussian_run(False)
    compiled_losses, compiled_params, loss = gaussian_run(TRACE)
    torch.testing.assert_close(compiled_losses, losses, rtol=1e-5, atol=1e-5)
    for name, value in params.items():
        torch.testing.assert_close(compiled_params[name], value, rtol=1e-5, atol=1e-6)
    assert loss.recorder.recording is not None


def test_new_argument_shapes_record_again(caplog):
    """A batch of another size changes the arguments' shapes: the step is recorded again
    (and logged), and its answers stay the uncompiled step's."""
    x, y = images(6), images(4, seed=3)
    pyro.clear_param_store()
    net = mnist_vae.BernoulliVAE(latents=4)
    guide = pg.estimators(net.guide, {"z": pg.Score("loo")})
    compiled = pg.ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1, compile=TRACE)
    plain = pg.ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1)
    for batch in (x, x, x, y, y):
        for p in net.parameters():
            p.grad = None
        state = pyro.util.get_rng_state()
        with caplog.at_level(logging.INFO, logger="pyro_grad.compile"):
            value = compiled.loss_and_grads(net.model, guide, batch)
        grads = [p.grad.clone() for p in net.parameters()]
        pyro.util.set_rng_state(state)
        for p in net.parameters():
            p.grad = None
        assert value == pytest.approx(plain.loss_and_grads(net.model, guide, batch), rel=1e-6)
        for g, p in zip(grads, net.parameters()):
            torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-5)
    assert "recording again, as the arguments' shapes or values changed" in caplog.text
    assert compiled.recorder.recording.signature.arguments[1][0][1] == (4, 784)


@pytest.mark.parametrize("args", [(), (torch.ones(2),), (torch.ones(2), 3, "a", None), (torch.Size([2]), 1.5)])
def test_the_arguments_fast_flattening_is_the_general_one(args):
    """Positional arguments with no container take a shortcut before every compiled call;
    its leaves and structure are the general walk's (forced here by a keyword argument,
    whose own part is dropped), so a guard built either way compares equal."""
    from pyro_grad.engine.recording import flattened

    leaves, (positional, keywords) = flattened(args, {})
    walked, (walked_positional, _) = flattened(args, {"forces_the_walk": 0})
    assert keywords == ("dict", ())
    assert positional == walked_positional
    assert len(leaves) == len(walked) - 1 and all(a is b for a, b in zip(leaves, walked))


def test_a_handler_around_the_step_records_again(caplog):
    """`with pg.estimators({"z": pg.DisARM()})` around a compiled step changes the site's
    estimator: the step is recorded again and its gradient is DisARM's, draw for draw."""
    x = images(6)
    pyro.clear_param_store()
    net = mnist_vae.BernoulliVAE(latents=4)
    compiled = pg.ELBO(num_particles=1, vectorize_particles=True, max_plate_nesting=1, compile=TRACE)
    plain = pg.ELBO(num_particles=1, vectorize_particles=True, max_plate_nesting=1)
    score, disarm = pg.estimators({"z": pg.Score()}), pg.estimators({"z": pg.DisARM()})
    for step in range(6):
        around = disarm if step >= 3 else score
        state = pyro.util.get_rng_state()
        with around, caplog.at_level(logging.INFO, logger="pyro_grad.compile"):
            value = compiled.loss_and_grads(net.model, net.guide, x)
        pyro.util.set_rng_state(state)
        with around:
            assert value == pytest.approx(plain.loss_and_grads(net.model, net.guide, x), rel=1e-6)
    assert "recording again, as the handlers around the call changed" in caplog.text
    assert "DisARM" in repr(compiled.recorder.recording.fingerprint)


def reading_guide(x):
    a = pyro.param("a", torch.tensor(0.1))
    shift = float(x.mean())  # a read into Python: each call may take another path
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(a * x + shift, 1.0))


def test_a_step_that_reads_into_python_runs_uncompiled(caplog):
    """A guide that reads its data into a Python float cannot be recorded: one warning
    says why, every step runs uncompiled with the uncompiled answers, and
    fullgraph=True raises instead."""
    x = torch.linspace(-2, 2, 5)
    results = {}
    for compile in (False, TRACE):
        pyro.clear_param_store()
        loss = pg.ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1, compile=compile)
        svi = SVI(gaussian_model, reading_guide, pyro.optim.Adam({"lr": 0.05}), loss=loss)
        pyro.set_rng_seed(0)
        with caplog.at_level(logging.WARNING, logger="pyro_grad.compile"):
            results[str(compile)] = torch.tensor([svi.step(x) for _ in range(5)])
    torch.testing.assert_close(results[str(TRACE)], results["False"])
    warnings = [r for r in caplog.records if r.name == "pyro_grad.compile"]
    assert len(warnings) == 1 and "reads a tensor into Python" in warnings[0].getMessage()
    pyro.clear_param_store()
    loss = pg.ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1,
                   compile={"backend": "trace", "fullgraph": True})
    svi = SVI(gaussian_model, reading_guide, pyro.optim.Adam({"lr": 0.05}), loss=loss)
    svi.step(x)
    with pytest.raises(EstimatorError, match="cannot record this step: the step reads a tensor into Python"):
        svi.step(x)


def test_a_tensor_outside_the_arguments_and_the_store_is_refused(caplog):
    """A model that differentiates a closure tensor (neither an argument nor a
    pyro.param): a recording would lose its gradient, so the step runs uncompiled and
    the log names what to do; its gradient is the uncompiled one."""
    w = torch.tensor(0.5, requires_grad=True)

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(w * z, 1.0), obs=x)

    x = torch.linspace(-2, 2, 5)
    pyro.clear_param_store()
    loss = pg.ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1, compile=TRACE)
    plain = pg.ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1)
    with caplog.at_level(logging.WARNING, logger="pyro_grad.compile"):
        for _ in range(3):
            w.grad = None
            state = pyro.util.get_rng_state()
            loss.loss_and_grads(model, gaussian_guide, x)
            compiled = w.grad.clone()
            w.grad = None
            pyro.util.set_rng_state(state)
            plain.loss_and_grads(model, gaussian_guide, x)
            torch.testing.assert_close(compiled, w.grad)
    assert "neither an argument nor a pyro.param" in caplog.text
    assert loss.recorder.last == "uncompiled"


@pytest.mark.parametrize("compile, match", [
    ("fast", "compile= must be True, False, 'auto' or a dict"),
    ({"backend": "xla"}, "compile's backend must be one of"),
    ({"mode": "max-autotune"}, "compile= takes the keys"),
])
def test_compile_options_are_checked(compile, match):
    with pytest.raises(EstimatorError, match=match):
        pg.ELBO(compile=compile)


def test_inductor_gradient_is_unbiased_and_fresh_every_call():
    """torch.compile'd DisARM steps on a 3-latent VAE and 2 images: consecutive calls
    draw anew, and the mean of 300 encoder-bias gradients is the exact ELBO's gradient
    (every latent summed out) within 4.5 standard errors."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    net = mnist_vae.BernoulliVAE(latents=3)
    x = images(2)
    guide = pg.estimators(net.guide, {"z": pg.DisARM()})
    loss = pg.ELBO(num_particles=1, vectorize_particles=True, max_plate_nesting=1, compile=True)
    draws, paths = [], []
    for _ in range(300):
        net.zero_grad()
        loss.loss_and_grads(net.model, guide, x)
        draws.append(net.encoder.bias.grad.clone())
        paths.append(loss.recorder.last)
    assert paths.count("flat") > 250 and loss.recorder.compile_seconds is not None
    draws = torch.stack(draws[2:])
    assert (draws[1:] != draws[:-1]).any(1).float().mean() > 0.5  # fresh randomness each call
    net.zero_grad()
    (-net.exact_elbo(x).sum()).backward()
    exact = net.encoder.bias.grad
    z = (draws.mean(0) - exact) / (draws.std(0) / len(draws) ** 0.5)
    assert z.abs().max() < 4.5, (draws.mean(0), exact, z)


def test_programs_compare_by_equality_so_a_bound_method_keeps_the_elbos_decisions():
    """`net.model` is a new bound method at every read: the ELBO keeps what it decided
    about the pair (its sums, its seen sites) across steps instead of starting afresh."""
    pyro.clear_param_store()
    net = mnist_vae.BernoulliVAE(latents=4)
    loss = pg.ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1)
    guide = pg.estimators(net.guide, {"z": pg.Score("loo")})
    loss.loss_and_grads(net.model, guide, images(6))
    decided = loss.auto_enumeration
    loss.loss_and_grads(net.model, guide, images(6))
    assert loss.auto_enumeration is decided and not loss.watch_jumps


def mixed(theta):
    """Three Bernoulli(σ(θ)) and three Normal(θ, 1) draws; f = Σ (b − 0.45)² + x²."""
    with pyro.plate("n", 3):
        b = pyro.sample("b", dist.Bernoulli(torch.sigmoid(theta)))
        x = pyro.sample("x", dist.Normal(theta, 1.0))
    return ((b - 0.45) ** 2 + x**2).sum(-1)


def mixed_gradient(theta: float) -> float:
    """∂θ E[f] = 3·(σ'(θ)·(0.55² − 0.45²) + 2θ)."""
    s = torch.sigmoid(torch.tensor(theta))
    return float(3 * (s * (1 - s) * (0.55**2 - 0.45**2) + 2 * theta))


@pytest.mark.parametrize("estimator", [pg.Score("loo"), pg.MeasureValued(), pg.MeasureValued(engine="one-run"),
                                       pg.DisARM()], ids=repr)
def test_recorded_expectation_equals_uncompiled_draw_for_draw(estimator):
    """pg.expectation(..., compile=) on `mixed` at 10 particles: each of 6 calls' value
    and gradient equal the uncompiled call's from the same random state, and after the
    first two every call ran flat."""
    theta = torch.tensor(0.3, requires_grad=True)
    results = {}
    for compile in (False, TRACE):
        fn = pg.estimators(mixed, {"b": estimator})
        pyro.set_rng_seed(0)
        found = []
        for _ in range(6):
            theta.grad = None
            value = pg.expectation(fn, theta, num_particles=10, compile=compile)
            value.backward()
            found.append((float(value), float(theta.grad)))
        results[str(compile)] = torch.tensor(found)
    torch.testing.assert_close(results[str(TRACE)], results["False"], rtol=1e-5, atol=1e-6)
    from pyro_grad.objectives.expectation import RECORDERS
    assert RECORDERS.of(fn, (10, True, None, pg.engine.recording.CompileOptions("trace"))).last == "flat"


def test_compiled_expectation_is_unbiased():
    """torch.compile'd pg.expectation of `mixed` (Score("loo") at b, 20 particles): the
    mean of 300 calls' gradients is ∂θ E[f] = 3(σ'(θ)(0.55² − 0.45²) + 2θ) within 4.5
    standard errors."""
    theta = torch.tensor(0.3, requires_grad=True)
    fn = pg.estimators(mixed, {"b": pg.Score("loo")})
    pyro.set_rng_seed(0)
    draws = []
    for _ in range(300):
        theta.grad = None
        pg.expectation(fn, theta, num_particles=20, compile=True).backward()
        draws.append(float(theta.grad))
    draws = torch.tensor(draws[2:])
    z = (draws.mean() - mixed_gradient(0.3)) / (draws.std() / len(draws) ** 0.5)
    assert abs(z) < 4.5, (draws.mean(), mixed_gradient(0.3))


def test_compare_with_recorded_steps_gives_the_uncompiled_fits(caplog):
    """pg.compare on the coin (Reparam and Score("loo") at 4 particles, 40 steps, a checkpoint
    at 20): with compile="auto" every fit was recorded (nothing logged as uncompiled), and
    its ELBO trace and checkpoint variance equal the uncompiled fit's (recorded steps draw
    what uncompiled steps draw)."""
    from pyro_grad.harness.models import coin

    configs = {"reparam": pg.Reparam(), "loo": pg.Score("loo")}
    with caplog.at_level(logging.INFO, logger="pyro_grad.compile"):
        results = {compile: pg.compare(coin.model, coin.guide, coin.DATA, configs=configs, num_steps=40,
                                       seeds=(0,), diagnose_every=20, compile=compile)
                   for compile in (False, "auto")}
    assert "uncompiled" not in caplog.text
    for key, fit in results[False].fits.items():
        recorded = results["auto"].fits[key]
        torch.testing.assert_close(torch.tensor(recorded["elbo"]), torch.tensor(fit["elbo"]), rtol=1e-5, atol=1e-5)
        assert recorded["checkpoints"][0]["variance"] == pytest.approx(fit["checkpoints"][0]["variance"], rel=1e-4)


def test_the_cli_takes_compile():
    from pyro_grad.cli.commands import COMPILE, build_parser

    parsed = build_parser().parse_args(["compare", "coin", "--compile", "auto"])
    assert COMPILE[parsed.compile] == "auto"
    assert COMPILE[build_parser().parse_args(["report"]).compile] is False
    with pytest.raises(SystemExit):
        build_parser().parse_args(["report", "--compile", "fast"])


def benchmark_run(bench, compile, calls: int):
    """``calls`` steps of a registered benchmark from seed 0: SVI steps' losses (with a
    guide), else pg.expectation's values and gradients; and how the last call ran."""
    pyro.clear_param_store()
    args = bench.arguments()
    pyro.set_rng_seed(0)
    if bench.guide is not None:
        loss = pg.ELBO(num_particles=2, vectorize_particles=True, compile=compile)
        svi = SVI(bench.program, bench.guide, pyro.optim.Adam({"lr": 0.01}), loss=loss)
        found = [svi.step(*args) for _ in range(calls)]
        return torch.tensor(found), loss.recorder
    differentiated = [a for a in args if torch.is_tensor(a) and a.requires_grad]
    found = []
    from pyro_grad.objectives.expectation import RECORDERS
    for _ in range(calls):
        value = pg.expectation(bench.program, *args, num_particles=4, compile=compile)
        grads = torch.autograd.grad(value, differentiated, allow_unused=True)
        found.append(torch.stack([value.detach()] + [torch.zeros(()) if g is None else g.sum() for g in grads]))
    options = pg.engine.recording.compile_options(compile)
    return torch.stack(found), RECORDERS.of(bench.program, (4, True, None, options)) if options else None


@pytest.mark.parametrize("name", sorted(__import__("pyro_grad.harness.models", fromlist=["registry"]).registry()))
def test_every_benchmark_program_runs_recorded_or_says_why(name):
    """Each registered benchmark (its default estimators, "auto"), 12 calls from one seed:
    recorded calls give the uncompiled calls' losses, values and gradients; a program that
    cannot be recorded says why. (OUTCOMES: how each ran, printed by -s.)"""
    from pyro_grad.harness.models import registry

    bench = registry()[name]
    uncompiled, _ = benchmark_run(bench, False, 12)
    recorded, recorder = benchmark_run(bench, TRACE, 12)
    torch.testing.assert_close(recorded, uncompiled, rtol=1e-4, atol=1e-4)
    print(name, "recorded" if recorder.recording is not None else recorder.dropped or recorder.refused[1])
    # A recording that lasted (an ELBO's watch runs one step in ten uncompiled), or why not.
    assert recorder.recording is not None or recorder.refused is not None or recorder.dropped is not None


# What the review of the recorder found: each a change between calls that a recording
# must see (and record again) or refuse. Each scenario runs 6 calls of
# gaussian_model/gaussian_guide (or an expectation) from seed 0 and returns every call's
# loss and gradients; recorded (trace backend) and uncompiled runs must agree call for call.

def elbo_calls(compile, before_call, guide=gaussian_guide, calls=6):
    pyro.clear_param_store()
    loss = pg.ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1, compile=compile)
    x = torch.linspace(-2, 2, 5)
    pyro.set_rng_seed(0)
    found = []
    for call in range(calls):
        with before_call(call):
            value = loss.loss_and_grads(gaussian_model, guide, x)
        params = [p for _, p in sorted(pyro.get_param_store().named_parameters())]
        found.append([value] + [float("nan") if p.grad is None else float(p.grad.sum()) for p in params])
        for p in params:
            p.grad = None
    return torch.tensor(found)


def scaled(call):
    """poutine.scale around the step, changing at call 3 (KL annealing's way)."""
    return pyro.poutine.scale(scale=1.0 if call < 3 else 5.0)


def frozen_until_3(call):
    """`w` frozen (requires_grad False) for the first calls, trained after."""
    pyro.param("w", torch.tensor(0.5)).unconstrained().requires_grad_(call >= 3)
    return contextlib.nullcontext()


def recreated_with_another_constraint(call):
    """The param store cleared at call 3 and `s` created again, in (0, 1) instead of (0, ∞)."""
    if call == 3:
        pyro.clear_param_store()
        pyro.param("s", torch.tensor(0.5), constraint=dist.constraints.unit_interval)
    return contextlib.nullcontext()


@pytest.mark.parametrize("before_call", [scaled, frozen_until_3, recreated_with_another_constraint],
                         ids=lambda f: f.__name__)
def test_changes_between_steps_are_seen(before_call):
    torch.testing.assert_close(elbo_calls(TRACE, before_call), elbo_calls(False, before_call), equal_nan=True,
                               rtol=1e-5, atol=1e-6)


def test_a_dropout_guide_switched_to_eval_records_again():
    """A pyro.module'd network with dropout, switched to eval mode at call 3."""
    net = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2))

    def guide(x):
        pyro.module("net", net)
        out = net(x.unsqueeze(-1))
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(out[..., 0], out[..., 1].exp()))

    def mode(call):
        net.train(call < 3)
        return contextlib.nullcontext()

    torch.testing.assert_close(elbo_calls(TRACE, mode, guide), elbo_calls(False, mode, guide), rtol=1e-5, atol=1e-5)


def expectation_calls(compile, fn, args_of, calls=6):
    pyro.set_rng_seed(0)
    found = []
    for call in range(calls):
        args = args_of(call)
        leaves = list({id(a): a for a in args if torch.is_tensor(a) and a.requires_grad}.values())
        value = pg.expectation(fn, *args, num_particles=4, compile=compile)
        grads = torch.autograd.grad(value, leaves, allow_unused=True)
        found.append([float(value)] + [float("nan") if g is None else float(g) for g in grads])
    return torch.tensor(found)


def test_the_same_tensor_twice_and_an_unreached_argument_keep_their_gradients():
    """f(a, b, c) = E[z_a² ...]: θ passed as both a and b gets one gradient (4θ, not 8θ);
    c, which f does not use, gets none (None, not zeros, which weight decay would see)."""
    def f(a, b, c):
        z = pyro.sample("z", dist.Normal(a, 1.0).expand([4]).to_event(1))
        return (z * b).sum(-1)

    theta, unused = torch.tensor(1.5, requires_grad=True), torch.tensor(2.0, requires_grad=True)
    for compile in (False, TRACE):
        fn = pg.estimators(f, {"z": pg.Reparam()})
        assert torch.isnan(expectation_calls(compile, fn, lambda _: (theta, theta, unused))[:, 2]).all()
    fns = [pg.estimators(f, {"z": pg.Reparam()}) for _ in range(2)]
    torch.testing.assert_close(expectation_calls(TRACE, fns[0], lambda _: (theta, theta, unused)),
                               expectation_calls(False, fns[1], lambda _: (theta, theta, unused)), equal_nan=True)


def test_a_config_changed_in_place_and_an_argument_holding_tensors():
    """The config dict of pg.estimators switched from Score to Reparam at call 3 records
    again; an argument object holding a tensor is refused (a recording would bake it)."""
    config = {"z": pg.Score()}

    def f(theta):
        return pyro.sample("z", dist.Normal(theta, 1.0)) ** 2

    theta = torch.tensor(0.7, requires_grad=True)
    results = []
    for compile in (False, TRACE):
        config["z"] = pg.Score()
        fn = pg.estimators(f, config)

        def args_of(call):
            config["z"] = pg.Score() if call < 3 else pg.Reparam()
            return (theta,)
        results.append(expectation_calls(compile, fn, args_of))
    torch.testing.assert_close(results[1], results[0])

    class Holder:
        def __init__(self, t):
            self.t = t

    def g(holder):
        return pyro.sample("z", dist.Normal(holder.t, 1.0)) ** 2

    wrapped = pg.estimators(g, {"z": pg.Reparam()})
    with pytest.raises(EstimatorError, match="an argument of type Holder may hold tensors"):
        for _ in range(3):
            pg.expectation(wrapped, Holder(theta), num_particles=4, compile={"backend": "trace", "fullgraph": True})


def test_a_second_backward_raises_as_uncompiled():
    fn = pg.estimators(mixed, {"b": pg.Score("loo")})
    theta = torch.tensor(0.3, requires_grad=True)
    for _ in range(3):
        value = pg.expectation(fn, theta, num_particles=10, compile=TRACE)
    value.backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        value.backward()
