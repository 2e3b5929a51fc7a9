"""Exact expectations under a circuit, without sampling, differentiable w.r.t. its parameters.

Two kinds of functions have exact expectations under a smooth and decomposable circuit:

* **products** over the variables, ``f(x) = Π_d h_d(x_d)``: ``E_p[f]`` is the circuit's upward pass with every leaf
  replaced by its expectation ``E_leaf[h_d]`` (:func:`upward_from_regions`); e.g. the RBF kernel ``k(x, y)`` between
  a sample and a fixed point ``y`` (:func:`rbf_leaf_log_expectations`), which gives MMD² with fixed kernels
  exactly in the data term and without relaxation in the model term;
* **sums** over the variables, ``f(x) = Σ_d h_d(x_d)``: ``E[f | evidence] = Σ_d Σ_components q · E_component[h_d]``
  with ``q`` the posterior probability of each leaf component given the evidence (the exact flows of one top-down
  pass, :func:`posterior_flows`); e.g. the squared error ``‖x − y‖²`` (from the first and second moments) or the
  binary cross-entropy of ``x / n`` against a target, which give auto-encoding losses their exact expectation over
  the decoder.

Per leaf component, the expectations are closed forms for Normal leaves and finite sums over the support for
Bernoulli, Binomial and Categorical leaves (:func:`support_log_probs`); the moments (:func:`moments`) are every
family's closed-form mean and variance. Families without a finite support or a closed form (Poisson, Geometric and
NegativeBinomial counts are unbounded; Gamma, Beta, LogNormal, ... are continuous) raise ``ValueError`` in the
expectations that sum over the support (RBF kernels, :func:`bernoulli_log_terms`): those sums are not truncated.

Moments of the circuit (:func:`mean`, :func:`variance`, :func:`covariance`), optionally given evidence, are exact:
means and variances from the posterior flows, covariances from one upward pass per pair of variables (for small
numbers of variables, :data:`MAX_COVARIANCE_VARIABLES`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
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
    """``(values [V], log pmf [C, F, I, R, V])`` of a finite-support family; ``ValueError`` for any other (unbounded
    counts such as Poisson leaves are not truncated, continuous families have no support to sum over)."""
    values = finite_support(leaf)
    if values is None:
        kind = "an unbounded discrete" if leaf.support.is_discrete else "a continuous"
        raise ValueError(f"this exact expectation sums over the leaves' support: it needs leaves with a finite support "
                         f"(Bernoulli, Binomial, Categorical) or a closed form (Normal); {leaf!r} has {kind} support")
    values = values.to(device=like.device, dtype=like.dtype)
    return values, leaf.log_prob(values.view(-1, 1, 1, 1, 1), params).movedim(0, -1)


def families(layer: LeafLayer, variables: slice | None = None) -> list[tuple[Leaf, Params, slice]]:
    """The leaf families of the layer with their parameters and variables: one for a plain leaf, one per group of a
    :class:`~pyro_spn.leaves.Mixed` leaf; only the variables ``variables`` (a contiguous range, default all)."""
    leaf, params = layer.leaf, layer.params()
    first, stop, _ = (variables or slice(None)).indices(layer.num_features)
    groups = leaf.groups if isinstance(leaf, Mixed) else ((leaf, layer.num_features),)
    out, start = [], 0
    for group, (member, size) in enumerate(groups):
        features = slice(max(start, first), min(start + size, stop))
        start += size
        if features.start >= features.stop:
            continue
        prefix = f"g{group}_" if isinstance(leaf, Mixed) else ""
        own = {name[len(prefix):]: p[:, features] for name, p in params.items()
               if name.startswith(prefix) and name != "type"}
        out.append((member, own, features))
    return out


# -- products over the variables: one upward pass ------------------------------------------------------------
#: The most terms (components × support values × reference values) an exact RBF expectation over a finite-support
#: family may sum (a Binomial(255) over 784 variables is far beyond: use the score estimator there).
MAX_RBF_TERMS = 2**30


class _RBFLeaves:
    """``log E_component[exp(−(X − y)² / (2σ²))]`` of every leaf component, for reference entries ``y`` and any
    bandwidth, summed into the leaf regions: the finite-support families' log-masses are computed once."""

    def __init__(self, layer: LeafLayer, like: Tensor) -> None:
        self.layer = layer
        self.parts = [(params, features, None if isinstance(leaf, Normal) else support_log_probs(leaf, params, like))
                      for leaf, params, features in families(layer)]

    def regions(self, points: Tensor, bandwidth: float) -> Tensor:
        """The leaf regions' log-expectations ``[M, R, L, I]`` for ``points [M, C, F]`` (model space; a NaN entry
        marginalizes its variable: the factor is 1)."""
        layer = self.layer
        missing = torch.isnan(points)
        safe = torch.where(missing, torch.zeros_like(points), points)
        regions: Tensor | None = None  # [R, L, I, M] of the families contracted by a one-hot matmul
        per_component: Tensor | None = None  # [M, C, F, I, R] of the others
        for params, features, support in self.parts:
            y = safe[:, :, features]
            table = None if support is None else self._table(support, y, bandwidth)
            if support is not None and table is not None:
                # one-hot statistics of the points' support values times the table, summed into the slots
                size = len(support[0])
                one_hot = points.new_zeros(points.shape + (size,))
                one_hot[:, :, features] = F.one_hot(y.round().long(), size).to(points.dtype)
                one_hot = one_hot * (~missing)[..., None]
                eta = table.new_zeros(table.shape[:1] + (layer.num_features,) + table.shape[2:])
                eta[:, features] = table
                part = layer.contract_slots(layer.data_slots(one_hot), layer.component_slots(eta))
                regions = part if regions is None else regions + part
                continue
            values = self._family(params, y, bandwidth, support).masked_fill(missing[:, :, features, None, None], 0.0)
            if per_component is None:
                per_component = values.new_zeros(points.shape + values.shape[-2:])
            per_component[:, :, features] = values
        out = None if regions is None else regions.permute(3, 0, 1, 2)
        if per_component is not None:
            slots = layer.component_slots(per_component.sum(1).permute(1, 2, 3, 0)[None])  # [R, L, S, 1, I, M]
            dense = slots.sum((2, 3)).permute(3, 0, 1, 2)
            out = dense if out is None else out + dense
        assert out is not None
        return out

    @staticmethod
    def _table(support: tuple[Tensor, Tensor], y: Tensor, bandwidth: float) -> Tensor | None:
        """``[C, F, I, R, V]``: every component's log-expectation at every support value, where every point lies in
        the support and the table is no larger than the points' own expectations; else ``None``."""
        values, log_pmf = support
        index = y.round().long()
        in_support = bool(((index.to(y.dtype) == y) & (index >= 0) & (index < len(values))).all())
        if not in_support or len(values) > len(y):
            return None
        _check_terms(log_pmf, len(values))
        log_kernel = -(values[:, None] - values[None, :]).square() / (2 * bandwidth**2)  # [V (of X), V (of y)]
        return torch.logsumexp(log_pmf[..., :, None] + log_kernel, dim=-2)

    @staticmethod
    def _family(params: Params, y: Tensor, bandwidth: float, support: tuple[Tensor, Tensor] | None) -> Tensor:
        """``[M, C, F, I, R]`` for the points ``y [M, C, F]`` of one family."""
        y = y[..., None, None]
        if support is None:  # Normal: the Gaussian integral in closed form
            variance = params["scale"].square() + bandwidth**2
            return 0.5 * torch.log(bandwidth**2 / variance) - (params["loc"] - y).square() / (2 * variance)
        values, log_pmf = support
        _check_terms(log_pmf, len(y))
        return torch.logsumexp(log_pmf - (values - y[..., None]).square() / (2 * bandwidth**2), dim=-1)


def _check_terms(log_pmf: Tensor, num_points: int) -> None:
    terms = log_pmf.numel() * num_points
    if terms > MAX_RBF_TERMS:
        raise ValueError(f"an exact RBF expectation over this leaf family would sum {terms:.3g} terms (more than "
                         f"{MAX_RBF_TERMS:.3g}: the support is too large); use the score estimator")


def upward_from_regions(spn: RatSPN, leaf_regions: Tensor) -> Tensor:
    """The circuit's upward pass from leaf-region log-values ``[M, R, L, I]``: ``[M]``."""
    ll = leaf_regions
    for einsum in spn.einsum_layers:
        ll = einsum(ll)
    return spn.root(ll[:, :, 0, 0])


def rbf_expectations(spn: RatSPN, points: Tensor, bandwidths: Sequence[float]) -> Tensor:
    """``E_{x~p}[exp(−‖x − y_j‖² / (2σ²))]`` for every bandwidth ``σ`` and every point ``y_j`` of
    ``points [M, *event_shape]``: ``[len(bandwidths), M]`` (a NaN entry of ``y_j`` leaves its variable out of the
    kernel: marginalized). One upward pass per bandwidth from the leaves' exact expectations: closed forms for
    Normal leaves; for finite supports, a table of every component's expectation at every support value, contracted
    with the points' one-hot values in one matmul (or a sum over the support per point, for points outside it).
    ``ValueError`` where a support is too large (:data:`MAX_RBF_TERMS`)."""
    flat = spn.flatten_data(points)
    leaves = _RBFLeaves(spn.leaf_layer, flat)
    return torch.stack([upward_from_regions(spn, leaves.regions(flat, bandwidth)).exp() for bandwidth in bandwidths])


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
    per_component = torch.cat([statistic(leaf, params) for leaf, params, _ in families(spn.leaf_layer, variables)],
                              dim=1)  # [C, F', I, R, K]
    return torch.einsum("nfir,cfirk->ncfk", flows, per_component)


def moments(leaf: Leaf, params: Params) -> Tensor:
    """``[E X, E X²]`` of every component, ``[C, F, I, R, 2]``, from the family's closed-form mean and variance."""
    mean, variance = leaf.mean(params), leaf.variance(params)
    return torch.stack([mean, variance + mean.square()], dim=-1)


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


# -- moments of the circuit ---------------------------------------------------------------------------------
#: The most variables (``C · F``) :func:`covariance` accepts: it runs one upward pass per pair of variables.
MAX_COVARIANCE_VARIABLES = 256
#: The most leaf-region values ``(evidence rows · pairs · R · L · I)`` one chunk of :func:`covariance` holds.
_COVARIANCE_CHUNK = 2**22


def _evidence(spn: RatSPN, evidence: Tensor | None) -> Tensor:
    """``evidence`` ``[N, *event_shape]`` (checked), or one all-NaN row for the unconditional moments."""
    if evidence is None:
        dtype = spn.root.logits.dtype
        return torch.full((1,) + tuple(spn.event_shape), math.nan, dtype=dtype, device=spn.root.logits.device)
    if evidence.dim() != 1 + len(spn.event_shape) or tuple(evidence.shape[1:]) != tuple(spn.event_shape):
        raise ValueError(f"evidence: expected shape [N, {', '.join(map(str, spn.event_shape))}], "
                         f"got {tuple(evidence.shape)}")
    return evidence


def component_moments(spn: RatSPN) -> tuple[Tensor, Tensor]:
    """The mean and variance of every leaf component, each ``[C, F, I, R]`` (every family's closed forms, a
    :class:`~pyro_spn.leaves.Mixed` leaf's per group)."""
    parts = [(leaf.mean(params), leaf.variance(params)) for leaf, params, _ in families(spn.leaf_layer)]
    shape = spn.leaf_layer.shape
    means = torch.cat([m.expand((shape[0], m.shape[1]) + shape[2:]) for m, _ in parts], dim=1)
    variances = torch.cat([v.expand((shape[0], v.shape[1]) + shape[2:]) for _, v in parts], dim=1)
    return means, variances


def _flow_moments(spn: RatSPN, evidence: Tensor) -> tuple[Tensor, Tensor]:
    """``(E[X | e], Var[X | e])``, each ``[N, C, F]`` in model space, by the posterior flows: the mixture's mean
    ``Σ q μ`` and variance ``Σ q σ² + Σ q (μ − m)²`` (a sum of non-negative terms, no cancellation); observed entries
    have their value and variance 0."""
    flows = posterior_flows(spn, evidence)  # [N, F, I, R]
    means, variances = component_moments(spn)  # [C, F, I, R]
    mean = torch.einsum("nfir,cfir->ncf", flows, means)
    spread = (means - mean[..., None, None]).square()  # [N, C, F, I, R]
    variance = torch.einsum("nfir,cfir->ncf", flows, variances) + torch.einsum("nfir,ncfir->ncf", flows, spread)
    observed = spn.flatten_data(evidence)
    is_observed = ~torch.isnan(observed)
    mean = torch.where(is_observed, observed, mean)
    variance = torch.where(is_observed, torch.zeros_like(variance), variance)
    return mean, variance


def mean(spn: RatSPN, evidence: Tensor | None = None) -> Tensor:
    """The exact mean ``E[X | evidence]``: ``[*event_shape]`` without evidence, else ``[N, *event_shape]`` for
    ``evidence [N, *event_shape]`` (NaN where a variable is free; observed entries keep their value)."""
    rows = _evidence(spn, evidence)
    out = spn.unflatten_data(_flow_moments(spn, rows)[0])
    return out[0] if evidence is None else out


def variance(spn: RatSPN, evidence: Tensor | None = None) -> Tensor:
    """The exact variance ``Var[X_d | evidence]`` of every variable: ``[*event_shape]`` without evidence, else
    ``[N, *event_shape]`` for ``evidence [N, *event_shape]`` (0 at observed entries).

    From the posterior flows ``q`` of the leaf components (:func:`posterior_flows`) and every family's closed-form
    mean ``μ`` and variance ``σ²``: ``Σ q σ² + Σ q (μ − m)²`` with ``m = Σ q μ``. Differentiable.
    """
    rows = _evidence(spn, evidence)
    out = spn.unflatten_data(_flow_moments(spn, rows)[1])
    return out[0] if evidence is None else out


def covariance(spn: RatSPN, evidence: Tensor | None = None) -> Tensor:
    """The exact covariance matrix of the flattened variables given the evidence: ``[D, D]`` without evidence, else
    ``[N, D, D]`` for ``evidence [N, *event_shape]``, ``D = prod(event_shape)`` (row-major order of the event; rows
    and columns of observed entries are 0).

    ``E[X_a X_b]`` is a product over the variables, so it is the circuit's upward pass with the leaf components of
    ``a`` and ``b`` replaced by their moments and every other variable marginalized (given the evidence: its
    likelihood, divided by the evidence's). Log-space needs positive factors, so the variables are shifted by
    constants ``c`` that make every component's ``E[X + c]`` positive:
    ``Cov(X_a, X_b) = E[(X_a + c_a)(X_b + c_b)] − E[X_a + c_a] E[X_b + c_b]``, whose rounding is about
    ``ε (|m| + c)²`` (``c`` is of the order of the components' spread: use a float64 circuit where covariances are
    small against the means). One upward pass per pair, ``D (D + 1) / 2`` of them, batched in chunks. Differentiable.

    Raises:
        ValueError: ``D`` above :data:`MAX_COVARIANCE_VARIABLES`, or evidence of the wrong shape.
    """
    num_variables = math.prod(spn.event_shape)
    if num_variables > MAX_COVARIANCE_VARIABLES:
        raise ValueError(f"covariance: the circuit has {num_variables} variables, more than the "
                         f"{MAX_COVARIANCE_VARIABLES} an exact covariance matrix is computed for (one upward pass per "
                         f"pair); use variance() for the diagonal")
    rows = _evidence(spn, evidence)
    flat = spn.flatten_data(rows)  # [N, C, F]
    means, variances = component_moments(spn)  # [C, F, I, R]
    shift = _shifts(means, variances)  # [C, F]
    first = (means + shift[..., None, None]).log()
    second = (variances + (means + shift[..., None, None]).square()).log()
    mean_rows = _flow_moments(spn, rows)[0] + shift  # [N, C, F]: E[X + c | e]
    leaf_regions, _ = spn.leaf_layer.log_likelihood(flat)  # [N, R, L, I]
    log_evidence = upward_from_regions(spn, leaf_regions)  # [N]
    products = _pair_products(spn, leaf_regions, log_evidence, first, second)  # [N, D, D]
    centered = mean_rows.flatten(1)
    out = products - centered[:, :, None] * centered[:, None, :]
    free = torch.isnan(flat.flatten(1))
    out = torch.where(free[:, :, None] & free[:, None, :], out, torch.zeros_like(out))
    return out[0] if evidence is None else out


def _shifts(means: Tensor, variances: Tensor) -> Tensor:
    """``c [C, F]``: ``−min μ`` plus the components' spread (the largest σ or range of ``μ``, at least 1 where both
    vanish), so that every ``μ + c`` is positive and of the order of the spread."""
    low, high = means.amin((2, 3)), means.amax((2, 3))
    spread = torch.maximum(variances.amax((2, 3)).sqrt(), high - low)
    spread = torch.where(spread > 0, spread, torch.ones_like(spread))
    return (spread - low).detach()


def _pair_products(spn: RatSPN, leaf_regions: Tensor, log_evidence: Tensor, first: Tensor, second: Tensor) -> Tensor:
    """``E[(X_a + c_a)(X_b + c_b) | e]`` for every pair: ``[N, D, D]``.

    Args:
        leaf_regions: ``[N, R, L, I]``, the evidence's leaf-region log-likelihoods; log_evidence: ``[N]``, its
            upward pass; first, second: ``[C, F, I, R]``, every component's ``log E[X + c]`` and ``log E[(X + c)²]``.
    """
    layer = spn.leaf_layer
    channels, features = first.shape[:2]
    num_variables = channels * features
    region_of = layer.variable_region.T.repeat(channels, 1)  # [D, R]: the leaf region of each variable
    components, repetitions = first.shape[2:]
    first_rows = first.permute(0, 1, 3, 2).reshape(num_variables, repetitions, components)  # [D, R, I]
    second_rows = second.permute(0, 1, 3, 2).reshape(num_variables, repetitions, components)
    a, b = torch.triu_indices(num_variables, num_variables, device=first.device)
    num_rows = leaf_regions.shape[0]
    size = max(1, _COVARIANCE_CHUNK // max(1, num_rows * leaf_regions[0].numel()))
    values = []
    for start in range(0, len(a), size):
        ca, cb = a[start:start + size], b[start:start + size]
        diagonal = (ca == cb)[:, None, None]
        delta_a = torch.where(diagonal, second_rows[ca], first_rows[ca])  # [Q, R, I]
        delta_b = torch.where(diagonal, torch.zeros_like(delta_a), first_rows[cb])
        regions = leaf_regions[:, None].expand(-1, len(ca), -1, -1, -1)  # [N, Q, R, L, I]
        for index, delta in ((region_of[ca], delta_a), (region_of[cb], delta_b)):
            shape = regions.shape[:3] + (1, regions.shape[4])
            regions = regions.scatter_add(3, index[None, :, :, None, None].expand(shape),
                                          delta[None, :, :, None].expand(shape))
        log_values = upward_from_regions(spn, regions.reshape((-1,) + regions.shape[2:])).view(num_rows, -1)
        values.append((log_values - log_evidence[:, None]).exp())
    flat = torch.cat(values, dim=1)  # [N, D (D + 1) / 2]
    out = flat.new_zeros(num_rows, num_variables, num_variables)
    out = out.index_put((torch.arange(num_rows, device=flat.device)[:, None], a[None], b[None]), flat)
    upper = out.triu(1)
    return out + upper.transpose(1, 2)


__all__ = ["MAX_COVARIANCE_VARIABLES", "MAX_RBF_TERMS", "Statistic", "bernoulli_log_terms", "component_moments",
           "covariance", "expected_statistics", "families", "finite_support", "mean", "moments", "posterior_flows",
           "rbf_expectations", "support_log_probs", "upward_from_regions", "variance"]
