"""pg.ELBO sums enumerated sites out as TraceEnum_ELBO does: a compatibility suite.

Programs written for TraceEnum_ELBO, small versions of Pyro's tutorials (written here):

* a Gaussian mixture whose model enumerates each datum's assignment (the GMM tutorial);
* an HMM whose model enumerates the hidden chain under ``pyro.markov`` (examples/hmm.py);
* a semi-supervised VAE whose guide enumerates the label (examples/vae/ss_vae_M2.py);
* a guide with ``config_enumerate`` and a sampled site beside the enumerated one.

Where every latent is enumerated or a point mass, both ELBOs are deterministic: loss and
gradient must agree to float tolerance (1e-5 relative). Where a guide site is sampled, the
same seed gives the same draws, so the gradients agree draw for draw; where pg's estimator
differs (a baseline), its mean is checked against the exact gradient (every site
enumerated) within Z = 4 standard errors of the mean.
"""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, TraceEnum_ELBO, config_enumerate
from pyro.optim import Adam
from torch.distributions import constraints

import pyro_grad as pg
from conftest import Z, assert_mean

# ---------------------------------------------------------------------------------------
# A Gaussian mixture, the assignment enumerated in the model (Pyro's GMM tutorial).
GMM_DATA = torch.tensor([0.0, 1.0, 10.0, 11.0, 12.0])


def mixture(assignment_infer=None):
    """Pyro's GMM tutorial model, its assignment site marked by ``assignment_infer``."""
    def gmm(data):
        weights = pyro.sample("weights", dist.Dirichlet(0.5 * torch.ones(2)))
        scale = pyro.sample("scale", dist.LogNormal(0.0, 2.0))
        with pyro.plate("components", 2):
            locs = pyro.sample("locs", dist.Normal(0.0, 10.0))
        with pyro.plate("data", len(data)):
            assignment = pyro.sample("assignment", dist.Categorical(weights), infer=assignment_infer)
            pyro.sample("obs", dist.Normal(locs[assignment], scale), obs=data)
    return gmm


gmm_unmarked = mixture()
#: ``infer={"enumerate": "parallel"}`` written at the site.
gmm_marked_at_site = mixture({"enumerate": "parallel"})
#: ``infer={"estimator": pg.Enumerate()}`` written at the site.
gmm_estimator_at_site = mixture({"estimator": pg.Enumerate()})


def gmm_guide(data):
    """A point mass at each global (AutoDelta's guide, written out)."""
    weights = pyro.param("weights_map", torch.tensor([0.4, 0.6]), constraint=constraints.simplex)
    scale = pyro.param("scale_map", torch.tensor(2.0), constraint=constraints.positive)
    locs = pyro.param("locs_map", torch.tensor([1.0, 9.0]))
    pyro.sample("weights", dist.Delta(weights, event_dim=1))
    pyro.sample("scale", dist.Delta(scale))
    with pyro.plate("components", 2):
        pyro.sample("locs", dist.Delta(locs))


def loss_and_grads(elbo, model, guide, *args):
    """−ELBO and the gradient in every parameter, from a fresh param store."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    loss = elbo.differentiable_loss(model, guide, *args)
    names = sorted(pyro.get_param_store().keys())
    params = [pyro.param(n).unconstrained() for n in names]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), {n: torch.zeros_like(p) if g is None else g for n, p, g in zip(names, params, grads)}


def assert_same(first, second, rtol=1e-5, atol=1e-5):
    (loss1, grads1), (loss2, grads2) = first, second
    assert torch.allclose(loss1, loss2, rtol=rtol, atol=atol), (loss1, loss2)
    assert grads1.keys() == grads2.keys()
    for name in grads1:
        assert torch.allclose(grads1[name], grads2[name], rtol=rtol, atol=atol), (name, grads1[name], grads2[name])


GMM_FORMS = [
    ("config_enumerate on the model", config_enumerate(gmm_unmarked)),
    ("infer dict at the site", gmm_marked_at_site),
    ("pg.Enumerate() on the model's site", pg.estimators(gmm_unmarked, {"assignment": pg.Enumerate()})),
    ("infer estimator at the model's site", gmm_estimator_at_site),
]


@pytest.mark.parametrize("form, model", GMM_FORMS, ids=[f for f, _ in GMM_FORMS])
def test_a_mixture_enumerated_in_the_model_has_traceenums_loss_and_gradient(form, model):
    # Every latent is a point mass or enumerated: both ELBOs are deterministic.
    reference = loss_and_grads(TraceEnum_ELBO(max_plate_nesting=1), config_enumerate(gmm_unmarked), gmm_guide, GMM_DATA)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Found vars in model but not guide", no TraceEnum hint
        assert_same(loss_and_grads(pg.ELBO(), model, gmm_guide, GMM_DATA), reference)


def test_a_mixture_trains_along_traceenums_path_under_svi():
    def train(loss):
        pyro.clear_param_store()
        svi = SVI(config_enumerate(gmm_unmarked), gmm_guide, Adam({"lr": 0.05}), loss=loss)
        losses = [svi.step(GMM_DATA) for _ in range(20)]
        return losses, pyro.param("locs_map").detach().clone()

    pyro_losses, pyro_locs = train(TraceEnum_ELBO(max_plate_nesting=1))
    pg_losses, pg_locs = train(pg.ELBO())
    assert pg_losses == pytest.approx(pyro_losses, rel=1e-5)
    assert torch.allclose(pg_locs, pyro_locs, rtol=1e-5)


def test_loss_alone_equals_traceenums():
    model = config_enumerate(gmm_unmarked)
    assert pg.ELBO().loss(model, gmm_guide, GMM_DATA) == pytest.approx(
        TraceEnum_ELBO(max_plate_nesting=1).loss(model, gmm_guide, GMM_DATA), rel=1e-5
    )


# ---------------------------------------------------------------------------------------
# An HMM, the hidden chain enumerated in the model under pyro.markov (examples/hmm.py).
HMM_DATA = torch.tensor([[0.0, 0.2, 4.9, 5.1, 0.1], [5.0, 4.8, 0.3, 0.0, 5.2], [0.1, 5.0, 0.0, 5.0, 0.2]])


def hmm(sequences):
    transition = pyro.param("transition", torch.tensor([[0.8, 0.2], [0.3, 0.7]]), constraint=constraints.simplex)
    locs = pyro.param("locs", torch.tensor([0.5, 4.0]))
    with pyro.plate("sequences", sequences.shape[0], dim=-1):
        x = 0
        for t in pyro.markov(range(sequences.shape[1])):
            x = pyro.sample(f"x_{t}", dist.Categorical(transition[x]), infer={"enumerate": "parallel"})
            pyro.sample(f"y_{t}", dist.Normal(locs[x], 1.0), obs=sequences[:, t])


def no_guide(*args):
    pass


@pytest.mark.parametrize("num_particles, vectorize", [(1, False), (2, False), (3, True)])
def test_an_hmm_enumerated_under_markov_has_traceenums_loss_and_gradient(num_particles, vectorize):
    # Nothing is sampled: the forward algorithm, exactly, whatever the particles.
    settings = dict(num_particles=num_particles, vectorize_particles=vectorize)
    reference = loss_and_grads(TraceEnum_ELBO(max_plate_nesting=1, **settings), hmm, no_guide, HMM_DATA)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same(loss_and_grads(pg.ELBO(**settings), hmm, no_guide, HMM_DATA), reference)


MASKED_SEQUENCES = (torch.rand(6, 5, 3, generator=torch.Generator().manual_seed(0)) < 0.4).float()
LENGTHS = torch.tensor([5, 3, 4, 2, 5, 1])


def masked_hmm(sequences, lengths, batch_size=None):
    """examples/hmm.py's model_1 exactly in shape: sequences of different lengths (a mask
    per step), a subsampled plate of sequences, tones in a plate inside it."""
    probs_x = pyro.param("probs_x", torch.tensor([[0.8, 0.2], [0.3, 0.7]]), constraint=constraints.simplex)
    probs_y = pyro.param("probs_y", torch.tensor([[0.2, 0.5, 0.6], [0.7, 0.1, 0.4]]),
                         constraint=constraints.unit_interval)
    tones = pyro.plate("tones", sequences.shape[-1], dim=-1)
    with pyro.plate("sequences", sequences.shape[0], batch_size, dim=-2) as batch:
        x = 0
        for t in pyro.markov(range(sequences.shape[1])):
            with pyro.poutine.mask(mask=(t < lengths[batch]).unsqueeze(-1)):
                x = pyro.sample(f"x_{t}", dist.Categorical(probs_x[x]), infer={"enumerate": "parallel"})
                with tones:
                    pyro.sample(f"y_{t}", dist.Bernoulli(probs_y[x.squeeze(-1)]), obs=sequences[batch, t])


@pytest.mark.parametrize("batch_size", [None, 3], ids=["every sequence", "a subsample of 3"])
def test_a_masked_subsampled_hmm_has_traceenums_loss_and_gradient(batch_size):
    # The mask enters inside the log-sum, the subsample's scale outside it; the same
    # seed draws the same subsample in both.
    reference = loss_and_grads(TraceEnum_ELBO(max_plate_nesting=2), masked_hmm, no_guide, MASKED_SEQUENCES,
                               LENGTHS, batch_size)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same(loss_and_grads(pg.ELBO(), masked_hmm, no_guide, MASKED_SEQUENCES, LENGTHS, batch_size),
                    reference)


def test_grouped_estimates_of_an_hmm_with_no_guide_site_are_each_its_loss():
    # Everything summed out in the model, the guide empty: every group's estimate is
    # log p(y), vectorized over 2 × 3 particles or looped.
    exact = -TraceEnum_ELBO(max_plate_nesting=1).loss(hmm, no_guide, HMM_DATA)
    for vectorize in (False, True):
        values = pg.ELBO(num_particles=2, vectorize_particles=vectorize).estimates(hmm, no_guide, (HMM_DATA,),
                                                                                  num_samples=3).values
        assert torch.allclose(values.detach(), torch.full((3,), exact), rtol=1e-5)


def test_the_hmms_loss_is_the_forward_algorithms():
    # log p(y) by the forward recursion, written out: α_t = (α_{t-1} T) ⊙ N(y_t | μ, 1).
    transition = torch.tensor([[0.8, 0.2], [0.3, 0.7]])
    locs = torch.tensor([0.5, 4.0])
    total = 0.0
    for sequence in HMM_DATA:
        alpha = transition[0] * dist.Normal(locs, 1.0).log_prob(sequence[0]).exp()
        for y in sequence[1:]:
            alpha = (alpha @ transition) * dist.Normal(locs, 1.0).log_prob(y).exp()
        total += float(alpha.sum().log())
    assert pg.ELBO().loss(hmm, no_guide, HMM_DATA) == pytest.approx(-total, rel=1e-5)


# ---------------------------------------------------------------------------------------
# A semi-supervised VAE, the label enumerated in the guide (examples/vae/ss_vae_M2.py).
LABELS, LATENT, PIXELS = 3, 2, 6
SS_DATA = torch.rand(8, PIXELS, generator=torch.Generator().manual_seed(0)).round()


def networks():
    """Made once, as ss_vae_M2.py makes them (a network made anew at every call would
    be a fresh module the param store only copies values into)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return {"decoder": torch.nn.Linear(LATENT + LABELS, PIXELS), "classifier": torch.nn.Linear(PIXELS, LABELS),
                "encoder": torch.nn.Linear(PIXELS + LABELS, 2 * LATENT)}


NETWORKS = networks()


def ss_model(xs, ys=None):
    decoder = pyro.module("decoder", NETWORKS["decoder"])
    with pyro.plate("data", xs.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(LATENT), 1.0).to_event(1))
        y = pyro.sample("y", dist.OneHotCategorical(torch.ones(LABELS) / LABELS), obs=ys)
        shape = torch.broadcast_shapes(z.shape[:-1], y.shape[:-1])  # enumerated labels on the left
        logits = decoder(torch.cat([z.expand(shape + (LATENT,)), y.expand(shape + (LABELS,))], -1))
        pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=xs)


def semi_supervised_guide(label_infer=None):
    """The ss-VAE's guide, its label site marked by ``label_infer``."""
    def ss_guide(xs, ys=None):
        classifier = pyro.module("classifier", NETWORKS["classifier"])
        encoder = pyro.module("encoder", NETWORKS["encoder"])
        with pyro.plate("data", xs.shape[0]):
            if ys is None:
                ys = pyro.sample("y", dist.OneHotCategorical(logits=classifier(xs)), infer=label_infer)
            shape = torch.broadcast_shapes(xs.shape[:-1], ys.shape[:-1])
            xs_y = torch.cat([xs.expand(shape + (PIXELS,)), ys.expand(shape + (LABELS,))], -1)
            loc, log_scale = encoder(xs_y).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))
    return ss_guide


ss_guide = semi_supervised_guide()
#: ``infer={"estimator": pg.Enumerate()}`` written at the label.
ss_guide_estimator_at_site = semi_supervised_guide({"estimator": pg.Enumerate()})


def ss_step_gradients(elbo, guide, seed):
    pyro.set_rng_seed(seed)
    loss = elbo.differentiable_loss(ss_model, guide, SS_DATA)
    params = [p for _, p in sorted(pyro.get_param_store().named_parameters())]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)])


SS_FORMS = [
    ("config_enumerate on the guide", config_enumerate(ss_guide)),
    ("pg.Enumerate() on the guide's site", pg.estimators(ss_guide, {"y": pg.Enumerate()})),
    ("infer estimator at the guide's site", ss_guide_estimator_at_site),
]


@pytest.mark.parametrize("form, guide", SS_FORMS, ids=[f for f, _ in SS_FORMS])
def test_a_semi_supervised_vae_gets_traceenums_gradient_draw_for_draw(form, guide):
    # z is drawn pathwise in both, from the same seed: every downstream term sees every
    # label, so the gradients agree draw for draw and so do their variances (ratio 1).
    reference = TraceEnum_ELBO(max_plate_nesting=1)
    ours = pg.ELBO()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "use TraceEnum_ELBO" hint
        for seed in range(3):
            expected = ss_step_gradients(reference, config_enumerate(ss_guide), seed)
            assert expected.abs().min() > 0  # every network's every weight gets a gradient
            assert torch.allclose(ss_step_gradients(ours, guide, seed), expected, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------
# A guide with config_enumerate beside a sampled site: the sampled one keeps its estimator.
XS = torch.tensor([0.3, -1.0, 2.0])


def shift_model(xs, enumerate_b=False, enumerate_y=True):
    b = pyro.sample("b", dist.Bernoulli(0.5))
    with pyro.plate("d", 3):
        y = pyro.sample("y", dist.Categorical(torch.ones(3) / 3))
        pyro.sample("x", dist.Normal(y.float() + b, 1.0), obs=xs)


def shift_guide(xs, enumerate_b=False, enumerate_y=True):
    pb = pyro.param("pb", torch.tensor(0.3), constraint=constraints.unit_interval)
    logits = pyro.param("logits", torch.tensor([[0.0, 1.0, -1.0], [0.5, 0.0, 0.0], [0.0, 0.0, 2.0]]))
    pyro.sample("b", dist.Bernoulli(pb), infer={"enumerate": "parallel"} if enumerate_b else {})
    with pyro.plate("d", 3):
        pyro.sample("y", dist.Categorical(logits=logits), infer={"enumerate": "parallel"} if enumerate_y else {})


def gradient_draws(elbo, n, **kwargs):
    rows = []
    for _ in range(n):
        _, grads = loss_and_grads_no_reseed(elbo, shift_model, shift_guide, XS, **kwargs)
        rows.append(torch.cat([grads["logits"].reshape(-1), grads["pb"].reshape(-1)]))
    return torch.stack(rows)


def loss_and_grads_no_reseed(elbo, model, guide, *args, **kwargs):
    pyro.clear_param_store()
    loss = elbo.differentiable_loss(model, guide, *args, **kwargs)
    names = sorted(pyro.get_param_store().keys())
    grads = torch.autograd.grad(loss, [pyro.param(n).unconstrained() for n in names])
    return loss.detach(), dict(zip(names, grads))


@pytest.mark.parametrize("num_particles, vectorize", [(1, False), (4, True)])
def test_a_sampled_site_beside_an_enumerated_one_is_unbiased_and_quieter_than_traceenum(num_particles, vectorize):
    # Exact: b enumerated too. pg's default at b is the score function with a baseline;
    # TraceEnum's is its bare Dice term. 400 draws each.
    exact = gradient_draws(TraceEnum_ELBO(max_plate_nesting=1), 1, enumerate_b=True)[0]
    ours = gradient_draws(pg.ELBO(num_particles=num_particles, vectorize_particles=vectorize), 400)
    for j in range(exact.numel()):
        assert_mean(ours[:, j], float(exact[j]))
    theirs = gradient_draws(TraceEnum_ELBO(num_particles=num_particles, vectorize_particles=vectorize,
                                           max_plate_nesting=1), 400)
    # At b the baseline cuts the variance many times over (measured 80x at K = 1); a
    # sample variance of 400 draws is within about 15% of the truth.
    assert ours[:, -1].var() < theirs[:, -1].var() / 4


def test_explicit_estimators_win_over_config_enumerate_and_the_table_says_so():
    guide = pg.estimators(shift_guide, {"y": pg.Score("loo")})
    estimates = pg.ELBO(num_particles=4, vectorize_particles=True).estimates(shift_model, guide, (XS,), num_samples=2)
    assert repr(estimates.estimators["y"]) == "Score(baseline='loo')"
    assert "y" in estimates.score_terms  # sampled and scored, not summed out


def test_grouped_estimates_of_an_enumerated_program_are_each_the_exact_elbo():
    # b and y enumerated: every group's estimate is the exact ELBO, vectorized or looped.
    exact = -TraceEnum_ELBO(max_plate_nesting=1).loss(shift_model, shift_guide, XS, enumerate_b=True)
    for vectorize in (False, True):
        elbo = pg.ELBO(num_particles=2, vectorize_particles=vectorize)
        values = elbo.estimates(shift_model, shift_guide, (XS,), {"enumerate_b": True}, num_samples=3).values
        assert values.shape == (3,)
        assert torch.allclose(values.detach(), torch.full((3,), exact), rtol=1e-5)


def test_a_score_site_downstream_of_an_enumerated_one_is_unbiased():
    # y (global) enumerated in the guide; b_i ~ Bernoulli(p[y]) sampled per datum, its
    # probability per value of y. Exact: b enumerated too.
    def model(xs, enumerate_b=False):
        y = pyro.sample("y", dist.Categorical(torch.ones(3) / 3))
        with pyro.plate("d", 3):
            b = pyro.sample("b", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(y.float() + b, 1.0), obs=xs)

    def guide(xs, enumerate_b=False):
        logits = pyro.param("logits", torch.tensor([0.0, 1.0, -1.0]))
        pb = pyro.param("pb", torch.full((3, 3), 0.3), constraint=constraints.unit_interval)
        y = pyro.sample("y", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})
        probs = pb[y.reshape(-1)].reshape(y.shape[:-1] + (3,)) if y.dim() else pb[y]
        with pyro.plate("d", 3):
            pyro.sample("b", dist.Bernoulli(probs), infer={"enumerate": "parallel"} if enumerate_b else {})

    def draws(elbo, n, **kwargs):
        rows = []
        for _ in range(n):
            _, grads = loss_and_grads_no_reseed(elbo, model, guide, XS, **kwargs)
            rows.append(torch.cat([grads["logits"], grads["pb"].reshape(-1)]))
        return torch.stack(rows)

    exact = draws(TraceEnum_ELBO(max_plate_nesting=1), 1, enumerate_b=True)[0]
    ours = draws(pg.ELBO(num_particles=3), 400)
    for j in range(exact.numel()):
        assert_mean(ours[:, j], float(exact[j]))


def test_a_pathwise_site_that_jumps_beside_enumeration_switches_to_the_score_function():
    # y ~ q uniform summed out; z_i ~ N(m_i, 1) reaches the model through 1[z_i > 0]. With
    # g_i(b) = Σ_y q(y) log N(x_i; y + b, 1): ∂ELBO/∂m_i = φ(m_i)(g_i(1) − g_i(0)) − m_i
    # (the jump's mass moving, plus the Gaussian terms). "auto" must not keep Reparam
    # (it misses the jump) nor take MeasureValued (it re-runs, which enumeration refuses).
    def model(xs):
        with pyro.plate("d", 3):
            y = pyro.sample("y", dist.Categorical(torch.ones(3) / 3))
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(y.float() + (z > 0).float(), 1.0), obs=xs)

    def guide(xs):
        m = pyro.param("m", torch.tensor([0.0, 0.5, -0.5]))
        with pyro.plate("d", 3):
            pyro.sample("y", dist.Categorical(logits=torch.zeros(3)), infer={"enumerate": "parallel"})
            pyro.sample("z", dist.Normal(m, 1.0))

    m = torch.tensor([0.0, 0.5, -0.5])
    g = [dist.Normal(torch.arange(3.0)[:, None] + b, 1.0).log_prob(XS).mean(0) for b in (0.0, 1.0)]
    exact = dist.Normal(0.0, 1.0).log_prob(m).exp() * (g[1] - g[0]) - m
    elbo = pg.ELBO(num_particles=4, vectorize_particles=True)
    rows = []
    for _ in range(300):
        pyro.clear_param_store()
        loss = elbo.differentiable_loss(model, guide, XS)
        rows.append(-torch.autograd.grad(loss, pyro.param("m").unconstrained())[0])
    draws = torch.stack(rows)
    for j in range(3):
        assert_mean(draws[:, j], float(exact[j]))
    estimates = elbo.estimates(model, guide, (XS,), num_samples=2)
    assert repr(estimates.estimators["z"]) == "Score(baseline='loo')", estimates.reasons


# ---------------------------------------------------------------------------------------
# What cannot be combined or would not take effect is refused at the site.
def test_a_difference_estimator_beside_enumeration_is_refused_by_site():
    guide = pg.estimators(shift_guide, {"b": pg.DisARM()})
    with pytest.raises(pg.EstimatorError, match=r"DisARM\(\) at site 'b' \(Bernoulli\): this program sums sites out"):
        pg.ELBO().differentiable_loss(shift_model, guide, XS)


@pytest.mark.parametrize("program", ["model", "guide"])
def test_enumerate_chosen_around_the_objectives_call_is_refused_not_sampled(program):
    model, guide, args, kwargs, site = (
        (gmm_unmarked, gmm_guide, (GMM_DATA,), {}, "assignment") if program == "model"
        else (shift_model, shift_guide, (XS,), {"enumerate_y": False}, "y")
    )
    with pg.estimators({site: pg.Enumerate()}):
        with pytest.raises(pg.EstimatorError, match=f"pg.Enumerate\\(\\) at site '{site}'.*would be sampled"):
            pg.ELBO().differentiable_loss(model, guide, *args, **kwargs)


def test_a_chained_guide_enumeration_obeys_traceenums_plate_rule():
    # A model-enumerated site outside the plate of a guide-enumerated one: TraceEnum's rule.
    def model(xs):
        c = pyro.sample("c", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
        with pyro.plate("d", 3):
            y = pyro.sample("y", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(y + c, 1.0), obs=xs)

    def guide(xs):
        with pyro.plate("d", 3):
            pyro.sample("y", dist.Bernoulli(0.4), infer={"enumerate": "parallel"})

    with pytest.raises(pg.EstimatorError, match="model enumeration must be no more global than guide enumeration"):
        pg.ELBO().differentiable_loss(model, guide, XS)


def test_tolerance_source_is_the_suites():
    assert Z == 4.0  # every mean check above is at four standard errors
