"""``StratifiedELBO``: the ELBO of an :class:`~pyro_spn.infer.AutoSPN` guide estimated by stratifying over the
children of the circuit's top sum layer.

The guide's circuit is a mixture ``q = Σ_c π_c q_c`` over the ``C = R K_in²`` children of its top sum layer
(:func:`~pyro_spn.infer.circuit_cdf.top_children`: one per repetition and pair of units of the top region's
halves). The ELBO splits accordingly::

    ELBO = E_q[log p(x, z) − log q(z)] = Σ_c π_c E_{q_c}[log p(x, z) − log q(z)],

and each step estimates every child's term with ``num_particles`` exact draws of that child, reparameterized by
the implicit gradient of the child's own conditional CDFs (:func:`~pyro_spn.infer.implicit_rsample` with
``children``). The estimate is unbiased, and its gradient w.r.t. the weights ``π_c`` is the child's ELBO term
itself: a child whose region of the posterior is under-covered gains weight in proportion to how much, whether or
not the step's draws cross between modes. Trace_ELBO's pathwise gradient of the weights moves mass between
separated modes only through the rare draws in the valleys between them (unbiased, but of high variance), which
is why it stalls with one mode under-covered; the stratified estimate reaches it (``docs/pyro.md``).

Each step costs ``C · num_particles`` evaluations of the model and of the circuit's conditional CDFs, and the
exact draws take ``C`` copies of the circuit's parameters (:class:`~pyro_spn.SPNDistribution` with
``flat_parameters``): meant for the latent dimensions of an autoguide, with ``C`` in the hundreds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer.elbo import ELBO
from pyro.infer.enum import get_importance_trace
from torch import Tensor

from .. import checks
from ..distribution import SPNDistribution
from ..spn import RatSPN
from .autospn import AutoSPN
from .circuit_cdf import implicit_rsample, top_children

_EXCLUDED = -1e4  # the unconstrained log-weight that removes a child (exp underflows to exactly 0)


def child_samples(spn: RatSPN, children: Tensor, num_samples: int) -> Tensor:
    """Exact draws of every top-layer child (:func:`~pyro_spn.infer.circuit_cdf.top_children`), without gradient.

    Args:
        spn: the circuit.
        children: ``[C, 3]``, the ``(r, i, j)`` of each child.
        num_samples: ``S``, draws per child.

    Returns:
        ``[S, C, *event_shape]``: draw ``s`` of child ``c`` (the circuit with its root and top-layer weights put on
        that child alone).
    """
    count = len(children)
    layout = {entry.name: entry for entry in spn.flat_parameter_layout}
    with torch.no_grad():
        flat = spn.flatten_parameters().expand(count, -1).clone()  # [C, P]
        rows = torch.arange(count, device=flat.device)
        repetition, first, second = children.unbind(1)
        root = layout["root.logits"]
        root_logits = flat.new_full((count, spn.num_repetitions), _EXCLUDED)
        root_logits[rows, repetition] = 0.0
        flat[:, root.offset:root.offset + spn.num_repetitions] = root_logits
        top = layout[f"inner_layers.{len(spn.einsum_layers) - 1}.logits"]  # [R, 1, 1, K_in, K_in]
        top_logits = flat.new_full((count, *top.shape), _EXCLUDED)
        top_logits[rows, repetition, 0, 0, first, second] = 0.0
        flat[:, top.offset:top.offset + math.prod(top.shape)] = top_logits.flatten(1)
        return SPNDistribution(spn, flat_parameters=flat).sample((num_samples,))


class StratifiedELBO(ELBO):
    """The ELBO of a model and its :class:`~pyro_spn.infer.AutoSPN` guide, stratified over the children of the
    guide circuit's top sum layer (see :mod:`pyro_spn.infer.stratified`). Use it like ``Trace_ELBO``::

        guide = AutoSPN(model)
        svi = SVI(model, guide, Adam({"lr": 0.01}), StratifiedELBO(num_particles=4))

    Particles are always vectorized (an outermost plate of ``C · num_particles`` draws), so every sample site of the
    model must broadcast over a batch dimension left of its plates, as with ``Trace_ELBO(vectorize_particles=True)``.

    Args:
        num_particles: draws per child of the top sum layer, ``>= 1``.
        max_plate_nesting: the model's plate nesting (guessed at the first step when ``inf``).

    Raises:
        TypeError: at a step, naming ``guide`` unless it is an :class:`~pyro_spn.infer.AutoSPN` with the
            ``"implicit"`` estimator (the reparameterization within a child is implicit).
    """

    def __init__(self, num_particles: int = 1, max_plate_nesting: float = float("inf")) -> None:
        super().__init__(num_particles=checks.integer("num_particles", num_particles),
                         max_plate_nesting=max_plate_nesting, vectorize_particles=False)

    def _get_trace(self, model: Callable[..., Any], guide: Callable[..., Any], args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> Any:
        """One (model, guide) trace pair of an unconditioned draw, as Pyro's ELBOs give (e.g. to guess the plate
        nesting); the estimate itself conditions the guide on stratified draws."""
        return get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)

    def loss(self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
        """The negative ELBO estimate (no gradient)."""
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any,
                       **kwargs: Any) -> float:
        """The negative ELBO estimate; its gradient accumulated into the parameters (``backward``)."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return float(loss.detach())

    def differentiable_loss(self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any,
                            **kwargs: Any) -> Tensor:
        """The negative ELBO estimate ``−Σ_c π_c · mean_s [log p(x, z_sc) − log q(z_sc)]``, differentiable w.r.t.
        the guide's parameters (and the model's)."""
        if not isinstance(guide, AutoSPN) or guide.estimator != "implicit":
            raise TypeError(f"guide must be a pyro_spn.infer.AutoSPN with estimator 'implicit', got {guide!r}")
        if guide.prototype_trace is None:
            guide._setup_prototype(*args, **kwargs)
        if self.max_plate_nesting == float("inf"):
            self._guess_max_plate_nesting(model, guide, args, kwargs)
        spn = guide.spn
        log_weights, children = top_children(spn)  # [C], [C, 3]
        draws = child_samples(spn, children, self.num_particles)  # [S, C, D]
        latent = implicit_rsample(spn, draws.flatten(0, 1), children.repeat(self.num_particles, 1))
        terms = self._particle_elbos(model, guide, latent, args, kwargs).view(self.num_particles, -1)
        return -(log_weights.exp() * terms.mean(0)).sum()

    def _particle_elbos(self, model: Callable[..., Any], guide: AutoSPN, latent: Tensor, args: tuple[Any, ...],
                        kwargs: dict[str, Any]) -> Tensor:
        """``log p(x, z_n) − log q(z_n)`` ``[N]`` at every unconstrained latent vector ``latent`` ``[N, D]``: the
        guide conditioned on ``latent`` and the model replayed against it, under a plate over the ``N`` rows."""
        nesting = int(self.max_plate_nesting)
        value = latent.reshape((len(latent),) + (1,) * nesting + latent.shape[-1:])
        conditioned = poutine.condition(guide, data={f"_{guide._pyro_name}_latent": value})
        plate = pyro.plate("stratified_particles", len(latent), dim=-(nesting + 1))
        model_trace, guide_trace = get_importance_trace("flat", nesting + 1, plate(model), plate(conditioned),
                                                        args, kwargs)
        total = latent.new_zeros(len(latent))
        for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
            for site in trace.nodes.values():
                if site["type"] == "sample":
                    total = total + sign * _per_particle(site["log_prob"], nesting, len(latent))
        return total


def _per_particle(log_prob: Tensor, nesting: int, count: int) -> Tensor:
    """A site's ``log_prob`` summed over every dimension but the particle plate's (``nesting + 1`` from the
    right), ``[count]``."""
    padded = log_prob.reshape((1,) * max(0, nesting + 1 - log_prob.dim()) + log_prob.shape)
    return padded.reshape(padded.shape[0], -1).sum(1).expand(count)


__all__ = ["StratifiedELBO", "child_samples"]
