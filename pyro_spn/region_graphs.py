"""Region graphs beyond random binary trees: image quad-trees, trees drawn from the Poon-Domingos region graph, and
trees a user supplies (in Python or as a JSON file).

Every structure here is a *tree of scopes per repetition*, embedded in the balanced binary layout of
:class:`~pyro_spn.structure.RandomBinaryTrees` by :func:`~pyro_spn.structure.trees_from_regions`, so
:class:`~pyro_spn.RatSPN` takes it as ``structure=``. The circuit mixes the repetitions' trees at the root only.

Pixel ``(h, w)`` of an ``H × W`` image is variable ``f = h·W + w`` (the circuit's row-major order); the channels of a
pixel stay inside its leaf region, as for random trees.

**Not the Poon-Domingos DAG.** The Poon-Domingos region graph (Poon & Domingos, 2011) is a DAG: every rectangle has
*all* its axis-aligned splits as partitions, and regions are shared between them. This layout holds trees only, so
:func:`poon_domingos_trees` draws ``R`` trees *from* that graph (one split per region, at random) and mixes them at the
root; that is a different, smaller circuit than the DAG.

User region graphs (:func:`region_trees`, :func:`load_region_graph`) are JSON-shaped: a list of trees, one per
repetition, where a node is either a list of variable indices (a leaf region) or an object ``{"children": [node,
node, ...]}`` (a region partitioned into its children, at least two, with disjoint scopes)::

    [{"children": [[0, 1], {"children": [[2], [3], [4, 5]]}]},
     {"children": [[0, 2, 4], [1, 3, 5]]}]
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from . import checks
from .structure import MAX_DEPTH, RandomBinaryTrees, Region, trees_from_regions

#: A rectangle of pixels ``(top, bottom, left, right)``, half-open.
Rect = tuple[int, int, int, int]
#: The largest region-graph file :func:`load_region_graph` reads (64 MiB).
MAX_FILE_BYTES = 2**26


def _pixels(rect: Rect, width: int) -> tuple[int, ...]:
    """The variables of the pixels of ``rect``, row-major."""
    top, bottom, left, right = rect
    return tuple(h * width + w for h in range(top, bottom) for w in range(left, right))


def _intersect(a: Rect, b: Rect) -> Rect | None:
    """``a ∩ b``, or ``None`` if empty."""
    rect = (max(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), min(a[3], b[3]))
    return rect if rect[0] < rect[1] and rect[2] < rect[3] else None


def _area(rect: Rect) -> int:
    return (rect[1] - rect[0]) * (rect[3] - rect[2])


def _cut(rect: Rect, axis: int, position: int) -> tuple[Rect, Rect]:
    """``rect`` cut along ``axis`` (0: rows, 1: columns) at ``position`` (an absolute row or column)."""
    top, bottom, left, right = rect
    if axis == 0:
        return (top, position, left, right), (position, bottom, left, right)
    return (top, bottom, left, position), (top, bottom, position, right)


def _check_image(height: int, width: int, depth: int, num_repetitions: int) -> None:
    checks.integer("height", height)
    checks.integer("width", width)
    checks.integer("depth", depth, maximum=MAX_DEPTH)
    checks.integer("num_repetitions", num_repetitions)


# -- quad-trees ------------------------------------------------------------------------------------------------------
def quad_tree(height: int, width: int, depth: int, num_repetitions: int = 1, seed: int = 0) -> RandomBinaryTrees:
    """Quad-trees over an ``H × W`` image (as cirkit's ``QuadTree``), as ``depth`` binary levels.

    Every rectangle is halved along the rows at even levels and along the columns at odd levels (along the other axis
    when it is one pixel thin), down to ``depth`` levels or single pixels: two levels make the four quadrants.

    Repetition 0 is the plain quad-tree, cut at the middle of the image. Every further repetition is a *shifted*
    quad-tree: the same halving of a canvas ``[-oy, H) × [-ox, W)`` with offsets drawn uniformly from
    ``[0, ceil(H/2)) × [0, ceil(W/2))``, its rectangles intersected with the image (a level whose cut misses the image
    splits nothing), so the repetitions' cut lines fall on different pixels.

    Args:
        height, width: ``H, W >= 1``; the image has ``F = H·W`` variables (pixel ``(h, w)`` is ``h·W + w``).
        depth: ``D >= 1``, the binary levels of the embedding (leaf regions reached earlier are padded).
        num_repetitions: ``R >= 1``; 1 for the deterministic quad-tree.
        seed: seeds the offsets of repetitions 1 to ``R - 1``.

    Returns:
        ``leaf_slots [R, 2**D, M]`` (:class:`~pyro_spn.structure.RandomBinaryTrees`).
    """
    _check_image(height, width, depth, num_repetitions)
    generator = torch.Generator().manual_seed(seed)
    image = (0, height, 0, width)
    roots = []
    for r in range(num_repetitions):
        offsets = [0, 0] if r == 0 else [int(torch.randint(math.ceil(n / 2), (), generator=generator))
                                         for n in (height, width)]
        canvas = (-offsets[0], height, -offsets[1], width)
        roots.append(_quad(canvas, image, width, depth, 0))
    return trees_from_regions(roots, height * width, depth)


def _quad(canvas: Rect, image: Rect, width: int, depth: int, level: int) -> Region:
    """The quad-tree region of ``canvas ∩ image`` (not empty) at binary level ``level``."""
    rect = _intersect(canvas, image)
    assert rect is not None
    if level == depth or _area(rect) == 1:
        return Region(_pixels(rect, width))
    axis = level % 2
    if canvas[2 * axis + 1] - canvas[2 * axis] == 1:
        axis = 1 - axis
    start, stop = canvas[2 * axis], canvas[2 * axis + 1]
    halves = [half for half in _cut(canvas, axis, start + math.ceil((stop - start) / 2))
              if _intersect(half, image) is not None]
    children = [_quad(half, image, width, depth, level + 1) for half in halves]
    return children[0] if len(children) == 1 else Region.partition(children)


# -- trees drawn from the Poon-Domingos region graph -----------------------------------------------------------------
def poon_domingos_trees(height: int, width: int, delta: int, depth: int, num_repetitions: int,
                        seed: int = 0) -> RandomBinaryTrees:
    """``R`` random trees drawn from the Poon-Domingos region graph of an ``H × W`` image (*not* the PD DAG itself,
    which this tree layout cannot hold: see the module).

    From the whole image down, every rectangle takes one of its Poon-Domingos partitions uniformly at random: a cut
    along the rows or the columns at an offset ``k·delta`` from its top or left edge (the coarse cuts); a rectangle
    with no coarse cut inside (smaller than ``delta`` along both axes) is cut at any pixel (the fine cuts). Splitting
    stops after ``depth`` binary levels or at single pixels, so leaf regions may be of different sizes.

    Args:
        height, width: ``H, W >= 1``; pixel ``(h, w)`` is variable ``h·W + w``.
        delta: ``>= 1``, the step of the coarse cuts in pixels.
        depth: ``D >= 1``, the binary levels of the embedding.
        num_repetitions: ``R >= 1`` trees, drawn independently.
        seed: seeds the draws; the same arguments always give the same trees.

    Returns:
        ``leaf_slots [R, 2**D, M]`` (:class:`~pyro_spn.structure.RandomBinaryTrees`).
    """
    _check_image(height, width, depth, num_repetitions)
    checks.integer("delta", delta)
    generator = torch.Generator().manual_seed(seed)
    roots = [_poon_domingos((0, height, 0, width), width, delta, depth, 0, generator) for _ in range(num_repetitions)]
    return trees_from_regions(roots, height * width, depth)


def _pd_cuts(rect: Rect, delta: int) -> list[tuple[int, int]]:
    """``(axis, position)`` of the Poon-Domingos cuts of ``rect``: at steps of ``delta``, else of one pixel."""
    for step in (delta, 1):
        cuts = [(axis, position) for axis in (0, 1)
                for position in range(rect[2 * axis] + step, rect[2 * axis + 1], step)]
        if cuts:
            return cuts
    return []


def _poon_domingos(rect: Rect, width: int, delta: int, depth: int, level: int, generator: torch.Generator) -> Region:
    """A random Poon-Domingos tree of ``rect`` at binary level ``level``."""
    cuts = _pd_cuts(rect, delta)
    if level == depth or not cuts:
        return Region(_pixels(rect, width))
    axis, position = cuts[int(torch.randint(len(cuts), (), generator=generator))]
    return Region.partition([_poon_domingos(half, width, delta, depth, level + 1, generator)
                             for half in _cut(rect, axis, position)])


# -- user region graphs ----------------------------------------------------------------------------------------------
def region_trees(trees: Sequence[Any], num_features: int, depth: int | None = None) -> RandomBinaryTrees:
    """The user's region graph: one tree per repetition in the module's JSON shape (lists of variables for leaf
    regions, ``{"children": [...]}`` for partitions), embedded by :func:`~pyro_spn.structure.trees_from_regions`.

    Args:
        trees: ``R >= 1`` trees, each over every variable of ``range(num_features)`` exactly once.
        num_features: ``F >= 1``.
        depth: the binary levels of the embedding; ``None`` for the deepest tree's (a ``k``-ary partition takes
            ``ceil(log2 k)`` levels).

    Returns:
        ``leaf_slots [R, 2**D, M]`` (:class:`~pyro_spn.structure.RandomBinaryTrees`).

    Raises:
        TypeError, ValueError: a node of the wrong shape or a tree that is not a partition of the variables, naming the
            repetition and the path from its root.
    """
    if isinstance(trees, str | bytes | dict) or not isinstance(trees, Sequence) or not trees:
        raise ValueError(f"region graph: expected a non-empty list of trees (one per repetition), got "
                         f"{type(trees).__name__}")
    roots = [_region(tree, f"repetition {r}, root", 0) for r, tree in enumerate(trees)]
    return trees_from_regions(roots, num_features, depth)


def _region(node: Any, where: str, level: int) -> Region:
    """The :class:`~pyro_spn.structure.Region` of a node in JSON shape at path ``where``."""
    if level > MAX_DEPTH:
        raise ValueError(f"{where}: nested more than {MAX_DEPTH} levels deep (the deepest embedding)")
    if isinstance(node, list | tuple):
        bad = [v for v in node if isinstance(v, bool) or not isinstance(v, int)]
        if bad:
            raise ValueError(f"{where}: a leaf region is a list of variable indices (integers), got {bad[:5]}")
        return Region(tuple(node))
    if not isinstance(node, dict) or set(node) != {"children"} or not isinstance(node["children"], list | tuple):
        raise ValueError(f"{where}: a node must be a list of variable indices (a leaf region) or an object "
                         f'{{"children": [node, ...]}} (a partition), got {repr(node)[:80]}')
    children = [_region(child, f"{where} → child {i}", level + 1) for i, child in enumerate(node["children"])]
    return Region(tuple(v for child in children for v in child.scope), tuple(children))


def read_region_graph(path: str | os.PathLike) -> list[Any]:
    """The region graph in the JSON file ``path`` (the module's format, never a pickle), as nested lists and dicts;
    its trees are checked only by :func:`region_trees`.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is larger than :data:`MAX_FILE_BYTES`, not valid JSON, or not a list.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no region graph file at {path}")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ValueError(f"{path}: a region graph file must be at most {MAX_FILE_BYTES} bytes")
    try:
        trees = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise ValueError(f"{path}: not a region graph, not valid JSON ({type(error).__name__})") from None
    if not isinstance(trees, list) or not trees:
        raise ValueError(f"{path}: a region graph is a non-empty JSON list of trees (one per repetition), got "
                         f"{type(trees).__name__}")
    return trees


def load_region_graph(path: str | os.PathLike, num_features: int, depth: int | None = None) -> RandomBinaryTrees:
    """:func:`region_trees` of the JSON file ``path`` (:func:`read_region_graph`)."""
    trees = read_region_graph(path)
    try:
        return region_trees(trees, num_features, depth)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{path}: {error}") from None
