"""Region graphs: random binary trees as in RAT-SPN (Peharz et al., 2020).

A region graph fixes *which* variables every node of the circuit is over. A random binary tree of
depth ``D`` recursively halves a random permutation of the ``F`` variables ``D`` times, giving
``L = 2**D`` leaf regions whose sizes differ by at most one. ``R`` repetitions each draw a fresh
permutation; the circuit mixes the repetitions at the root.

The layers need the leaf regions as dense index tensors, so every leaf region is padded to the same
size ``M = ceil(F / L)`` with the *padding index* ``F``, a virtual variable that is always marginalized
(its leaf contributes ``log 1 = 0``). Regions that hold only padding (``F < L``) are constant
(likelihood 1) and remain correct: the circuit stays smooth and decomposable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RandomBinaryTrees:
    """``R`` random binary trees of depth ``D`` over ``F`` variables, in padded tensor form.

    Attributes:
        num_features: ``F``.
        depth: ``D``.
        num_repetitions: ``R``.
        leaf_slots: ``LongTensor [R, L, M]``; ``leaf_slots[r, l, m]`` is the variable at slot ``m`` of
            leaf region ``l`` in repetition ``r``, or ``F`` for padding. Sibling regions are adjacent:
            regions ``2i`` and ``2i + 1`` are the two halves of region ``i`` one level up.
        variable_region: ``LongTensor [R, F]``; the leaf region holding each variable per repetition.
    """

    num_features: int
    depth: int
    num_repetitions: int
    leaf_slots: torch.Tensor
    variable_region: torch.Tensor

    @property
    def num_leaf_regions(self) -> int:
        """``L = 2**D``."""
        return 2**self.depth

    @property
    def slots_per_region(self) -> int:
        """``M = ceil(F / L)``, the padded size of a leaf region."""
        return self.leaf_slots.shape[-1]


def _split(variables: list[int], depth: int) -> list[list[int]]:
    """Halves ``variables`` ``depth`` times (first half gets the extra element); returns ``2**depth`` lists."""
    if depth == 0:
        return [variables]
    half = math.ceil(len(variables) / 2)
    return _split(variables[:half], depth - 1) + _split(variables[half:], depth - 1)


def random_binary_trees(
    num_features: int, depth: int, num_repetitions: int, seed: int = 0
) -> RandomBinaryTrees:
    """Draws ``num_repetitions`` random binary trees of depth ``depth`` over ``num_features`` variables.

    Args:
        num_features: ``F >= 1``.
        depth: ``D >= 1``; there are ``2**D`` leaf regions per repetition.
        num_repetitions: ``R >= 1``.
        seed: seeds the permutations; the same arguments always give the same trees.

    Returns:
        The trees as padded index tensors, see :class:`RandomBinaryTrees`.
    """
    for name, value, low in (("num_features", num_features, 1), ("depth", depth, 1),
                             ("num_repetitions", num_repetitions, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    generator = torch.Generator().manual_seed(seed)
    num_regions = 2**depth
    slots_per_region = math.ceil(num_features / num_regions)
    leaf_slots = torch.full((num_repetitions, num_regions, slots_per_region), num_features, dtype=torch.long)
    variable_region = torch.empty(num_repetitions, num_features, dtype=torch.long)
    for r in range(num_repetitions):
        permutation = torch.randperm(num_features, generator=generator).tolist()
        for region, variables in enumerate(_split(permutation, depth)):
            leaf_slots[r, region, : len(variables)] = torch.tensor(variables, dtype=torch.long)
            variable_region[r, variables] = region
    return RandomBinaryTrees(num_features, depth, num_repetitions, leaf_slots, variable_region)
