"""Leaf values at the bottom of the top-down pass: ``x_v = Σ_{r,i} a_{v,r,i} · x_{v,r,i}``, with ``a`` the selection
reaching variable ``v``'s leaf regions and ``x_{v,r,i}`` a draw of leaf component ``(r, i)``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..layers import LeafLayer
from ..leaves import Params
from .rules import ONE_HOT_RULES, Rule


class ContractedSelectionGradient(torch.autograd.Function):
    """The straight-through gradient of ``Σ_{r,i} a[n, r, l(v), i] · x̃[n, c, v, i, r]`` w.r.t. the leaf selections
    ``a``, for leaves whose relaxed draws are ``x̃ = μ + σ ε``, without drawing them.

    The forward value is zero (the term only enters a sample as ``t - t.detach()``). The gradient of
    ``a[n, r, l, i]`` is ``Σ_{c, v ∈ (r, l)} g[n, c, v] · x̃[n, c, v, i, r]``: for the selected component ``x̃`` is
    the coupled relaxation of the exact draw; for every other component the sum of independent Gaussians is
    drawn at once as ``Σ g μ + sqrt(Σ g² σ²) · ξ``, the same law as drawing every ``x̃``, from ``[N, R, L, I]``
    instead of ``[N, C, F, I, R]`` random numbers.
    """

    @staticmethod
    def forward(ctx, selection: Tensor, layer: LeafLayer, mean_slots: Tensor, variance_slots: Tensor,
                coupled: Tensor) -> Tensor:
        """Zeros like ``coupled`` ``[N, C, F]``; saves what the backward needs (``selection`` ``[N, R, L, I]``, the
        components' means and variances in slots ``[R, L, M, C, I]``)."""
        ctx.layer = layer
        ctx.save_for_backward(selection.detach(), mean_slots, variance_slots, coupled)
        return coupled.new_zeros(coupled.shape)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        """The selections' gradient ``[N, R, L, I]`` (see the class docstring) for ``grad_output`` ``[N, C, F]``."""
        hard, mean_slots, variance_slots, coupled = ctx.saved_tensors
        layer: LeafLayer = ctx.layer
        g = layer.data_slots(grad_output)  # [R, L, M, C, N]
        mean = layer.contract_slots(g, mean_slots).permute(3, 0, 1, 2)  # [N, R, L, I]
        std = layer.contract_slots(g * g, variance_slots).clamp_min(0).sqrt().permute(3, 0, 1, 2)
        grad = mean + std * torch.randn_like(std)
        chosen = layer.data_slots(grad_output * coupled).sum((2, 3)).permute(2, 0, 1)  # [N, R, L]
        grad = torch.where(hard > 0.5, chosen[..., None], grad)
        return grad, None, None, None, None


def selected_index(layer: LeafLayer, leaf_selection: Tensor) -> Tensor:
    """For one-hot ``[N, R, L, I]`` leaf selections: the selected component of every variable as a flat index
    ``i * R + r`` into ``I·R``, shape ``[N, F]``."""
    selection = leaf_selection.detach()
    repetition = selection.sum((2, 3)).argmax(1)  # [N]
    samples = torch.arange(selection.shape[0], device=selection.device)
    unit = selection[samples, repetition].argmax(-1)  # [N, L]
    component = unit.gather(1, layer.variable_region[repetition])  # [N, F]
    return component * layer.num_repetitions + repetition[:, None]


def selected_params(layer: LeafLayer, index: Tensor, rows: Params | None = None) -> Params:
    """Parameters of the selected component of every variable, each ``[N, C, F, *E]``; ``index [N, F]`` into
    ``I·R``; from the layer's parameters, or from per-row ones ``rows`` (each ``[N, C, F, I, R, *E]``)."""
    features = torch.arange(layer.num_features, device=index.device)[None, :]
    if rows is None:
        return {name: p.flatten(2, 3)[:, features, index].movedim(0, 1) for name, p in layer.params().items()}
    samples = torch.arange(index.shape[0], device=index.device)[:, None, None]
    channels = torch.arange(layer.num_channels, device=index.device)[None, :, None]
    return {name: p.flatten(3, 4)[samples, channels, features[:, None], index[:, None]] for name, p in rows.items()}


def _straight_through_values(layer: LeafLayer, leaf_selection: Tensor, index: Tensor, value: Tensor,
                             coupled: Tensor, temperature: Tensor | float, rows: Params | None = None) -> Tensor:
    """Straight-through leaf values: ``value`` forward; backward, the gradient of the relaxed
    ``Σ a · x̃`` w.r.t. the selections ``a`` and of the coupled relaxation ``coupled`` w.r.t. the parameters (the
    layer's, or per-row ones ``rows``, each ``[N, C, F, I, R, *E]``)."""
    moments = None if rows is not None else layer.leaf.gaussian_relaxation(layer.params())
    if moments is not None:
        mean, std = (layer.component_slots(m.detach()) for m in moments)
        term = ContractedSelectionGradient.apply(leaf_selection, layer, mean, std * std, coupled.detach())
        soft = term + (coupled - coupled.detach())
        return value + (soft - soft.detach())
    a = layer.variable_selection(leaf_selection)  # [N, F, I, R]
    # Other components enter the gradient only through their values (their selection is 0 forward), so they are
    # drawn without autograd history.
    with torch.no_grad():
        params = layer.expanded_params((leaf_selection.shape[0],)) if rows is None else rows
        relaxed = layer.leaf.relaxed(params, temperature)  # [N, C, F, I, R]
        is_selected = F.one_hot(index, a.shape[2] * a.shape[3]).view(a.shape).bool()[:, None]
        relaxed = torch.where(is_selected, coupled[..., None, None], relaxed)
    soft = (a[:, None] * relaxed).sum((-2, -1)) + (coupled - coupled.detach())
    return value + (soft - soft.detach())


class SlotsToVariables(torch.autograd.Function):
    """Per-slot values of every repetition summed into per-variable values: ``x[v] = Σ_r slots[r, slot_r(v)]``.

    Every variable holds exactly one slot per repetition, so both directions are gathers (``index_select``): the
    forward reads each variable's slots, the backward hands each slot its variable's gradient (zero for padding).
    Autograd's own backward of the forward gather would be a scatter (``index_add``), many times slower on the CPU.
    """

    @staticmethod
    def forward(ctx, slots: Tensor, leaf_slots: Tensor, num_features: int) -> Tensor:
        """``slots [R * L * M, *E]`` (the layout of ``leaf_slots [R, L, M]``, padding index ``F = num_features``)
        → ``[F, *E]``."""
        repetitions = leaf_slots.shape[0]
        per_repetition = leaf_slots.reshape(repetitions, -1)  # [R, L*M]
        position = torch.arange(per_repetition.shape[1], device=slots.device).expand_as(per_repetition)
        slot_of = per_repetition.new_empty(repetitions, num_features + 1).scatter_(1, per_repetition, position)
        offsets = torch.arange(repetitions, device=slots.device)[:, None] * per_repetition.shape[1]
        gathered = slots.index_select(0, (offsets + slot_of[:, :num_features]).flatten())
        ctx.save_for_backward(leaf_slots)
        return gathered.view(repetitions, num_features, *slots.shape[1:]).sum(0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        """``grad [F, *E]`` → the slots' gradient ``[R * L * M, *E]``."""
        (leaf_slots,) = ctx.saved_tensors
        padded = torch.cat([grad, grad.new_zeros((1,) + grad.shape[1:])])
        return padded.index_select(0, leaf_slots.flatten()), None, None


def gaussian_mixture_values(layer: LeafLayer, leaf_selection: Tensor, moments: tuple[Tensor, Tensor]) -> Tensor:
    """Soft leaf values of leaves whose relaxed draws are ``μ + σ ε``, without drawing every component.

    ``x_v = Σ_{r,i} a_{v,r,i} (μ_{v,i,r} + σ_{v,i,r} ε_{v,i,r})`` with independent ``ε`` is, given the selections
    ``a``, the Gaussian ``Σ a μ + sqrt(Σ a² σ²) ξ``: the same law from ``[N, C, F]`` noise instead of
    ``[N, C, F, I, R]`` (and a different per-sample gradient with the same expectation, both being
    reparameterizations of that law). The sums run per leaf region as batched matmuls, then
    :class:`SlotsToVariables` adds each variable's slots up.

    Args:
        layer: the circuit's leaf layer.
        leaf_selection: ``[N, R, L, I]``.
        moments: ``(μ, σ)``, each ``[C, F, I, R]``.

    Returns:
        ``[N, C, F]``.
    """
    mean, std = moments
    a = leaf_selection.permute(1, 2, 3, 0)  # [R, L, I, N]
    sums = []
    for weights, values in ((a, mean), (a * a, std * std)):
        slots = layer.component_slots(values)  # [R, L, M, C, I]
        repetitions, regions, num_slots, channels, components = slots.shape
        per_slot = torch.matmul(slots.reshape(repetitions * regions, num_slots * channels, components),
                                weights.reshape(repetitions * regions, components, -1))  # [R*L, M*C, N]
        per_variable = SlotsToVariables.apply(per_slot.view(-1, channels, per_slot.shape[-1]), layer.leaf_slots,
                                              layer.num_features)
        sums.append(per_variable.permute(2, 1, 0))  # [N, C, F]
    location, variance = sums
    return location + variance.clamp_min(0).sqrt() * torch.randn_like(location)


def leaf_values(layer: LeafLayer, leaf_selection: Tensor, rule: Rule, temperature: Tensor | float = 1.0,
                closed_form: bool = True) -> Tensor:
    """Values of all variables given the selections reaching the leaves.

    Exact (``"exact"``), relaxed (``"soft"``), exact forward with the relaxation's gradient
    (``"straight_through"``), the mode (``"argmax"``) or the mean (``"expected"``). One-hot rules draw one value
    per variable, from the selected component only.

    Args:
        layer: the circuit's leaf layer.
        leaf_selection: ``[N, R, L, I]`` from :func:`~pyro_spn.sampling.selections.top_down`.
        rule: the rule the selections were made with.
        temperature: ``τ`` of the leaves' relaxations.
        closed_form: soft values of leaves with Gaussian relaxations by :func:`gaussian_mixture_values` (one draw per
            variable) rather than a relaxed draw of every component.

    Returns:
        ``[N, C, F]``.
    """
    leaf = layer.leaf
    if rule in ONE_HOT_RULES:
        index = selected_index(layer, leaf_selection)  # [N, F]
        selected = selected_params(layer, index)
        if rule == "argmax":
            return leaf.mode(selected)
        value = leaf.sample(selected)
        if rule == "exact":
            return value
        coupled = leaf.relaxed(selected, temperature, value)  # [N, C, F]
        return _straight_through_values(layer, leaf_selection, index, value, coupled, temperature)
    moments = leaf.gaussian_relaxation(layer.params()) if rule == "soft" and closed_form else None
    if moments is not None:
        return gaussian_mixture_values(layer, leaf_selection, moments)
    a = layer.variable_selection(leaf_selection)[:, None]  # [N, 1, F, I, R]
    if rule == "expected":
        return (a * layer.mean()).sum((-2, -1))
    return (a * leaf.relaxed(layer.expanded_params((leaf_selection.shape[0],)), temperature)).sum((-2, -1))


def leaf_values_rows(layer: LeafLayer, leaf_selection: Tensor, rule: Rule, params: Params,
                     temperature: Tensor | float = 1.0) -> Tensor:
    """:func:`leaf_values` under per-row parameters ``params`` (each ``[N, C, F, I, R, *E]``, an amortized circuit):
    ``[N, C, F]``. One-hot rules draw one value per variable from its selected component (the same draws as
    :func:`leaf_values` for the same noise); soft and expected values weight every component's relaxed draw or mean
    by the selections, ``Σ_{r,i} a_{v,r,i} · x_{v,r,i}``."""
    leaf = layer.leaf
    if rule in ONE_HOT_RULES:
        index = selected_index(layer, leaf_selection)  # [N, F]
        selected = selected_params(layer, index, params)
        if rule == "argmax":
            return leaf.mode(selected)
        value = leaf.sample(selected)
        if rule == "exact":
            return value
        coupled = leaf.relaxed(selected, temperature, value)
        return _straight_through_values(layer, leaf_selection, index, value, coupled, temperature, params)
    values = leaf.mean(params) if rule == "expected" else leaf.relaxed(params, temperature)
    a = layer.variable_selection(leaf_selection)[:, None]  # [N, 1, F, I, R]
    return (a * values).sum((-2, -1))
