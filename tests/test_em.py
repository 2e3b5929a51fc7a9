"""Mini-batch EM (:mod:`pyro_spn.em`): monotone full-batch EM for every leaf family, the M-step against the closed
form by enumeration, the E-step's flows against the top-down pass, checkpoints and argument errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import Tensor

from pyro_spn import RatSPN
from pyro_spn.em import EM, EMOptions, expected_counts
from pyro_spn.expectations import posterior_flows
from pyro_spn.leaves import Bernoulli, Binomial, Categorical, Leaf, Mixed, Normal

LEAVES: dict[str, Leaf] = {
    "normal": Normal(),
    "binomial": Binomial(total_count=5),
    "bernoulli": Bernoulli(),
    "categorical": Categorical(num_categories=3),
    "mixed": Mixed(((Binomial(total_count=5), 3), (Normal(), 3))),
}


def _data(leaf: Leaf, n: int, num_features: int, seed: int) -> Tensor:
    """``[n, F]`` float64 data in the support of ``leaf`` with some structure (two clusters)."""
    g = torch.Generator().manual_seed(seed)
    cluster = torch.randint(0, 2, (n, 1), generator=g).double()
    if isinstance(leaf, Mixed):
        parts = [_data(member, n, size, seed + i) for i, (member, size) in enumerate(leaf.groups)]
        return torch.cat(parts, dim=1)
    if isinstance(leaf, Normal):
        return 3.0 * cluster - 1.5 + torch.randn((n, num_features), generator=g, dtype=torch.float64)
    if isinstance(leaf, Binomial):
        p = 0.2 + 0.6 * cluster
        return torch.binomial(torch.full((n, num_features), 5.0, dtype=torch.float64), p.expand(n, num_features),
                              generator=g)
    if isinstance(leaf, Bernoulli):
        return torch.bernoulli((0.2 + 0.6 * cluster).expand(n, num_features), generator=g)
    assert isinstance(leaf, Categorical)
    shift = torch.randint(0, 2, (n, num_features), generator=g).double()
    return (cluster + shift).clamp_max(2.0)


def _circuit(leaf: Leaf, num_features: int = 6, depth: int = 2, repetitions: int = 3, sums: int = 3,
             leaves: int = 3) -> RatSPN:
    return RatSPN(num_features, depth=depth, num_repetitions=repetitions, num_sums=sums, num_leaves=leaves,
                  leaf=leaf, seed=1).double()


def _mean_ll(spn: RatSPN, x: Tensor) -> float:
    with torch.no_grad():
        return float(spn(x).mean())


@pytest.mark.parametrize("name", sorted(LEAVES))
def test_full_batch_em_increases_the_likelihood_monotonically(name: str) -> None:
    leaf = LEAVES[name]
    spn = _circuit(leaf)
    x = _data(leaf, 200, 6, seed=3)
    em = EM(spn, step_size=1.0, weight_prior=0.0, leaf_prior=0.0, min_variance=1e-3)
    history = [_mean_ll(spn, x)]
    for _ in range(40):
        before = em.step(x)
        assert before == pytest.approx(history[-1], abs=1e-9)  # step() reports the likelihood before its update
        history.append(_mean_ll(spn, x))
    steps = [b - a for a, b in zip(history, history[1:], strict=False)]
    assert min(steps) >= -1e-5, steps
    assert history[-1] > history[0] + 0.1  # it learned something


def test_full_batch_em_with_missing_values_increases_the_marginal_likelihood() -> None:
    leaf = LEAVES["mixed"]
    spn = _circuit(leaf)
    x = _data(leaf, 150, 6, seed=4)
    x[torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) < 0.3] = math.nan
    em = EM(spn, step_size=1.0, weight_prior=0.0, leaf_prior=0.0)
    history = [_mean_ll(spn, x)]
    for _ in range(25):
        em.step(x)
        history.append(_mean_ll(spn, x))
    assert all(math.isfinite(v) for v in history)
    assert min(b - a for a, b in zip(history, history[1:], strict=False)) >= -1e-5
    assert history[-1] > history[0] + 0.1


def _enumerated_posteriors(spn: RatSPN, x: Tensor) -> tuple[Tensor, Tensor]:
    """For a depth-1 circuit over 2 variables: the posterior ``[N, R, I, I]`` of (repetition, left component, right
    component) by enumeration, and the variable of every (repetition, region) ``[R, 2]``."""
    variables = spn.leaf_layer.leaf_slots[:, :, 0]  # [R, 2]
    with torch.no_grad():
        log_prob = spn.leaf_layer.log_prob(spn.flatten_data(x))[:, 0]  # [N, F, I, R]
        log_w = spn.einsum_layers[0].log_weights()[:, 0, 0].reshape(spn.num_repetitions, spn.num_leaves,
                                                                     spn.num_leaves)  # [R, I, I]
        root = spn.root.log_weights()
        left = [log_prob[:, variables[r, 0], :, r][:, :, None] for r in range(spn.num_repetitions)]  # [N, I, 1]
        right = [log_prob[:, variables[r, 1], :, r][:, None] for r in range(spn.num_repetitions)]  # [N, 1, I]
        scores = torch.stack([root[r] + log_w[r] + left[r] + right[r] for r in range(spn.num_repetitions)],
                             dim=1)  # [N, R, I, I]
    flat = scores.flatten(1).softmax(-1)
    return flat.view_as(scores), variables


@pytest.mark.parametrize("name", ["normal", "binomial", "categorical"])
def test_the_m_step_is_the_closed_form_maximizer_by_enumeration(name: str) -> None:
    leaf = LEAVES[name]
    spn = _circuit(leaf, num_features=2, depth=1, repetitions=2, sums=1, leaves=2)
    x = _data(leaf, 40, 2, seed=5)
    posterior, variables = _enumerated_posteriors(spn, x)  # [N, R, I, I]
    EM(spn, step_size=1.0, weight_prior=0.0, leaf_prior=0.0, min_variance=1e-6).step(x)
    n = x.shape[0]
    counts = posterior.sum(0)  # [R, I, I]
    torch.testing.assert_close(spn.root.log_weights().exp(), counts.sum((1, 2)) / n)
    weights = spn.einsum_layers[0].log_weights()[:, 0, 0].exp().view_as(counts)
    torch.testing.assert_close(weights, counts / counts.sum((1, 2), keepdim=True))
    params = spn.leaf_layer.params()
    for r in range(spn.num_repetitions):
        for side in range(2):
            q = posterior[:, r].sum(2 - side)  # [N, I]: the component of this side's region
            values = x[:, variables[r, side]]
            for i in range(spn.num_leaves):
                own = {key: p[0, variables[r, side], i, r] for key, p in params.items()}
                _check_component(leaf, own, q[:, i], values)


def _check_component(leaf: Leaf, own: dict[str, Tensor], q: Tensor, values: Tensor) -> None:
    """The component's parameters ``own`` are the weighted maximum-likelihood estimate of ``values`` ``[N]`` with
    weights ``q`` ``[N]``."""
    total = q.sum()
    if isinstance(leaf, Normal):
        mean = (q * values).sum() / total
        variance = (q * (values - mean).square()).sum() / total
        torch.testing.assert_close(own["loc"], mean)
        torch.testing.assert_close(own["scale"], variance.sqrt())
    elif isinstance(leaf, Binomial):
        torch.testing.assert_close(torch.sigmoid(own["logits"]), (q * values).sum() / (total * leaf.total_count))
    else:
        assert isinstance(leaf, Categorical)
        probs = torch.stack([(q * (values == v)).sum() for v in range(leaf.num_categories)]) / total
        torch.testing.assert_close(own["logits"].softmax(-1), probs)


def test_the_leaf_flows_are_the_posterior_flows_of_the_top_down_pass() -> None:
    leaf = LEAVES["binomial"]
    spn = _circuit(leaf)
    x = _data(leaf, 30, 6, seed=6)
    x[::3, 1] = math.nan
    stats, examples, total = expected_counts(spn, x)
    flows = posterior_flows(spn, x).detach()  # [N, F, I, R]
    observed = (~torch.isnan(x)).double()
    torch.testing.assert_close(stats["leaf_count"][0], torch.einsum("nfir,nf->fir", flows, observed))
    torch.testing.assert_close(stats["leaf_sum"][0, ..., 0],
                               torch.einsum("nfir,nf->fir", flows, torch.nan_to_num(x) * observed))
    assert examples == 30 and total == pytest.approx(float(spn(x).sum().detach()))
    torch.testing.assert_close(stats["root"].sum(), torch.tensor(30.0, dtype=torch.float64))
    for k in range(spn.depth):  # every unit's edge counts add up to its flow
        torch.testing.assert_close(stats[f"einsum{k}"].sum(-1), stats[f"flow{k}"])


def test_stochastic_em_improves_a_float32_circuit_and_leaves_requires_grad_alone() -> None:
    leaf = Binomial(total_count=5)
    spn = RatSPN(6, depth=2, num_repetitions=3, num_sums=3, num_leaves=3, leaf=leaf, seed=2)
    spn.root.logits.requires_grad_(False)
    x = _data(leaf, 400, 6, seed=7).float()
    em = EM(spn)
    before = _mean_ll(spn, x)
    for _ in range(3):
        for batch in x.split(50):
            em.step(batch)
    assert _mean_ll(spn, x) > before + 0.5
    assert not spn.root.logits.requires_grad and spn.leaf_layer.logits.requires_grad
    assert em.options.rate(0) == 1.0 and em.options.rate(1) == pytest.approx(3.0**-0.6)
    assert EMOptions(step_size=0.3).rate(5) == 0.3


def test_a_reduced_step_over_shards_equals_the_step_over_the_whole_batch() -> None:
    leaf = LEAVES["categorical"]
    x = _data(leaf, 80, 6, seed=10)
    whole, sharded = _circuit(leaf), _circuit(leaf)
    mean = EM(whole).step(x)
    em = EM(sharded)
    other_half, _, _ = expected_counts(sharded, x[40:])  # what the other process contributes
    other_total = float(sharded(x[40:]).sum().detach())
    names = sorted(other_half)

    def reduce(flat: Tensor) -> Tensor:  # a two-process all-reduce, simulated
        other = torch.cat([torch.tensor([40.0, other_total], dtype=torch.float64),
                           *(other_half[name].flatten() for name in names)])
        return flat + other

    assert em.step(x[:40], reduce) == pytest.approx(mean)
    for (name, a), (_, b) in zip(whole.state_dict().items(), sharded.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_state_dict_round_trip_resumes_the_same_trajectory() -> None:
    leaf = LEAVES["mixed"]
    x = _data(leaf, 120, 6, seed=8)
    spn = _circuit(leaf)
    em = EM(spn, step_size=None, decay=0.7)
    em.step(x[:60])
    state = em.state_dict()
    twin = copy.deepcopy(spn)
    resumed = EM(twin, decay=0.7)
    resumed.load_state_dict(state)
    assert resumed.num_steps == 1
    em.step(x[60:])
    resumed.step(x[60:])
    for (name, a), (_, b) in zip(spn.state_dict().items(), twin.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    fresh = EM(_circuit(leaf))
    fresh.load_state_dict(EM(_circuit(leaf)).state_dict())  # an unused EM's state loads too
    assert fresh.num_steps == 0


def test_load_state_dict_refuses_other_options_and_shapes() -> None:
    leaf = LEAVES["normal"]
    x = _data(leaf, 50, 6, seed=9)
    em = EM(_circuit(leaf))
    em.step(x)
    state = em.state_dict()
    with pytest.raises(ValueError, match="options"):
        EM(_circuit(leaf), step_size=0.5).load_state_dict(state)
    with pytest.raises(ValueError, match=r"statistics.*expected shape"):
        EM(_circuit(leaf, sums=4)).load_state_dict(state)
    with pytest.raises(ValueError, match="version"):
        EM(_circuit(leaf)).load_state_dict({**state, "version": 99})
    with pytest.raises(ValueError, match="num_steps"):
        EM(_circuit(leaf)).load_state_dict({**state, "num_steps": -1})


@pytest.mark.parametrize(("argument", "value"), [
    ("step_size", 0.0), ("step_size", 1.5), ("decay", 0.5), ("decay", 1.1), ("offset", 0.5),
    ("weight_prior", -1.0), ("leaf_prior", math.nan), ("min_variance", 0.0),
])
def test_bad_arguments_raise_value_errors_naming_them(argument: str, value: float) -> None:
    with pytest.raises(ValueError, match=argument):
        EM(_circuit(Normal()), **{argument: value})


def test_wrong_types_and_impossible_data_are_refused() -> None:
    with pytest.raises(TypeError, match="spn"):
        EM(torch.nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="decay"):
        EM(_circuit(Normal()), decay="fast")  # type: ignore[arg-type]
    spn = _circuit(Bernoulli())
    with pytest.raises(ValueError, match="x: no example"):
        EM(spn).step(torch.full((4, 6), math.inf, dtype=torch.float64))  # impossible everywhere
