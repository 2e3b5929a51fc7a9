"""Amortized circuits: one circuit structure, its parameters given per row of the data.

A flat parameter vector ``θ [P]`` (:attr:`~pyro_spn.spn.RatSPN.flat_parameter_layout`) holds every parameter of a
circuit, unconstrained. With ``θ [N, P]``, one vector per row, row ``n`` of the data is evaluated (or drawn) under
its own parameter set: :class:`RowParameters` holds them in the form the passes use, and :func:`upward_rows` is the
upward pass with them. The top-down pass takes them too (:func:`pyro_spn.sampling.top_down`), so every sampling
rule, evidence and max-product run per row.

Every pass is the same batched computation as the circuit's own, with a leading row dimension on the parameters: no
loop over rows. Leaf regions are the sums of the components' exact log-densities (no exponential-family
contraction: with per-row parameters it would save nothing) and every sum layer is a log-sum-exp over the
``[N, R, L, K_out, K_in²]`` scores, exact whatever their spread.

Shapes: ``N`` rows, ``C`` channels, ``F`` variables, ``R`` repetitions, ``L`` regions, ``I`` leaf components,
``K`` sum units, ``Q = K_in²`` pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .layers import LeafLayer, pair_log_likelihood
from .leaves import Params
from .log_einsum import log_sum_exp
from .spn import RatSPN, UpwardPass


@dataclass
class RowParameters:
    """A circuit's parameters, one set per row.

    Attributes:
        leaf: the leaf components' constrained parameters, each ``[N, C, F, I, R, *E]``.
        inner: every einsum layer's normalized log-weights, bottom to top, each ``[N, R, L, K_out, K_in²]``.
        root: the repetition mixing's normalized log-weights ``[N, R]``.
    """

    leaf: Params
    inner: list[Tensor]
    root: Tensor

    @property
    def num_rows(self) -> int:
        """``N``."""
        return self.root.shape[0]


def row_parameters(spn: RatSPN, flat: Tensor) -> RowParameters:
    """The parameter sets of flat vectors ``flat [N, P]`` (unconstrained, the layout of
    :attr:`~pyro_spn.spn.RatSPN.flat_parameter_layout`), constrained and normalized; differentiable w.r.t. ``flat``."""
    if flat.dim() != 2:
        raise ValueError(f"flat: expected shape [N, {spn.flat_parameter_size}], got {tuple(flat.shape)}")
    tensors = spn.unflatten_parameters(flat.to(spn.root.logits.dtype))
    prefix = "leaf_layer."
    raw = {name[len(prefix):]: value for name, value in tensors.items() if name.startswith(prefix)}
    leaf = torch.vmap(spn.leaf.constrain)(raw)  # constrain assumes [C, F, I, R] parameters: one row at a time
    inner = [tensors[f"inner_layers.{index}.logits"].flatten(-2).log_softmax(-1)
             for index in range(len(spn.einsum_layers))]
    return RowParameters(leaf, inner, tensors["root.logits"].log_softmax(-1))


def leaf_log_likelihood_rows(layer: LeafLayer, x: Tensor, params: Params, max_product: bool = False) -> Tensor:
    """The leaf regions' log-likelihoods ``[N, R, L, I]`` of ``x [N, C, F]`` (NaN = missing: marginalized, or its
    mode's log-density for max-product; an infinite entry makes its regions impossible) under per-row parameters
    ``params`` (each ``[N, C, F, I, R, *E]``); base measure included."""
    missing, infinite = torch.isnan(x), torch.isinf(x)
    safe = torch.where(missing | infinite, torch.zeros_like(x), x)[..., None, None]  # [N, C, F, 1, 1]
    leaf = layer.leaf
    log_prob = leaf.log_prob(safe, params)  # [N, C, F, I, R]
    absent = torch.zeros_like(log_prob) if not max_product else leaf.log_prob(leaf.mode(params), params)
    log_prob = torch.where(missing[..., None, None], absent, log_prob)
    log_prob = log_prob.masked_fill(infinite[..., None, None], -math.inf)
    return region_sums(layer, log_prob.sum(1))


def region_sums(layer: LeafLayer, per_variable: Tensor) -> Tensor:
    """Per-variable values ``[N, F, I, R]`` summed into the leaf regions: ``[N, R, L, I]`` (a region without variables
    is 0). One ``scatter_add`` by each variable's region, whose backward is a gather."""
    moved = per_variable.permute(0, 3, 1, 2)  # [N, R, F, I]
    index = layer.variable_region[None, :, :, None].expand(moved.shape)
    out = moved.new_zeros(moved.shape[:2] + (layer.leaf_slots.shape[1],) + moved.shape[3:])
    return out.scatter_add(2, index, moved)


def upward_rows(spn: RatSPN, x: Tensor, rows: RowParameters, max_product: bool = False) -> UpwardPass:
    """:meth:`~pyro_spn.spn.RatSPN.upward` of ``x [N, *event_shape]`` with row ``n`` under parameter set ``n`` of
    ``rows``."""
    flat = spn.flatten_data(x)
    if rows.num_rows != flat.shape[0]:
        raise ValueError(f"x: expected {rows.num_rows} rows (one per parameter set), got {flat.shape[0]}")
    return upward_from_regions_rows(rows, leaf_log_likelihood_rows(spn.leaf_layer, flat, rows.leaf, max_product),
                                    max_product)


def upward_from_regions_rows(rows: RowParameters, leaf_regions: Tensor, max_product: bool = False) -> UpwardPass:
    """The upward pass above the leaf regions' log-values ``[N, R, L, I]``, row ``n`` under parameter set ``n``."""
    ll, inputs = leaf_regions, []
    for log_w in rows.inner:
        inputs.append(ll)
        scores = pair_log_likelihood(ll)[:, :, :, None, :] + log_w  # [N, R, L, K_out, Q]
        ll = scores.amax(-1) if max_product else log_sum_exp(scores)
    repetitions = ll[:, :, 0, 0]
    scores = repetitions + rows.root
    root = scores.amax(-1) if max_product else log_sum_exp(scores)
    return UpwardPass(inputs, repetitions, root)
