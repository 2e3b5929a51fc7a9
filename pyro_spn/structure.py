"""Region graphs: random binary trees as in RAT-SPN (Peharz et al., 2020).

A region graph fixes *which* variables every node of the circuit is over. A random binary tree of
depth ``D`` recursively halves a random permutation of the ``F`` variables ``D`` times, giving
``L = 2**D`` leaf regions whose sizes differ by at most one. ``R`` repetitions each draw a fresh
permutation; the circuit mixes the repetitions at the root.

The layers need the leaf regions as dense index tensors, so every leaf region is padded to the same
size ``M = ceil(F / L)`` with the *padding index* ``F``, a virtual variable that is always marginalized
(its leaf contributes ``log 1 = 0``). Regions that hold only padding (``F < L``) are constant
(likelihood 1) and remain correct: the circuit stays smooth and decomposable.

Any other tree of scopes fits the same layout (:func:`trees_from_regions`): a partition into ``k > 2`` regions
becomes a balanced chain of binary splits, and a leaf region reached above depth ``D`` is paired with empty
(all-padding) sibling regions down to depth ``D``. :mod:`pyro_spn.region_graphs` builds image region graphs and
user-supplied ones this way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import checks

#: The deepest binary embedding of a region tree (the depth limit of :class:`~pyro_spn.RatSPN`).
MAX_DEPTH = 30
#: The most leaf-region slots ``R · 2**D · M`` an embedding may have (128 MiB of indices).
MAX_SLOTS = 2**24


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


@dataclass(frozen=True)
class Region:
    """A node of a region tree: the variables it is over and its partition into child regions.

    Attributes:
        scope: the region's variables (indices in ``[0, F)``, each once).
        children: the partition of ``scope`` into at least two regions with disjoint scopes covering it; empty for a
            leaf region.
    """

    scope: tuple[int, ...]
    children: tuple[Region, ...] = ()

    @classmethod
    def partition(cls, children: Sequence[Region]) -> Region:
        """The region whose partition is ``children`` (its scope is their scopes, concatenated)."""
        return cls(tuple(v for child in children for v in child.scope), tuple(children))


def trees_from_regions(roots: Sequence[Region], num_features: int, depth: int | None = None) -> RandomBinaryTrees:
    """Embeds one region tree per repetition in the padded balanced-binary layout of :class:`RandomBinaryTrees`.

    A partition into ``k > 2`` regions becomes a balanced chain of binary splits (the first ``ceil(k / 2)`` children
    against the rest, recursively); a leaf region at level ``d < D`` takes the first of the ``2**(D - d)`` leaf
    regions below its position, the others stay empty (padding only, likelihood 1).

    Args:
        roots: ``R >= 1`` trees, the repetitions; each root's scope holds every variable of ``range(num_features)``
            exactly once.
        num_features: ``F >= 1``.
        depth: ``D``, at least the deepest tree's binary depth (and 1); ``None`` for exactly that.

    Returns:
        The trees as padded index tensors, ``leaf_slots [R, 2**D, M]`` with ``M`` the largest leaf region.

    Raises:
        ValueError: a tree is not a partition of the variables (naming the repetition and the path to the node), is
            deeper than ``depth`` or :data:`MAX_DEPTH`, or its embedding would exceed :data:`MAX_SLOTS` slots.
    """
    checks.integer("num_features", num_features)
    if isinstance(roots, Region) or not isinstance(roots, Sequence) or not roots:
        raise TypeError(f"roots must be a non-empty sequence of Region trees (one per repetition), got {roots!r}")
    binary = []
    for r, root in enumerate(roots):
        if not isinstance(root, Region):
            raise TypeError(f"roots[{r}] must be a Region, got {type(root).__name__}")
        _check_root(root, num_features, f"repetition {r}")
        binary.append(_binarize(root))
    needed = max(1, max(_depth(tree) for tree in binary))
    if needed > MAX_DEPTH:
        raise ValueError(f"roots: a tree's binary depth is {needed}, more than {MAX_DEPTH} (balance its partitions)")
    if depth is None:
        depth = needed
    elif checks.integer("depth", depth, maximum=MAX_DEPTH) < needed:
        raise ValueError(f"depth must be >= {needed} (the deepest tree's binary depth), got {depth}")
    placed = [_place(tree, depth) for tree in binary]
    return _tensors(placed, num_features, depth)


def _check_root(root: Region, num_features: int, where: str) -> None:
    """Checks the tree ``root`` (:func:`_check_node`) and that its scope is every variable exactly once."""
    _check_node(root, num_features, f"{where}, root", 0)
    if len(root.scope) != num_features:
        missing = sorted(set(range(num_features)) - set(root.scope))
        raise ValueError(f"{where}: every variable of range({num_features}) must be in the tree exactly once; "
                         f"missing {missing[:10]}{' ...' if len(missing) > 10 else ''}")


def _check_node(node: Region, num_features: int, where: str, level: int) -> None:
    """Raises ``ValueError`` naming ``where`` (the path from the root) if ``node`` or a descendant is not a partition
    of its scope into at least two regions, or holds a variable twice or outside ``[0, num_features)``."""
    if level > MAX_DEPTH:
        raise ValueError(f"{where}: nested more than {MAX_DEPTH} levels deep (the deepest embedding)")
    scope = node.scope
    if not scope:
        raise ValueError(f"{where}: a region must hold at least one variable, got an empty scope")
    if node.children:
        _check_partition(node, num_features, where, level)
    bad = [v for v in scope if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < num_features]
    if bad:
        raise ValueError(f"{where}: variables must be integers in [0, {num_features}), got {bad[:5]}")
    if len(set(scope)) != len(scope):
        twice = sorted({v for v in scope if scope.count(v) > 1})
        raise ValueError(f"{where}: every variable at most once per region, got {twice[:10]} more than once")


def _check_partition(node: Region, num_features: int, where: str, level: int) -> None:
    """Checks the children of ``node`` (:func:`_check_node`), then that their scopes are disjoint and cover its
    scope."""
    if len(node.children) < 2:
        raise ValueError(f"{where}: a partition needs at least two child regions, got {len(node.children)}")
    covered: list[int] = []
    for i, child in enumerate(node.children):
        _check_node(child, num_features, f"{where} → child {i}", level + 1)
        covered.extend(child.scope)
    if len(set(covered)) != len(covered):
        shared = sorted({v for v in covered if covered.count(v) > 1})
        raise ValueError(f"{where}: the children's scopes must be disjoint; {shared[:10]} are in several")
    if set(covered) != set(node.scope):
        raise ValueError(f"{where}: the children's scopes must cover the region's scope {sorted(node.scope)[:10]}; "
                         f"they hold {sorted(covered)[:10]}")


def _binarize(node: Region) -> Region:
    """``node`` with every partition into ``k > 2`` children split into a balanced chain of binary partitions."""
    if not node.children:
        return node
    return _binary_partition([_binarize(child) for child in node.children])


def _binary_partition(children: list[Region]) -> Region:
    """A binary partition of ``children`` (at least two): the first ``ceil(k / 2)`` against the rest."""
    if len(children) == 1:
        return children[0]
    half = math.ceil(len(children) / 2)
    return Region.partition([_binary_partition(children[:half]), _binary_partition(children[half:])])


def _depth(node: Region) -> int:
    """The number of binary levels below ``node`` (0 for a leaf region)."""
    return 1 + max(_depth(child) for child in node.children) if node.children else 0


def _place(node: Region, depth: int, level: int = 0, index: int = 0) -> dict[int, tuple[int, ...]]:
    """The leaf regions of the binary tree ``node`` at depth ``depth``: position → scope (missing positions are
    empty). ``node`` sits at position ``index`` of level ``level``."""
    if not node.children:
        return {index << (depth - level): node.scope}
    left, right = node.children
    return {**_place(left, depth, level + 1, 2 * index), **_place(right, depth, level + 1, 2 * index + 1)}


def _tensors(placed: list[dict[int, tuple[int, ...]]], num_features: int, depth: int) -> RandomBinaryTrees:
    """The padded tensors of :class:`RandomBinaryTrees` from every repetition's leaf regions (:func:`_place`)."""
    num_repetitions, num_regions = len(placed), 2**depth
    slots_per_region = max(len(scope) for regions in placed for scope in regions.values())
    if num_repetitions * num_regions * slots_per_region > MAX_SLOTS:
        raise ValueError(f"roots, depth: the embedding would have {num_repetitions} x {num_regions} leaf regions of "
                         f"{slots_per_region} slots, more than {MAX_SLOTS} in all (lower depth or balance the trees)")
    leaf_slots = torch.full((num_repetitions, num_regions, slots_per_region), num_features, dtype=torch.long)
    variable_region = torch.empty(num_repetitions, num_features, dtype=torch.long)
    for r, regions in enumerate(placed):
        for region, scope in regions.items():
            leaf_slots[r, region, : len(scope)] = torch.tensor(scope, dtype=torch.long)
            variable_region[r, list(scope)] = region
    return RandomBinaryTrees(num_features, depth, num_repetitions, leaf_slots, variable_region)
