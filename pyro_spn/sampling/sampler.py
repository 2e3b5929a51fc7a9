"""One top-down pass and the leaf values: samples of every kind, conditional samples and max-product completions."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import checks
from ..amortized import RowParameters, upward_rows
from ..spn import RatSPN, UpwardPass
from .leaf_values import leaf_values, leaf_values_rows
from .rules import RULES, Rule
from .selections import FAST, INTERPOLATIONS, Interpolation, Paths, top_down


def sample(spn: RatSPN, num_samples: int, rule: Rule = "exact", temperature: Tensor | float = 1.0,
           interpolation: Interpolation = "unit", evidence: Tensor | None = None, paths: Paths = FAST,
           rows: RowParameters | None = None) -> Tensor:
    """Draws ``[N, *event_shape]`` samples with one top-down pass.

    Args:
        spn: the circuit.
        num_samples: ``N``; with ``evidence`` it must equal the evidence's batch size.
        rule: ``"exact"`` (no gradient), ``"soft"``, ``"straight_through"``, ``"argmax"`` or ``"expected"``
            (see :mod:`pyro_spn.sampling.rules`).
        temperature: ``τ > 0``.
        interpolation: ``"unit"`` or ``"region"`` (see :mod:`pyro_spn.sampling.selections`).
        evidence: ``[N, *event_shape]`` with NaN where a value is to be drawn; observed entries are returned
            unchanged and every choice is drawn from its posterior (its max-product posterior for ``"argmax"``).
        paths: the dispatch table (:data:`~pyro_spn.sampling.selections.REFERENCE` for the reference paths).
        rows: ``N`` parameter sets, one per sample (an amortized circuit, :mod:`pyro_spn.amortized`).
    """
    checks.choice("rule", rule, RULES)
    checks.choice("interpolation", interpolation, INTERPOLATIONS)
    num_samples = checks.integer("num_samples", num_samples, minimum=0)
    checks.allocatable("num_samples", (num_samples, *spn.event_shape), spn.root.logits.dtype, spn.root.logits.device)
    temperature = checks.scalar_temperature("temperature", temperature)
    if rows is not None and rows.num_rows != num_samples:
        raise ValueError(f"rows: expected {num_samples} parameter sets (one per sample), got {rows.num_rows}")
    upward = None
    if evidence is not None:
        if evidence.shape[0] != num_samples:
            raise ValueError(f"evidence: expected batch size {num_samples}, got {evidence.shape[0]}")
        upward = _upward(spn, evidence, rule == "argmax", rows)
    return _complete(spn, num_samples, rule, temperature, interpolation, upward, evidence, paths, rows)


def _upward(spn: RatSPN, x: Tensor, max_product: bool, rows: RowParameters | None) -> UpwardPass:
    """The upward pass of ``x``, under the circuit's parameters or per-row ones."""
    return spn.upward(x, max_product) if rows is None else upward_rows(spn, x, rows, max_product)


def mpe(spn: RatSPN, evidence: Tensor, rows: RowParameters | None = None) -> tuple[Tensor, Tensor]:
    """The max-product (Viterbi) completion: max-product upward, argmax down, leaf modes.

    It maximizes the joint density of the completion *and* the circuit's latent choices, which is the most probable
    completion only in deterministic circuits (in general it is an approximation of the MAP).

    Args:
        evidence: ``[N, *event_shape]``, NaN = to be completed.
        rows: ``N`` parameter sets, one per row (an amortized circuit).

    Returns:
        ``(completion [N, *event_shape], log max-product value [N])``; the completion keeps every observed entry.
    """
    upward = _upward(spn, evidence, True, rows)
    completion = _complete(spn, evidence.shape[0], "argmax", 1.0, "region", upward, evidence, FAST, rows)
    return completion, upward.log_likelihood


def _complete(spn: RatSPN, num_samples: int, rule: Rule, temperature: Tensor | float, interpolation: Interpolation,
              upward: UpwardPass | None, evidence: Tensor | None, paths: Paths,
              rows: RowParameters | None = None) -> Tensor:
    """Top-down pass and leaf values, observed entries of ``evidence`` kept; ``[N, *event_shape]``."""
    selection = top_down(spn, num_samples, rule, temperature, interpolation, upward, paths, rows)
    if rows is None:
        values = leaf_values(spn.leaf_layer, selection, rule, temperature, paths.closed_form_leaves)
    else:
        values = leaf_values_rows(spn.leaf_layer, selection, rule, rows.leaf, temperature)
    if evidence is not None:
        observed = spn.flatten_data(evidence)
        values = torch.where(torch.isnan(observed), values, observed)
    return spn.unflatten_data(values)
