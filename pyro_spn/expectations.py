"""Exact expectations under a circuit, without sampling, differentiable w.r.t. its parameters.

Two kinds of functions have exact expectations under a smooth and decomposable circuit:

* **products** over the variables, ``f(x) = Π_d h_d(x_d)``: ``E_p[f]`` is the circuit's upward pass with every leaf
  replaced by its expectation ``E_leaf[h_d]`` (:func:`upward_from_leaves`); e.g. the RBF kernel ``k(x, y)`` between
  a sample and a fixed point ``y`` (:func:`rbf_leaf_log_expectations`), which gives MMD² with fixed kernels
  exactly in the data term and without relaxation in the model term;
* **sums** over the variables, ``f(x) = Σ_d h_d(x_d)``: ``E[f | evidence] = Σ_d Σ_components q · E_component[h_d]``
  with ``q`` the posterior probability of each leaf component given the evidence (the exact flows of one top-down
  pass, :func:`posterior_flows`); e.g. the squared error ``‖x − y‖²`` (from the first and second moments) or the
  binary cross-entropy of ``x / n`` against a target, which give auto-encoding losses their exact expectation over
  the decoder.

Per leaf component, the expectations are closed forms for Normal leaves and finite sums over the support for
Bernoulli, Binomial and Categorical leaves (:func:`component_statistics`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .layers import LeafLayer
from .leaves import Bernoulli, Binomial, Categorical, Leaf, Mixed, Normal, Params
from .sampling.selections import top_down
from .spn import RatSPN

#: ``statistic(leaf, params)``: per-component expectations ``[C, F, I, R, K]`` of ``K`` functions of one variable,
#: for the components' parameters ``params`` (each ``[C, F, I, R, *E]``) of one leaf family.
Statistic = Callable[[Leaf, Params], Tensor]


def finite_support(leaf: Leaf) -> Tensor | None:
    """The values ``[V]`` of a finite-support family (Bernoulli, Binomial, Categorical), or ``None``."""
    if isinstance(leaf, Bernoulli):
        return torch.tensor([0.0, 1.0])
    if isinstance(leaf, Binomial):
        return torch.arange(leaf.total_count + 1.0)
    if isinstance(leaf, Categorical):
        return torch.arange(float(leaf.num_categories))
    return None


def support_log_probs(leaf: Leaf, params: Params, like: Tensor) -> tuple[Tensor, Tensor]:
    """``(values [V], log pmf [C, F, I, R, V])`` of a finite-support family; ``ValueError`` for any other."""
    values = finite_support(leaf)
    if values is None:
        raise ValueError(f"this exact expectation needs leaves with a finite support or a closed form, got {leaf!r}")
    values = values.to(device=like.device, dtype=like.dtype)
    return values, torch.stack([leaf.log_prob(v, params) for v in values], dim=-1)


def per_family(layer: LeafLayer, fn: Callable[[Leaf, Params, slice], Tensor], dim: int,
               variables: slice | None = None) -> Tensor:
    """``fn(family, its parameters, its variables)`` over the variables of every leaf family of the layer (one for a
    plain leaf, one per group of a :class:`~pyro_spn.leaves.Mixed` leaf), concatenated along the variables, the
    results' dimension ``dim``; only the variables ``variables`` (a contiguous range, default all)."""
    leaf, params = layer.leaf, layer.params()
    first, stop, _ = (variables or slice(None)).indices(layer.num_features)
    groups = leaf.groups if isinstance(leaf, Mixed) else ((leaf, layer.num_features),)
    parts, start = [], 0
    for group, (member, size) in enumerate(groups):
        features = slice(max(start, first), min(start + size, stop))
        start += size
        if features.start >= features.stop:
            continue
        prefix = f"g{group}_" if isinstance(leaf, Mixed) else ""
        own = {name[len(prefix):]: p[:, features] for name, p in params.items()
               if name.startswith(prefix) and name != "type"}
        parts.append(fn(member, own, features))
    return torch.cat(parts, dim=dim)


# -- products over the variables: one upward pass ------------------------------------------------------------
def _rbf_family(leaf: Leaf, params: Params, points: Tensor, bandwidth: float) -> Tensor:
    """``log E_component[exp(−(X − y)² / (2σ²))]``: ``points [M, C, F]`` → ``[M, C, F, I, R]``."""
    y = points[..., None, None]
    if isinstance(leaf, Normal):  # the Gaussian integral in closed form
        variance = params["scale"].square() + bandwidth**2
        return 0.5 * torch.log(bandwidth**2 / variance) - (params["loc"] - y).square() / (2 * variance)
    values, log_pmf = support_log_probs(leaf, params, points)
    index = points.round().long()
    if bool(((index.to(points.dtype) == points) & (index >= 0) & (index < len(values))).all()):
        # points in the support (data, exact samples): a table of every component × support value, then a gather
        log_kernel = -(values[:, None] - values[None, :]).square() / (2 * bandwidth**2)  # [V (of X), V (of y)]
        table = torch.logsumexp(log_pmf[..., :, None] + log_kernel, dim=-2)  # [C, F, I, R, V]
        by_point = table.permute(0, 1, 4, 2, 3)  # [C, F, V, I, R]
        num_components, num_repetitions = by_point.shape[3:]
        gather = index.permute(1, 2, 0)[..., None, None].expand(-1, -1, -1, num_components, num_repetitions)
        return torch.gather(by_point, 2, gather).permute(2, 0, 1, 3, 4)  # [M, C, F, I, R]
    return torch.logsumexp(log_pmf - (values - y[..., None]).square() / (2 * bandwidth**2), dim=-1)


def rbf_leaf_log_expectations(layer: LeafLayer, points: Tensor, bandwidth: float) -> Tensor:
    """``log E[exp(−(X − y)² / (2σ²))]`` of every leaf component for every reference entry ``y``: ``points [M, C, F]``
    (model space; a NaN entry marginalizes its variable: the factor is 1) → ``[M, C, F, I, R]``."""
    missing = torch.isnan(points)
    safe = torch.where(missing, torch.zeros_like(points), points)
    log_values = per_family(layer, lambda leaf, params, features: _rbf_family(leaf, params, safe[:, :, features],
                                                                               bandwidth), dim=2)
    return log_values.masked_fill(missing[..., None, None], 0.0)


def upward_from_leaves(spn: RatSPN, leaf_log_values: Tensor) -> Tensor:
    """The circuit's upward pass from per-component leaf log-values ``[M, F, I, R]`` (instead of the leaves'
    densities of data): ``log Σ_T w_T Π_leaves value``, ``[M]``."""
    slots = spn.leaf_layer.component_slots(leaf_log_values.permute(1, 2, 3, 0)[None])  # [R, L, S, 1, I, M]
    ll = slots.sum((2, 3)).permute(3, 0, 1, 2)  # [M, R, L, I]
    for einsum in spn.einsum_layers:
        ll = einsum(ll)
    return spn.root(ll[:, :, 0, 0])


def rbf_expectations(spn: RatSPN, points: Tensor, bandwidth: float) -> Tensor:
    """``E_{x~p}[exp(−‖x − y_j‖² / (2σ²))]`` for every point ``y_j`` of ``points [M, *event_shape]``, ``[M]`` (a NaN
    entry of ``y_j`` leaves its variable out of the kernel: marginalized)."""
    leaf_log = rbf_leaf_log_expectations(spn.leaf_layer, spn.flatten_data(points), bandwidth)
    return upward_from_leaves(spn, leaf_log.sum(1)).exp()


# -- sums over the variables: one top-down pass of flows ------------------------------------------------------
def posterior_flows(spn: RatSPN, evidence: Tensor) -> Tensor:
    """The probability of every leaf component given the evidence: ``[N, F, I, R]`` for ``evidence
    [N, *event_shape]`` (NaN where a variable is free), summing to 1 over ``(I, R)`` per variable. Exact and
    differentiable (the ``"expected"`` flows of a top-down pass)."""
    selection = top_down(spn, evidence.shape[0], "expected", upward=spn.upward(evidence))
    return spn.leaf_layer.variable_selection(selection)


def expected_statistics(spn: RatSPN, evidence: Tensor, statistic: Statistic,
                        variables: slice | None = None) -> Tensor:
    """``E[h_k(X_{c,f}) | evidence]`` for every variable ``f`` in ``variables`` (a contiguous range, default all):
    ``[N, C, F', K]``. The entries of observed variables are expectations under their posterior components, rarely of
    use.

    Args:
        spn: the circuit.
        evidence: ``[N, *event_shape]``, NaN where a variable is free.
        statistic: ``(family, params) → [C, F, I, R, K]`` per leaf family (:func:`moments`,
            :func:`bernoulli_log_terms`).
        variables: the variables to compute.
    """
    variables = variables or slice(None)
    flows = posterior_flows(spn, evidence)[:, variables]  # [N, F', I, R]
    # [C, F', I, R, K]
    per_component = per_family(spn.leaf_layer, lambda leaf, params, _: statistic(leaf, params), 1, variables)
    return torch.einsum("nfir,cfirk->ncfk", flows, per_component)


def moments(leaf: Leaf, params: Params) -> Tensor:
    """``[E X, E X²]`` of every component, ``[C, F, I, R, 2]``: closed forms for Normal, exact sums otherwise."""
    if isinstance(leaf, Normal):
        loc, scale = params["loc"], params["scale"]
        return torch.stack([loc, loc.square() + scale.square()], dim=-1)
    like = next(iter(params.values()))
    values, log_pmf = support_log_probs(leaf, params, like if like.is_floating_point() else like.float())
    pmf = log_pmf.exp()
    return torch.stack([(pmf * values).sum(-1), (pmf * values.square()).sum(-1)], dim=-1)


def bernoulli_log_terms(scale: float, eps: float) -> Statistic:
    """The statistic ``[E log p̂, E log(1 − p̂)]`` with ``p̂ = clamp(X / scale, eps, 1 − eps)``, ``[C, F, I, R, 2]``,
    for finite-support families (the binary cross-entropy of ``X / scale`` against a target ``y`` is
    ``−y E log p̂ − (1 − y) E log(1 − p̂)``, linear in ``y``)."""

    def statistic(leaf: Leaf, params: Params) -> Tensor:
        like = next(iter(params.values()))
        values, log_pmf = support_log_probs(leaf, params, like if like.is_floating_point() else like.float())
        p_hat = (values / scale).clamp(eps, 1 - eps)
        pmf = log_pmf.exp()
        return torch.stack([(pmf * p_hat.log()).sum(-1), (pmf * torch.log1p(-p_hat)).sum(-1)], dim=-1)

    return statistic


__all__ = ["Statistic", "bernoulli_log_terms", "expected_statistics", "finite_support", "moments", "per_family",
           "posterior_flows", "rbf_expectations", "rbf_leaf_log_expectations", "support_log_probs",
           "upward_from_leaves"]
