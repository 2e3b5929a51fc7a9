"""Sampling from a circuit: the selection rules, the one top-down pass and its dispatch table, the leaf values.

=========================  ===========================================================================
:mod:`.rules`              how a sum unit chooses: exact, soft, straight-through, argmax, expected
:mod:`.top_down`           the top-down pass; the table (rule × interpolation × evidence → path)
:mod:`.leaf_values`        the variables' values given the selections reaching the leaves
:mod:`.sampler`            :func:`sample` (every kind, with or without evidence) and :func:`mpe`
=========================  ===========================================================================
"""

from .rules import ONE_HOT_RULES, RULES, Rule, select
from .sampler import mpe, sample
from .top_down import INTERPOLATIONS, PATHS, REFERENCE_PATHS, ChildSelection, Interpolation, top_down

__all__ = ["INTERPOLATIONS", "ONE_HOT_RULES", "PATHS", "REFERENCE_PATHS", "RULES", "ChildSelection",
           "Interpolation", "Rule", "mpe", "sample", "select", "top_down"]
