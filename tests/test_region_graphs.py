"""Region graphs beyond random binary trees (:mod:`pyro_spn.region_graphs`, and
:func:`pyro_spn.structure.trees_from_regions`): validation, the embedding in the balanced binary layout, exact inference
and sampling of circuits over quad-trees, Poon-Domingos trees and user trees checked by enumeration, and the command
line's ``--structure`` options."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import all_states, spread_out, state_index, support_values

from pyro_spn import RatSPN, SPNDistribution
from pyro_spn.estimators import circuit_rbf_expectations, rbf_mmd2
from pyro_spn.expectations import mean
from pyro_spn.leaves import Bernoulli, Binomial
from pyro_spn.region_graphs import (
    load_region_graph,
    poon_domingos_trees,
    quad_tree,
    read_region_graph,
    region_trees,
)
from pyro_spn.structure import MAX_DEPTH, RandomBinaryTrees, Region, trees_from_regions
from pyro_spn.train.cli import train
from pyro_spn.train.config import TrainConfig

DTYPE = torch.float64
UNBALANCED = [{"children": [[0], {"children": [[1], {"children": [[2], [3, 4]]}]}]},
              {"children": [[4, 2], {"children": [[0], [1, 3]]}]}]
KARY = [{"children": [[0], [1, 2], [3], [4, 5]]},
        {"children": [[5, 4, 3], {"children": [[0], [1], [2]]}]}]

# -- validation ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("trees, match", [
    ([{"children": [[0, 1], [1, 2]]}], r"repetition 0, root: the children's scopes must be disjoint; \[1\]"),
    ([[0, 1]], r"repetition 0: every variable of range\(3\) must be in the tree exactly once; missing \[2\]"),
    ([[0, 1, 2], [0, 1, 5]], r"repetition 1, root: variables must be integers in \[0, 3\), got \[5\]"),
    ([[0, 0, 1, 2]], r"every variable at most once per region, got \[0\]"),
    ([{"children": [[0, 1, 2]]}], "a partition needs at least two child regions, got 1"),
    ([{"children": [[], [0, 1, 2]]}], "root → child 0: a region must hold at least one variable"),
    ([{"children": [[0], {"children": [[1], [1, 2]]}]}], "root → child 1: the children's scopes must be disjoint"),
    ([{"kids": [[0], [1, 2]]}], 'a node must be a list of variable indices .* or an object {"children"'),
    ([[0, 1.0, 2]], r"a leaf region is a list of variable indices \(integers\), got \[1.0\]"),
    ([[0, True, 2]], "a leaf region is a list of variable indices"),
    ({"children": [[0], [1, 2]]}, "expected a non-empty list of trees"),
    ([], "expected a non-empty list of trees"),
])
def test_bad_region_graphs_name_the_place_and_what_was_expected(trees, match):
    with pytest.raises(ValueError, match=match):
        region_trees(trees, 3)


def test_a_partition_must_cover_its_region():
    root = Region((0, 1, 2), (Region((0,)), Region((1,))))
    with pytest.raises(ValueError, match=r"repetition 0, root: the children's scopes must cover the region's scope"):
        trees_from_regions([root], 3)


def test_depth_and_size_limits():
    with pytest.raises(ValueError, match="depth must be >= 2"):
        region_trees([{"children": [[0], {"children": [[1], [2]]}]}], 3, depth=1)
    caterpillar: list | dict = [MAX_DEPTH + 1]
    for v in range(MAX_DEPTH, -1, -1):
        caterpillar = {"children": [[v], caterpillar]}
    with pytest.raises(ValueError, match=f"nested more than {MAX_DEPTH} levels"):
        region_trees([caterpillar], MAX_DEPTH + 2)
    with pytest.raises(TypeError, match="roots must be a non-empty sequence"):
        trees_from_regions(Region((0,)), 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="num_features must be an integer"):
        trees_from_regions([Region((0,))], 1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("call, name", [
    (lambda: quad_tree(0, 3, 2), "height"),
    (lambda: quad_tree(3, 3, 0), "depth"),
    (lambda: quad_tree(3, 3, 2, num_repetitions=0), "num_repetitions"),
    (lambda: poon_domingos_trees(3, 3, 0, 2, 1), "delta"),
    (lambda: poon_domingos_trees(3, 2.5, 1, 2, 1), "width"),
])
def test_bad_image_arguments_are_named(call, name):
    with pytest.raises((TypeError, ValueError), match=name):
        call()


# -- the embedding ---------------------------------------------------------------------------------------------------


def blocks(trees: RandomBinaryTrees, r: int) -> set[frozenset[int]]:
    """The scopes of every region of the balanced binary layout of repetition ``r`` (aligned blocks of leaf regions)."""
    leaves = [frozenset(v for v in trees.leaf_slots[r, region].tolist() if v != trees.num_features)
              for region in range(trees.num_leaf_regions)]
    return {frozenset().union(*leaves[start:start + 2**level])
            for level in range(trees.depth + 1) for start in range(0, len(leaves), 2**level)}


def scopes(node) -> list[frozenset[int]]:
    """Every region's scope of a tree in JSON shape."""
    if isinstance(node, list):
        return [frozenset(node)]
    below = [scope for child in node["children"] for scope in scopes(child)]
    return [frozenset().union(*(scopes(child)[0] for child in node["children"])), *below]


def check_layout(trees: RandomBinaryTrees) -> None:
    """Leaf regions partition the variables in every repetition, ``variable_region`` agrees, padding is ``F``."""
    F = trees.num_features
    assert trees.leaf_slots.shape[:2] == (trees.num_repetitions, 2**trees.depth)
    for r in range(trees.num_repetitions):
        slots = trees.leaf_slots[r]
        variables = slots[slots != F]
        assert sorted(variables.tolist()) == list(range(F))
        for v in range(F):
            assert v in slots[trees.variable_region[r, v]].tolist()
    assert int(trees.leaf_slots.max()) == F or trees.slots_per_region * 2**trees.depth == F


@pytest.mark.parametrize("trees, F", [(UNBALANCED, 5), (KARY, 6)])
def test_every_user_region_is_a_region_of_the_layout(trees, F):
    embedded = region_trees(trees, F)
    check_layout(embedded)
    for r, tree in enumerate(trees):
        assert set(scopes(tree)) <= blocks(embedded, r)
    assert region_trees(trees, F, depth=embedded.depth + 2).depth == embedded.depth + 2


def test_k_ary_partitions_become_balanced_binary_splits_and_early_leaves_are_padded():
    embedded = region_trees(KARY, 6)
    assert embedded.depth == 3  # 4 children: 2 levels, then the 2-pixel leaf [1, 2] ... [4, 5] at level 2 only
    layout = blocks(embedded, 0)
    assert frozenset({0, 1, 2}) in layout and frozenset({3, 4, 5}) in layout  # [0], [1, 2] | [3], [4, 5]
    assert embedded.leaf_slots[0, 1].tolist() == [6, 6, 6]  # [0] reached at level 2: its sibling is empty
    caterpillar = region_trees(UNBALANCED, 5)
    assert caterpillar.depth == 3 and caterpillar.leaf_slots[0, 0].tolist() == [0, 5]
    assert caterpillar.leaf_slots[0, 1:4].eq(5).all()  # [0] at level 1 takes the first of its 4 leaf regions


def test_quad_tree_halves_alternate_axes_down_to_pixels():
    trees = quad_tree(4, 4, depth=4)
    check_layout(trees)
    assert trees.slots_per_region == 1 and trees.num_repetitions == 1
    quadrants = [sorted(trees.leaf_slots[0, 4 * q: 4 * q + 4].flatten().tolist()) for q in range(4)]
    assert quadrants == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    assert sorted(quad_tree(4, 4, depth=2).leaf_slots[0, 3].tolist()) == [10, 11, 14, 15]
    thin = quad_tree(1, 5, depth=3)  # one row: every cut is along the columns
    assert [v for v in thin.leaf_slots[0].flatten().tolist() if v != 5] == [0, 1, 2, 3, 4]


def test_shifted_quad_trees_are_valid_reproducible_and_differ():
    trees = quad_tree(8, 8, depth=4, num_repetitions=6, seed=3)
    check_layout(trees)
    assert torch.equal(trees.leaf_slots[0, :, :4], quad_tree(8, 8, depth=4).leaf_slots[0])  # then padding only
    assert trees.slots_per_region > 4 and trees.leaf_slots[0, :, 4:].eq(64).all()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    again = quad_tree(8, 8, depth=4, num_repetitions=6, seed=3)
    assert torch.equal(torch.rand(3), expected) and torch.equal(again.leaf_slots, trees.leaf_slots)
    partitions = {frozenset(blocks(trees, r)) for r in range(6)}
    assert len(partitions) > 1


def rectangles(trees: RandomBinaryTrees, width: int, r: int) -> list[tuple[int, int, int, int]]:
    """The bounding boxes of the leaf regions of repetition ``r``, asserting that each is a full rectangle."""
    boxes = []
    for region in range(trees.num_leaf_regions):
        pixels = [v for v in trees.leaf_slots[r, region].tolist() if v != trees.num_features]
        if not pixels:
            continue
        rows, cols = {v // width for v in pixels}, {v % width for v in pixels}
        box = (min(rows), max(rows) + 1, min(cols), max(cols) + 1)
        assert len(pixels) == (box[1] - box[0]) * (box[3] - box[2])
        boxes.append(box)
    return boxes


def test_poon_domingos_trees_cut_rectangles_at_steps_of_delta():
    trees = poon_domingos_trees(8, 12, delta=4, depth=2, num_repetitions=5, seed=1)
    check_layout(trees)
    for r in range(5):
        for box in rectangles(trees, 12, r):  # two levels of coarse cuts: every edge on the 4-pixel grid
            assert all(edge % 4 == 0 for edge in box)
    fine = poon_domingos_trees(4, 4, delta=4, depth=4, num_repetitions=3, seed=2)  # below delta: pixel cuts
    for r in range(3):
        rectangles(fine, 4, r)
    assert torch.equal(fine.leaf_slots, poon_domingos_trees(4, 4, 4, 4, 3, seed=2).leaf_slots)
    assert not torch.equal(trees.leaf_slots, poon_domingos_trees(8, 12, 4, 2, 5, seed=2).leaf_slots)


def test_parameter_counts_equal_rat_at_the_same_depth_and_repetitions():
    for structure in (quad_tree(8, 8, 4, 3), poon_domingos_trees(8, 8, 2, 4, 3)):
        spn = RatSPN((1, 8, 8), structure=structure, num_sums=3, num_leaves=2, leaf=Binomial(16))
        rat = RatSPN((1, 8, 8), depth=4, num_repetitions=3, num_sums=3, num_leaves=2, leaf=Binomial(16))
        assert spn.flat_parameter_size == rat.flat_parameter_size


def test_json_files_load_and_bad_files_are_named(tmp_path):
    path = tmp_path / "graph.json"
    path.write_text(json.dumps(KARY))
    assert torch.equal(load_region_graph(path, 6).leaf_slots, region_trees(KARY, 6).leaf_slots)
    assert read_region_graph(path) == KARY
    path.write_text('[{"children": [[0], [0]]}]')
    with pytest.raises(ValueError, match=f"{path.name}: repetition 0, root: the children's scopes must be disjoint"):
        load_region_graph(path, 1)
    path.write_text("[[0, 1]")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_region_graph(path)
    path.write_text('{"trees": []}')
    with pytest.raises(ValueError, match="a non-empty JSON list of trees"):
        read_region_graph(path)
    with pytest.raises(FileNotFoundError, match="no region graph file"):
        read_region_graph(tmp_path / "missing.json")


# -- circuits over these structures, checked by enumeration ----------------------------------------------------------

CASES = {
    "quad-2x3": ((1, 2, 3), Bernoulli(), lambda: quad_tree(2, 3, depth=3, num_repetitions=2, seed=1)),
    "quad-3x3-shifted": ((1, 3, 3), Bernoulli(), lambda: quad_tree(3, 3, depth=2, num_repetitions=3, seed=4)),
    "quad-2x2-channels": ((2, 2, 2), Bernoulli(), lambda: quad_tree(2, 2, depth=2, num_repetitions=2, seed=0)),
    "pd-3x3": ((1, 3, 3), Bernoulli(), lambda: poon_domingos_trees(3, 3, 2, depth=3, num_repetitions=3, seed=0)),
    "pd-2x3-binomial": ((1, 2, 3), Binomial(2), lambda: poon_domingos_trees(2, 3, 1, 2, 2, seed=5)),
    "user-unbalanced": ((5,), Binomial(2), lambda: region_trees(UNBALANCED, 5)),
    "user-k-ary": ((6,), Bernoulli(), lambda: region_trees(KARY, 6)),
}


class Enumerated:
    """A float64 circuit over a structure, every state of its variables and their exact log-probabilities."""

    def __init__(self, name: str) -> None:
        event_shape, leaf, structure = CASES[name]
        self.spn = spread_out(RatSPN(event_shape, structure=structure(), num_sums=3, num_leaves=2, leaf=leaf,
                                     seed=7).double(), seed=7, scale=1.5)
        self.d = SPNDistribution(self.spn)
        self.values = [support_values(leaf)] * math.prod(event_shape)
        self.states = all_states(self.values).reshape((-1, *event_shape))
        self.log_p = self.d.log_prob(self.states).detach()

    def index(self, x: torch.Tensor) -> torch.Tensor:
        return state_index(x.flatten(-len(self.spn.event_shape)), self.values)

    def evidence(self, seed: int, rows: int = 6) -> torch.Tensor:
        """``rows`` states with about half their entries missing (NaN)."""
        generator = torch.Generator().manual_seed(seed)
        x = self.states[torch.randint(len(self.states), (rows,), generator=generator)].clone()
        x[torch.rand(x.shape, generator=generator) < 0.5] = float("nan")
        return x

    def matching(self, e: torch.Tensor) -> torch.Tensor:
        observed = ~torch.isnan(e)
        return (self.states[:, observed] == e[observed]).all(-1)


_ENUMERATED: dict[str, Enumerated] = {}


@pytest.fixture(params=list(CASES))
def case(request) -> Enumerated:
    if request.param not in _ENUMERATED:
        _ENUMERATED[request.param] = Enumerated(request.param)
    return _ENUMERATED[request.param]


def test_normalization_and_marginals(case):
    torch.testing.assert_close(case.log_p.logsumexp(0), torch.tensor(0.0, dtype=DTYPE))
    evidence = case.evidence(seed=1)
    expected = torch.stack([case.log_p[case.matching(e)].logsumexp(0) for e in evidence])
    torch.testing.assert_close(case.d.log_prob(evidence).detach(), expected)


def test_exact_samples_fit(case, fit):
    torch.manual_seed(0)
    counts = torch.bincount(case.index(case.d.sample((6000,))), minlength=len(case.states))
    assert fit(counts, case.log_p.exp()) > 1e-3


def test_conditional_samples_fit(case, fit):
    e = case.evidence(seed=2, rows=1)[0]
    match = case.matching(e)
    torch.manual_seed(1)
    draws = case.d.condition(e).sample((3000,))
    assert torch.equal(draws[:, ~torch.isnan(e)], e[~torch.isnan(e)].expand(3000, -1).to(draws.dtype))
    counts = torch.bincount(case.index(draws), minlength=len(case.states))
    assert fit(counts, (case.log_p - case.log_p[match].logsumexp(0)).exp() * match) > 1e-3


def test_max_product_completion(case):
    """The completion keeps the evidence, and its value is the largest full-evidence max-product value among the
    states that agree with the evidence (attained by the completion)."""
    _, full = case.d.mpe_with_log_prob(case.states)
    evidence = case.evidence(seed=3)
    completion, value = case.d.mpe_with_log_prob(evidence)
    observed = ~torch.isnan(evidence)
    assert torch.equal(completion[observed], evidence[observed].to(completion.dtype))
    expected = torch.stack([full[case.matching(e)].max() for e in evidence])
    torch.testing.assert_close(value.detach(), expected)
    torch.testing.assert_close(case.d.mpe_with_log_prob(completion)[1].detach(), expected)
    assert bool((value <= case.d.log_prob(completion) + 1e-9).all())


def test_soft_and_straight_through_samples_have_gradients(case):
    spn = case.spn
    for hard in (False, True):
        spn.zero_grad()
        x = SPNDistribution(spn, temperature=0.5, hard=hard).rsample((32,))
        assert x.shape == (32, *spn.event_shape)
        if hard:
            assert bool(case.d.support.check(x).all())
        (x * torch.linspace(-1, 1, x[0].numel(), dtype=DTYPE).view(x[0].shape)).sum().backward()
        grads = [p.grad for p in spn.parameters()]
        assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
        assert all(float(g.abs().sum()) > 0 for g in grads)


def test_exact_expectations_and_mmd(case):
    p = case.log_p.exp()
    flat = case.states.flatten(1)
    torch.testing.assert_close(mean(case.spn).flatten(), p @ flat)
    points = case.evidence(seed=4).nan_to_num(1.0)
    kernel = torch.exp(-torch.cdist(flat, points.flatten(1)).square() / (2 * 0.8**2))
    torch.testing.assert_close(circuit_rbf_expectations(case.d, points, (0.8,))[0], p @ kernel)
    case.spn.zero_grad()
    torch.manual_seed(2)
    mmd = rbf_mmd2(case.d, points, (0.8, 2.0), 16)
    mmd.backward()
    assert mmd.shape == () and bool(torch.isfinite(mmd))
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in case.spn.parameters())


# -- the command line ------------------------------------------------------------------------------------------------
TINY = ["--depth", "2", "--repetitions", "2", "--sums", "2", "--leaves", "2", "--batch-size", "32",
        "--max-batches-per-epoch", "2", "--num-final-samples", "8", "--device", "cpu", "--no-progress", "--epochs", "1"]


def invoke(*args):
    return CliRunner().invoke(train, [str(a) for a in args])


def one_line_error(result, match: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and match in lines[0], result.stderr


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYRO_SPN_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("structure", ["quad-tree", "poon-domingos"])
def test_the_cli_trains_image_structures(tmp_path, structure):
    result = invoke("--structure", structure, "--pd-delta", "2", "--output", tmp_path / "run", *TINY)
    assert result.exit_code == 0, result.output
    config = TrainConfig.from_json((tmp_path / "run" / "config.json").read_text())
    assert (config.structure, config.pd_delta, config.region_graph) == (structure, 2, None)
    resumed = invoke("--output", tmp_path / "run", "--resume", "--epochs", "2", "--no-progress", "--device", "cpu")
    assert resumed.exit_code == 0, resumed.output


def test_the_cli_trains_a_user_structure_and_resumes_without_the_file(tmp_path):
    path = tmp_path / "trees.json"
    path.write_text(json.dumps([{"children": [list(range(0, 32)), {"children": [list(range(32, 40)),
                                                                                  list(range(40, 64))]}]},
                                {"children": [list(range(0, 64, 2)), list(range(1, 64, 2))]}]))
    options = [a for a in TINY if a not in ("--depth", "--repetitions")]
    options.remove("2")
    options.remove("2")
    result = invoke("--structure-file", path, "--output", tmp_path / "run", *options)
    assert result.exit_code == 0, result.output
    config = TrainConfig.from_json((tmp_path / "run" / "config.json").read_text())
    assert config.structure == "user" and config.num_repetitions == 2 and config.region_graph == read_region_graph(path)
    path.unlink()  # the config holds the trees: the run resumes without the file
    resumed = invoke("--output", tmp_path / "run", "--resume", "--epochs", "2", "--no-progress", "--device", "cpu")
    assert resumed.exit_code == 0, resumed.output


def test_old_configs_without_a_structure_load_as_rat():
    assert TrainConfig.from_json('{"epochs": 3}').validate().structure == "rat"


@pytest.mark.parametrize("args, match", [
    (["--structure", "quad-tree", "--dataset", "2-moons"], "structure quad-tree needs image data (C, H, W)"),
    (["--structure", "poon-domingos", "--objective", "pae"], "needs a circuit over the data alone"),
    (["--structure", "quad-tree", "--class-conditional"], "needs a circuit over the data alone"),
    (["--structure-file", "trees.json", "--structure", "quad-tree"], "--structure-file and --structure exclude"),
    (["--structure-file", "trees.json", "--repetitions", "3"], "--structure-file and --repetitions exclude"),
    (["--structure-file", "missing.json"], "no region graph file at missing.json"),
    (["--structure-file", "bad.json"], "--structure-file bad.json: repetition 0: every variable of range(64)"),
    (["--structure", "pyramid"], "Invalid value for '--structure'"),
    (["--pd-delta", "0"], "Invalid value for '--pd-delta'"),
])
def test_bad_structure_options_are_one_line(tmp_path, args, match):
    (tmp_path / "trees.json").write_text(json.dumps([[*range(64)]]))
    (tmp_path / "bad.json").write_text(json.dumps([[0, 1]]))
    one_line_error(invoke(*args, "--output", tmp_path / "run", "--device", "cpu"), match)
    assert not (tmp_path / "run").exists()


def test_the_structure_benchmark_runs(tmp_path):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_structures.py"
    subprocess.run([sys.executable, str(script), "speed", "--shapes", "1x4x4", "--batch", "4", "--repeats", "1",
                    "--threads", "1", "--json", str(tmp_path / "speed.json")], check=True, capture_output=True,
                   timeout=300)
    rows = json.loads((tmp_path / "speed.json").read_text())
    assert [row["structure"] for row in rows] == ["rat", "quad-tree", "pd-2", "pd-4"]
    assert rows[0]["min_ratio_to_rat"] == 1.0 and len({row["parameters"] for row in rows}) == 1
