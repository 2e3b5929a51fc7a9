"""Exact inference of ``RatSPN`` / ``SPNDistribution`` against brute force on tiny circuits.

Two independent references are used, both written from the *documented semantics* of the parameters
(``EinsumLayer.logits[r, l, k, i, j]`` weighs left unit ``i`` of region ``2l`` and right unit ``j`` of region
``2l + 1``; ``RepetitionMixing.logits[r]``; leaf components ``[C, F, I, R]`` evaluated with
``torch.distributions``) and never the library's tensorized passes:

* :class:`TreeReference` enumerates every induced tree of the circuit: ``p(x) = Σ_T w_T Π leaves``,
  the max-product value is ``max_{x, T}``;
* :func:`naive_forward` pushes per-variable leaf log-probabilities through the layers with an explicit
  loop over the pairs ``(i, j)``.

Everything runs in float64.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.distributions as td
from conftest import support_values
from hypothesis import given, settings
from hypothesis import strategies as st

from pyro_spn import RatSPN, SPNDistribution
from pyro_spn.leaves import Bernoulli, Binomial, Categorical, Normal
from pyro_spn.sampling import mpe

DTYPE = torch.float64
TIGHT = dict(rtol=1e-9, atol=1e-9)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Thousands of tiny ops: intra-op threading only adds overhead here (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------
# circuits
# ------------------------------------------------------------------------------------------------


def make_leaf(kind: str):
    if kind == "bernoulli":
        return Bernoulli()
    if kind == "categorical":
        return Categorical(num_categories=3)
    if kind.startswith("binomial"):
        return Binomial(total_count=int(kind[len("binomial"):]))
    if kind == "normal":
        return Normal()
    raise AssertionError(kind)


def make_spn(kind, event_shape, depth, R, K, n_leaf, seed=0) -> RatSPN:
    """A float64 circuit whose parameters are pushed well away from their (near-uniform) init."""
    spn = RatSPN(event_shape, depth=depth, num_repetitions=R, num_sums=K, num_leaves=n_leaf,
                 leaf=make_leaf(kind), seed=seed).to(DTYPE)
    g = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for name, p in spn.named_parameters():
            scale = 0.3 if name.endswith("raw_scale") else 1.0
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return spn


def all_configs(spn: RatSPN) -> torch.Tensor:
    """Every complete value ``[X, *event_shape]`` (discrete leaves)."""
    numel = spn.num_channels * spn.num_features
    rows = list(itertools.product(support_values(spn.leaf), repeat=numel))
    return torch.tensor(rows, dtype=DTYPE).reshape((-1,) + spn.event_shape)


def torch_leaf(spn: RatSPN) -> td.Distribution:
    """The leaf components ``[C, F, I, R]`` as a ``torch.distributions`` object."""
    leaf, params = spn.leaf, spn.leaf_layer.params()
    if isinstance(leaf, Normal):
        return td.Normal(params["loc"], params["scale"])
    if isinstance(leaf, Bernoulli):
        return td.Bernoulli(logits=params["logits"])
    if isinstance(leaf, Binomial):
        return td.Binomial(total_count=leaf.total_count, logits=params["logits"])
    if isinstance(leaf, Categorical):
        return td.Categorical(logits=params["logits"])
    raise AssertionError(leaf)


def component_log_prob(spn: RatSPN, x: torch.Tensor, missing: str = "marginal") -> torch.Tensor:
    """``[N, C, F]`` (NaN = missing) → ``[N, C, F, I, R]``. A missing entry contributes 0
    (``"marginal"``) or the component's maximal log-density over its support (``"max"``)."""
    dist = torch_leaf(spn)
    nan = torch.isnan(x)
    filled = torch.where(nan, torch.zeros_like(x), x)
    lp = dist.log_prob(filled[..., None, None])
    if missing == "marginal":
        fill = torch.zeros_like(lp)
    elif isinstance(spn.leaf, Normal):
        fill = dist.log_prob(dist.loc).expand_as(lp)
    else:
        per_value = torch.stack([dist.log_prob(torch.tensor(v, dtype=DTYPE)) for v in support_values(spn.leaf)])
        fill = per_value.amax(0).expand_as(lp)
    return torch.where(nan[..., None, None], fill, lp)


class TreeReference:
    """Brute force over the induced trees of a circuit, from its parameters.

    An induced tree is a repetition ``r`` plus one unit in every region below the top (the top region has
    a single sum unit): ``I`` choices in each of the ``2^D`` leaf regions and ``K`` in each of the
    ``2^D - 2`` intermediate regions. Its weight is the root weight times, for every inner region, the
    weight its chosen unit gives to the pair chosen in its two children.
    """

    def __init__(self, spn: RatSPN) -> None:
        self.spn = spn
        D, R = spn.depth, spn.num_repetitions
        sizes = [2 ** (D - t) for t in range(D)]  # regions per level below the top
        units = [spn.num_leaves] + [spn.num_sums] * (D - 1)
        self.offsets = [sum(sizes[:t]) for t in range(D)]
        choices = [range(units[t]) for t in range(D) for _ in range(sizes[t])]
        self.assign = torch.tensor(list(itertools.product(*choices)), dtype=torch.long)  # [T, columns]
        T = self.assign.shape[0]
        with torch.no_grad():
            log_w = spn.root.logits.log_softmax(-1)[:, None].expand(R, T).clone()  # [R, T]
            for t, layer in enumerate(spn.inner_layers):
                shape = layer.logits.shape  # [R, L_t, K_out, K_in, K_in]
                layer_w = layer.logits.flatten(-2).log_softmax(-1).view(shape)
                for j in range(shape[1]):
                    parent = (self.assign[:, self.offsets[t + 1] + j] if t + 1 < D
                              else torch.zeros(T, dtype=torch.long))
                    left = self.assign[:, self.offsets[t] + 2 * j]
                    right = self.assign[:, self.offsets[t] + 2 * j + 1]
                    log_w += layer_w[:, j][:, parent, left, right]  # [R, T]
        self.log_weight = log_w

    def region_log_prob(self, x: torch.Tensor, missing: str = "marginal") -> torch.Tensor:
        """``[N, *event_shape]`` → ``[N, R, L, I]``, by looping over the leaf regions' variables."""
        spn = self.spn
        flat = x.to(DTYPE).reshape(x.shape[0], spn.num_channels, spn.num_features)
        per_var = component_log_prob(spn, flat, missing).sum(1)  # [N, F, I, R]
        R, L, _ = spn.leaf_layer.leaf_slots.shape
        out = torch.zeros(x.shape[0], R, L, spn.num_leaves, dtype=DTYPE)
        for r in range(R):
            for region in range(L):
                for v in spn.leaf_layer.leaf_slots[r, region].tolist():
                    if v < spn.num_features:
                        out[:, r, region] += per_var[:, v, :, r]
        return out

    def tree_log_values(self, x: torch.Tensor, missing: str = "marginal") -> torch.Tensor:
        """Log-value of every tree, ``[N, R, T]``."""
        with torch.no_grad():
            regions = self.region_log_prob(x, missing)
            total = self.log_weight[None].clone()
            for region in range(regions.shape[2]):
                total = total + regions[:, :, region][:, :, self.assign[:, region]]
            return total

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log Σ_T`` (NaN entries marginalized inside every tree)."""
        return self.tree_log_values(x).flatten(1).logsumexp(-1)

    def max_product(self, x: torch.Tensor) -> torch.Tensor:
        """``max_{T, completions}`` (the completion maximizes every tree separately)."""
        return self.tree_log_values(x, "max").flatten(1).amax(-1)

    def mean(self, evidence: torch.Tensor) -> torch.Tensor:
        """``E[x | evidence]`` ``[N, *event_shape]`` as the posterior mixture of the trees' component means."""
        spn = self.spn
        with torch.no_grad():
            posterior = self.tree_log_values(evidence).flatten(1).softmax(-1)  # [N, R*T]
            dist = torch_leaf(spn)
            if isinstance(dist, td.Categorical):  # torch leaves the mean of a Categorical undefined
                comp_mean = (dist.probs * torch.arange(dist.probs.shape[-1], dtype=DTYPE)).sum(-1)
            else:
                comp_mean = dist.mean  # [C, F, I, R]
            R, T = self.log_weight.shape
            tree_mean = torch.empty(R, T, spn.num_channels, spn.num_features, dtype=DTYPE)
            for r in range(R):
                for f in range(spn.num_features):
                    unit = self.assign[:, spn.leaf_layer.variable_region[r, f]]  # [T]
                    tree_mean[r, :, :, f] = comp_mean[:, f, unit, r].T
            mean = posterior @ tree_mean.flatten(0, 1).flatten(1)
            mean = mean.reshape(evidence.shape)
            return torch.where(torch.isnan(evidence), mean, evidence.to(DTYPE))


def naive_forward(spn: RatSPN, x: torch.Tensor, max_product: bool = False) -> torch.Tensor:
    """Per-variable leaf log-probabilities scattered into regions via ``variable_region``, then a naive
    log-sum-exp (or max) over every pair ``(i, j)``, then the repetition mixture."""
    N = x.shape[0]
    flat = x.to(DTYPE).reshape(N, spn.num_channels, spn.num_features)
    with torch.no_grad():
        if max_product:
            leaf_lp = component_log_prob(spn, flat, "max")
        else:
            leaf_lp = spn.leaf_layer.log_prob(flat)  # [N, C, F, I, R], missing → 0
        per_var = leaf_lp.sum(1)  # [N, F, I, R]
        R = spn.num_repetitions
        h = torch.zeros(N, R, 2**spn.depth, spn.num_leaves, dtype=DTYPE)
        for r in range(R):
            for f in range(spn.num_features):
                h[:, r, spn.leaf_layer.variable_region[r, f]] += per_var[:, f, :, r]
        for layer in spn.inner_layers:
            _, n_regions, k_out, k_in, _ = layer.logits.shape
            log_w = layer.logits.flatten(-2).log_softmax(-1).view(layer.logits.shape)
            out = torch.empty(N, R, n_regions, k_out, dtype=DTYPE)
            for region in range(n_regions):
                terms = []
                for i in range(k_in):
                    for j in range(k_in):
                        terms.append(log_w[:, region, :, i, j][None]  # [1, R, K_out]
                                     + h[:, :, 2 * region, i, None] + h[:, :, 2 * region + 1, j, None])
                terms = torch.stack(terms, -1)
                out[:, :, region] = terms.amax(-1) if max_product else terms.logsumexp(-1)
            h = out
        top = h[:, :, 0, 0] + spn.root.logits.log_softmax(-1)
        return top.amax(-1) if max_product else top.logsumexp(-1)


# ------------------------------------------------------------------------------------------------
# discrete circuits, checked by enumeration
# ------------------------------------------------------------------------------------------------

# (leaf, event_shape, depth, R, K, n_leaf)
DISCRETE = [
    ("bernoulli", (5,), 3, 2, 2, 2),  # F = 5 not divisible by 8: padding-only regions
    ("bernoulli", (2, 1, 3), 1, 3, 2, 3),  # two channels, depth 1
    ("categorical", (2, 1, 3), 2, 3, 2, 3),
    ("categorical", (4,), 2, 2, 3, 2),
    ("binomial2", (2, 2), 2, 2, 3, 2),
    ("binomial3", (3,), 3, 2, 2, 2),  # F = 3 < 8 leaf regions
    ("binomial2", (2, 1, 2), 2, 3, 2, 2),
]
IDS = ["-".join(map(str, case)).replace(" ", "") for case in DISCRETE]

_CACHE: dict = {}


class Setup:
    def __init__(self, case, seed):
        kind, event_shape, depth, R, K, n_leaf = case
        self.spn = make_spn(kind, event_shape, depth, R, K, n_leaf, seed=seed)
        self.dist = SPNDistribution(self.spn, validate_args=True)
        self.ref = TreeReference(self.spn)
        self.configs = all_configs(self.spn)  # [X, *event]
        self.trees = self.ref.tree_log_values(self.configs).flatten(1)  # [X, R*T]
        self.joint = self.trees.logsumexp(-1)  # [X] reference log p(x)
        self.max_tree = self.trees.amax(-1)  # [X] reference max_T
        self.numel = self.configs[0].numel()

    def matching(self, evidence: torch.Tensor) -> torch.Tensor:
        """Configurations that agree with the observed entries of one evidence row, ``[X]`` bool."""
        ev = evidence.flatten()
        obs = ~torch.isnan(ev)
        return (self.configs.flatten(1)[:, obs] == ev[obs]).all(-1)

    def evidence(self, seed: int) -> torch.Tensor:
        """A batch of evidence rows with varied missing patterns ``[B, *event]``."""
        g = torch.Generator().manual_seed(seed)
        E = self.numel
        masks = [torch.ones(E, dtype=torch.bool), torch.zeros(E, dtype=torch.bool)]
        for e in range(E):  # one entry missing
            masks.append(torch.nn.functional.one_hot(torch.tensor(e), E).bool())
        for e in range(E):  # one entry observed
            masks.append(~torch.nn.functional.one_hot(torch.tensor(e), E).bool())
        C, F = self.spn.num_channels, self.spn.num_features
        if C > 1:  # a whole variable (all its channels) missing; one channel of every variable missing
            m = torch.zeros(C, F, dtype=torch.bool)
            m[:, 0] = True
            masks.append(m.flatten())
            m = torch.zeros(C, F, dtype=torch.bool)
            m[0] = True
            masks.append(m.flatten())
        for _ in range(6):
            masks.append(torch.rand(E, generator=g) < 0.5)
        masks = torch.stack(masks)
        rows = self.configs.flatten(1)[torch.randint(len(self.configs), (len(masks),), generator=g)]
        rows = torch.where(masks, torch.full_like(rows, float("nan")), rows)
        return rows.reshape((-1,) + self.spn.event_shape)


@pytest.fixture(params=list(zip(DISCRETE, range(len(DISCRETE)), strict=True)), ids=IDS)
def setup(request) -> Setup:
    case, seed = request.param
    if case not in _CACHE:
        _CACHE[case] = Setup(case, seed)
    return _CACHE[case]


def test_tree_reference_is_a_distribution(setup):
    """Sanity of the reference itself: tree weights sum to 1, the trees' joint sums to 1."""
    assert torch.allclose(setup.ref.log_weight.flatten().logsumexp(0), torch.tensor(0.0, dtype=DTYPE), **TIGHT)
    assert torch.allclose(setup.joint.logsumexp(0), torch.tensor(0.0, dtype=DTYPE), **TIGHT)


def test_log_prob_matches_tree_enumeration(setup):
    spn, d = setup.spn, setup.dist
    ll = spn(setup.configs)
    assert ll.dtype == DTYPE
    torch.testing.assert_close(ll.detach(), setup.joint, **TIGHT)
    torch.testing.assert_close(d.log_prob(setup.configs).detach(), setup.joint, **TIGHT)


def test_normalization(setup):
    spn, d = setup.spn, setup.dist
    zero = torch.tensor(0.0, dtype=DTYPE)
    torch.testing.assert_close(spn(setup.configs).logsumexp(0).detach(), zero, **TIGHT)
    # log_prob with extra sample dims: [3, X/3, *event] → [3, X/3]
    X = len(setup.configs)
    rows = setup.configs[: X - X % 2].reshape((2, -1) + spn.event_shape)
    lp = d.log_prob(rows)
    assert lp.shape == rows.shape[:2]
    torch.testing.assert_close(lp.detach().flatten(), setup.joint[: X - X % 2], **TIGHT)


def test_marginals(setup):
    spn, d = setup.spn, setup.dist
    evidence = setup.evidence(seed=1)
    expected = torch.stack([setup.joint[setup.matching(e)].logsumexp(0) for e in evidence])
    # the whole batch at once (rows with different patterns, complete rows included)
    torch.testing.assert_close(spn(evidence).detach(), expected, **TIGHT)
    torch.testing.assert_close(d.log_prob(evidence).detach(), expected, **TIGHT)
    # row by row (a batch that is all-missing, all-observed or mixed takes different code paths)
    for e, want in zip(evidence, expected, strict=True):
        torch.testing.assert_close(spn(e[None]).detach()[0], want, **TIGHT)
    # the reference's own marginalization (missing leaves = 1 in every tree) agrees with the sums
    torch.testing.assert_close(setup.ref.log_prob(evidence), expected, **TIGHT)


def test_all_missing_is_zero(setup):
    spn, d = setup.spn, setup.dist
    nan = torch.full((3,) + spn.event_shape, float("nan"), dtype=DTYPE)
    torch.testing.assert_close(spn(nan).detach(), torch.zeros(3, dtype=DTYPE), **TIGHT)
    torch.testing.assert_close(d.log_prob(nan).detach(), torch.zeros(3, dtype=DTYPE), **TIGHT)


def test_conditionals(setup):
    d = setup.dist
    evidence = setup.evidence(seed=2)
    for e in evidence:
        match = setup.matching(e)
        completions = setup.configs[match]
        marginal = setup.joint[match].logsumexp(0)
        cond = d.condition(e)
        assert cond.batch_shape == () and cond.event_shape == setup.spn.event_shape
        lp = cond.log_prob(completions).detach()
        torch.testing.assert_close(lp, setup.joint[match] - marginal, **TIGHT)
        torch.testing.assert_close(lp.logsumexp(0), torch.tensor(0.0, dtype=DTYPE), **TIGHT)
        # the observed entries of the value are ignored: overwrite them with another configuration's
        others = setup.configs[torch.randperm(len(setup.configs), generator=torch.Generator().manual_seed(0))]
        others = others[: len(completions)]
        scrambled = torch.where(torch.isnan(e), completions, others)
        torch.testing.assert_close(cond.log_prob(scrambled).detach(), lp, **TIGHT)
    # batched evidence: one completion per row
    g = torch.Generator().manual_seed(3)
    values, expected = [], []
    for e in evidence:
        idx = torch.nonzero(setup.matching(e))[:, 0]
        pick = idx[torch.randint(len(idx), (1,), generator=g)][0]
        values.append(setup.configs[pick])
        expected.append(setup.joint[pick] - setup.joint[setup.matching(e)].logsumexp(0))
    cond = d.condition(evidence)
    assert cond.batch_shape == (len(evidence),)
    values, expected = torch.stack(values), torch.stack(expected)
    torch.testing.assert_close(cond.log_prob(values).detach(), expected, **TIGHT)
    # sample dims in front of the batch: [2, B, *event] → [2, B]
    lp = cond.log_prob(torch.stack([values, values]))
    assert lp.shape == (2, len(evidence))
    torch.testing.assert_close(lp.detach(), torch.stack([expected, expected]), **TIGHT)
    # evidence with two batch dims
    B = len(evidence) - len(evidence) % 2
    cond2 = d.condition(evidence[:B].reshape((2, B // 2) + evidence.shape[1:]))
    assert cond2.batch_shape == (2, B // 2)
    lp2 = cond2.log_prob(values[:B].reshape((2, B // 2) + values.shape[1:]))
    torch.testing.assert_close(lp2.detach().flatten(), expected[:B], **TIGHT)


def test_mpe(setup):
    spn, d = setup.spn, setup.dist
    evidence = setup.evidence(seed=4)
    completion, value = d.mpe_with_log_prob(evidence)
    assert completion.shape == evidence.shape and value.shape == (len(evidence),)
    observed = ~torch.isnan(evidence)
    assert torch.equal(completion[observed], evidence.to(completion.dtype)[observed])
    assert not torch.isnan(completion).any()
    assert bool(setup.dist.support.check(completion).all())
    expected = torch.stack([setup.max_tree[setup.matching(e)].max() for e in evidence])
    torch.testing.assert_close(value.detach(), expected, **TIGHT)
    # the reference's per-tree maximization agrees with the enumeration over completions
    torch.testing.assert_close(setup.ref.max_product(evidence), expected, **TIGHT)
    # the completion attains the maximum: its max-product value with full evidence is the returned one
    torch.testing.assert_close(setup.ref.max_product(completion), expected, **TIGHT)
    _, full_value = d.mpe_with_log_prob(completion)
    torch.testing.assert_close(full_value.detach(), expected, **TIGHT)
    # evidence with two batch dims gives the same, reshaped
    B = len(evidence) - len(evidence) % 2
    c2, v2 = d.mpe_with_log_prob(evidence[:B].reshape((2, B // 2) + evidence.shape[1:]))
    assert c2.shape == (2, B // 2) + evidence.shape[1:] and v2.shape == (2, B // 2)
    torch.testing.assert_close(v2.detach().flatten(), expected[:B], **TIGHT)
    torch.testing.assert_close(setup.ref.max_product(c2.flatten(0, 1)), expected[:B], **TIGHT)
    assert d.mpe(evidence).shape == evidence.shape  # without the value
    # unconditional MPE (all missing) from spn.mpe directly
    nan = torch.full((1,) + spn.event_shape, float("nan"), dtype=DTYPE)
    c0, v0 = mpe(spn, nan)
    torch.testing.assert_close(v0.detach()[0], setup.max_tree.max(), **TIGHT)
    torch.testing.assert_close(setup.ref.max_product(c0)[0], setup.max_tree.max(), **TIGHT)


def test_mean(setup):
    d = setup.dist
    p = setup.joint.exp()
    expected = (p.reshape((-1,) + (1,) * len(setup.spn.event_shape)) * setup.configs).sum(0)
    mean = d.mean
    assert mean.shape == setup.spn.event_shape
    torch.testing.assert_close(mean.detach(), expected, **TIGHT)
    torch.testing.assert_close(setup.ref.mean(torch.full((1,) + setup.spn.event_shape, float("nan"),
                                                         dtype=DTYPE))[0], expected, **TIGHT)


def test_conditional_mean(setup):
    d = setup.dist
    evidence = setup.evidence(seed=5)
    expected = []
    for e in evidence:
        match = setup.matching(e)
        post = setup.joint[match].softmax(0)
        expected.append((post.reshape((-1,) + (1,) * e.dim()) * setup.configs[match]).sum(0))
    expected = torch.stack(expected)
    mean = d.condition(evidence).mean
    assert mean.shape == evidence.shape
    observed = ~torch.isnan(evidence)
    assert torch.equal(mean[observed], evidence[observed])
    torch.testing.assert_close(mean.detach(), expected, **TIGHT)


# ------------------------------------------------------------------------------------------------
# Normal leaves: numerical integration and the tree reference
# ------------------------------------------------------------------------------------------------


def _grid(spn: RatSPN, n: int) -> torch.Tensor:
    params = spn.leaf_layer.params()
    loc, scale = params["loc"].detach(), params["scale"].detach()
    lo = float((loc - 12 * scale).min())
    hi = float((loc + 12 * scale).max())
    return torch.linspace(lo, hi, n, dtype=DTYPE)


@pytest.mark.parametrize("depth,n_leaf", [(1, 3), (2, 3), (3, 2)])
def test_normal_1d_integrates_to_one(depth, n_leaf):
    spn = make_spn("normal", 1, depth, 3, 2, n_leaf, seed=depth)
    d = SPNDistribution(spn)
    grid = _grid(spn, 20001)
    density = spn(grid[:, None]).detach().exp()
    torch.testing.assert_close(torch.trapezoid(density, grid), torch.tensor(1.0, dtype=DTYPE), rtol=0, atol=1e-7)
    torch.testing.assert_close(d.log_prob(grid[:, None]).detach().exp(), density, **TIGHT)
    # and the density itself is the tree mixture
    torch.testing.assert_close(spn(grid[::97, None]).detach(), TreeReference(spn).log_prob(grid[::97, None]),
                               **TIGHT)


@pytest.mark.parametrize("event_shape,depth", [(2, 1), (2, 2), ((2, 1, 1), 1), ((1, 1, 2), 3)])
def test_normal_2d_integrates_to_one(event_shape, depth):
    spn = make_spn("normal", event_shape, depth, 2, 2, 3, seed=7)
    g0 = _grid(spn, 401)
    a, b = torch.meshgrid(g0, g0, indexing="ij")
    points = torch.stack([a.flatten(), b.flatten()], -1).reshape((-1,) + spn.event_shape)
    density = spn(points).detach().exp().view(len(g0), len(g0))
    total = torch.trapezoid(torch.trapezoid(density, g0, dim=1), g0)
    torch.testing.assert_close(total, torch.tensor(1.0, dtype=DTYPE), rtol=0, atol=1e-6)
    # marginals of either variable integrate to 1 and equal the integral of the joint over the other
    for keep in (0, 1):
        x = torch.full((len(g0), 2), float("nan"), dtype=DTYPE)
        x[:, keep] = g0
        marginal = spn(x.reshape((-1,) + spn.event_shape)).detach().exp()
        torch.testing.assert_close(torch.trapezoid(marginal, g0), torch.tensor(1.0, dtype=DTYPE), rtol=0, atol=1e-6)
        integrated = torch.trapezoid(density, g0, dim=1 - keep)
        torch.testing.assert_close(marginal, integrated, rtol=0, atol=1e-6)


NORMAL = [((3,), 2, 3, 2, 2), ((2, 1, 3), 2, 2, 3, 2), ((5,), 3, 2, 2, 2), ((1,), 2, 2, 2, 3)]


@pytest.mark.parametrize("event_shape,depth,R,K,n_leaf", NORMAL)
def test_normal_against_trees(event_shape, depth, R, K, n_leaf):
    spn = make_spn("normal", event_shape, depth, R, K, n_leaf, seed=11)
    d = SPNDistribution(spn, validate_args=True)
    ref = TreeReference(spn)
    g = torch.Generator().manual_seed(12)
    x = 2 * torch.randn((40,) + spn.event_shape, generator=g, dtype=DTYPE)
    x = torch.where(torch.rand(x.shape, generator=g) < 0.4, torch.full_like(x, float("nan")), x)
    x[0] = float("nan")
    x[1] = 2 * torch.randn(spn.event_shape, generator=g, dtype=DTYPE)
    torch.testing.assert_close(d.log_prob(x).detach(), ref.log_prob(x), **TIGHT)
    # MPE: value, kept evidence, and the completion attains the value
    completion, value = d.mpe_with_log_prob(x)
    observed = ~torch.isnan(x)
    assert torch.equal(completion[observed], x[observed])
    torch.testing.assert_close(value.detach(), ref.max_product(x), **TIGHT)
    torch.testing.assert_close(ref.max_product(completion), value.detach(), **TIGHT)
    # means (unconditional and conditional) as posterior mixtures of the trees' component means
    nan = torch.full((1,) + spn.event_shape, float("nan"), dtype=DTYPE)
    torch.testing.assert_close(d.mean.detach(), ref.mean(nan)[0], **TIGHT)
    torch.testing.assert_close(d.condition(x).mean.detach(), ref.mean(x), **TIGHT)
    # conditionals are joint - marginal
    full = torch.where(observed, x, 3 * torch.randn(x.shape, generator=g, dtype=DTYPE))
    torch.testing.assert_close(d.condition(x).log_prob(full).detach(), ref.log_prob(full) - ref.log_prob(x), **TIGHT)


# ------------------------------------------------------------------------------------------------
# the tensorized leaf-region evaluation against the naive reference
# ------------------------------------------------------------------------------------------------

NAIVE = [
    ("bernoulli", (7,), 3, 3, 4, 3),
    ("bernoulli", (2, 2, 3), 2, 2, 2, 5),
    ("categorical", (2, 3, 3), 2, 2, 3, 4),
    ("categorical", (1,), 2, 3, 2, 2),
    ("binomial5", (3, 2, 5), 3, 2, 3, 2),
    ("binomial255", (1, 4, 4), 4, 3, 3, 3),
    ("binomial2", (1, 1, 3), 4, 2, 2, 2),
    ("normal", (2, 2, 3), 2, 4, 3, 5),
    ("normal", (13,), 4, 2, 3, 3),
    ("normal", (3, 1, 1), 1, 2, 2, 2),
]


def _random_data(spn: RatSPN, n: int, seed: int, nan_rate: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n,) + spn.event_shape
    if isinstance(spn.leaf, Normal):
        x = 2 * torch.randn(shape, generator=g, dtype=DTYPE)
    else:
        values = torch.tensor(support_values(spn.leaf), dtype=DTYPE)
        x = values[torch.randint(len(values), shape, generator=g)]
    if nan_rate > 0:
        x = torch.where(torch.rand(shape, generator=g) < nan_rate, torch.full_like(x, float("nan")), x)
        x[0] = float("nan")
    return x


@pytest.mark.parametrize("case", NAIVE, ids=["-".join(map(str, c)).replace(" ", "") for c in NAIVE])
def test_tensorized_pass_matches_naive(case):
    kind, event_shape, depth, R, K, n_leaf = case
    spn = make_spn(kind, event_shape, depth, R, K, n_leaf, seed=21)
    for nan_rate, seed in ((0.0, 1), (0.3, 2), (0.8, 3)):
        x = _random_data(spn, 64, seed, nan_rate)
        torch.testing.assert_close(spn(x).detach(), naive_forward(spn, x), **TIGHT)
        torch.testing.assert_close(spn.upward(x, max_product=True).log_likelihood.detach(),
                                   naive_forward(spn, x, max_product=True), **TIGHT)
    # one row at a time gives the same as the batch (no cross-talk between rows)
    x = _random_data(spn, 5, 9, 0.3)
    batch = spn(x).detach()
    for n in range(5):
        torch.testing.assert_close(spn(x[n : n + 1]).detach()[0], batch[n], **TIGHT)


def test_float32_circuit_casts_data():
    """A float32 circuit evaluates float64 data in float32 and agrees with the float64 circuit."""
    spn64 = make_spn("binomial3", (2, 1, 3), 2, 2, 2, 2, seed=5)
    spn32 = make_spn("binomial3", (2, 1, 3), 2, 2, 2, 2, seed=5).float()
    x = _random_data(spn64, 16, 4, 0.3)
    out32 = spn32(x)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double().detach(), spn64(x).detach(), rtol=1e-4, atol=1e-4)


@settings(max_examples=30, deadline=None)
@given(num_features=st.integers(1, 4), depth=st.integers(1, 3), num_repetitions=st.integers(1, 3),
       num_sums=st.integers(1, 3), num_leaves=st.integers(1, 3), seed=st.integers(0, 2**16),
       kind=st.sampled_from(["bernoulli", "categorical", "binomial2"]))
def test_random_circuits_normalize_and_marginalize(num_features, depth, num_repetitions, num_sums, num_leaves, seed,
                                                   kind):
    """Any structure (padded regions included, when 2**depth > F): the probabilities of all states sum to 1, and
    marginalizing the last variable equals summing it out."""
    spn = make_spn(kind, (num_features,), depth, num_repetitions, num_sums, num_leaves, seed)
    states = all_configs(spn)
    with torch.no_grad():
        log_probs = spn(states)
        assert float(log_probs.logsumexp(0)) == pytest.approx(0.0, abs=1e-9)
        values = len(support_values(spn.leaf))
        partial = states[::values].clone()
        partial[:, -1] = float("nan")
        summed = log_probs.reshape(-1, values).logsumexp(1)
        torch.testing.assert_close(spn(partial), summed, **TIGHT)
