"""LL: maximum likelihood, as a plain loss and as a Pyro model for SVI."""

from __future__ import annotations

import pyro
from torch import Tensor

from ..distribution import SPNDistribution
from .base import Objective


class LikelihoodObjective(Objective):
    """``loss = −mean log p(x)`` (exact; NaN entries of ``x`` are marginalized)."""

    name = "ll"

    def loss(self, d: SPNDistribution, x: Tensor) -> Tensor:
        """``x [N, *event_shape]`` → the mean negative log-likelihood, a scalar."""
        return -d.log_prob(x).mean()


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
