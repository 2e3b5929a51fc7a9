"""Sampling from a circuit: the selection rules, the one top-down pass and its dispatch table, the leaf values.

=========================  ===========================================================================
:mod:`.rules`              how a sum unit chooses: exact, soft, straight-through, argmax, expected
:mod:`.selections`         the top-down pass of selections; the table (rule × interpolation × evidence → path)
:mod:`.fused`              soft selections of many units at once, by the native kernel (noise never stored)
:mod:`.leaf_values`        the variables' values given the selections reaching the leaves
:mod:`.sampler`            :func:`sample` (every kind, with or without evidence) and :func:`mpe`
=========================  ===========================================================================
"""

from .rules import ONE_HOT_RULES, RULES, Rule, select
from .sampler import mpe, sample
from .selections import FAST, INTERPOLATIONS, REFERENCE, ROWS, ChildSelection, Interpolation, Paths, top_down

__all__ = ["FAST", "INTERPOLATIONS", "ONE_HOT_RULES", "REFERENCE", "ROWS", "RULES", "ChildSelection", "Interpolation",
           "Paths", "Rule", "mpe", "sample", "select", "top_down"]
