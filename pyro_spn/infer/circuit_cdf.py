"""Cumulative distribution functions of a circuit with Normal leaves over ``F`` variables, and the exact pathwise
(implicit) gradient of its samples.

A circuit's marginals and conditionals are exact, so is every *conditional CDF*: replace the leaves of variable
``d`` by their CDFs, the leaves of ``x_<d`` by their densities, marginalize the rest, and divide by the marginal
density of ``x_<d``. The map ``x ↦ u = (F_1(x_1), F_2(x_2 | x_1), …)`` sends the circuit's distribution to the
uniform one on ``[0, 1]^F``; an exact sample ``x`` is therefore the inverse of that map at a uniform ``u``, and
holding ``u`` fixed gives the *implicit reparameterization* gradient (Figurnov, Mohamed, Mnih, 2018)::

    dx/dθ = −(∂G/∂x)⁻¹ ∂G/∂θ,    G = log u (or log(1 − u), whichever tail is smaller),

whose Jacobian ``∂G/∂x`` is lower triangular. It is the exact pathwise gradient of the circuit's samples, with
respect to every parameter (sum weights included), with no relaxation: an unbiased gradient for the ELBO.

Shapes: ``N`` samples, ``F`` variables, ``I`` leaf components, ``R`` repetitions, ``L`` leaf regions, ``M`` slots
per leaf region.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor
from torch.func import functional_call

from ..leaves import Normal
from ..spn import RatSPN


def check_circuit(spn: RatSPN, name: str = "spn") -> None:
    """``TypeError`` naming ``name`` unless ``spn`` is a one-channel :class:`RatSPN` with Normal leaves over
    ``(F,)``."""
    if not isinstance(spn, RatSPN) or not isinstance(spn.leaf, Normal) or len(spn.event_shape) != 1:
        raise TypeError(f"{name} must be a pyro_spn.RatSPN over (F,) with Normal leaves, got {spn!r}")


def _component_parameters(spn: RatSPN) -> tuple[Tensor, Tensor]:
    """``(loc, scale)`` of every leaf component, each ``[F, I, R]``."""
    params = spn.leaf_layer.params()
    return params["loc"][0], params["scale"][0]


def top_inputs_from_leaves(spn: RatSPN, leaf_values: Tensor) -> Tensor:
    """The log-values of the units that the top sum layer mixes, when every leaf component of every variable has
    the log-value given: every layer but the last.

    Args:
        spn: the circuit.
        leaf_values: ``[N, F, I, R]``, the log-value of component ``i`` of variable ``f`` in repetition ``r``
            (``0`` marginalizes a variable; a Normal log-density evaluates it; a log-CDF gives a CDF).

    Returns:
        ``[N, R, 2, K_in]``: the units of the top region's two halves (``K_in = I`` for depth 1).
    """
    num = leaf_values.shape[0]
    slots = spn.leaf_layer.leaf_slots  # [R, L, M], F marks padding
    padded = torch.cat([leaf_values, leaf_values.new_zeros((num, 1) + leaf_values.shape[2:])], dim=1)
    repetition = torch.arange(spn.num_repetitions, device=slots.device)[:, None, None]
    gathered = padded[:, slots, :, repetition]  # [R, L, M, N, I]
    regions = gathered.sum(2).permute(0, 1, 3, 2).contiguous()  # [R, L, I, N]
    values = regions.permute(3, 0, 1, 2)  # [N, R, L, I]
    for layer in spn.einsum_layers[:-1]:
        values = layer(values)
    return values


def root_from_leaves(spn: RatSPN, leaf_values: Tensor) -> Tensor:
    """The circuit's root log-value ``[N]`` when every leaf component of every variable has the log-value given
    (``leaf_values`` ``[N, F, I, R]`` as in :func:`top_inputs_from_leaves`)."""
    top = spn.einsum_layers[-1](top_inputs_from_leaves(spn, leaf_values))  # [N, R, 1, 1]
    return spn.root(top[:, :, 0, 0])


def top_children(spn: RatSPN) -> tuple[Tensor, Tensor]:
    """The children of the circuit's top sum layer, as a mixture: the circuit is ``Σ_c π_c q_c`` over
    ``C = R K_in²`` children, child ``c = (r, i, j)`` the product of unit ``i`` of the top region's first half and
    unit ``j`` of its second half in repetition ``r``, with ``π_c`` = root weight of ``r`` × top weight of
    ``(i, j)``.

    Returns:
        ``(log_weights, children)``: ``[C]`` log ``π_c`` (differentiable) and ``[C, 3]`` the ``(r, i, j)`` of
        each child, in row-major ``(r, i, j)`` order.
    """
    top = spn.einsum_layers[-1]
    inner = top.log_weights()[:, 0, 0]  # [R, K_in²]
    log_weights = (spn.root.log_weights()[:, None] + inner).reshape(-1)
    size = top.num_inputs
    grid = torch.meshgrid(*(torch.arange(n, device=inner.device) for n in (spn.num_repetitions, size, size)),
                          indexing="ij")
    return log_weights, torch.stack([axis.reshape(-1) for axis in grid], dim=1)


def component_log_prob(spn: RatSPN, x: Tensor) -> Tensor:
    """Log-densities ``[N, F, I, R]`` of ``x`` ``[N, F]`` under every leaf component."""
    loc, scale = _component_parameters(spn)
    return torch.distributions.Normal(loc, scale).log_prob(x[:, :, None, None])


def component_log_cdf(spn: RatSPN, x: Tensor, upper: bool = False) -> Tensor:
    """Log-CDFs (``upper``: log-survival functions) ``[N, F, I, R]`` of ``x`` ``[N, F]`` under every leaf
    component."""
    loc, scale = _component_parameters(spn)
    standard = (x[:, :, None, None] - loc) / scale
    return torch.special.log_ndtr(-standard if upper else standard)


def conditional_log_tails(spn: RatSPN, x: Tensor, children: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The conditional log-CDFs ``log P(X_d ≤ x_d | X_<d = x_<d)`` and log-survival functions
    ``log P(X_d > x_d | X_<d = x_<d)`` of every variable, in the order of the variables, under the circuit or,
    with ``children``, under one child of its top sum layer per sample (:func:`top_children`).

    One upward pass over ``3F`` configurations per sample: the CDF numerators (densities before ``d``, the CDF at
    ``d``), the survival numerators (the survival function at ``d``) and the denominators (densities before ``d``).

    Args:
        spn: a one-channel circuit with Normal leaves over ``(F,)``.
        x: ``[N, F]``.
        children: ``None``, or ``[N, 3]``: the ``(r, i, j)`` of the top-layer child whose conditionals sample
            ``n`` takes.

    Returns:
        ``(log_cdf, log_survival)``, each ``[N, F]``.
    """
    num, features = x.shape
    log_prob = component_log_prob(spn, x)  # [N, F, I, R]
    log_cdf = component_log_cdf(spn, x)
    log_survival = component_log_cdf(spn, x, upper=True)
    order = torch.arange(features, device=x.device)
    before = (order[None, :] < order[:, None])[:, None, :, None, None]  # [d, 1, F, 1, 1]: j < d
    at = (order[None, :] == order[:, None])[:, None, :, None, None]
    densities = torch.where(before, log_prob[None], log_prob.new_zeros(()))  # [d, N, F, I, R]
    lower = torch.where(at, log_cdf[None], densities)
    upper = torch.where(at, log_survival[None], densities)
    leaves = torch.cat([lower, upper, densities]).flatten(0, 1)  # [3 F N, F, I, R]
    if children is None:
        roots = root_from_leaves(spn, leaves).view(3, features, num)
    else:  # a child is the product of its two halves' units: the log-values add
        top = spn.einsum_layers[-1]
        halves = top_inputs_from_leaves(spn, leaves).reshape(3, features, num, spn.num_repetitions, 2,
                                                              top.num_inputs)
        sample = torch.arange(num, device=x.device)
        repetition, first, second = children.unbind(1)
        roots = (halves[:, :, sample, repetition, 0, first] + halves[:, :, sample, repetition, 1, second])
    return (roots[0] - roots[2]).transpose(0, 1), (roots[1] - roots[2]).transpose(0, 1)


def conditional_log_cdfs(spn: RatSPN, x: Tensor) -> Tensor:
    """``G[n, d] = log P(X_d ≤ x_d | X_<d = x_<d)`` for every variable, ``[N, F]`` for ``x`` ``[N, F]`` (see
    :func:`conditional_log_tails`)."""
    return conditional_log_tails(spn, x)[0]


def marginal_log_cdfs(spn: RatSPN, points: Tensor) -> Tensor:
    """``log P(X_f ≤ points[n, f])`` for every variable ``f``, each under its own marginal.

    Args:
        spn: a one-channel circuit with Normal leaves over ``(F,)``.
        points: ``[N, F]``.

    Returns:
        ``[N, F]``.
    """
    num, features = points.shape
    log_cdf = component_log_cdf(spn, points)  # [N, F, I, R]
    at = torch.eye(features, dtype=torch.bool, device=points.device)[:, None, :, None, None]  # [f, 1, F, 1, 1]
    leaves = torch.where(at, log_cdf[None], log_cdf.new_zeros(())).flatten(0, 1)  # [F N, F, I, R]
    return root_from_leaves(spn, leaves).view(features, num).transpose(0, 1)


def marginal_quantiles(spn: RatSPN, probabilities: Tensor, iterations: int = 64) -> Tensor:
    """The quantiles of every variable's marginal, by bisection on its exact CDF.

    Args:
        spn: a one-channel circuit with Normal leaves over ``(F,)``.
        probabilities: ``[Q]`` in ``(0, 1)``.
        iterations: bisection steps (each halves the bracket; 64 reach the float64 resolution).

    Returns:
        ``[Q, F]``, no gradient.
    """
    with torch.no_grad():
        loc, scale = _component_parameters(spn)
        features = loc.shape[0]
        low = (loc - 40 * scale).flatten(1).amin(1).expand(len(probabilities), features).clone()
        high = (loc + 40 * scale).flatten(1).amax(1).expand(len(probabilities), features).clone()
        target = probabilities.to(loc).log()[:, None]
        for _ in range(iterations):
            middle = 0.5 * (low + high)
            below = marginal_log_cdfs(spn, middle) < target
            low = torch.where(below, middle, low)
            high = torch.where(below, high, middle)
        return 0.5 * (low + high)


class _Tails(torch.nn.Module):
    """:func:`conditional_log_tails` as a module, so that ``torch.func.functional_call`` can evaluate it with the
    circuit's parameters cast to float64 (the gradient still reaches the float32 parameters)."""

    def __init__(self, spn: RatSPN) -> None:
        super().__init__()
        self.spn = spn

    def forward(self, x: Tensor, children: Tensor | None) -> tuple[Tensor, Tensor]:
        return conditional_log_tails(self.spn, x, children)


def _tails_in_float64(spn: RatSPN, x: Tensor, children: Tensor | None) -> tuple[Tensor, Tensor]:
    """:func:`conditional_log_tails` of ``x`` computed in float64 (differences of nearly equal root values lose
    float32's digits, and the implicit gradient divides by small conditional densities)."""
    params = {f"spn.{name}": p.double() for name, p in spn.named_parameters()}
    return cast(tuple[Tensor, Tensor], functional_call(_Tails(spn), params, (x.double(), children)))


def implicit_rsample(spn: RatSPN, x: Tensor, children: Tensor | None = None) -> Tensor:
    """The exact samples ``x`` ``[N, F]`` with the implicit reparameterization gradient w.r.t. the circuit's
    parameters: the value is ``x``; backward, ``dx/dθ = −J⁻¹ ∂G/∂θ`` with ``J = ∂G/∂x`` lower triangular.

    ``G[n, d]`` is the conditional log-CDF of ``x_d`` given ``x_<d`` where it is below ``log ½``, else the
    conditional log-survival function (both are held fixed by the same uniform draw; the smaller tail keeps the
    digits). They are computed in float64. Costs one upward pass over ``3F N`` configurations and ``F`` backward
    passes (the Jacobian's rows). Without gradient mode, ``x`` is returned as it is.

    Args:
        spn: a one-channel circuit with Normal leaves over ``(F,)``.
        x: exact samples of the circuit, ``[N, F]``, without gradient.
        children: ``None``, or ``[N, 3]``: sample ``n`` is an exact sample of the top-layer child ``(r, i, j)``
            (:func:`top_children`) and is reparameterized through that child's conditional CDFs.

    Returns:
        ``[N, F]``, equal to ``x``.
    """
    if not torch.is_grad_enabled() or not any(p.requires_grad for p in spn.parameters()):
        return x
    point = x.detach().double().requires_grad_(True)
    log_cdf, log_survival = _tails_in_float64(spn, point, children)
    log_u = torch.where(log_cdf.detach() < -math.log(2.0), log_cdf, log_survival)  # [N, F]
    rows = [torch.autograd.grad(log_u[:, d].sum(), point, retain_graph=True)[0] for d in range(x.shape[1])]
    jacobian = torch.stack(rows, dim=1).tril()  # [N, F, F]: d log u_d / d x_j
    # a sample where a conditional density underflows (J singular) contributes no gradient instead of inf/NaN
    usable = (jacobian.diagonal(dim1=1, dim2=2).abs() > 0).all(1) & torch.isfinite(log_u.detach()).all(1)
    eye = torch.eye(x.shape[1], dtype=jacobian.dtype, device=x.device)
    safe = torch.where(usable[:, None, None], jacobian, eye)
    change = torch.where(usable[:, None], log_u - log_u.detach(), torch.zeros_like(log_u))
    shift = torch.linalg.solve_triangular(safe, change[..., None], upper=False)[..., 0]
    return x.detach() - shift.to(x.dtype)
