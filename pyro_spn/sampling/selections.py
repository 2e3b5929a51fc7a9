"""The top-down pass: selections travel from the root to the leaf regions.

At each inner region every sum unit ``k`` selects a pair ``(i, j)`` of child units, ``y_k``; the region's pair
selection is ``Σ_k s_k · y_k`` with ``s`` the selection arriving from above; the left child receives its marginal
over ``i``, the right child over ``j``. How a layer turns ``s`` into its children's selections is a
:data:`ChildSelection`; which one runs is looked up in a :class:`Paths` table (:data:`FAST`, the default, or
:data:`REFERENCE`) by (rule, interpolation, evidence):

* ``"unit"`` interpolation (the paper's): every unit draws its own selection (:func:`per_unit`, the reference);
* ``"region"`` interpolation: the region draws once from its units' logits blended by ``s`` (:func:`per_region`):
  the same sampler for one-hot rules, ``K`` times cheaper; a different relaxation for soft ones;
* fast paths, each equal in law to its reference: :func:`exact_unit_draws` (exact, no evidence, by inverse CDF),
  :func:`straight_through_units` (straight-through, per unit, no evidence), and :func:`soft_units` and
  :func:`soft_regions` (soft, with or without evidence: the fused kernel of :mod:`pyro_spn.sampling.fused`, whose
  noise is never stored).

With evidence, every choice is drawn from its posterior ``∝ w · child likelihoods`` (``pair_ll``), the repetition
mixing at the root included.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..amortized import RowParameters
from ..gumbel import conditional_gumbel
from ..layers import pair_log_likelihood
from ..spn import RatSPN, UpwardPass
from .fused import soft_select
from .rules import RULES, Rule, select

Interpolation = Literal["unit", "region"]
INTERPOLATIONS: tuple[Interpolation, ...] = ("unit", "region")

#: ``(s [N, R, L, K], log_w [R, L, K, Q], pair_ll [N, R, L, Q] or None, τ, K_in) → (left, right)``, each
#: ``[N, R, L, K_in]``: the child selections of one einsum layer (``Q = K_in²``; ``pair_ll`` with evidence). The
#: reference paths (:func:`per_unit`, :func:`per_region`) also take per-sample weights ``log_w [N, R, L, K, Q]``.
ChildSelection = Callable[[Tensor, Tensor, "Tensor | None", "Tensor | float", int], tuple[Tensor, Tensor]]


def _split_pairs(pairs: Tensor, num_inputs: int) -> tuple[Tensor, Tensor]:
    """``[N, R, L, K_in²]`` pair selections → their left and right marginals, each ``[N, R, L, K_in]``."""
    square = pairs.unflatten(-1, (num_inputs, num_inputs))
    return square.sum(-1), square.sum(-2)


def per_unit(rule: Rule) -> ChildSelection:
    """The reference path: every unit ``k`` draws ``y_k`` over its pairs with ``rule`` (from its posterior with
    evidence), and the pair selection is ``Σ_k s_k · y_k``. Cost ``[N, R, L, K, Q]``."""

    def children(s: Tensor, log_w: Tensor, pair_ll: Tensor | None, temperature: Tensor | float,
                 num_inputs: int) -> tuple[Tensor, Tensor]:
        logits = _per_sample(log_w, s.shape[0])
        if pair_ll is not None:
            logits = logits + pair_ll[:, :, :, None, :]
        pairs = torch.einsum("nrlk,nrlkq->nrlq", s, select(logits, rule, temperature))
        return _split_pairs(pairs, num_inputs)

    children.__name__ = children.__qualname__ = f"per_unit_{rule}"
    return children


def _per_sample(log_w: Tensor, num_samples: int) -> Tensor:
    """Log-weights ``[R, L, K, Q]`` shared by every sample, or ``[N, R, L, K, Q]`` per sample (an amortized
    circuit's), as ``[N, R, L, K, Q]`` (a view)."""
    return log_w if log_w.dim() == 5 else log_w.expand((num_samples,) + log_w.shape)


def _blend(s: Tensor) -> tuple[Tensor, Tensor]:
    """``(mass [N, R, L, 1], blend [N, R, L, K])``: the mass arriving at each region and the weights that blend its
    units' logits (where nothing arrives, an unselected repetition under one-hot rules, uniform, so that its draws
    still follow the circuit)."""
    mass = s.sum(-1, keepdim=True)
    blend = torch.where(mass > 0, s / mass.clamp_min(torch.finfo(s.dtype).tiny), torch.full_like(s, 1.0 / s.shape[-1]))
    return mass, blend


def per_region(rule: Rule) -> ChildSelection:
    """The region path: one draw per region from its units' logits blended by the selection from above
    (:func:`_blend`), scaled by the mass arriving. Cost ``[N, R, L, Q]``."""

    def children(s: Tensor, log_w: Tensor, pair_ll: Tensor | None, temperature: Tensor | float,
                 num_inputs: int) -> tuple[Tensor, Tensor]:
        mass, blend = _blend(s)
        if log_w.dim() == 5:  # per-sample weights (an amortized circuit)
            logits = torch.einsum("nrlk,nrlkq->nrlq", blend, log_w)
        else:
            logits = torch.einsum("nrlk,rlkq->nrlq", blend, log_w)
        if pair_ll is not None:
            logits = logits + pair_ll
        return _split_pairs(mass * select(logits, rule, temperature), num_inputs)

    children.__name__ = children.__qualname__ = f"per_region_{rule}"
    return children


def soft_units(s: Tensor, log_w: Tensor, pair_ll: Tensor | None, temperature: Tensor | float,
               num_inputs: int) -> tuple[Tensor, Tensor]:
    """:func:`per_unit` ``("soft")`` by the fused kernel (:func:`~pyro_spn.sampling.fused.soft_select`): the same
    law, the ``[N, R, L, K, Q]`` noise and selections never stored."""
    num_samples, repetitions, regions, units = s.shape
    pairs = soft_select(s.reshape(num_samples, repetitions * regions, units), log_w.flatten(0, 1),
                        None if pair_ll is None else pair_ll.flatten(1, 2), temperature)
    return _split_pairs(pairs.view(num_samples, repetitions, regions, -1), num_inputs)


def soft_regions(s: Tensor, log_w: Tensor, pair_ll: Tensor | None, temperature: Tensor | float,
                 num_inputs: int) -> tuple[Tensor, Tensor]:
    """:func:`per_region` ``("soft")`` by the fused kernel: one unit per region whose logits are the blended ones,
    formed region-major (``[R, L, N, Q]``, one batched matmul) so that neither they nor the pairs are ever copied."""
    num_samples, repetitions, regions, _ = s.shape
    mass, blend = _blend(s)
    logits = torch.matmul(blend.permute(1, 2, 0, 3), log_w)  # [R, L, N, Q]
    if pair_ll is not None:
        logits = logits + pair_ll.permute(1, 2, 0, 3)
    pairs = soft_select(mass.reshape(num_samples, repetitions * regions, 1), None,
                        logits.flatten(0, 1).transpose(0, 1), temperature)  # [N, R*L, Q], region-major memory
    return _split_pairs(pairs.unflatten(1, (repetitions, regions)), num_inputs)


def draw_unit_pairs(log_w: Tensor, num_samples: int) -> Tensor:
    """Every sum unit's child pair for each of ``num_samples`` samples, drawn from its weights by inverse CDF.

    Args:
        log_w: ``[R, L, K, Q]`` normalized log-weights, or ``[N, R, L, K, Q]`` per sample.

    Returns:
        ``[N, R, L, K]`` pair indices in ``0..Q-1`` (no gradient).
    """
    num_repetitions, num_regions, num_units, num_pairs = log_w.shape[-4:]
    with torch.no_grad():
        cdf = log_w.exp().cumsum(-1)  # [R, L, K, Q], or [N, R, L, K, Q] per sample
        u = torch.rand((num_repetitions, num_regions, num_units, num_samples), dtype=log_w.dtype, device=log_w.device)
        if log_w.dim() == 5:  # per-sample weights: the same uniforms, one per (sample, unit)
            targets = (u.permute(3, 0, 1, 2)[..., None] * cdf[..., -1:]).contiguous()
            return torch.searchsorted(cdf, targets, right=True)[..., 0].clamp_max(num_pairs - 1)
        index = torch.searchsorted(cdf, u * cdf[..., -1:], right=True).clamp_max(num_pairs - 1)
    return index.permute(3, 0, 1, 2)


def _scatter_pairs(s: Tensor, index: Tensor, num_inputs: int) -> tuple[Tensor, Tensor]:
    """The child selections of units' drawn pairs ``index [N, R, L, K]`` (``i * K_in + j``), weighted by the units'
    selections ``s [N, R, L, K]``: ``Σ_k s_k`` over the units whose pair has left ``i`` (right ``j``)."""
    left = s.new_zeros(s.shape[:3] + (num_inputs,)).scatter_add(-1, index // num_inputs, s)
    right = s.new_zeros(s.shape[:3] + (num_inputs,)).scatter_add(-1, index % num_inputs, s)
    return left, right


def exact_unit_draws(s: Tensor, log_w: Tensor, pair_ll: Tensor | None, temperature: Tensor | float,
                     num_inputs: int) -> tuple[Tensor, Tensor]:
    """Exact sampling without evidence: every unit draws its pair by inverse CDF (``[N, R, L, K]`` draws instead
    of ``[N, R, L, K, Q]`` Gumbel noise) and the one-hot ``s`` picks the draws."""
    return _scatter_pairs(s, draw_unit_pairs(log_w, s.shape[0]), num_inputs)


def straight_through_units(s: Tensor, log_w: Tensor, pair_ll: Tensor | None, temperature: Tensor | float,
                           num_inputs: int) -> tuple[Tensor, Tensor]:
    """Per-unit straight-through selections without evidence, without the ``K``-fold (and ``R``-fold) cost.

    With one-hot ``s`` (forward), a unit's soft ``y`` receives a gradient only where ``s`` is 1: the selected unit
    of the selected repetition. Every other unit contributes its hard draw alone (to the gradient of ``s``). So
    every unit draws its child pair by inverse CDF, the draws are scattered into the child selections with
    weights ``s``, and the soft selection of the selected units alone is built from Gumbel noise conditioned on
    their draws: the same estimator in law as :func:`per_unit` ``("straight_through")``, on ``[N, L, Q]`` and
    ``[N, R, L, K]`` tensors instead of ``[N, R, L, K, Q]``.
    """
    num_samples, num_regions = s.shape[0], log_w.shape[-3]
    samples = torch.arange(num_samples, device=s.device)
    with torch.no_grad():
        index = draw_unit_pairs(log_w, num_samples)  # [N, R, L, K]
        repetition = s.detach().sum((2, 3)).argmax(1)  # [N], the selected repetition
        unit = s.detach()[samples, repetition].argmax(-1)  # [N, L], its selected units
        chosen = index[samples, repetition].gather(-1, unit[..., None])[..., 0]  # [N, L]
    left, right = _scatter_pairs(s, index, num_inputs)
    region = torch.arange(num_regions, device=s.device)[None, :]
    if log_w.dim() == 5:  # per-sample weights
        logits = log_w[samples[:, None], repetition[:, None], region, unit]  # [N, L, Q]
    else:
        logits = log_w[repetition[:, None], region, unit]
    perturbed = conditional_gumbel(logits, chosen)
    soft = ((logits + (perturbed - logits).detach()) / temperature).softmax(-1)
    delta_left, delta_right = _split_pairs(soft - soft.detach(), num_inputs)  # zero forward
    left = left.index_put((samples, repetition), delta_left, accumulate=True)
    right = right.index_put((samples, repetition), delta_right, accumulate=True)
    return left, right


Key = tuple[Rule, Interpolation, bool]


@dataclass(frozen=True)
class Paths:
    """A dispatch table of the sampler.

    Attributes:
        children: ``(rule, interpolation, evidence) →`` the :data:`ChildSelection` of every einsum layer.
        closed_form_leaves: soft leaf values of leaves with Gaussian relaxations (Normal, unclamped Binomial) drawn
            as the Gaussian ``Σ a μ + sqrt(Σ a² σ²) ξ`` they sum to, one draw per variable, instead of a relaxed
            draw of every component (:func:`~pyro_spn.sampling.leaf_values.leaf_values`).
    """

    children: Mapping[Key, ChildSelection]
    closed_form_leaves: bool


def _tables() -> tuple[Paths, Paths]:
    """The fast table and the reference table, each path of the first equal in law to the second's."""
    references: dict[Key, ChildSelection] = {}
    for rule in RULES:
        unit, region = per_unit(rule), per_region(rule)
        for evidence in (False, True):
            # one-hot rules: per region is the same sampler as per unit; expected flows are per unit
            references[(rule, "unit", evidence)] = unit
            references[(rule, "region", evidence)] = unit if rule == "expected" else region
    fast = dict(references)
    for evidence in (False, True):
        fast[("argmax", "unit", evidence)] = references[("argmax", "region", evidence)]  # cheaper, the same
        fast[("soft", "unit", evidence)] = soft_units
        fast[("soft", "region", evidence)] = soft_regions
    fast[("exact", "unit", False)] = fast[("exact", "region", False)] = exact_unit_draws
    fast[("straight_through", "unit", False)] = straight_through_units
    return Paths(fast, closed_form_leaves=True), Paths(references, closed_form_leaves=False)


#: ``FAST``: the default table, the fast paths; ``REFERENCE``: the plain paths each entry of ``FAST`` must equal in law.
FAST, REFERENCE = _tables()
#: The paths of per-sample weights (an amortized circuit's): :data:`FAST`'s one-hot paths, which take them, and the
#: reference paths for soft selections (the fused kernel shares one set of weights).
ROWS = Paths({key: FAST.children[key] if key[0] != "soft" else REFERENCE.children[key] for key in FAST.children},
             closed_form_leaves=False)


def top_down(spn: RatSPN, num_samples: int, rule: Rule, temperature: Tensor | float = 1.0,
             interpolation: Interpolation = "unit", upward: UpwardPass | None = None, paths: Paths = FAST,
             rows: RowParameters | None = None) -> Tensor:
    """Selections from the root down to the leaf regions.

    Args:
        spn: the circuit.
        num_samples: ``N`` (``upward``'s batch size if given).
        rule: the selection rule (:mod:`pyro_spn.sampling.rules`).
        temperature: ``τ``.
        interpolation: ``"unit"`` or ``"region"``.
        upward: an upward pass with evidence; every choice is then drawn from its posterior.
        paths: the dispatch table (:data:`REFERENCE` to run the reference paths).
        rows: per-sample parameters (an amortized circuit, ``N`` sets); the :data:`ROWS` paths then run, whatever
            ``paths`` says.

    Returns:
        ``[N, R, 2^D, I]``: the selection reaching every leaf component (one-hot over ``(r, i)`` for one-hot rules;
        summing to 1 over ``(r, i)`` per leaf region).
    """
    layers = spn.einsum_layers
    if rows is None:
        root_logits = spn.root.log_weights().expand(num_samples, spn.num_repetitions)
        log_weights = [layer.log_weights() for layer in layers]
    else:
        root_logits, log_weights, paths = rows.root, rows.inner, ROWS
    if upward is not None:
        root_logits = root_logits + upward.repetition_log_likelihood
    s = select(root_logits, rule, temperature)[:, :, None, None]  # [N, R, 1, 1]
    children = paths.children[(rule, interpolation, upward is not None)]
    for index in reversed(range(len(layers))):
        layer = layers[index]
        pair_ll = None if upward is None else pair_log_likelihood(upward.layer_inputs[index])  # [N, R, L, Q]
        left, right = children(s, log_weights[index], pair_ll, temperature, layer.num_inputs)
        s = torch.stack([left, right], dim=3).flatten(2, 3)  # [N, R, 2L, K_in]
    return s
