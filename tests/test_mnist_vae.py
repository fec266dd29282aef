"""mnist_vae: real MNIST digits offline, dynamic binarization, and an 8-latent variant
whose exact ELBO (all 256 states per image) checks both the ELBO and its gradient."""

import math

import pyro
import pytest
import torch
from conftest import Z

import pyro_grad as pg
from pyro_grad.harness.models import mnist_vae

IMAGES = mnist_vae.binarize(mnist_vae.grey_images("train")[:10], torch.Generator().manual_seed(1))


def small_net():
    return mnist_vae.BernoulliVAE(latents=8, name="mnist_vae_8", seed=3)


def test_the_digits_are_real_mnist_split_once_and_binarized_afresh():
    train, test = mnist_vae.grey_images("train"), mnist_vae.grey_images("test")
    assert train.shape == (4500, 784) and test.shape == (500, 784)
    assert 0.0 <= float(train.min()) and float(train.max()) <= 1.0
    # MNIST's mean grey level is about 0.13; the split is fixed.
    assert 0.1 < float(train.mean()) < 0.16
    assert torch.equal(train, mnist_vae.grey_images("train"))
    first, second = mnist_vae.binarize(train[:50]), mnist_vae.binarize(train[:50])
    assert set(first.unique().tolist()) <= {0.0, 1.0} and not torch.equal(first, second)
    with pytest.raises(ValueError, match="split"):
        mnist_vae.grey_images("validation")


def test_the_decoder_starts_at_the_pixels_logit_means():
    net = small_net()
    expected = torch.logit(mnist_vae.grey_images("train").mean(0).clamp(1e-3, 1 - 1e-3))
    assert torch.allclose(net.decoder.bias, expected)
    nonlinear = mnist_vae.BernoulliVAE(latents=8, nonlinear=True, name="nl")
    assert torch.allclose(nonlinear.decoder[-1].bias, expected)


def test_the_exact_elbo_of_8_latents_matches_a_monte_carlo_estimate():
    # pg.ELBO's value, 20,000 particles, within Z standard errors of Σ_z q(z|x)(log p − log q).
    net = small_net()
    with torch.no_grad():
        exact = float(net.exact_elbo(IMAGES))
        values = pg.ELBO(vectorize_particles=True).estimates(net.model, net.guide, (IMAGES,), num_samples=20_000).values
    assert abs(float(values.mean()) - exact) <= Z * float(values.std()) / math.sqrt(20_000)


@pytest.mark.parametrize("estimator, num_particles", [(pg.DisARM(), 1), (pg.ARM(), 1), (pg.Score("loo"), 2)], ids=repr)
def test_per_datum_estimators_are_exact_on_the_8_latent_vae(estimator, num_particles):
    # Every network parameter's gradient against the enumerated one: no z-score beyond 6
    # (Bonferroni-safe for ~13,000 elements) and at most 2% beyond 3.
    net = small_net()
    pyro.clear_param_store()
    report = pg.diagnose(net.model, IMAGES, guide=net.guide, estimators={"z": estimator}, num_particles=num_particles,
                         num_samples=300, reference=lambda x: mnist_vae.exact_elbo_gradient(net, x), sites=False)
    z = report.params["z"].abs()
    assert z.notna().all() and len(z) == sum(p.numel() for p in net.parameters())
    assert float(z.max()) < 6.0 and float((z > 3).mean()) <= 0.02


def test_the_test_bound_is_at_least_the_elbo():
    # The 100-sample importance-weighted bound is ≥ the ELBO (per image, in expectation).
    net = small_net()
    with torch.no_grad():
        elbo = float(net.exact_elbo(IMAGES)) / len(IMAGES)
    assert net.test_bound(IMAGES, num_samples=100) >= elbo
