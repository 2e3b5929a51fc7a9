"""LL: maximum likelihood, as a plain loss and as a Pyro model for SVI; the ELBO for latent-variable baselines."""

from __future__ import annotations

import pyro
from torch import Tensor

from ..distribution import SPNDistribution
from .base import Density, EvidenceBound, Objective


class LikelihoodObjective(Objective):
    """``loss = −mean log p(x)`` over anything with a differentiable ``log_prob`` (exact for circuits; NaN entries
    of ``x`` are marginalized)."""

    name = "ll"

    def loss(self, d: Density, x: Tensor) -> Tensor:
        """``x [N, *event_shape]`` → the mean negative log-likelihood, a scalar."""
        return -d.log_prob(x).mean()


class ELBOObjective(Objective):
    """``loss = −mean ELBO(x)`` over anything with an ``elbo(x)`` (``[N]``), such as the
    :class:`~pyro_spn.nets.VAE` baseline: maximum likelihood through its evidence lower bound."""

    name = "ll"

    def loss(self, d: EvidenceBound, x: Tensor) -> Tensor:
        """``x [N, *event_shape]`` → the mean negative ELBO, a scalar."""
        return -d.elbo(x).mean()


def likelihood_model(d: SPNDistribution, x: Tensor, name: str = "spn") -> None:
    """The same objective as a Pyro model: ``pyro.sample("x", d, obs=x)`` under a plate over ``x``'s rows.

    The circuit is registered with ``pyro.module(name, d.spn)`` so that Pyro optimizers train it::

        svi = SVI(likelihood_model, lambda d, x: None, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
        svi.step(d, x)   # returns −Σ log p(x) (the ELBO with an empty guide is the log-likelihood)

    ``pyro.module`` loads parameters already in the param store under ``name``: clear the store
    (``pyro.clear_param_store()``) before training a new circuit under the same name.

    Args:
        d: the distribution to fit.
        x: ``[N, *event_shape]``.
        name: the circuit's name in Pyro's param store.
    """
    pyro.module(name, d.spn)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", d, obs=x)
