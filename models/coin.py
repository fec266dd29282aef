"""The coin of Pyro's SVI tutorial: Beta(10, 10) prior, Bernoulli tosses, a Beta guide,
with the ELBO and its gradient in closed form (digamma)."""

from typing import Dict

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch.distributions import transform_to

from pyro_grad.harness.models.benchmark import Benchmark

DATA = torch.tensor([1.0] * 6 + [0.0] * 4)
ALPHA0, BETA0 = 10.0, 10.0
ALPHA_Q, BETA_Q = 12.0, 9.0


def model(data: torch.Tensor) -> None:
    f = pyro.sample("f", dist.Beta(ALPHA0, BETA0))
    with pyro.plate("tosses", len(data)):
        pyro.sample("obs", dist.Bernoulli(f), obs=data)


def guide(data: torch.Tensor) -> None:
    alpha = pyro.param("alpha_q", torch.tensor(ALPHA_Q), constraint=constraints.positive)
    beta = pyro.param("beta_q", torch.tensor(BETA_Q), constraint=constraints.positive)
    pyro.sample("f", dist.Beta(alpha, beta))


def exact_elbo(alpha: torch.Tensor, beta: torch.Tensor, data: torch.Tensor = DATA) -> torch.Tensor:
    """With E_q[log f] = ψ(α) − ψ(α+β) and E_q[log(1−f)] = ψ(β) − ψ(α+β):
    ELBO = (α0+H−α) E[log f] + (β0+T−β) E[log(1−f)] − log B(α0, β0) + log B(α, β)."""
    heads, tails = data.sum(), len(data) - data.sum()
    e_log_f = torch.digamma(alpha) - torch.digamma(alpha + beta)
    e_log_1mf = torch.digamma(beta) - torch.digamma(alpha + beta)

    def log_beta(x, y):
        return torch.lgamma(x) + torch.lgamma(y) - torch.lgamma(x + y)

    prior = log_beta(torch.tensor(ALPHA0), torch.tensor(BETA0))
    return (ALPHA0 + heads - alpha) * e_log_f + (BETA0 + tails - beta) * e_log_1mf - prior + log_beta(alpha, beta)


def exact_elbo_gradient(data: torch.Tensor = DATA) -> Dict[str, torch.Tensor]:
    """∇ of the closed-form ELBO w.r.t. the *unconstrained* params (what SVI updates),
    at the params in Pyro's param store (their initial values if none)."""
    store = pyro.get_param_store()
    init = {"alpha_q": ALPHA_Q, "beta_q": BETA_Q}
    positive = transform_to(constraints.positive)
    u = {
        n: (store[n].unconstrained().detach().clone() if n in store else positive.inv(torch.tensor(v))).requires_grad_()
        for n, v in init.items()
    }
    value = exact_elbo(positive(u["alpha_q"]), positive(u["beta_q"]), data)
    grads = torch.autograd.grad(value, list(u.values()))
    return dict(zip(u, grads))


def log_evidence(data: torch.Tensor = DATA) -> float:
    """log p(x) = log B(α0 + H, β0 + T) − log B(α0, β0): the ELBO's maximum, reached when
    the Beta guide is the posterior Beta(α0 + H, β0 + T)."""
    heads, tails = float(data.sum()), float(len(data) - data.sum())

    def log_beta(x: float, y: float) -> float:
        return float(torch.lgamma(torch.tensor(x)) + torch.lgamma(torch.tensor(y)) - torch.lgamma(torch.tensor(x + y)))

    return log_beta(ALPHA0 + heads, BETA0 + tails) - log_beta(ALPHA0, BETA0)


BENCHMARK = Benchmark(
    name="coin",
    description=(
        "The coin of Pyro's SVI tutorial: f ~ Beta(10, 10), 6 heads in 10 tosses, guide "
        "Beta(α, β). The ELBO and its gradient are closed-form (digamma); the posterior is "
        "Beta(16, 14). The guide's Beta site takes Reparam (implicit) or Score."
    ),
    program=model,
    guide=guide,
    default_args=(DATA,),
    arg_names=("data",),
    reference_gradient=exact_elbo_gradient,
    log_evidence=log_evidence,
)
