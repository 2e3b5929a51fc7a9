"""Region graphs (``random_binary_trees``) and ``RatSPN`` construction / validation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pyro_spn import RatSPN
from pyro_spn.leaves import Bernoulli, Binomial, Categorical, Normal
from pyro_spn.structure import RandomBinaryTrees, random_binary_trees

# ------------------------------------------------------------------------------------------------
# random_binary_trees
# ------------------------------------------------------------------------------------------------

SHAPES = [
    # (F, D, R): divisible, not divisible, fewer variables than regions, tiny F
    (8, 3, 2),
    (16, 2, 3),
    (10, 2, 4),
    (7, 3, 3),
    (13, 3, 2),
    (29, 4, 5),
    (784, 4, 3),
    (1, 1, 2),
    (1, 4, 3),
    (2, 1, 1),
    (2, 2, 2),
    (2, 4, 2),
    (3, 1, 2),
    (3, 2, 3),
    (3, 3, 2),
    (3, 4, 4),
    (5, 4, 2),
]


def _region_vars(trees: RandomBinaryTrees, r: int, region: int) -> list[int]:
    return [v for v in trees.leaf_slots[r, region].tolist() if v != trees.num_features]


@pytest.mark.parametrize("F,D,R", SHAPES)
def test_shapes_and_metadata(F, D, R):
    trees = random_binary_trees(F, D, R, seed=3)
    L = 2**D
    M = math.ceil(F / L)
    assert (trees.num_features, trees.depth, trees.num_repetitions) == (F, D, R)
    assert trees.num_leaf_regions == L
    assert trees.slots_per_region == M
    assert trees.leaf_slots.shape == (R, L, M)
    assert trees.variable_region.shape == (R, F)
    assert trees.leaf_slots.dtype == torch.long
    assert trees.variable_region.dtype == torch.long


@pytest.mark.parametrize("F,D,R", SHAPES)
def test_leaf_regions_partition_the_variables(F, D, R):
    trees = random_binary_trees(F, D, R, seed=11)
    slots = trees.leaf_slots
    assert int(slots.min()) >= 0 and int(slots.max()) <= F
    for r in range(R):
        values = slots[r].flatten()
        real = values[values != F]
        # every variable exactly once per repetition, the remaining slots are padding (== F)
        assert sorted(real.tolist()) == list(range(F))
        assert int((values == F).sum()) == slots[r].numel() - F
        # padding only at the end of a region (regions are left-aligned)
        for region in range(trees.num_leaf_regions):
            row = slots[r, region].tolist()
            n = len(_region_vars(trees, r, region))
            assert all(v != F for v in row[:n]) and all(v == F for v in row[n:])


@pytest.mark.parametrize("F,D,R", SHAPES)
def test_region_sizes_are_balanced_at_every_level(F, D, R):
    trees = random_binary_trees(F, D, R, seed=5)
    sizes = (trees.leaf_slots != F).sum(-1)  # [R, L]
    for r in range(R):
        for level in range(D + 1):
            # regions one level up are unions of 2**level adjacent leaf regions (siblings are adjacent)
            merged = sizes[r].view(-1, 2**level).sum(-1)
            assert int(merged.max() - merged.min()) <= 1, (r, level, sizes[r].tolist())
            assert int(merged.sum()) == F


@pytest.mark.parametrize("F,D,R", SHAPES)
def test_variable_region_consistent_with_leaf_slots(F, D, R):
    trees = random_binary_trees(F, D, R, seed=2)
    for r in range(R):
        expected = torch.full((F,), -1, dtype=torch.long)
        for region in range(trees.num_leaf_regions):
            for v in _region_vars(trees, r, region):
                expected[v] = region
        assert torch.equal(trees.variable_region[r], expected)
        # and the other way round: each variable sits in the region it claims
        for v in range(F):
            assert v in trees.leaf_slots[r, trees.variable_region[r, v]].tolist()


def test_reproducible_from_seed():
    a = random_binary_trees(20, 3, 4, seed=123)
    b = random_binary_trees(20, 3, 4, seed=123)
    assert torch.equal(a.leaf_slots, b.leaf_slots)
    assert torch.equal(a.variable_region, b.variable_region)
    # the global RNG plays no part
    torch.manual_seed(0)
    c = random_binary_trees(20, 3, 4, seed=123)
    torch.manual_seed(1)
    torch.rand(10)
    d = random_binary_trees(20, 3, 4, seed=123)
    assert torch.equal(c.leaf_slots, a.leaf_slots) and torch.equal(d.leaf_slots, a.leaf_slots)


def test_global_rng_untouched():
    torch.manual_seed(42)
    expected = torch.rand(5)
    torch.manual_seed(42)
    random_binary_trees(30, 3, 4, seed=9)
    assert torch.equal(torch.rand(5), expected)


def _partition(trees: RandomBinaryTrees, r: int) -> list[frozenset[int]]:
    return [frozenset(_region_vars(trees, r, region)) for region in range(trees.num_leaf_regions)]


def test_different_seeds_and_repetitions_differ():
    a = random_binary_trees(24, 2, 5, seed=0)
    b = random_binary_trees(24, 2, 5, seed=1)
    assert not torch.equal(a.leaf_slots, b.leaf_slots)
    assert _partition(a, 0) != _partition(b, 0)
    # every repetition draws its own permutation: all partitions distinct
    partitions = [_partition(a, r) for r in range(5)]
    for i in range(5):
        for j in range(i + 1, 5):
            assert partitions[i] != partitions[j], (i, j)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(num_features=0, depth=2, num_repetitions=1), "num_features"),
        (dict(num_features=-3, depth=2, num_repetitions=1), "num_features"),
        (dict(num_features=4.0, depth=2, num_repetitions=1), "num_features"),
        (dict(num_features=True, depth=2, num_repetitions=1), "num_features"),
        (dict(num_features="4", depth=2, num_repetitions=1), "num_features"),
        (dict(num_features=4, depth=0, num_repetitions=1), "depth"),
        (dict(num_features=4, depth=-1, num_repetitions=1), "depth"),
        (dict(num_features=4, depth=1.5, num_repetitions=1), "depth"),
        (dict(num_features=4, depth=True, num_repetitions=1), "depth"),
        (dict(num_features=4, depth=None, num_repetitions=1), "depth"),
        (dict(num_features=4, depth=2, num_repetitions=0), "num_repetitions"),
        (dict(num_features=4, depth=2, num_repetitions=2.0), "num_repetitions"),
        (dict(num_features=4, depth=2, num_repetitions=False), "num_repetitions"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        random_binary_trees(**kwargs)


# ------------------------------------------------------------------------------------------------
# RatSPN construction
# ------------------------------------------------------------------------------------------------

GOOD = dict(depth=2, num_repetitions=2, num_sums=3, num_leaves=2)


_DEFAULT = object()


def _spn(event_shape=6, leaf=_DEFAULT, **overrides):
    kwargs = {**GOOD, **overrides}
    return RatSPN(event_shape, leaf=Bernoulli() if leaf is _DEFAULT else leaf, **kwargs)


@pytest.mark.parametrize("name", ["depth", "num_repetitions", "num_sums", "num_leaves"])
@pytest.mark.parametrize("bad,error", [(0, ValueError), (-2, ValueError), (2.0, TypeError), (True, TypeError),
                                       (None, TypeError), ("3", TypeError)])
def test_bad_hyperparameters(name, bad, error):
    if bad is None and name in ("depth", "num_repetitions"):  # optional when a structure is given
        error = ValueError
    with pytest.raises(error, match=name):
        _spn(**{name: bad})


def test_a_given_structure_fixes_depth_and_repetitions():
    trees = random_binary_trees(6, 2, 3, seed=1)
    spn = RatSPN(6, structure=trees, num_sums=2, num_leaves=2, leaf=Bernoulli())
    assert (spn.depth, spn.num_repetitions) == (2, 3) and torch.equal(spn.leaf_layer.leaf_slots, trees.leaf_slots)
    with pytest.raises(ValueError, match="depth=3 disagrees with the structure's depth 2"):
        RatSPN(6, depth=3, structure=trees, num_sums=2, num_leaves=2, leaf=Bernoulli())
    with pytest.raises(ValueError, match="structure: a region graph over 6 variables"):
        RatSPN(7, structure=trees, num_sums=2, num_leaves=2, leaf=Bernoulli())


@pytest.mark.parametrize("bad", [nn.Linear(2, 2), "Bernoulli", Bernoulli, None, torch.distributions.Bernoulli(0.5)])
def test_non_leaf_is_type_error(bad):
    with pytest.raises(TypeError, match="leaf"):
        _spn(leaf=bad)


def test_a_leaf_spec_is_reusable():
    leaf = Binomial(total_count=3)
    first = _spn(leaf=leaf)
    second = RatSPN((2, 3), depth=1, num_repetitions=1, num_sums=1, num_leaves=1, leaf=leaf)
    assert first.leaf is leaf and second.leaf is leaf
    assert first.leaf_layer.shape == (1, 6, 2, 2) and second.leaf_layer.shape == (1, 6, 1, 1)
    assert first(torch.zeros(2, 6)).shape == (2,) and second(torch.zeros(2, 2, 3)).shape == (2,)


def test_num_parameters_is_arithmetic():
    for leaf in (Bernoulli(), Normal(), Binomial(total_count=3)):
        spn = RatSPN((2, 3, 3), depth=3, num_repetitions=3, num_sums=4, num_leaves=5, leaf=leaf)
        expected = sum(p.numel() for p in spn.parameters())
        assert RatSPN.num_parameters((2, 3, 3), depth=3, num_repetitions=3, num_sums=4, num_leaves=5,
                                     leaf=leaf) == expected


def test_too_large_circuits_are_refused_up_front():
    with pytest.raises(ValueError, match="parameters"):
        _spn(num_repetitions=10**9)
    with pytest.raises(ValueError, match="depth"):
        _spn(depth=10**20)


@pytest.mark.parametrize(
    "event_shape,normalized,C,F",
    [
        (6, (6,), 1, 6),
        (1, (1,), 1, 1),
        ((6,), (6,), 1, 6),
        ([6], (6,), 1, 6),
        (torch.Size([6]), (6,), 1, 6),
        ((2, 3), (2, 3), 1, 6),
        ((1, 7), (1, 7), 1, 7),
        ((2, 1, 3), (2, 1, 3), 2, 3),
        ((3, 2, 2), (3, 2, 2), 3, 4),
        ((1, 4, 4), (1, 4, 4), 1, 16),
    ],
)
@pytest.mark.parametrize("leaf_cls", [Bernoulli, Normal, lambda: Categorical(3), lambda: Binomial(4)])
def test_event_shape_handling(event_shape, normalized, C, F, leaf_cls):
    leaf = leaf_cls()
    spn = RatSPN(event_shape, depth=2, num_repetitions=3, num_sums=2, num_leaves=4, leaf=leaf, seed=1)
    assert spn.event_shape == normalized
    assert spn.num_channels == C and spn.num_features == F
    assert spn.leaf_layer.shape == (C, F, 4, 3)
    for p in spn.leaf_layer.params().values():
        assert tuple(p.shape[:4]) == (C, F, 4, 3)
    assert spn.leaf_layer.leaf_slots.shape == (3, 4, math.ceil(F / 4))
    assert spn.leaf_layer.variable_region.shape == (3, F)
    x = torch.zeros((5,) + normalized)
    assert spn.flatten_data(x).shape == (5, C, F)
    assert spn(x).shape == (5,)
    assert spn.unflatten_data(spn.flatten_data(x)).shape == (5,) + normalized
    # data of another shape is rejected, naming x
    with pytest.raises(ValueError, match="x"):
        spn(torch.zeros(5, C * F + 1))
    with pytest.raises(ValueError, match="x"):
        spn(torch.zeros((5,) + normalized + (1,)))


def test_flatten_data_layout():
    """(C, H, W) → [N, C, H*W]: channels first, variables in row-major pixel order."""
    spn = RatSPN((2, 2, 3), depth=1, num_repetitions=1, num_sums=1, num_leaves=1, leaf=Normal())
    x = torch.arange(24.0).view(2, 2, 2, 3)
    flat = spn.flatten_data(x)
    assert torch.equal(flat, x.reshape(2, 2, 6))
    assert torch.equal(spn.unflatten_data(flat), x)


def test_region_graph_buffers_match_structure():
    spn = RatSPN(11, depth=3, num_repetitions=4, num_sums=2, num_leaves=2, leaf=Bernoulli(), seed=17)
    trees = random_binary_trees(11, 3, 4, seed=17)
    assert torch.equal(spn.leaf_layer.leaf_slots, trees.leaf_slots)
    assert torch.equal(spn.leaf_layer.variable_region, trees.variable_region)
    buffers = dict(spn.named_buffers())
    assert "leaf_layer.leaf_slots" in buffers and "leaf_layer.variable_region" in buffers


def test_seed_reproducible_parameters():
    a = RatSPN((2, 3), depth=2, num_repetitions=2, num_sums=3, num_leaves=2, leaf=Normal(), seed=4)
    b = RatSPN((2, 3), depth=2, num_repetitions=2, num_sums=3, num_leaves=2, leaf=Normal(), seed=4)
    c = RatSPN((2, 3), depth=2, num_repetitions=2, num_sums=3, num_leaves=2, leaf=Normal(), seed=5)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys() == sc.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())


@pytest.mark.parametrize(
    "bad",
    [0, -1, (), (0,), (3, 0), (2, -1, 3), (1, 2, 3, 4)],
)
def test_bad_event_shape(bad):
    with pytest.raises(ValueError, match="event_shape"):
        _spn(event_shape=bad)


@pytest.mark.parametrize("bad", [6.0, None, object(), (2.0,), (2, 3.0), True, (True, 2), "abc", [[2]]])
def test_event_shape_of_the_wrong_type(bad):
    """Not an int nor a sequence of ints: a TypeError naming event_shape (not a bare ``'float' object is not
    iterable`` from ``tuple(event_shape)``)."""
    with pytest.raises(TypeError, match="event_shape"):
        _spn(event_shape=bad)


def test_layer_shapes():
    D, R, K, n_leaf = 3, 4, 5, 6
    spn = RatSPN(20, depth=D, num_repetitions=R, num_sums=K, num_leaves=n_leaf, leaf=Bernoulli())
    assert len(spn.inner_layers) == D
    expected = [(R, 4, K, n_leaf, n_leaf), (R, 2, K, K, K), (R, 1, 1, K, K)]
    assert [tuple(layer.logits.shape) for layer in spn.inner_layers] == expected
    assert tuple(spn.root.logits.shape) == (R,)


def test_paper_config_parameter_count():
    spn = RatSPN((1, 28, 28), depth=4, num_repetitions=10, num_sums=20, num_leaves=20,
                 leaf=Binomial(total_count=255))
    count = sum(p.numel() for p in spn.parameters())
    assert count == 784 * 20 * 10 + 10 * (14 * 20 * 400 + 400) + 10
    # every parameter is trainable and registered exactly once
    assert len({id(p) for p in spn.parameters()}) == len(list(spn.parameters()))
    assert all(p.requires_grad for p in spn.parameters())
